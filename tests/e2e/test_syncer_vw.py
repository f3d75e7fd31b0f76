"""The syncer virtual workspace through real clients, in every topology (embedded, external, forwarded).

SyncTargets live in a compute workspace; workloads in application workspaces are placed on them by the
``state.workload.kcp.dev/<key>`` label or by a Namespace's placement annotation. Each target's syncer -- a
service account of the compute workspace holding ``sync`` on its SyncTarget, with its own token -- sees
through ``/services/syncer/<compute>/<name>/<uid>/clusters/*`` exactly its placed objects, transformed (its
share of the replicas, its spec diff, its own status), and writes status back, never spec. The last test
runs the example fake syncer (``examples/fake_syncer``) through the issue's scenario.
"""

from __future__ import annotations

import json
import queue
import threading
import uuid

import pytest
from kubernetes import client

from examples.fake_syncer import FakeSyncer
from kcp_virtual.syncer.placement import (KEY_LABEL, PLACED_ANNOTATION, PLACEMENT_ANNOTATION, spec_diff_annotation,
                                          state_label, status_annotation, sync_target_key, syncer_finalizer)
from kcp_virtual.syncer.virtualworkspace import url_path
from server.apis.workload import TARGET_FINALIZER
from server.shard import ShardConfig
from tests.e2e.test_apibinding import wait_for
from tests.topologies import TOPOLOGIES, running_topology

GROUP, VERSION = "workload.kcp.dev", "v1alpha1"
RBAC = "rbac.authorization.k8s.io"
MERGE = "application/merge-patch+json"


@pytest.fixture(scope="module", params=TOPOLOGIES)
def topology(request):
    with running_topology(request.param, ShardConfig(bookmark_interval=1.0)) as (vw, shard, _):
        yield vw, shard


def workspace(shard, prefix: str) -> str:
    cluster = f"root:{prefix}-{uuid.uuid4().hex[:6]}"
    shard.run(shard.shard.registry.ensure_logical_cluster, cluster)
    return cluster


def targets_api(shard, cluster: str) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(shard.cluster_client(cluster))


def create_target(shard, cluster: str, name: str) -> dict:
    api = targets_api(shard, cluster)
    api.create_cluster_custom_object(GROUP, VERSION, "synctargets", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "SyncTarget", "metadata": {"name": name}})
    return wait_for(lambda: api.get_cluster_custom_object(GROUP, VERSION, "synctargets", name),
                    lambda t: (t.get("status") or {}).get("virtualWorkspaces"))


def key_of(target: dict) -> str:
    return target["metadata"]["labels"][KEY_LABEL]


def syncer_token(shard, cluster: str, names: list[str]) -> str:
    """A service account of ``cluster`` with ``sync`` (and get/list/watch) on the SyncTargets ``names``."""
    name = f"syncer-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(shard.cluster_client(cluster))
    core.create_namespaced_service_account("default", client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name)))
    token = core.create_namespaced_service_account_token(name, "default", client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[]))).status.token
    if names:
        rbac = client.RbacAuthorizationV1Api(shard.cluster_client(cluster))
        rbac.create_cluster_role({"metadata": {"name": name}, "rules": [
            {"apiGroups": [GROUP], "resources": ["synctargets"], "verbs": ["sync", "get", "list", "watch"],
             "resourceNames": names}]})
        rbac.create_cluster_role_binding({"metadata": {"name": name},
                                          "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": name},
                                          "subjects": [{"kind": "ServiceAccount", "name": name,
                                                        "namespace": "default"}]})
    return token


def token_configuration(host: str, shard, token: str) -> client.Configuration:
    configuration = client.Configuration()
    configuration.host = host
    configuration.ssl_ca_cert = shard.ca_file
    configuration.api_key = {"authorization": f"Bearer {token}"}
    return configuration


def view_path(target: dict) -> str:
    meta = target["metadata"]
    return url_path(meta["annotations"]["kcp.dev/cluster"], meta["name"], meta["uid"])[len("/services/"):]


def view(vw, shard, target: dict, token: str | None = None, cluster: str = "*") -> client.ApiClient:
    """A client of the target's view (as ``token``'s service account, else the admin) for ``clusters/<cluster>``."""
    path = f"{view_path(target)}/clusters/{cluster}"
    if token is None:
        return vw.api_client(path)
    return client.ApiClient(token_configuration(vw.url(path), shard, token))


