"""The framework over HTTP on a real shard: routing (404), verbs (405), authorization (401/403), readiness,
path decoding, discovery and OpenAPI of a virtual workspace, the transformation and the proxy kind.

Raw requests go through ``http.client`` so paths reach the server exactly as written (no client-side
``..`` normalization); callers are the shard admin (``system:masters``) or users of a token file.
"""

from __future__ import annotations

import http.client
import ssl
import uuid

import orjson
import pytest

from kcp_virtual import (APIDefinition, ForwardingStorage, VirtualWorkspace, as_caller, cluster_path_resolver,
                         resource_virtual_workspace)
from server.shard import ShardConfig
from server.testing import running_shard
from tests.vw_demo import CONFIGMAPS, DEMO_VIRTUAL_WORKSPACES, PROXY_GROUP

TOKENS = {"proxy-user": "tok-proxy", "plain-user": "tok-plain"}
READY = {"flaky": False}


def flaky(shard) -> VirtualWorkspace:
    """Ready only when the test says so."""
    return VirtualWorkspace("flaky", cluster_path_resolver("flaky"), lambda *_: (True, ""),
                            lambda request: None, ready=lambda: READY["flaky"])


def as_the_caller(shard) -> VirtualWorkspace:
    """Lets everyone in, but reads and writes the shard as the caller: the shard's own RBAC then decides."""
    storage = ForwardingStorage(shard, CONFIGMAPS, act_as=as_caller)
    definitions = (APIDefinition("", "v1", "ConfigMap", "configmaps", "configmap", True, storage),)
    return resource_virtual_workspace("as-caller", resolve=cluster_path_resolver("as-caller"),
                                      apis=lambda context: definitions, authorize=lambda *_: (True, ""),
                                      version=shard.version)


class Caller:
    """One HTTPS connection's worth of raw requests as one identity."""

    def __init__(self, shard, *, token: str | None = None, cert: bool = False):
        self.port = int(shard.url.rsplit(":", 1)[1])
        self.context = ssl.create_default_context(cafile=shard.ca_file)
        if cert:
            pki = shard.shard.pki
            self.context.load_cert_chain(str(pki.admin_cert_path), str(pki.admin_key_path))
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def __call__(self, method: str, path: str, body=None, headers: dict | None = None):
        connection = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context, timeout=10)
        try:
            data = orjson.dumps(body) if body is not None and not isinstance(body, bytes) else body
            connection.request(method, path, body=data, headers={"Content-Type": "application/json",
                                                                 **self.headers, **(headers or {})})
            response = connection.getresponse()
            payload = response.read()
        finally:
            connection.close()
        json = response.getheader("Content-Type", "").startswith("application/json") and "watch=true" not in path
        return response.status, orjson.loads(payload) if json else payload  # watches: the raw event lines


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    token_file = tmp_path_factory.mktemp("tokens") / "tokens.csv"
    token_file.write_text(f'{TOKENS["proxy-user"]},proxy-user,u1,"{PROXY_GROUP}"\n'
                          f'{TOKENS["plain-user"]},plain-user,u2,\n')
    config = ShardConfig(virtual_workspaces=(*DEMO_VIRTUAL_WORKSPACES, flaky, as_the_caller),
                         token_auth_file=str(token_file))
    with running_shard(config) as running:
        yield running


@pytest.fixture(scope="module")
def admin(shard):
    return Caller(shard, cert=True)


def new_configmap(admin, name: str, labels: dict | None = None, data: dict | None = None,
                  cluster: str = "root") -> dict:
    status, body = admin("POST", f"/clusters/{cluster}/api/v1/namespaces/default/configmaps",
                         {"metadata": {"name": name, "labels": labels or {}}, "data": data or {"k": "v"}})
    assert status == 201, body
    return body


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


# ---------------------------------------------------------------------- 404

@pytest.mark.parametrize("path", [
    "/services",
    "/services/",
    "/services/nope/clusters/root/api/v1/configmaps",
    "/services/demo",
    "/services/demo/clusters/Root/api/v1/configmaps",
    "/services/demo/clusters/root/../../nope/clusters/root/api",
    "/services/demo/clusters/root/api/v1/../v1/configmaps",
    "/services/demo/clusters/%2E%2E/api/v1/configmaps",
    "/services/demo/clusters/root/apis/apps/v1/deployments",        # not served by this virtual workspace
    "/services/demo/clusters/root/api/v1/secrets",
    "/services/demo/clusters/root/apis/nope.example.com",
    "/services/demo/clusters/root/api/v2",
    "/services/demo/clusters/root/api/v1/namespaces/default/configmaps/x/status",  # no such subresource
    "/services/demo/clusters/root/openapi/v4",
    "/services/demo/clusters/root/something",
])
def test_not_found_is_a_404_status(admin, path):
    status, body = admin("GET", path)
    assert status == 404, body
    assert (body["kind"], body["code"], body["reason"]) == ("Status", 404, "NotFound")


