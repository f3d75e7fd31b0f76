"""The apiexport virtual workspace through real clients, in every topology (embedded, external, forwarded).

A provider workspace exports ``widgets.example.io``; consumers bind it. Through
``/services/apiexport/<provider>/widgets/clusters/<cluster|*>`` the provider's service account sees
exactly the widgets of bound workspaces, once it holds a grant on ``apiexports/content``; consumers'
users without it get 403, and so does any request for a workspace that does not bind the export.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid

import pytest
import requests
import yaml
from kubernetes import client

from kcp_virtual.apiexport import NOT_BOUND
from server.shard import ShardConfig
from tests.e2e.test_apibinding import (GROUP, VERSION, WIDGET_SCHEMA, api, bind, provide, resource_schema, wait_bound,
                                       wait_for, widget)
from tests.topologies import TOPOLOGIES, running_topology

RBAC = "rbac.authorization.k8s.io"
TOKENS = {"carol": "carol-token"}


@pytest.fixture(scope="module", params=TOPOLOGIES)
def topology(request, tmp_path_factory):
    tokens = tmp_path_factory.mktemp("tokens") / "tokens.csv"
    tokens.write_text("carol-token,carol,3\n")
    with running_topology(request.param, ShardConfig(token_auth_file=str(tokens), bookmark_interval=1.0)) as (
            vw, shard, _):
        yield vw, shard


def workspace(shard, prefix: str) -> str:
    cluster = f"root:{prefix}-{uuid.uuid4().hex[:6]}"
    shard.run(shard.shard.registry.ensure_logical_cluster, cluster)
    return cluster


@pytest.fixture(scope="module")
def world(topology):
    """A provider exporting widgets, two bound consumers, and an unbound workspace with a same-named CRD."""
    vw, shard = topology
    provider = workspace(shard, "provider")
    export = provide(shard, provider)
    consumers = [workspace(shard, "consumer"), workspace(shard, "consumer")]
    for consumer in consumers:
        bind(shard, consumer, provider)
        wait_bound(shard, consumer)
    unbound = workspace(shard, "unbound")
    crd(shard, unbound)
    return {"vw": vw, "shard": shard, "provider": provider, "consumers": consumers, "unbound": unbound,
            "export": export, "base": f"apiexport/{provider}/widgets"}


def crd(shard, cluster: str) -> None:
    ext = client.ApiextensionsV1Api(shard.cluster_client(cluster))
    ext.create_custom_resource_definition({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.io"},
        "spec": {"group": "example.io", "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
                 "versions": [{"name": "v1", "served": True, "storage": True,
                               "schema": {"openAPIV3Schema": WIDGET_SCHEMA}}]}})
    objects = api(shard, cluster)
    wait_for(lambda: _status(lambda: objects.list_namespaced_custom_object("example.io", "v1", "default", "widgets")),
             lambda code: code == 200)
    objects.create_namespaced_custom_object("example.io", "v1", "default", "widgets", widget("crd-object"))


def _status(call) -> int:
    try:
        call()
    except client.ApiException as exc:
        return exc.status
    return 200


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def names_by_cluster(items) -> set[tuple[str, str]]:
    return {(i["metadata"]["annotations"]["kcp.dev/cluster"], i["metadata"]["name"]) for i in items}


def vw_objects(world, cluster: str = "*") -> client.CustomObjectsApi:
    return client.CustomObjectsApi(world["vw"].api_client(f"{world['base']}/clusters/{cluster}"))


# ---------------------------------------------------------------------- the view

def test_published_url_is_the_virtual_workspace(world):
    urls = [u["url"] for u in world["export"]["status"]["virtualWorkspaces"]]
    assert len(urls) == 1 and urls[0].endswith(f"/services/{world['base']}")
    config = client.Configuration()
    config.host = urls[0] + "/clusters/*"
    shard = world["shard"]
    with open(shard.kubeconfig) as f:
        user = yaml.safe_load(f)["users"][0]["user"]
    config.ssl_ca_cert = shard.ca_file
    config.cert_file, config.key_file = _materialize(shard, user)
    listed = client.CustomObjectsApi(client.ApiClient(config)).list_cluster_custom_object("example.io", "v1",
                                                                                          "widgets")
    assert listed["kind"] == "WidgetList"


def _materialize(shard, user: dict) -> tuple[str, str]:
    import base64
    paths = []
    for key in ("client-certificate", "client-key"):
        if key in user:
            paths.append(user[key])
        else:
            path = shard.workdir / f"admin-{key}.pem"
            path.write_bytes(base64.b64decode(user[key + "-data"]))
            paths.append(str(path))
    return paths[0], paths[1]


def test_wildcard_sees_bound_workspaces_only(world):
    shard = world["shard"]
    a, b = world["consumers"]
    name = unique("w")
    for consumer in (a, b):
        api(shard, consumer).create_namespaced_custom_object("example.io", "v1", "default", "widgets", widget(name))
    items = vw_objects(world).list_cluster_custom_object("example.io", "v1", "widgets")["items"]
    assert {(a, name), (b, name)} <= names_by_cluster(items)
    assert all(c in world["consumers"] for c, _ in names_by_cluster(items))   # never the CRD's workspace
    # a concrete unbound workspace is a 403, even for the CRD of the same name in it
    denied = _status(lambda: vw_objects(world, world["unbound"]).list_namespaced_custom_object(
        "example.io", "v1", "default", "widgets"))
    assert denied == 403


def test_discovery_and_read_only_apibindings(world):
    vw = world["vw"]
    out = vw.kubectl(f"{world['base']}/clusters/*", "api-resources", "--no-headers").stdout
    rows = sorted(line.split()[0] for line in out.splitlines())
    assert rows == ["apibindings", "widgets"]
    bindings = vw_objects(world).list_cluster_custom_object(GROUP, VERSION, "apibindings")["items"]
    assert {c for c, _ in names_by_cluster(bindings)} == set(world["consumers"])
    one = vw_objects(world, world["consumers"][0])
    assert _status(lambda: one.delete_cluster_custom_object(GROUP, VERSION, "apibindings", "widgets")) == 405
    assert one.get_cluster_custom_object(GROUP, VERSION, "apibindings", "widgets")["metadata"]["name"] == "widgets"


def test_empty_list_and_open_watch_before_any_binding(topology):
    vw, shard = topology
    provider = workspace(shard, "lonely")
    provide(shard, provider)
    objects = client.CustomObjectsApi(vw.api_client(f"apiexport/{provider}/widgets/clusters/*"))
    listed = objects.list_cluster_custom_object("example.io", "v1", "widgets")
    assert listed["items"] == [] and listed["metadata"]["resourceVersion"]
    events = list(_watch(objects, listed["metadata"]["resourceVersion"], timeout=1))
    assert [e for e in events if e["type"] != "BOOKMARK"] == []


def _watch(objects: client.CustomObjectsApi, rv: str, timeout: int):
    response = objects.list_cluster_custom_object("example.io", "v1", "widgets", watch=True, resource_version=rv,
                                                  timeout_seconds=timeout, _preload_content=False)
    for line in response:
        if line.strip():
            yield json.loads(line)


def test_missing_export_serves_nothing(topology):
    vw, shard = topology
    provider = workspace(shard, "nothing")
    out = vw.kubectl(f"apiexport/{provider}/widgets/clusters/*", "api-resources", "--no-headers").stdout
    assert out.strip() == ""


def test_writes_land_in_the_consumer_and_are_validated(world):
    shard = world["shard"]
    consumer = world["consumers"][0]
    one = vw_objects(world, consumer)
    name = unique("made")
    one.create_namespaced_custom_object("example.io", "v1", "default", "widgets", widget(name, 3))
    seen = api(shard, consumer).get_namespaced_custom_object("example.io", "v1", "default", "widgets", name)
    assert seen["spec"] == {"size": 3, "color": "red"}    # defaulted by the shard, from the schema
    assert _status(lambda: one.create_namespaced_custom_object("example.io", "v1", "default", "widgets",
                                                               widget(unique("bad"), 1000))) == 422
    one.patch_namespaced_custom_object_status("example.io", "v1", "default", "widgets", name,
                                              {"status": {"observed": True}})
    assert api(shard, consumer).get_namespaced_custom_object(
        "example.io", "v1", "default", "widgets", name)["status"] == {"observed": True}


def test_identity_isolation_between_two_exports(topology):
    vw, shard = topology
    provider_a, provider_b = workspace(shard, "prov-a"), workspace(shard, "prov-b")
    provide(shard, provider_a)
    provide(shard, provider_b)
    consumer_a, consumer_b = workspace(shard, "cons-a"), workspace(shard, "cons-b")
    bind(shard, consumer_a, provider_a)
    bind(shard, consumer_b, provider_b)
    wait_bound(shard, consumer_a)
    wait_bound(shard, consumer_b)
    for consumer in (consumer_a, consumer_b):
        api(shard, consumer).create_namespaced_custom_object("example.io", "v1", "default", "widgets", widget("same"))
    for provider, consumer, other in ((provider_a, consumer_a, consumer_b), (provider_b, consumer_b, consumer_a)):
        base = f"apiexport/{provider}/widgets/clusters"
        items = client.CustomObjectsApi(vw.api_client(f"{base}/*")).list_cluster_custom_object(
            "example.io", "v1", "widgets")["items"]
        assert names_by_cluster(items) == {(consumer, "same")}
        other_view = client.CustomObjectsApi(vw.api_client(f"{base}/{other}"))
        assert _status(lambda: other_view.get_namespaced_custom_object("example.io", "v1", "default", "widgets",
                                                                      "same")) == 403


def test_watch_follows_bindings_added_and_removed(topology):
    vw, shard = topology
    provider = workspace(shard, "watched")
    provide(shard, provider)
    objects = client.CustomObjectsApi(vw.api_client(f"apiexport/{provider}/widgets/clusters/*"))
    start = objects.list_cluster_custom_object("example.io", "v1", "widgets")["metadata"]["resourceVersion"]
    events: list[tuple[str, str, str]] = []

    def collect():
        for event in _watch(objects, start, timeout=10):
            if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                meta = event["object"]["metadata"]
                events.append((event["type"], meta["annotations"]["kcp.dev/cluster"], meta["name"]))
                if event["type"] == "DELETED":
                    return

    watcher = threading.Thread(target=collect)
    watcher.start()
    consumer = workspace(shard, "comes-and-goes")
    bind(shard, consumer, provider)
    wait_bound(shard, consumer)
    api(shard, consumer).create_namespaced_custom_object("example.io", "v1", "default", "widgets", widget("w"))
    wait_for(lambda: list(events), lambda e: ("ADDED", consumer, "w") in e)
    api(shard, consumer).delete_cluster_custom_object(GROUP, VERSION, "apibindings", "widgets")
    wait_for(lambda: list(events), lambda e: ("DELETED", consumer, "w") in e)
    watcher.join(10)
    assert events == [("ADDED", consumer, "w"), ("DELETED", consumer, "w")]
    # and a concrete request for it is now refused
    assert _status(lambda: client.CustomObjectsApi(vw.api_client(f"apiexport/{provider}/widgets/clusters/{consumer}"))
                   .list_namespaced_custom_object("example.io", "v1", "default", "widgets")) == 403


# ---------------------------------------------------------------------- kubectl

def test_kubectl_get_apply_and_watch(world):
    vw, shard = world["vw"], world["shard"]
    a, b = world["consumers"]
    wildcard, one = f"{world['base']}/clusters/*", f"{world['base']}/clusters/{a}"
    name = unique("applied")
    manifest = yaml.safe_dump({"apiVersion": "example.io/v1", "kind": "Widget",
                               "metadata": {"name": name, "namespace": "default"}, "spec": {"size": 5}})
    assert "created" in vw.kubectl(one, "apply", "-f", "-", input=manifest).stdout
    assert "configured" in vw.kubectl(one, "apply", "-f", "-", input=manifest.replace("size: 5", "size: 6")).stdout
    assert api(shard, a).get_namespaced_custom_object("example.io", "v1", "default", "widgets",
                                                      name)["spec"]["size"] == 6
    invalid = vw.kubectl(one, "apply", "-f", "-", input=manifest.replace("size: 5", "size: 0"), check=False)
    assert invalid.returncode != 0 and "size" in invalid.stderr
    rows = [line.split() for line in vw.kubectl(wildcard, "get", "widgets", "-A").stdout.splitlines()]
    assert rows[0] == ["NAMESPACE", "NAME", "WORKSPACE", "SIZE", "COLOR", "AGE"]
    assert ["default", name, a, "6", "red"] in [r[:5] for r in rows[1:]]
    assert world["unbound"] not in {r[2] for r in rows[1:]}
    # kubectl -w through the URL sees a widget created in the other consumer
    process = subprocess.Popen(vw.kubectl_command(wildcard, "get", "widgets", "-A", "-w", "--request-timeout=0"),
                               env=vw.kubectl_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        later = unique("later")
        time.sleep(1.0)
        api(shard, b).create_namespaced_custom_object("example.io", "v1", "default", "widgets", widget(later))
        deadline = time.monotonic() + 15
        seen = False
        while time.monotonic() < deadline and not seen:
            line = process.stdout.readline()
            seen = later in line and b in line
        assert seen
    finally:
        process.kill()
        process.wait()


# ---------------------------------------------------------------------- authorization

def _sa_token(shard, cluster: str, name: str) -> str:
    core = client.CoreV1Api(shard.cluster_client(cluster))
    core.create_namespaced_service_account("default", client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name)))
    return core.create_namespaced_service_account_token(name, "default", client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[]))).status.token


def _grant(shard, cluster: str, name: str, verbs: list[str], export: str, subject: dict) -> None:
    rbac = client.RbacAuthorizationV1Api(shard.cluster_client(cluster))
    rbac.create_cluster_role({"metadata": {"name": name}, "rules": [
        {"apiGroups": [GROUP], "resources": ["apiexports/content"], "verbs": verbs, "resourceNames": [export]}]})
    rbac.create_cluster_role_binding({"metadata": {"name": name},
                                      "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": name},
                                      "subjects": [subject]})


class _Caller:
    """Plain HTTPS as one token user, against the virtual workspace."""

    def __init__(self, world, token: str):
        self.world, self.session = world, requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.verify = world["shard"].ca_file   # per request: the session's would lose to REQUESTS_CA_BUNDLE

    def url(self, cluster: str, path: str) -> str:
        return f"{self.world['vw'].url(self.world['base'])}/clusters/{cluster}/apis/example.io/v1/{path}"

    def __call__(self, method: str, cluster: str, path: str, body=None, content_type="application/json",
                 **params) -> requests.Response:
        data = None if body is None else (body if isinstance(body, str) else json.dumps(body))
        return self.session.request(method, self.url(cluster, path), data=data, params=params, timeout=10,
                                    headers={"Content-Type": content_type}, stream=bool(params.get("watch")),
                                    verify=self.verify)

    def get(self, url: str) -> requests.Response:
        return self.session.get(url, timeout=10, verify=self.verify)


def test_deny_then_grant_for_each_verb(world):
    shard, provider = world["shard"], world["provider"]
    consumer = world["consumers"][1]
    sa = unique("controller")
    caller = _Caller(world, _sa_token(shard, provider, sa))
    subject = {"kind": "ServiceAccount", "name": sa, "namespace": "default"}
    ns = "namespaces/default/widgets"
    name = unique("v")
    existing = api(shard, consumer).create_namespaced_custom_object("example.io", "v1", "default", "widgets",
                                                                     widget(unique("for-dc")))
    existing_name = existing["metadata"]["name"]

    def current():
        return api(shard, consumer).get_namespaced_custom_object("example.io", "v1", "default", "widgets", name)

    apply = yaml.safe_dump({"apiVersion": "example.io/v1", "kind": "Widget",
                            "metadata": {"name": name, "namespace": "default"}, "spec": {"size": 9}})
    # (content verb, [(description, request, accepted codes)])
    steps = [
        ("list", [("list *", lambda: caller("GET", "*", "widgets"), {200}),
                  ("list one", lambda: caller("GET", consumer, ns), {200})]),
        ("get", [("get", lambda: caller("GET", consumer, f"{ns}/{existing_name}"), {200})]),
        ("watch", [("watch *", lambda: caller("GET", "*", "widgets", watch="true", timeoutSeconds="1"), {200})]),
        ("create", [("create", lambda: caller("POST", consumer, ns, widget(name)), {201})]),
        ("update", [("update", lambda: caller("PUT", consumer, f"{ns}/{name}", {**current(), "spec": {"size": 2}}),
                     {200}),
                    ("update status", lambda: caller("PUT", consumer, f"{ns}/{name}/status",
                                                     {**current(), "status": {"observed": True}}), {200})]),
        ("patch", [("merge patch", lambda: caller("PATCH", consumer, f"{ns}/{name}", {"spec": {"size": 3}},
                                                  "application/merge-patch+json"), {200}),
                   ("apply patch", lambda: caller("PATCH", consumer, f"{ns}/{name}", apply,
                                                  "application/apply-patch+yaml", fieldManager="test", force="true"),
                    {200})]),
        ("delete", [("delete", lambda: caller("DELETE", consumer, f"{ns}/{name}"), {200})]),
        ("deletecollection", [("deletecollection", lambda: caller("DELETE", consumer, ns,
                                                                  fieldSelector=f"metadata.name={existing_name}"),
                               {200})]),
    ]
    for verb, requests_ in steps:
        for description, call, _ in requests_:
            response = call()
            assert response.status_code == 403, (description, response.status_code, response.text)
            body = response.json()
            assert body["reason"] == "Forbidden" and "apiexports/content" in body["message"], body
        _grant(shard, provider, f"{sa}-{verb}", [verb], "widgets", subject)
        for description, call, codes in requests_:
            response = wait_for(call, lambda r: r.status_code != 403)
            assert response.status_code in codes, (description, response.status_code, response.text)
    assert current_status(shard, consumer, name) == 404
    assert current_status(shard, consumer, existing_name) == 404
    # with every grant: still no unbound workspace, and no other export
    assert caller("GET", world["unbound"], ns).status_code == 403
    other = caller.get(f"{world['vw'].url(f'apiexport/{provider}/other')}/clusters/*/apis/example.io/v1/widgets")
    assert other.status_code == 403


def current_status(shard, cluster: str, name: str) -> int:
    return _status(lambda: api(shard, cluster).get_namespaced_custom_object("example.io", "v1", "default",
                                                                            "widgets", name))


def test_consumer_user_without_the_grant_is_refused(world):
    shard = world["shard"]
    consumer = world["consumers"][0]
    # carol administers the consumer workspace, directly
    rbac = client.RbacAuthorizationV1Api(shard.cluster_client(consumer))
    rbac.create_cluster_role_binding({"metadata": {"name": "carol-admin"},
                                      "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "cluster-admin"},
                                      "subjects": [{"kind": "User", "apiGroup": RBAC, "name": "carol"}]})
    caller = _Caller(world, TOKENS["carol"])
    for cluster in (consumer, "*"):
        path = "namespaces/default/widgets" if cluster != "*" else "widgets"
        response = caller("GET", cluster, path)
        assert response.status_code == 403, response.text
    discovery = caller.get(f"{world['vw'].url(world['base'])}/clusters/*/apis")
    assert discovery.status_code == 403


# ---------------------------------------------------------------------- never staler than the shard

def test_every_change_is_seen_by_the_very_next_request(topology):
    """Whatever the virtual workspace reuses between requests (the export's definitions, the binding check), a
    change on the shard is visible to the next request, with no waiting: the object itself, the caller's grant,
    the export's schemas and the binding."""
    vw, shard = topology
    provider, consumer = workspace(shard, "fresh-prov"), workspace(shard, "fresh-cons")
    provide(shard, provider)
    bind(shard, consumer, provider)
    wait_bound(shard, consumer)
    sa = unique("reader")
    caller = _Caller({"vw": vw, "shard": shard, "base": f"apiexport/{provider}/widgets"},
                     _sa_token(shard, provider, sa))
    direct = api(shard, consumer)
    direct.create_namespaced_custom_object("example.io", "v1", "default", "widgets", widget("w", 1))
    path = "namespaces/default/widgets/w"
    assert caller("GET", consumer, path).status_code == 403  # no grant yet
    _grant(shard, provider, sa, ["get"], "widgets", {"kind": "ServiceAccount", "name": sa, "namespace": "default"})

    def get(expected: int) -> dict:
        for _ in range(3):  # a few times: a reused answer must be as fresh as the first
            response = caller("GET", consumer, path)
            assert response.status_code == expected, response.text
        return response.json()

    assert get(200)["spec"]["size"] == 1
    # the object changes: the next GET has the shard's version of it
    patched = direct.patch_namespaced_custom_object("example.io", "v1", "default", "widgets", "w", {"spec": {"size": 2}})
    seen = get(200)
    assert seen["spec"]["size"] == 2 and seen["metadata"]["resourceVersion"] == patched["metadata"]["resourceVersion"]
    # the grant goes and comes back
    rbac = client.RbacAuthorizationV1Api(shard.cluster_client(provider))
    rbac.delete_cluster_role_binding(sa)
    assert "apiexports/content" in get(403)["message"]
    rbac.create_cluster_role_binding({"metadata": {"name": sa},
                                      "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": sa},
                                      "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": "default"}]})
    get(200)
    # the export's schemas change: discovery and the new resource follow at once, and go with them
    schemas = api(shard, provider)
    schemas.create_cluster_custom_object(GROUP, VERSION, "apiresourceschemas",
                                         resource_schema(plural="gadgets", kind="Gadget"))
    export = schemas.get_cluster_custom_object(GROUP, VERSION, "apiexports", "widgets")
    latest = export["spec"]["latestResourceSchemas"]
    discovery = f"{vw.url(f'apiexport/{provider}/widgets')}/clusters/{consumer}/apis/example.io/v1"

    def served() -> set[str]:
        response = caller.get(discovery)
        assert response.status_code == 200, response.text
        return {r["name"] for r in response.json()["resources"]}

    assert "gadgets" not in served()
    schemas.patch_cluster_custom_object(GROUP, VERSION, "apiexports", "widgets",
                                        {"spec": {"latestResourceSchemas": [*latest, "v1.gadgets.example.io"]}})
    assert "gadgets" in served()
    schemas.patch_cluster_custom_object(GROUP, VERSION, "apiexports", "widgets",
                                        {"spec": {"latestResourceSchemas": latest}})
    assert "gadgets" not in served()
    # the object goes: 404 at once
    direct.delete_namespaced_custom_object("example.io", "v1", "default", "widgets", "w")
    assert get(404)["reason"] == "NotFound"
    direct.create_namespaced_custom_object("example.io", "v1", "default", "widgets", widget("w", 5))
    assert get(200)["spec"]["size"] == 5
    # the binding goes: 403 at once, for the object that is still stored in the consumer
    direct.delete_cluster_custom_object(GROUP, VERSION, "apibindings", "widgets")
    assert NOT_BOUND in get(403)["message"]