def raw(api_client: client.ApiClient, method: str, path: str, body=None, content_type: str = "application/json",
        accept: str = "application/json"):
    """``(status, decoded body)`` of a request through ``api_client``'s server URL."""
    response = api_client.call_api(*api_client.param_serialize(
        method, path, body=body, header_params={"Content-Type": content_type, "Accept": accept},
        auth_settings=["BearerToken"]))
    return response.status, json.loads(response.read() or b"null")


def deployment(name: str, replicas: int, labels: dict | None = None, annotations: dict | None = None) -> dict:
    return {"metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "app", "image": "nginx"}]}}}}


def placed(*keys: str) -> dict:
    return {state_label(k): "Sync" for k in keys}


def names(items) -> set[str]:
    return {(i["metadata"] if isinstance(i, dict) else i.metadata.to_dict())["name"] for i in items}


@pytest.fixture
def world(topology):
    """A compute workspace with SyncTargets a and b and their syncers' tokens, and an application workspace."""
    vw, shard = topology
    compute, app = workspace(shard, "compute"), workspace(shard, "app")
    a, b = create_target(shard, compute, "a"), create_target(shard, compute, "b")
    return {"vw": vw, "shard": shard, "compute": compute, "app": app, "a": a, "b": b,
            "tokens": {"a": syncer_token(shard, compute, ["a"]), "b": syncer_token(shard, compute, ["b"])}}


def split(world, replicas: int) -> dict[str, int]:
    """What the splitter gives ``a`` and ``b`` (the first key in sorted order gets the remainder)."""
    keys = sorted([key_of(world["a"]), key_of(world["b"])])
    first = "a" if keys[0] == key_of(world["a"]) else "b"
    other = "b" if first == "a" else "a"
    return {first: replicas // 2 + replicas % 2, other: replicas // 2}


def target_view(world, name: str, cluster: str = "*") -> client.ApiClient:
    return view(world["vw"], world["shard"], world[name], world["tokens"][name], cluster)


# ---------------------------------------------------------------------- the SyncTarget API

def test_sync_target_key_finalizer_urls_and_columns(world):
    shard, compute, a = world["shard"], world["compute"], world["a"]
    assert key_of(a) == sync_target_key(compute, "a")
    assert TARGET_FINALIZER in a["metadata"]["finalizers"]
    shards = client.CustomObjectsApi(shard.cluster_client("root")).list_cluster_custom_object(
        "tenancy.kcp.dev", "v1alpha1", "shards")["items"]
    assert a["status"]["virtualWorkspaces"] == [
        {"url": s["spec"]["virtualWorkspaceURL"].rstrip("/") + url_path(compute, "a", a["metadata"]["uid"])}
        for s in shards]
    assert {r["resource"] for r in a["status"]["syncedResources"]} == {"deployments", "configmaps", "secrets",
                                                                      "namespaces"}
    # the key is the shard's: a client cannot change it
    api = targets_api(shard, compute)
    patched = api.patch_cluster_custom_object(GROUP, VERSION, "synctargets", "a",
                                              {"metadata": {"labels": {KEY_LABEL: "mine"}}})
    assert patched["metadata"]["labels"][KEY_LABEL] == key_of(a)
    out = shard.kubectl("get", "synctargets", "-o", "wide", server=f"{shard.url}/clusters/{compute}").stdout
    header, *rows = out.splitlines()
    assert header.split()[:4] == ["NAME", "KEY", "SYNCED", "RESOURCES"] and "URL" in header
    assert any(row.split()[:2] == ["a", key_of(a)] and "deployments.apps" in row for row in rows)
    status, body = raw(shard.cluster_client(compute), "POST", f"/apis/{GROUP}/{VERSION}/synctargets",
                       {"metadata": {"name": "bad"}, "spec": "not an object"})
    assert status == 422 and body["details"]["causes"][0]["field"] == "spec"


# ---------------------------------------------------------------------- the view

def test_view_serves_exactly_the_placed_objects_split(world):
    shard, app = world["shard"], world["app"]
    ka, kb = key_of(world["a"]), key_of(world["b"])
    core, apps = client.CoreV1Api(shard.cluster_client(app)), client.AppsV1Api(shard.cluster_client(app))
    core.create_namespace({"metadata": {"name": "web", "labels": placed(ka, kb)}})
    core.create_namespace({"metadata": {"name": "other"}})
    core.create_namespaced_config_map("web", {"metadata": {"name": "placed", "labels": placed(ka)}})
    core.create_namespaced_config_map("web", {"metadata": {"name": "not-placed"}})
    core.create_namespaced_config_map("web", {"metadata": {"name": "pending", "labels": {state_label(ka): ""}}})
    core.create_namespaced_secret("web", {"metadata": {"name": "s", "labels": placed(ka)},
                                          "stringData": {"k": "v"}})
    apps.create_namespaced_deployment("web", deployment("d", 5, placed(ka, kb)))
    shares = split(world, 5)
    for name, key in (("a", ka), ("b", kb)):
        view_apps, view_core = client.AppsV1Api(target_view(world, name)), client.CoreV1Api(target_view(world, name))
        listed = view_apps.list_deployment_for_all_namespaces().items
        assert [(d.metadata.name, d.spec.replicas) for d in listed] == [("d", shares[name])]
        shown = listed[0].metadata
        assert shown.labels == placed(key) and not shown.managed_fields    # no other target, no managers
        assert shown.annotations["kcp.dev/cluster"] == app
        assert names(view_core.list_namespace().items) == {"web"}
    # what client-go's metadata client asks for: the view's objects, only their metadata (the view's labels)
    status, body = raw(target_view(world, "a"), "GET", "/apis/apps/v1/deployments",
                       accept="application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json")
    assert status == 200 and body["kind"] == "PartialObjectMetadataList", body
    assert [(i["kind"], i["metadata"]["name"], i["metadata"]["labels"]) for i in body["items"]] == [
        ("PartialObjectMetadata", "d", placed(ka))]
    view_core = client.CoreV1Api(target_view(world, "a"))
    assert names(view_core.list_config_map_for_all_namespaces().items) == {"placed"}
    assert names(view_core.list_secret_for_all_namespaces().items) == {"s"}
    assert names(client.CoreV1Api(target_view(world, "b")).list_config_map_for_all_namespaces().items) == set()
    one = client.CoreV1Api(target_view(world, "a", app))
    assert one.read_namespaced_config_map("placed", "web").metadata.name == "placed"
    for name in ("not-placed", "pending"):
        with pytest.raises(client.ApiException) as missing:
            one.read_namespaced_config_map(name, "web")
        assert missing.value.status == 404
    # upstream keeps its own replicas
    assert apps.read_namespaced_deployment("d", "web").spec.replicas == 5


def test_view_verbs_discovery_and_what_it_refuses(world):
    shard, app = world["shard"], world["app"]
    ka = key_of(world["a"])
    client.CoreV1Api(shard.cluster_client(app)).create_namespaced_config_map(
        "default", {"metadata": {"name": "cm", "labels": placed(ka)}})
    wildcard, one = target_view(world, "a"), target_view(world, "a", app)
    status, resources = raw(one, "GET", "/apis/apps/v1")
    assert status == 200
    by_name = {r["name"]: r for r in resources["resources"]}
    assert sorted(by_name["deployments"]["verbs"]) == ["get", "list", "patch", "update", "watch"]
    assert sorted(by_name["deployments/status"]["verbs"]) == ["get", "patch", "update"]
    wildcard_resources = raw(wildcard, "GET", "/apis/apps/v1")[1]["resources"]
    assert [(r["name"], sorted(r["verbs"])) for r in wildcard_resources] == [("deployments", ["list", "watch"])]
    status, core = raw(one, "GET", "/api/v1")
    assert {r["name"] for r in core["resources"]} == {"configmaps", "secrets", "namespaces", "namespaces/status"}
    assert raw(one, "POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "new"}})[0] == 405
    assert raw(one, "DELETE", "/api/v1/namespaces/default/configmaps/cm")[0] == 405
    assert raw(wildcard, "GET", "/api/v1/pods")[0] == 404
    assert raw(wildcard, "GET", "/api/v1/serviceaccounts")[0] == 404
    # kubectl through the published URL's shape: the share column and the workspace column
    out = world["vw"].kubectl(f"{view_path(world['a'])}/clusters/*", "get", "configmaps", "-A").stdout
    assert "cm" in out and app in out


def test_wrong_or_stale_uid_is_not_found(world):
    shard, compute = world["shard"], world["compute"]
    t = create_target(shard, compute, "gone")
    assert raw(view(world["vw"], shard, t), "GET", "/api/v1/configmaps")[0] == 200
    wrong = {**t, "metadata": {**t["metadata"], "uid": str(uuid.uuid4())}}
    status, body = raw(view(world["vw"], shard, wrong), "GET", "/api/v1/configmaps")
    assert status == 404 and "with UID" in body["message"]
    api = targets_api(shard, compute)
    api.delete_cluster_custom_object(GROUP, VERSION, "synctargets", "gone")
    wait_for(lambda: raw(shard.cluster_client(compute), "GET", f"/apis/{GROUP}/{VERSION}/synctargets/gone")[0],
             lambda code: code == 404)
    again = create_target(shard, compute, "gone")
    assert again["metadata"]["uid"] != t["metadata"]["uid"]
    assert raw(view(world["vw"], shard, t), "GET", "/api/v1/configmaps")[0] == 404
    assert raw(view(world["vw"], shard, again), "GET", "/api/v1/configmaps")[0] == 200


def test_authorization_is_sync_on_the_sync_target(world):
    shard, compute, vw = world["shard"], world["compute"], world["vw"]
    nobody = syncer_token(shard, compute, [])
    for path in ("/apis", "/api/v1/configmaps"):
        status, body = raw(view(vw, shard, world["a"], nobody), "GET", path)
        assert status == 403 and "sync" in body["message"]
    assert raw(view(vw, shard, world["a"], world["tokens"]["a"]), "GET", "/api/v1/configmaps")[0] == 200
    assert raw(view(vw, shard, world["b"], world["tokens"]["a"]), "GET", "/api/v1/configmaps")[0] == 403
    # a grant in another workspace is no grant here
    elsewhere = workspace(shard, "elsewhere")
    create_target(shard, elsewhere, "a")
    foreign = syncer_token(shard, elsewhere, ["a"])
    assert raw(view(vw, shard, world["a"], foreign), "GET", "/api/v1/configmaps")[0] == 403


# ---------------------------------------------------------------------- writes

def test_syncer_writes_status_per_target_never_spec(world):
    shard, app = world["shard"], world["app"]
    ka, kb = key_of(world["a"]), key_of(world["b"])
    apps = client.AppsV1Api(shard.cluster_client(app))
    apps.create_namespaced_deployment("default", deployment("d", 5, placed(ka, kb)))
    shares = split(world, 5)
    writers = {name: client.AppsV1Api(target_view(world, name, app)) for name in ("a", "b")}
    reports = {name: {"replicas": shares[name], "readyReplicas": shares[name] - (name == "b"),
                      "availableReplicas": shares[name], "updatedReplicas": shares[name], "observedGeneration": 1,
                      "conditions": [{"type": "Available", "status": "True" if name == "a" else "False",
                                      "reason": f"from-{name}"}]} for name in ("a", "b")}
    seen = writers["a"].read_namespaced_deployment("d", "default")
    assert seen.status is None                      # nothing reported yet: never the upstream status
    written = writers["a"].patch_namespaced_deployment_status("d", "default", {"status": reports["a"]},
                                                              _content_type=MERGE, _preload_content=False)
    assert json.loads(written.data)["status"] == reports["a"]
    # b's status update is pinned to the version b read before a wrote: only a's report moved it, so it applies
    stale = json.loads(writers["b"].read_namespaced_deployment("d", "default", _preload_content=False).data)
    assert raw(target_view(world, "b", app), "PUT", "/apis/apps/v1/namespaces/default/deployments/d/status",
               {**stale, "status": reports["b"]})[0] == 200
    for name in ("a", "b"):
        shown = json.loads(writers[name].read_namespaced_deployment("d", "default", _preload_content=False).data)
        assert shown["status"] == reports[name]
        assert not any(k.startswith("experimental.") for k in shown["metadata"].get("annotations", {}))
    upstream = wait_for(lambda: apps.read_namespaced_deployment("d", "default").to_dict(),
                        lambda d: (d["status"] or {}).get("replicas") == 5)
    assert upstream["status"]["ready_replicas"] == 4 and upstream["status"]["available_replicas"] == 5
    assert [(c["type"], c["status"], c["reason"]) for c in upstream["status"]["conditions"]] == [
        ("Available", "False", "from-b")]
    assert json.loads(upstream["metadata"]["annotations"][status_annotation(ka)]) == reports["a"]
    # spec, labels and other finalizers are not the syncer's
    status, body = raw(target_view(world, "a", app), "PATCH", "/apis/apps/v1/namespaces/default/deployments/d",
                       {"spec": {"replicas": 9}}, MERGE)
    assert status == 422 and [c["field"] for c in body["details"]["causes"]] == ["spec"]
    assert "status subresource" in body["details"]["causes"][0]["message"]
    status, body = raw(target_view(world, "a", app), "PATCH", "/apis/apps/v1/namespaces/default/deployments/d",
                       {"metadata": {"labels": {"x": "y"}, "finalizers": ["someone/else"]}}, MERGE)
    assert status == 422 and {c["field"] for c in body["details"]["causes"]} == {"metadata.labels",
                                                                                  "metadata.finalizers"}
    full = json.loads(writers["a"].read_namespaced_deployment("d", "default", _preload_content=False).data)
    full["spec"]["replicas"] = 1
    assert raw(target_view(world, "a", app), "PUT", "/apis/apps/v1/namespaces/default/deployments/d", full)[0] == 422
    # its own finalizer it may set
    status, body = raw(target_view(world, "a", app), "PATCH", "/apis/apps/v1/namespaces/default/deployments/d",
                       {"metadata": {"finalizers": [syncer_finalizer(ka)]}}, MERGE)
    assert status == 200 and body["metadata"]["finalizers"] == [syncer_finalizer(ka)]
    assert apps.read_namespaced_deployment("d", "default").metadata.finalizers == [syncer_finalizer(ka)]
    assert writers["b"].read_namespaced_deployment("d", "default").metadata.finalizers is None
    # a status that is not an object, and a write pinned to a version whose spec has changed since
    assert raw(target_view(world, "a", app), "PATCH", "/apis/apps/v1/namespaces/default/deployments/d/status",
               {"status": "ready"}, MERGE)[0] == 422
    before = json.loads(writers["a"].read_namespaced_deployment("d", "default", _preload_content=False).data)
    apps.patch_namespaced_deployment("d", "default", {"spec": {"replicas": 7}})
    assert raw(target_view(world, "a", app), "PUT", "/apis/apps/v1/namespaces/default/deployments/d/status",
               before)[0] == 409


def test_single_target_status_is_promoted_unchanged(world):
    shard, app = world["shard"], world["app"]
    apps = client.AppsV1Api(shard.cluster_client(app))
    apps.create_namespaced_deployment("default", deployment("solo", 3, placed(key_of(world["a"]))))
    report = {"replicas": 3, "readyReplicas": 2, "observedGeneration": 1, "collisionCount": 1,
              "conditions": [{"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}]}
    client.AppsV1Api(target_view(world, "a", app)).patch_namespaced_deployment_status(
        "solo", "default", {"status": report}, _content_type=MERGE, _preload_content=False)
    upstream = wait_for(lambda: json.loads(apps.read_namespaced_deployment("solo", "default",
                                                                           _preload_content=False).data),
                        lambda d: d.get("status"))
    assert upstream["status"] == report


def test_watch_follows_placement_and_resplits_live(world):
    shard, app = world["shard"], world["app"]
    ka, kb = key_of(world["a"]), key_of(world["b"])
    core, apps = client.CoreV1Api(shard.cluster_client(app)), client.AppsV1Api(shard.cluster_client(app))
    events: dict[str, queue.Queue] = {"a": queue.Queue(), "b": queue.Queue()}
    responses = []

    def watch(name: str, path: str):
        api = target_view(world, name)
        response = api.call_api(*api.param_serialize("GET", path, query_params=[("watch", "true")],
                                                     auth_settings=["BearerToken"]), _request_timeout=30)
        responses.append(response)

        def read():
            try:
                for line in response.response:
                    if line.strip():
                        event = json.loads(line)
                        events[name].put((event["type"], event["object"]))
            except Exception:  # closed at the end of the test
                pass
        threading.Thread(target=read, daemon=True).start()

    def next_event(name: str, kind: str, match=lambda obj: True):
        while True:
            got_kind, obj = events[name].get(timeout=15)
            if got_kind == kind and match(obj):
                return obj

    try:
        watch("a", "/api/v1/configmaps")
        core.create_namespaced_config_map("default", {"metadata": {"name": "later"}})
        core.patch_namespaced_config_map("later", "default", {"metadata": {"labels": placed(ka)}})
        assert next_event("a", "ADDED")["metadata"]["name"] == "later"
        core.patch_namespaced_config_map("later", "default", {"data": {"k": "v"}})
        assert next_event("a", "MODIFIED")["data"] == {"k": "v"}
        core.patch_namespaced_config_map("later", "default", {"metadata": {"labels": {state_label(ka): None}}})
        assert next_event("a", "DELETED")["metadata"]["name"] == "later"

        watch("a", "/apis/apps/v1/deployments")
        watch("b", "/apis/apps/v1/deployments")
        apps.create_namespaced_deployment("default", deployment("web", 5, placed(ka, kb)))
        shares = split(world, 5)
        for name in ("a", "b"):
            assert next_event(name, "ADDED")["spec"]["replicas"] == shares[name]
        apps.patch_namespaced_deployment("web", "default", {"spec": {"replicas": 7}})
        shares = split(world, 7)
        for name in ("a", "b"):
            assert next_event(name, "MODIFIED", lambda o: o["spec"]["replicas"] != split(world, 5)[name]
                              )["spec"]["replicas"] == shares[name]
        # b leaves: b's watcher is told DELETED, a's gets every replica
        apps.patch_namespaced_deployment("web", "default", {"metadata": {"labels": {state_label(kb): None}}})
        assert next_event("b", "DELETED")["metadata"]["name"] == "web"
        assert next_event("a", "MODIFIED", lambda o: o["spec"]["replicas"] == 7)
    finally:
        for response in responses:
            response.response.shutdown()   # ends the reader's blocking read now


def test_spec_diff_applies_to_one_target(world):
    shard, app = world["shard"], world["app"]
    ka, kb = key_of(world["a"]), key_of(world["b"])
    apps = client.AppsV1Api(shard.cluster_client(app))
    diff = json.dumps([{"op": "replace", "path": "/replicas", "value": 9},
                       {"op": "replace", "path": "/template/spec/containers/0/image", "value": "nginx:edge"}])
    apps.create_namespaced_deployment("default", deployment("d", 4, placed(ka, kb), {spec_diff_annotation(ka): diff}))
    a = client.AppsV1Api(target_view(world, "a", app)).read_namespaced_deployment("d", "default")
    b = client.AppsV1Api(target_view(world, "b", app)).read_namespaced_deployment("d", "default")
    assert (a.spec.replicas, a.spec.template.spec.containers[0].image) == (9, "nginx:edge")
    assert (b.spec.replicas, b.spec.template.spec.containers[0].image) == (2, "nginx")
    assert spec_diff_annotation(ka) not in (a.metadata.annotations or {})
    upstream = apps.read_namespaced_deployment("d", "default")
    assert upstream.spec.replicas == 4 and upstream.spec.template.spec.containers[0].image == "nginx"
    # a patch that does not apply (any more) leaves that target's view as it would be without it
    apps.patch_namespaced_deployment("d", "default", {"metadata": {"annotations": {
        spec_diff_annotation(ka): json.dumps([{"op": "remove", "path": "/paused"}])}}})
    assert client.AppsV1Api(target_view(world, "a", app)).read_namespaced_deployment("d", "default").spec.replicas == 2
    # malformed, and where there is no spec: refused when written
    for kind, path, body in (
            ("deployment", "/apis/apps/v1/namespaces/default/deployments",
             deployment("bad", 1, {}, {spec_diff_annotation(ka): "{not json"})),
            ("configmap", "/api/v1/namespaces/default/configmaps",
             {"metadata": {"name": "bad", "annotations": {spec_diff_annotation(ka): "[]"}}})):
        status, answer = raw(shard.cluster_client(app), "POST", path, body)
        assert status == 422, kind
        assert answer["details"]["causes"][0]["field"] == f"metadata.annotations[{spec_diff_annotation(ka)}]"


def test_concurrent_status_reports_of_many_targets(world):
    """Four syncers report status at once, each pinned to the version it read: other targets' reports bump the
    shared object's version, yet no write is refused (each target's view but status did not change), and the
    summary ends with every report."""
    shard, app, compute = world["shard"], world["app"], world["compute"]
    names = ["c0", "c1", "c2", "c3"]
    targets = {name: create_target(shard, compute, name) for name in names}
    token = syncer_token(shard, compute, names)
    apps = client.AppsV1Api(shard.cluster_client(app))
    apps.create_namespaced_deployment("default", deployment("busy", 8, placed(*(key_of(t) for t in targets.values()))))
    codes: dict[str, list[int]] = {name: [] for name in names}

    def report(name: str):
        api = view(world["vw"], shard, targets[name], token, app)
        for ready in range(1, 6):
            seen = json.loads(client.AppsV1Api(api).read_namespaced_deployment("busy", "default",
                                                                               _preload_content=False).data)
            status, _ = raw(api, "PUT", "/apis/apps/v1/namespaces/default/deployments/busy/status",
                            {**seen, "status": {"replicas": 2, "readyReplicas": ready}})
            codes[name].append(status)

    threads = [threading.Thread(target=report, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all(c == 200 for got in codes.values() for c in got), codes
    upstream = wait_for(lambda: apps.read_namespaced_deployment("busy", "default").to_dict()["status"],
                        lambda st: (st or {}).get("ready_replicas") == 20 and st.get("replicas") == 8)
    assert upstream["ready_replicas"] == 20


def test_a_target_gone_with_its_workspace_is_unplaced(world):
    shard, app = world["shard"], world["app"]
    doomed = workspace(shard, "doomed")
    gone = create_target(shard, doomed, "t")
    core = client.CoreV1Api(shard.cluster_client(app))
    core.create_namespaced_config_map("default", {"metadata": {"name": "orphan", "labels": {
        **placed(key_of(gone)), **placed(key_of(world["a"]))}}})
    shard.run(shard.shard.registry.delete_logical_cluster, doomed)   # no finalizer runs
    wait_for(lambda: core.read_namespaced_config_map("orphan", "default").metadata.labels,
             lambda labels: labels == placed(key_of(world["a"])))


# ---------------------------------------------------------------------- the placement annotation

def test_namespace_placement_annotation(world):
    shard, app, compute = world["shard"], world["app"], world["compute"]
    ka, kb = key_of(world["a"]), key_of(world["b"])
    manual = sync_target_key(compute, "manual")
    core, apps = client.CoreV1Api(shard.cluster_client(app)), client.AppsV1Api(shard.cluster_client(app))
    core.create_namespace({"metadata": {"name": "shop", "annotations": {
        PLACEMENT_ANNOTATION: f"{compute}/a, {compute}/b"}}})
    apps.create_namespaced_deployment("shop", deployment("d", 3, placed(manual)))
    core.create_namespaced_config_map("shop", {"metadata": {"name": "cm"}})
    core.create_namespaced_secret("shop", {"metadata": {"name": "s"}})

    def labels():
        ns = core.read_namespace("shop")
        return {"ns": ns.metadata.labels or {}, "d": apps.read_namespaced_deployment("d", "shop").metadata.labels,
                "cm": core.read_namespaced_config_map("cm", "shop").metadata.labels or {},
                "s": core.read_namespaced_secret("s", "shop").metadata.labels or {}}

    both = placed(ka, kb)
    wait_for(labels, lambda got: got == {"ns": both, "d": {**both, **placed(manual)}, "cm": both, "s": both})
    ns = core.read_namespace("shop")
    assert ns.metadata.annotations[PLACED_ANNOTATION] == ",".join(sorted([ka, kb]))
    assert [(c.type, c.status) for c in ns.status.conditions] == [("WorkloadPlaced", "True")]
    core.create_namespaced_config_map("shop", {"metadata": {"name": "later"}})
    wait_for(lambda: core.read_namespaced_config_map("later", "shop").metadata.labels, lambda got: got == both)
    # b leaves the annotation; a missing target is reported; the hand-placed label stays
    core.patch_namespace("shop", {"metadata": {"annotations": {PLACEMENT_ANNOTATION: f"{compute}/a,{compute}/nope"}}})
    only_a = placed(ka)
    wait_for(labels, lambda got: got == {"ns": only_a, "d": {**only_a, **placed(manual)}, "cm": only_a, "s": only_a})
    condition = wait_for(lambda: core.read_namespace("shop").status.conditions[0],
                         lambda c: c.status == "False")
    assert condition.reason == "SyncTargetNotFound" and f"{compute}/nope" in condition.message
    # no annotation: everything it placed is taken back, the record and the condition go
    core.patch_namespace("shop", {"metadata": {"annotations": {PLACEMENT_ANNOTATION: None}}})
    wait_for(labels, lambda got: got == {"ns": {}, "d": placed(manual), "cm": {}, "s": {}})
    ns = wait_for(lambda: core.read_namespace("shop"), lambda n: not n.status.conditions)
    assert PLACED_ANNOTATION not in (ns.metadata.annotations or {})
    status, body = raw(shard.cluster_client(app), "POST", "/api/v1/namespaces", {"metadata": {
        "name": "bad", "annotations": {PLACEMENT_ANNOTATION: "root:x/Not_A_Name"}}})
    assert status == 422 and "SyncTarget" in body["details"]["causes"][0]["message"]


# ---------------------------------------------------------------------- the example syncer, end to end

def test_fake_syncer_runs_the_split_deployment(world):
    """The issue's scenario: 5 on two targets is 3 and 2, both report ready, upstream 5/5; 7 re-splits live;
    removing a target puts everything on the other."""
    shard, app, compute = world["shard"], world["app"], world["compute"]
    core, apps = client.CoreV1Api(shard.cluster_client(app)), client.AppsV1Api(shard.cluster_client(app))
    core.create_namespace({"metadata": {"name": "web", "annotations": {
        PLACEMENT_ANNOTATION: f"{compute}/a,{compute}/b"}}})
    apps.create_namespaced_deployment("web", deployment("d", 5))
    received: list[tuple[str, str, int]] = []
    lock = threading.Lock()

    def record(url, resource, kind, obj):
        if resource == "deployments":
            with lock:
                received.append((url.split("/")[-2], kind, (obj.get("spec") or {}).get("replicas")))

    syncers = {name: FakeSyncer(token_configuration(f"{shard.url}/clusters/{compute}", shard, world["tokens"][name]),
                                compute, name, on_event=record).start() for name in ("a", "b")}
    key = (app, "web", "d")

    def upstream():
        return apps.read_namespaced_deployment("d", "web").to_dict()

    def ready(replicas: int):
        return lambda d: (d["status"] or {}).get("ready_replicas") == replicas and d["status"]["replicas"] == replicas

    try:
        shares = split(world, 5)
        wait_for(lambda: {n: s.running().get(key) for n, s in syncers.items()}, lambda got: got == shares, timeout=20)
        assert sorted(shares.values()) == [2, 3]
        wait_for(upstream, ready(5), timeout=20)
        with lock:
            received.clear()
        apps.patch_namespaced_deployment("d", "web", {"spec": {"replicas": 7}})
        shares = split(world, 7)
        wait_for(lambda: {n: s.running().get(key) for n, s in syncers.items()}, lambda got: got == shares, timeout=20)
        wait_for(upstream, ready(7), timeout=20)
        with lock:
            assert {(name, replicas) for name, kind, replicas in received if kind == "MODIFIED"} >= set(shares.items())
        # removing target b (deleting the SyncTarget) re-splits onto a
        targets_api(shard, compute).delete_cluster_custom_object(GROUP, VERSION, "synctargets", "b")
        wait_for(lambda: {n: s.running().get(key) for n, s in syncers.items()}, lambda got: got == {"a": 7, "b": None},
                 timeout=20)
        kb = key_of(world["b"])
        # b's label, report and finalizer go; the summary is a's alone
        wait_for(upstream, lambda d: ready(7)(d) and state_label(kb) not in d["metadata"]["labels"]
                 and status_annotation(kb) not in d["metadata"]["annotations"]
                 and d["metadata"]["finalizers"] == [syncer_finalizer(key_of(world["a"]))], timeout=20)
        # deleting the Deployment waits for the syncer to release it
        apps.delete_namespaced_deployment("d", "web")
        wait_for(lambda: [d.metadata.name for d in apps.list_namespaced_deployment("web").items], lambda got: not got,
                 timeout=20)
        assert not syncers["a"].running()
    finally:
        for syncer in syncers.values():
            syncer.stop()
        for syncer in syncers.values():
            syncer.join(10)