def test_a_missing_logical_cluster_is_a_404(admin):
    status, body = admin("GET", "/services/demo/clusters/root:nowhere/api/v1/configmaps")
    assert status == 404 and body["message"] == 'logical cluster "root:nowhere" not found'


# ---------------------------------------------------------------------- path decoding

@pytest.mark.parametrize("path", [
    "/services/demo/clusters/%2A/api/v1/configmaps",
    "/services/demo/clusters/*/api/v1/configmaps",
    "/services/demo/clusters/*/api/v1/configmaps/",
    "/services/demo/clusters/roo%74/api/v1/namespaces/default/configmaps",
    "/services/%64emo/clusters/root/api/v1/configmaps",
])
def test_percent_encoded_paths_are_decoded_before_resolution(admin, path):
    status, body = admin("GET", path)
    assert status == 200 and body["kind"] == "ConfigMapList", body


def test_percent_encoded_cluster_separator(shard, admin):
    shard.run(shard.shard.registry.ensure_logical_cluster, "root:enc")
    name = unique("enc")
    new_configmap(admin, name, {"demo": "true"}, cluster="root:enc")
    status, body = admin("GET", f"/services/demo/clusters/root%3Aenc/api/v1/namespaces/default/configmaps/{name}")
    assert status == 200 and body["metadata"]["annotations"]["kcp.dev/cluster"] == "root:enc"


@pytest.mark.parametrize("path", ["/services/demo/clusters/root", "/services/demo/clusters/root/"])
def test_the_root_of_a_virtual_workspace_lists_its_paths(admin, path):
    status, body = admin("GET", path)
    assert status == 200 and "/api/v1" in body["paths"] and "/openapi/v3" in body["paths"]


# ---------------------------------------------------------------------- 405

@pytest.mark.parametrize("method, path, verb", [
    ("POST", "/services/demo/clusters/*/api/v1/namespaces/default/configmaps", "create"),
    ("GET", "/services/demo/clusters/*/api/v1/namespaces/default/configmaps/x", "get"),
    ("DELETE", "/services/demo/clusters/*/api/v1/namespaces/default/configmaps/x", "delete"),
    ("DELETE", "/services/demo/clusters/*/api/v1/configmaps", "deletecollection"),
    ("POST", "/services/demo-view/clusters/root/api/v1/namespaces/default/configmaps", "create"),
    ("DELETE", "/services/demo-view/clusters/root/api/v1/namespaces/default/configmaps/x", "delete"),
    ("DELETE", "/services/demo-view/clusters/root/api/v1/namespaces/default/configmaps", "deletecollection"),
])
def test_verbs_the_storage_does_not_offer_are_405(admin, method, path, verb):
    status, body = admin(method, path, {"metadata": {"name": "x"}} if method == "POST" else None)
    assert status == 405, body
    assert body["reason"] == "MethodNotAllowed"
    assert body["message"].startswith(f'{verb} is not supported on resources of kind "configmaps"')
    if "/clusters/*/" in path:  # and says what to do instead
        assert body["message"].endswith("name one workspace, /clusters/<workspace>, to read one object or write")


def test_writes_to_discovery_are_405(admin):
    status, body = admin("POST", "/services/demo/clusters/root/api/v1", {})
    assert status == 405 and body["reason"] == "MethodNotAllowed"


@pytest.mark.parametrize("path, verbs", [
    ("/services/demo/clusters/root/api/v1",
     ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]),
    ("/services/demo/clusters/*/api/v1", ["list", "watch"]),
    ("/services/demo-view/clusters/root/api/v1", ["get", "list", "patch", "update", "watch"]),
])
def test_discovery_lists_exactly_the_storage_verbs(admin, path, verbs):
    status, body = admin("GET", path)
    assert status == 200
    assert [(r["name"], r["verbs"]) for r in body["resources"]] == [("configmaps", verbs)]


def test_aggregated_discovery(admin):
    accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
    status, body = admin("GET", "/services/demo/clusters/*/api", headers={"Accept": accept})
    assert status == 200 and body["kind"] == "APIGroupDiscoveryList"
    [group] = body["items"]
    [version] = group["versions"]
    assert [(r["resource"], r["verbs"]) for r in version["resources"]] == [("configmaps", ["list", "watch"])]
    status, body = admin("GET", "/services/demo/clusters/*/apis", headers={"Accept": accept})
    assert status == 200 and body["items"] == []


