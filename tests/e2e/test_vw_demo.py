"""The demo virtual workspace through real clients: kubectl, the kubernetes client's Watch and dynamic client,
and an informer-style list+watch.

Written once for every topology: the ``topology`` fixture yields a ``VWTopology`` (the base URL
virtual workspaces are served under, kubeconfigs of the usual shape pointing there) and the shard
behind it, on which the tests arrange objects directly. Only the base URL differs between the
topologies (``tests.topologies``): embedded (``kcp start`` serving them in-process), external (a
``kcp virtual-workspaces`` process) and forwarded (the shard forwarding to that process).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid

import orjson
import pytest
import yaml
from kubernetes import client, watch
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient

from server.shard import ShardConfig
from tests.topologies import TOPOLOGIES, running_topology
from tests.vw_demo import DEMO_PLUGINS

WILDCARD = "demo/clusters/*"
ROOT = "demo/clusters/root"
ORG = "root:demo-org"
HISTORY = 200  # watch events the shard remembers (the 410 test pushes a version out of this window)


@pytest.fixture(scope="module", params=TOPOLOGIES)
def topology(request, demo_plugins):
    config = ShardConfig(virtual_workspaces=DEMO_PLUGINS, bookmark_interval=1.0,
                         watch_history_events=HISTORY)
    with running_topology(request.param, config) as (vw, shard, _):
        shard.run(shard.shard.registry.ensure_logical_cluster, ORG)
        yield vw, shard


@pytest.fixture(scope="module")
def direct(topology):
    """Admin clients of the shard itself, per logical cluster, to arrange and check objects."""
    _, shard = topology
    return {cluster: client.CoreV1Api(shard.cluster_client(cluster)) for cluster in ("root", ORG)}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def configmap(name: str, labels: dict | None = None, data: dict | None = None) -> client.V1ConfigMap:
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, labels=labels), data=data or {"k": "v"})


DEMO = {"demo": "true"}


def names(items) -> set[str]:
    return {item.metadata.name for item in items}


# ---------------------------------------------------------------------- kubectl

def test_kubectl_get_all_namespaces_across_workspaces(topology, direct):
    vw, _ = topology
    shown, hidden = unique("shown"), unique("hidden")
    direct["root"].create_namespaced_config_map("default", configmap(shown, DEMO))
    direct[ORG].create_namespaced_config_map("default", configmap(shown, DEMO, {"a": "1", "b": "2"}))
    direct[ORG].create_namespaced_config_map("default", configmap(hidden, {"demo": "false"}))
    out = vw.kubectl(WILDCARD, "get", "configmaps", "-A").stdout
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["NAMESPACE", "NAME", "WORKSPACE", "DATA", "AGE"]
    assert sorted(row[:4] for row in rows[1:] if row[1] == shown) == [
        ["default", shown, "root", "1"], ["default", shown, ORG, "2"]]
    assert hidden not in out
    # a concrete workspace shows only its own objects, with the plain columns
    out = vw.kubectl(ROOT, "get", "configmaps", "-n", "default").stdout
    assert out.splitlines()[0].split() == ["NAME", "DATA", "AGE"] and shown in out and hidden not in out


def test_kubectl_create_and_get_yaml_in_a_concrete_workspace(topology, direct):
    vw, _ = topology
    name = unique("created")
    manifest = yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap",
                               "metadata": {"name": name, "namespace": "default", "labels": {"demo": "true"}},
                               "data": {"greeting": "hello"}})
    result = vw.kubectl(ROOT, "create", "-f", "-", input=manifest)
    assert f"configmap/{name} created" in result.stdout
    obj = yaml.safe_load(vw.kubectl(ROOT, "get", "configmap", name, "-n", "default", "-o", "yaml").stdout)
    assert obj["data"] == {"greeting": "hello"} and obj["metadata"]["labels"] == {"demo": "true"}
    assert obj["metadata"]["annotations"]["kcp.dev/cluster"] == "root"
    stored = direct["root"].read_namespaced_config_map(name, "default")  # it landed in root
    assert stored.metadata.uid == obj["metadata"]["uid"]
    with pytest.raises(ApiException):
        direct[ORG].read_namespaced_config_map(name, "default")


def test_kubectl_create_outside_the_view_is_refused(topology):
    vw, _ = topology
    manifest = yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap",
                               "metadata": {"name": unique("other"), "namespace": "default",
                                            "labels": {"demo": "false"}}})
    result = vw.kubectl(ROOT, "create", "-f", "-", input=manifest, check=False)
    assert result.returncode != 0 and "is invalid" in result.stderr and "demo=true" in result.stderr


def test_kubectl_apply_label_and_delete(topology, direct):
    vw, _ = topology
    name = unique("applied")
    manifest = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": "default", "labels": {"demo": "true"}}, "data": {"a": "1"}}
    assert "created" in vw.kubectl(ROOT, "apply", "-f", "-", input=yaml.safe_dump(manifest)).stdout
    manifest["data"] = {"a": "2", "b": "3"}
    assert "configured" in vw.kubectl(ROOT, "apply", "-f", "-", input=yaml.safe_dump(manifest)).stdout
    vw.kubectl(ROOT, "label", "configmap", name, "-n", "default", "team=blue")
    stored = direct["root"].read_namespaced_config_map(name, "default")
    assert stored.data == {"a": "2", "b": "3"} and stored.metadata.labels == {"demo": "true", "team": "blue"}
    assert f'configmap "{name}" deleted' in vw.kubectl(ROOT, "delete", "configmap", name, "-n", "default").stdout
    assert name not in names(direct["root"].list_namespaced_config_map("default").items)


def test_server_side_apply_answers_as_the_shard_does(topology, direct):
    vw, shard = topology
    manifest = lambda name: yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {  # noqa: E731
        "name": name, "namespace": "default", "labels": {"demo": "true"}}, "data": {"a": "1"}})
    through_vw, directly = unique("ssa-vw"), unique("ssa-direct")
    vw_result = vw.kubectl(ROOT, "apply", "--server-side", "-f", "-", input=manifest(through_vw), check=False)
    direct_result = shard.kubectl("apply", "--server-side", "-f", "-", input=manifest(directly), check=False)
    assert vw_result.returncode == direct_result.returncode, (vw_result.stderr, direct_result.stderr)
    if direct_result.returncode == 0:
        assert direct["root"].read_namespaced_config_map(through_vw, "default").metadata.labels == DEMO


def test_kubectl_lists_one_namespace_across_workspaces(topology, direct):
    vw, _ = topology
    ns = unique("ns")
    for cluster in ("root", ORG):
        direct[cluster].create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        direct[cluster].create_namespaced_config_map(ns, configmap("same-name", DEMO))
    out = vw.kubectl(WILDCARD, "get", "configmaps", "-n", ns, "-o", "custom-columns=NAME:.metadata.name,"
                     "WS:.metadata.annotations.kcp\\.dev/cluster", "--no-headers").stdout
    assert sorted(line.split() for line in out.splitlines()) == [["same-name", "root"], ["same-name", ORG]]


def test_kubectl_through_the_proxy_sees_the_whole_workspace(topology, direct):
    vw, _ = topology
    name = unique("unlabelled")
    direct[ORG].create_namespaced_config_map("default", configmap(name))
    out = vw.kubectl(f"demo-proxy/clusters/{ORG}", "get", "configmaps", "-n", "default", "-o", "name").stdout
    assert f"configmap/{name}" in out.split()


def test_kubectl_get_watch_across_workspaces(topology, direct):
    vw, _ = topology
    name = unique("watched")
    process = subprocess.Popen(vw.kubectl_command(WILDCARD, "get", "configmaps", "-A", "-w"), env=vw.kubectl_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    seen = threading.Event()

    def read():
        for line in process.stdout:
            lines.append(line)
            if name in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        time.sleep(0.5)  # the watch is open by then (else kubectl's list still shows the object)
        direct[ORG].create_namespaced_config_map("default", configmap(name, DEMO))
        assert seen.wait(20), (lines, process.stderr.read() if process.poll() is not None else "")
    finally:
        process.kill()
        process.wait()
    assert lines[0].split()[:3] == ["NAMESPACE", "NAME", "WORKSPACE"]
    assert next(line for line in lines if name in line).split()[:3] == ["default", name, ORG]


# ---------------------------------------------------------------------- the kubernetes client

def test_watch_sees_objects_enter_and_leave_the_view(topology, direct):
    vw, _ = topology
    core = client.CoreV1Api(vw.api_client(WILDCARD))
    start = core.list_config_map_for_all_namespaces().metadata.resource_version
    name = unique("moving")
    org = direct[ORG]
    org.create_namespaced_config_map("default", configmap(name))                                       # outside
    org.patch_namespaced_config_map(name, "default", {"metadata": {"labels": DEMO}})                   # enters
    org.patch_namespaced_config_map(name, "default", {"data": {"k": "v2"}})                            # changes
    org.patch_namespaced_config_map(name, "default", {"metadata": {"labels": {"demo": None}}})         # leaves
    org.patch_namespaced_config_map(name, "default", {"data": {"k": "v3"}})                            # outside
    org.patch_namespaced_config_map(name, "default", {"metadata": {"labels": DEMO}})                   # back
    org.delete_namespaced_config_map(name, "default")                                                  # gone
    events = [(e["type"], e["object"].data["k"], e["object"].metadata.annotations["kcp.dev/cluster"])
              for e in watch.Watch().stream(core.list_config_map_for_all_namespaces, resource_version=start,
                                            timeout_seconds=2)
              if e["object"].metadata.name == name]
    assert events == [("ADDED", "v", ORG), ("MODIFIED", "v2", ORG), ("DELETED", "v2", ORG),
                      ("ADDED", "v3", ORG), ("DELETED", "v3", ORG)]


def test_dynamic_client_through_the_virtual_workspace(topology, direct):
    vw, _ = topology
    dyn = DynamicClient(vw.api_client(ROOT))  # discovery through the virtual workspace
    configmaps = dyn.resources.get(api_version="v1", kind="ConfigMap")
    assert set(configmaps.verbs) == {"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}
    name = unique("dyn")
    created = configmaps.create(namespace="default", body={
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}})
    assert created.metadata.labels.to_dict() == DEMO  # the view's label is added to what is created through it
    configmaps.patch(name=name, namespace="default", body={"data": {"k": "patched"}},
                     content_type="application/merge-patch+json")
    got = configmaps.get(name=name, namespace="default")
    assert got.data.k == "patched"
    body = got.to_dict()
    body["data"] = {"k": "replaced"}
    configmaps.replace(namespace="default", body=body)
    assert direct["root"].read_namespaced_config_map(name, "default").data == {"k": "replaced"}
    assert name in {i.metadata.name for i in configmaps.get(namespace="default").items}
    configmaps.delete(name=name, namespace="default")
    with pytest.raises(ApiException) as exc:
        direct["root"].read_namespaced_config_map(name, "default")
    assert exc.value.status == 404
    # across workspaces: the wildcard view lists (and only lists and watches)
    everywhere = DynamicClient(vw.api_client(WILDCARD)).resources.get(api_version="v1", kind="ConfigMap")
    assert set(everywhere.verbs) == {"list", "watch"}
    assert all(i.metadata.labels["demo"] == "true" for i in everywhere.get().items)


def test_objects_outside_the_view_do_not_exist(topology, direct):
    vw, _ = topology
    name = unique("invisible")
    direct["root"].create_namespaced_config_map("default", configmap(name))
    core = client.CoreV1Api(vw.api_client(ROOT))
    for attempt in (lambda: core.read_namespaced_config_map(name, "default"),
                    lambda: core.patch_namespaced_config_map(name, "default", {"data": {"k": "x"}}),
                    lambda: core.replace_namespaced_config_map(name, "default", configmap(name, DEMO)),
                    lambda: core.delete_namespaced_config_map(name, "default")):
        with pytest.raises(ApiException) as exc:
            attempt()
        assert exc.value.status == 404
        assert json.loads(exc.value.body)["message"] == f'configmaps "{name}" not found'
    assert direct["root"].read_namespaced_config_map(name, "default").data == {"k": "v"}  # untouched


def test_writes_keep_objects_in_the_view(topology, direct):
    vw, _ = topology
    core = client.CoreV1Api(vw.api_client(ROOT))
    name = unique("kept")
    core.create_namespaced_config_map("default", configmap(name, DEMO))
    # removing the view's label would make the object vanish from under its writer: it stays
    patched = core.patch_namespaced_config_map(name, "default", {"metadata": {"labels": {"demo": None, "x": "y"}}})
    assert patched.metadata.labels == {"demo": "true", "x": "y"}
    with pytest.raises(ApiException) as exc:
        core.patch_namespaced_config_map(name, "default", {"metadata": {"labels": {"demo": "no"}}})
    assert exc.value.status == 422
    # a stale resourceVersion is still the client's optimistic lock
    stale = core.read_namespaced_config_map(name, "default")
    direct["root"].patch_namespaced_config_map(name, "default", {"data": {"k": "other"}})
    with pytest.raises(ApiException) as exc:
        core.replace_namespaced_config_map(name, "default", stale)
    assert exc.value.status == 409


def test_deletecollection_deletes_only_the_view(topology, direct):
    vw, _ = topology
    ns = unique("dc")
    direct["root"].create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    for i in range(3):
        direct["root"].create_namespaced_config_map(ns, configmap(f"in-{i}", DEMO))
    direct["root"].create_namespaced_config_map(ns, configmap("out"))
    client.CoreV1Api(vw.api_client(ROOT)).delete_collection_namespaced_config_map(ns)
    assert names(direct["root"].list_namespaced_config_map(ns).items) == {"out"}


def test_informer_list_then_watch(topology, direct):
    """What a reflector does: list, then watch from the list's resourceVersion with bookmarks; the cache
    built from the events equals a fresh list."""
    vw, _ = topology
    core = client.CoreV1Api(vw.api_client(WILDCARD))
    listing = core.list_config_map_for_all_namespaces()
    key = lambda obj: (obj.metadata.annotations["kcp.dev/cluster"], obj.metadata.namespace, obj.metadata.name)  # noqa
    cache = {key(obj): obj.metadata.resource_version for obj in listing.items}
    seen: list[str] = []
    stop = threading.Event()

    def run():
        for event in watch.Watch().stream(core.list_config_map_for_all_namespaces,
                                          resource_version=listing.metadata.resource_version,
                                          allow_watch_bookmarks=True, timeout_seconds=6):
            seen.append(event["type"])
            obj = event["object"]
            if event["type"] == "BOOKMARK":
                if stop.is_set():
                    return
                continue
            if event["type"] == "DELETED":
                cache.pop(key(obj), None)
            else:
                cache[key(obj)] = obj.metadata.resource_version

    thread = threading.Thread(target=run)
    thread.start()
    prefix = unique("inf")
    for cluster in ("root", ORG):
        for i in range(3):
            direct[cluster].create_namespaced_config_map("default", configmap(f"{prefix}-{i}", DEMO))
        direct[cluster].create_namespaced_config_map("default", configmap(f"{prefix}-x"))
    direct["root"].delete_namespaced_config_map(f"{prefix}-0", "default")
    direct[ORG].patch_namespaced_config_map(f"{prefix}-1", "default", {"metadata": {"labels": {"demo": "off"}}})
    direct[ORG].patch_namespaced_config_map(f"{prefix}-x", "default", {"metadata": {"labels": DEMO}})
    time.sleep(0.2)
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
    assert "BOOKMARK" in seen
    fresh = core.list_config_map_for_all_namespaces()
    assert cache == {key(obj): obj.metadata.resource_version for obj in fresh.items}
    assert {(k[0], k[2]) for k in cache if k[2].startswith(prefix)} == {
        ("root", f"{prefix}-1"), ("root", f"{prefix}-2"),
        (ORG, f"{prefix}-0"), (ORG, f"{prefix}-2"), (ORG, f"{prefix}-x")}


# ---------------------------------------------------------------------- watch protocol details

def raw_watch(api: client.ApiClient, path: str, **query) -> list[dict]:
    """The event lines of a watch that ends by its timeoutSeconds."""
    params = "&".join(f"{k}={v}" for k, v in {"watch": "true", **query}.items())
    response = api.rest_client.pool_manager.request("GET", f"{api.configuration.host}{path}?{params}",
                                                    preload_content=False)
    assert response.status == 200, response.data
    events = [orjson.loads(line) for line in response.read().splitlines() if line.strip()]
    response.release_conn()
    return events


def test_too_old_resource_version_is_a_410_error_event(topology):
    vw, shard = topology
    api = vw.api_client(WILDCARD)
    start = client.CoreV1Api(api).list_config_map_for_all_namespaces().metadata.resource_version

    def churn():  # push ``start`` out of the shard's watch window (per resource) with objects outside the view
        registry = shard.shard.registry
        namespaces = registry.catalog.lookup("root", "", "v1", "namespaces")
        configmaps = registry.catalog.lookup("root", "", "v1", "configmaps")
        namespace = unique("churn")
        registry.create(namespaces, "root", "", {"metadata": {"name": namespace}})
        for i in range(2 * HISTORY):  # the store trims in batches, beyond 110 % of its history
            registry.create(configmaps, "root", namespace, {"metadata": {"name": f"c{i}"}})

    shard.run(churn)
    events = raw_watch(api, "/api/v1/configmaps", resourceVersion=start, timeoutSeconds=2)
    assert len(events) == 1 and events[0]["type"] == "ERROR"
    status = events[0]["object"]
    assert (status["kind"], status["code"], status["reason"]) == ("Status", 410, "Expired")


def test_bookmarks_and_initial_events_end(topology, direct):
    vw, _ = topology
    name = unique("initial")
    direct["root"].create_namespaced_config_map("default", configmap(name, DEMO))
    api = vw.api_client(ROOT)
    events = raw_watch(api, "/api/v1/namespaces/default/configmaps", sendInitialEvents="true",
                       resourceVersionMatch="NotOlderThan", allowWatchBookmarks="true", timeoutSeconds=2)
    types = [e["type"] for e in events]
    first_bookmark = types.index("BOOKMARK")
    assert set(types[:first_bookmark]) == {"ADDED"}
    assert name in {e["object"]["metadata"]["name"] for e in events[:first_bookmark]}
    end = events[first_bookmark]["object"]
    assert end["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert int(end["metadata"]["resourceVersion"]) > 0
    assert types.count("BOOKMARK") >= 2  # the periodic ones follow (bookmark interval 1 s)


def test_watch_of_one_object_by_name(topology, direct):
    vw, _ = topology
    name = unique("one")
    direct["root"].create_namespaced_config_map("default", configmap(name, DEMO))
    direct["root"].create_namespaced_config_map("default", configmap(unique("another"), DEMO))
    events = raw_watch(vw.api_client(ROOT), f"/api/v1/namespaces/default/configmaps/{name}", timeoutSeconds=1)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", name)]
