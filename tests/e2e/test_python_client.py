"""The kubernetes Python client against a real shard: typed and dynamic CRUD, watch, informer-style relists."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient

from server.shard import ShardConfig
from server.testing import running_shard


@pytest.fixture(scope="module")
def core(kcp_shard_module):
    return client.CoreV1Api(kcp_shard_module.api_client())


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_default_namespace_exists(core):
    names = [ns.metadata.name for ns in core.list_namespace().items]
    assert "default" in names


def test_configmap_crud(core):
    name = unique("cm")
    created = core.create_namespaced_config_map("default", client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=name, labels={"app": "a"}), data={"k": "v"}))
    assert created.metadata.uid and created.metadata.resource_version and created.metadata.creation_timestamp
    got = core.read_namespaced_config_map(name, "default")
    assert got.data == {"k": "v"}
    got.data["k"] = "v2"
    replaced = core.replace_namespaced_config_map(name, "default", got)
    assert int(replaced.metadata.resource_version) > int(created.metadata.resource_version)
    # a stale resourceVersion is a 409 Conflict
    got.data["k"] = "v3"
    with pytest.raises(ApiException) as exc:
        core.replace_namespaced_config_map(name, "default", got)
    assert exc.value.status == 409
    core.delete_namespaced_config_map(name, "default")
    with pytest.raises(ApiException) as exc:
        core.read_namespaced_config_map(name, "default")
    assert exc.value.status == 404


def test_generate_name_and_events(core):
    event = core.create_namespaced_event("default", client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name="kopf-event-"),
        involved_object=client.V1ObjectReference(kind="ConfigMap", name="x", namespace="default"),
        reason="Logging", message="hello", type="Normal"))
    assert event.metadata.name.startswith("kopf-event-") and len(event.metadata.name) == len("kopf-event-") + 5
    found = core.list_namespaced_event("default", field_selector="involvedObject.kind=ConfigMap,reason=Logging")
    assert event.metadata.name in [e.metadata.name for e in found.items]


def test_label_and_field_selectors(core):
    a, b = unique("sel"), unique("sel")
    core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(
        name=a, labels={"tier": "front"})))
    core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(
        name=b, labels={"tier": "back"})))
    names = {c.metadata.name for c in core.list_namespaced_config_map("default", label_selector="tier=front").items}
    assert a in names and b not in names
    names = {c.metadata.name for c in core.list_namespaced_config_map(
        "default", label_selector="tier in (front,back),tier!=back").items}
    assert a in names and b not in names
    only = core.list_namespaced_config_map("default", field_selector=f"metadata.name={b}").items
    assert [c.metadata.name for c in only] == [b]
    with pytest.raises(ApiException) as exc:
        core.list_namespaced_config_map("default", field_selector="spec.nope=1")
    assert exc.value.status == 400


def test_paging_with_continue(core):
    prefix = unique("page")
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=prefix)))
    for i in range(7):
        core.create_namespaced_config_map(prefix, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"c{i}")))
    seen, token = [], None
    while True:
        page = core.list_namespaced_config_map(prefix, limit=3, _continue=token)
        seen += [c.metadata.name for c in page.items]
        token = page.metadata._continue
        if not token:
            break
        assert len(page.items) == 3
    assert seen == [f"c{i}" for i in range(7)]
    with pytest.raises(ApiException) as exc:
        core.list_namespaced_config_map(prefix, limit=3, _continue="not-a-token")
    assert exc.value.status == 400


def test_status_subresource_and_generation(kcp_shard_module):
    apps = client.AppsV1Api(kcp_shard_module.api_client())
    name = unique("dep")
    body = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "c", "image": "nginx"}]}}},
            "status": {"readyReplicas": 9}}
    created = apps.create_namespaced_deployment("default", body)
    assert created.metadata.generation == 1
    assert created.status is None or created.status.ready_replicas is None  # status dropped on create
    patched = apps.patch_namespaced_deployment_status(name, "default", {"status": {"readyReplicas": 2}})
    assert patched.status.ready_replicas == 2 and patched.metadata.generation == 1
    patched = apps.patch_namespaced_deployment(name, "default", {"spec": {"replicas": 3},
                                                                 "status": {"readyReplicas": 0}})
    assert patched.metadata.generation == 2 and patched.status.ready_replicas == 2  # main endpoint keeps status
    patched = apps.patch_namespaced_deployment(name, "default", {"metadata": {"labels": {"x": "y"}}})
    assert patched.metadata.generation == 2  # metadata-only change does not bump generation


def test_json_patch_with_test_op_kopf_style(kcp_shard_module):
    api = client.CustomObjectsApi(kcp_shard_module.api_client())
    core = client.CoreV1Api(kcp_shard_module.api_client())
    name = unique("jp")
    cm = core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name)))
    rv = cm.metadata.resource_version
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": rv},
           {"op": "add", "path": "/metadata/finalizers", "value": ["kopf.zalando.org/KopfFinalizerMarker"]}]
    patched = core.patch_namespaced_config_map(name, "default", ops)
    assert patched.metadata.finalizers == ["kopf.zalando.org/KopfFinalizerMarker"]
    with pytest.raises(ApiException) as exc:  # stale test op: 422
        core.patch_namespaced_config_map(name, "default", ops)
    assert exc.value.status == 422
    # delete with a finalizer: marked, then removed when the finalizer goes
    core.delete_namespaced_config_map(name, "default")
    marked = core.read_namespaced_config_map(name, "default")
    assert marked.metadata.deletion_timestamp is not None
    core.patch_namespaced_config_map(name, "default", [{"op": "remove", "path": "/metadata/finalizers"}])
    with pytest.raises(ApiException) as exc:
        core.read_namespaced_config_map(name, "default")
    assert exc.value.status == 404
    del api


def test_watch_resumes_from_resource_version(core):
    ns = unique("watch")
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    listed = core.list_namespaced_config_map(ns)
    start_rv = listed.metadata.resource_version
    for i in range(3):
        core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"w{i}")))
    core.delete_namespaced_config_map("w1", ns)
    events = []
    for event in watch.Watch().stream(core.list_namespaced_config_map, ns, resource_version=start_rv,
                                      timeout_seconds=2):
        events.append((event["type"], event["object"].metadata.name))
    assert events == [("ADDED", "w0"), ("ADDED", "w1"), ("ADDED", "w2"), ("DELETED", "w1")]


def test_watch_sees_live_events_and_selector_transitions(core):
    ns = unique("live")
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(
        name="m", labels={"watched": "yes"})))
    events = []

    def writer():
        time.sleep(0.3)
        core.patch_namespaced_config_map("m", ns, {"data": {"a": "1"}})
        core.patch_namespaced_config_map("m", ns, {"metadata": {"labels": {"watched": "no"}}})

    thread = threading.Thread(target=writer)
    thread.start()
    for event in watch.Watch().stream(core.list_namespaced_config_map, ns, label_selector="watched=yes",
                                      timeout_seconds=2):
        events.append(event["type"])
    thread.join()
    assert events == ["ADDED", "MODIFIED", "DELETED"]


@pytest.fixture
def short_history_shard():
    """A shard that remembers only a few watch events, so resource versions expire quickly."""
    with running_shard(ShardConfig(watch_history_events=5)) as shard:
        yield shard


def test_watch_too_old_resource_version_is_410(short_history_shard):
    core = client.CoreV1Api(short_history_shard.api_client())
    first = core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c0")))
    for i in range(1, 20):
        core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"c{i}")))
    with pytest.raises(ApiException) as exc:
        for _ in watch.Watch().stream(core.list_namespaced_config_map, "default",
                                      resource_version=first.metadata.resource_version, timeout_seconds=2):
            pass
    assert exc.value.status == 410
    # a continue token from before the window is 410 too
    page = core.list_namespaced_config_map("default", limit=2)
    for i in range(20, 40):
        core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"c{i}")))
    with pytest.raises(ApiException) as exc:
        core.list_namespaced_config_map("default", limit=2, _continue=page.metadata._continue)
    assert exc.value.status == 410


def test_dynamic_client_crud(kcp_shard_module):
    dyn = DynamicClient(kcp_shard_module.api_client())
    leases = dyn.resources.get(api_version="coordination.k8s.io/v1", kind="Lease")
    name = unique("lease")
    leases.create(namespace="default", body={"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                             "metadata": {"name": name}, "spec": {"holderIdentity": "me"}})
    got = leases.get(name=name, namespace="default")
    assert got.spec.holderIdentity == "me"
    leases.patch(name=name, namespace="default", body={"spec": {"holderIdentity": "you"}},
                 content_type="application/merge-patch+json")
    assert leases.get(name=name, namespace="default").spec.holderIdentity == "you"
    leases.delete(name=name, namespace="default")
    assert name not in [i.metadata.name for i in leases.get(namespace="default").items]


def test_informer_relists_after_410(short_history_shard):
    """The pattern of kubernetes.informer / reflectors: list, watch from the list RV, relist on 410."""
    core = client.CoreV1Api(short_history_shard.api_client())
    ns = unique("inf")
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    rv = core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(
        name="a"))).metadata.resource_version
    for i in range(10):  # push that resource version out of the watch window
        core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"b{i}")))
        core.delete_namespaced_config_map(f"b{i}", ns)
    cache = {}
    relisted = False
    for _ in range(2):
        try:
            for event in watch.Watch().stream(core.list_namespaced_config_map, ns, resource_version=rv,
                                              timeout_seconds=1):
                cache[event["object"].metadata.name] = event["type"]
        except ApiException as exc:
            assert exc.status == 410
            listing = core.list_namespaced_config_map(ns)
            cache = {c.metadata.name: "LISTED" for c in listing.items}
            rv = listing.metadata.resource_version
            relisted = True
    assert relisted and cache == {"a": "LISTED"}


def test_wildcard_cluster_lists_across_clusters(kcp_shard_module):
    shard = kcp_shard_module
    shard.run(shard.shard.registry.ensure_logical_cluster, "root:wild")
    other = client.CoreV1Api(shard.cluster_client("root:wild"))
    other.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="wild-cm")))
    root = client.CoreV1Api(shard.api_client())
    assert "wild-cm" not in [c.metadata.name for c in root.list_namespaced_config_map("default").items]
    everywhere = client.CoreV1Api(shard.cluster_client("*")).list_config_map_for_all_namespaces()
    clusters = {c.metadata.name: c.metadata.annotations["kcp.dev/cluster"] for c in everywhere.items}
    assert clusters["wild-cm"] == "root:wild"


def test_deletecollection_emits_deleted_events(core):
    ns = unique("dc")
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    rv = core.list_namespaced_config_map(ns).metadata.resource_version
    for name in ("a", "b", "keep"):
        core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(
            name=name, labels={"drop": "no" if name == "keep" else "yes"})))
    deleted = core.delete_collection_namespaced_config_map(ns, label_selector="drop=yes", _preload_content=False)
    assert sorted(item["metadata"]["name"] for item in json.loads(deleted.data)["items"]) == ["a", "b"]
    assert [c.metadata.name for c in core.list_namespaced_config_map(ns).items] == ["keep"]
    kinds = [(e["type"], e["object"].metadata.name) for e in watch.Watch().stream(
        core.list_namespaced_config_map, ns, resource_version=rv, timeout_seconds=1)]
    assert kinds[-2:] == [("DELETED", "a"), ("DELETED", "b")]


@pytest.fixture(scope="module")
def fast_bookmark_shard():
    with running_shard(ShardConfig(bookmark_interval=0.3)) as shard:
        yield shard


def test_bookmarks_and_watch_list(fast_bookmark_shard):
    api = fast_bookmark_shard.api_client()
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="bm")))
    response = core.list_namespaced_config_map("default", watch=True, allow_watch_bookmarks=True, timeout_seconds=1,
                                               _preload_content=False)
    lines = [json.loads(line) for line in response.data.splitlines() if line.strip()]
    types = [line["type"] for line in lines]
    assert types[0] == "ADDED" and "BOOKMARK" in types
    bookmark = next(line for line in lines if line["type"] == "BOOKMARK")["object"]
    assert bookmark["kind"] == "ConfigMap" and int(bookmark["metadata"]["resourceVersion"]) > 0
    # watch list: initial events end with the annotated bookmark
    response = core.list_namespaced_config_map("default", watch=True, send_initial_events=True,
                                               resource_version_match="NotOlderThan", allow_watch_bookmarks=True,
                                               timeout_seconds=1, _preload_content=False)
    lines = [json.loads(line) for line in response.data.splitlines() if line.strip()]
    marker = [i for i, line in enumerate(lines)
              if line["object"]["metadata"].get("annotations", {}).get("k8s.io/initial-events-end") == "true"]
    assert marker and all(line["type"] == "ADDED" for line in lines[:marker[0]])


def test_configmaps_have_no_generation(core):
    """As on kube: only spec/status types and custom resources carry metadata.generation."""
    name = unique("gen")
    cm = core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name),
                                                                        data={"a": "1"}))
    assert cm.metadata.generation is None
    cm = core.patch_namespaced_config_map(name, "default", {"data": {"a": "2"}})
    assert cm.metadata.generation is None