def test_openapi_is_computed_from_what_the_virtual_workspace_serves(admin):
    status, root = admin("GET", "/services/demo-view/clusters/root/openapi/v3")
    assert status == 200
    url = root["paths"]["api/v1"]["serverRelativeURL"]
    assert url.startswith("/services/demo-view/clusters/root/openapi/v3/api/v1?hash=")
    status, document = admin("GET", url)
    assert status == 200 and list(root["paths"]) == ["api/v1"]
    paths = document["paths"]
    collection = paths["/api/v1/namespaces/{namespace}/configmaps"]
    item = paths["/api/v1/namespaces/{namespace}/configmaps/{name}"]
    assert set(collection) == {"get"}                   # list, no create or deletecollection
    assert set(item) == {"get", "put", "patch"}         # no delete
    assert "fieldValidation" in {p["name"] for p in item["patch"]["parameters"]}
    assert item["patch"]["x-kubernetes-group-version-kind"] == {"group": "", "version": "v1", "kind": "ConfigMap"}


# ---------------------------------------------------------------------- 401 / 403

def test_unauthenticated_is_401(shard):
    status, body = Caller(shard)("GET", "/services/demo/clusters/root/api/v1/configmaps")
    assert status == 401 and body["reason"] == "Unauthorized"


def test_the_virtual_workspace_authorizer_denies_with_a_403(shard):
    plain = Caller(shard, token=TOKENS["plain-user"])
    status, body = plain("GET", "/services/demo/clusters/*/api/v1/configmaps")
    assert status == 403, body
    assert body["reason"] == "Forbidden"
    assert body["message"].startswith('configmaps is forbidden: User "plain-user" cannot list resource "configmaps" '
                                      'in API group "" at the cluster scope in workspace "*"')
    status, body = plain("POST", "/services/demo/clusters/root/api/v1/namespaces/default/configmaps",
                         {"metadata": {"name": "x"}})
    assert status == 403 and 'cannot create resource "configmaps"' in body["message"]


def test_health_paths_of_a_virtual_workspace_need_no_permission(shard):
    status, body = Caller(shard, token=TOKENS["plain-user"])("GET", "/services/demo/clusters/*/healthz")
    assert status == 200 and body == b"ok"


def test_a_storage_acting_as_the_caller_gets_the_shards_own_answer(shard, admin):
    name = unique("mine")
    new_configmap(admin, name)
    path = f"/services/as-caller/clusters/root/api/v1/namespaces/default/configmaps/{name}"
    status, body = Caller(shard, token=TOKENS["plain-user"])("GET", path)
    assert status == 403, body
    assert body["message"].startswith(f'configmaps "{name}" is forbidden: User "plain-user" cannot get resource '
                                      '"configmaps" in API group "" in the namespace "default" in workspace "root"')
    status, body = admin("GET", path)
    assert status == 200 and body["metadata"]["name"] == name


# ---------------------------------------------------------------------- readiness

def test_readyz_has_one_check_per_virtual_workspace(admin):
    READY["flaky"] = False
    status, body = admin("GET", "/readyz?verbose")
    lines = body.decode().splitlines()
    assert status == 500
    for name in ("demo", "demo-view", "demo-proxy"):
        assert f"[+]virtual-workspace:{name} ok" in lines
    assert "[-]virtual-workspace:flaky failed" in lines
    assert admin("GET", "/readyz/virtual-workspace:flaky")[0] == 500
    assert admin("GET", "/services/flaky/clusters/root/readyz")[0] == 500
    READY["flaky"] = True
    status, body = admin("GET", "/readyz?verbose")
    assert status == 200 and "[+]virtual-workspace:flaky ok" in body.decode().splitlines()
    assert admin("GET", "/readyz/virtual-workspace:demo") == (200, b"ok")


# ---------------------------------------------------------------------- the transformation (demo-view)

def test_the_view_transforms_reads_writes_and_watch_events(admin):
    name = unique("shout")
    created = new_configmap(admin, name, {"demo": "true"}, {"greeting": "hello"})
    base = "/services/demo-view/clusters/root/api/v1/namespaces/default/configmaps"
    status, body = admin("GET", f"{base}/{name}")
    assert status == 200 and body["data"] == {"greeting": "HELLO"}
    status, body = admin("GET", base)
    assert {i["metadata"]["name"]: i["data"] for i in body["items"]}[name] == {"greeting": "HELLO"}
    # a patch applies to the view; what is stored is transformed back
    status, body = admin("PATCH", f"{base}/{name}", {"data": {"greeting": "BYE", "extra": "MORE"}},
                         headers={"Content-Type": "application/merge-patch+json"})
    assert status == 200 and body["data"] == {"greeting": "BYE", "extra": "MORE"}
    status, stored = admin("GET", f"/clusters/root/api/v1/namespaces/default/configmaps/{name}")
    assert stored["data"] == {"greeting": "bye", "extra": "more"}
    # JSON patch too, with a test on the view's value
    status, body = admin("PATCH", f"{base}/{name}", [{"op": "test", "path": "/data/extra", "value": "MORE"},
                                                      {"op": "remove", "path": "/data/extra"}],
                         headers={"Content-Type": "application/json-patch+json"})
    assert status == 200 and body["data"] == {"greeting": "BYE"}
    # an update with a stale resourceVersion is a conflict, as anywhere
    stale = {**body, "metadata": {**body["metadata"], "resourceVersion": created["metadata"]["resourceVersion"]}}
    assert admin("PUT", f"{base}/{name}", stale)[0] == 409
    # watch events are transformed too
    status, lines = admin("GET", f"{base}?watch=true&timeoutSeconds=1&fieldSelector=metadata.name%3D{name}")
    events = [orjson.loads(line) for line in lines.splitlines()]
    assert [(e["type"], e["object"]["data"]) for e in events] == [("ADDED", {"greeting": "BYE"})]


@pytest.mark.parametrize("method, vw, body, content_type, code", [
    ("PUT", "demo", {"metadata": "not an object"}, "application/json", 400),
    ("PUT", "demo", ["not", "an", "object"], "application/json", 400),
    ("PATCH", "demo", [1], "application/merge-patch+json", 400),
    ("PATCH", "demo", {}, "text/plain", 415),
    ("PATCH", "demo-view", [{"op": "replace", "path": "/nope/x", "value": 1}], "application/json-patch+json", 422),
    ("PATCH", "demo-view", [{"op": "test", "path": "/data/k", "value": "v"}], "application/json-patch+json", 422),
    ("PATCH", "demo-view", "text", "application/merge-patch+json", 400),
    ("PATCH", "demo-view", {"metadata": {"resourceVersion": "1"}}, "application/merge-patch+json", 409),
])
def test_bad_writes_are_refused_and_change_nothing(admin, method, vw, body, content_type, code):
    name = unique("bad")
    before = new_configmap(admin, name, {"demo": "true"})
    path = f"/services/{vw}/clusters/root/api/v1/namespaces/default/configmaps/{name}"
    status, answer = admin(method, path, body, headers={"Content-Type": content_type})
    assert status == code, answer
    assert answer["kind"] == "Status" and "{" not in answer["message"]
    assert admin("GET", f"/clusters/root/api/v1/namespaces/default/configmaps/{name}")[1] == before


def test_table_output_of_the_wildcard_view_names_the_workspace(admin):
    name = unique("table")
    new_configmap(admin, name, {"demo": "true"})
    status, body = admin("GET", "/services/demo/clusters/*/api/v1/configmaps",
                         headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"})
    assert status == 200 and body["kind"] == "Table"
    assert [c["name"] for c in body["columnDefinitions"]] == ["Name", "Workspace", "Data", "Age"]
    row = next(r for r in body["rows"] if r["cells"][0] == name)
    assert row["cells"][1:3] == ["root", 1]


# ---------------------------------------------------------------------- the proxy kind (demo-proxy)

def test_the_proxy_forwards_as_its_chosen_identity(shard, admin):
    name = unique("proxied")
    new_configmap(admin, name)  # not labelled: the proxy shows the whole workspace
    member = Caller(shard, token=TOKENS["proxy-user"])
    # directly, the member may not read root's configmaps...
    status, body = member("GET", "/clusters/root/api/v1/namespaces/default/configmaps")
    assert status == 403, body
    # ...through the proxy it acts as demo-proxy (system:masters)
    status, body = member("GET", f"/services/demo-proxy/clusters/root/api/v1/namespaces/default/configmaps/{name}")
    assert status == 200 and body["metadata"]["name"] == name
    status, body = member("POST", "/services/demo-proxy/clusters/root/api/v1/namespaces/default/configmaps",
                          {"metadata": {"name": unique("via-proxy")}})
    assert status == 201
    status, root = member("GET", "/services/demo-proxy/clusters/root/openapi/v3")
    assert status == 200
    assert root["paths"]["api/v1"]["serverRelativeURL"].startswith("/services/demo-proxy/clusters/root/openapi/v3/")
    status, body = member("GET", f"/services/demo-proxy/clusters/root/api/v1/namespaces/default/configmaps?"
                                 f"watch=true&timeoutSeconds=1&fieldSelector=metadata.name%3D{name}")
    assert status == 200 and orjson.loads(body.splitlines()[0])["type"] == "ADDED"


def test_the_proxy_refuses_non_members_and_the_wildcard(shard):
    plain = Caller(shard, token=TOKENS["plain-user"])
    status, body = plain("GET", "/services/demo-proxy/clusters/root/api/v1/configmaps")
    assert status == 403 and body["message"].endswith(f"only members of {PROXY_GROUP} may use this proxy")
    member = Caller(shard, token=TOKENS["proxy-user"])
    status, body = member("GET", "/services/demo-proxy/clusters/*/api/v1/configmaps")
    assert status == 403 and body["message"].endswith("the proxy serves one workspace at a time")
