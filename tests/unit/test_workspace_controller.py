"""The work queue, the reconcile loop and the workspace lifecycle controller on a real registry (no HTTP)."""

from __future__ import annotations

import time

import gevent
import pytest

from kcp_virtual.framework import errors
from server.apis import builtin_types, tenancy
from server.apis.tenancy import CLUSTER_WORKSPACES, WORKSPACE_TYPES
from server.controllers.base import Reconciler, WorkQueue
from server.controllers.workspaces import WorkspaceController
from server.registry.generic import Registry
from server.registry.resourcetype import Catalog
from server.storage import Key, SQLiteBackend, Store

RBAC = "rbac.authorization.k8s.io"
BASE = "https://127.0.0.1:6443"


def wait_for(predicate, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        gevent.sleep(0.005)
    raise AssertionError("condition not met in time")


@pytest.fixture
def store(tmp_path):
    s = Store(SQLiteBackend(str(tmp_path / "kcp.db")))
    yield s
    s.close()


@pytest.fixture
def registry(store):
    reg = Registry(store, Catalog(builtin_types()))
    reg.ensure_logical_cluster("root")
    return reg


@pytest.fixture
def controller(registry):
    ctrl = WorkspaceController(registry, base_url=BASE)
    ctrl.start()
    yield ctrl
    ctrl.stop()


def create(registry, cluster: str, name: str, owner: str = "alice", **spec) -> dict:
    meta = {"name": name, "annotations": {tenancy.OWNER_ANNOTATION: owner}}
    return registry.create(CLUSTER_WORKSPACES, cluster, "", {"metadata": meta, "spec": spec})


def phase(registry, cluster: str, name: str) -> str | None:
    obj = registry.store.get(Key(CLUSTER_WORKSPACES.storage_key, cluster, "", name))
    return obj and obj.get("status", {}).get("phase")


def get(registry, plural: str, cluster: str, name: str, group: str = RBAC) -> dict | None:
    rt = registry.catalog.lookup(cluster, group, "v1" if group == RBAC else "v1alpha1", plural)
    return registry.store.get(registry.key(rt, cluster, "", name))


# ---------------------------------------------------------------------------------------------- queue + loop

def test_work_queue_deduplicates_and_requeues_keys_added_while_active():
    queue = WorkQueue()
    queue.add("a")
    queue.add("a")
    queue.add("b")
    assert len(queue) == 2
    assert queue.get() == "a"
    queue.add("a")  # while "a" is being processed: must run again afterwards, not concurrently
    assert queue.get() == "b"
    queue.done("b")
    assert len(queue) == 1 and not queue.idle
    queue.done("a")
    assert queue.get() == "a"
    queue.done("a")
    assert queue.idle


def test_reconciler_lists_watches_and_retries_with_backoff(store):
    seen: list = []
    failures = {"x": 2}

    def reconcile(key):
        seen.append(key.name)
        if failures.get(key.name):
            failures[key.name] -= 1
            raise RuntimeError("transient")

    store.create(Key("test/things", "root", "", "before"), {"metadata": {"name": "before"}})
    loop = Reconciler(store, "test/things", reconcile, name="test", workers=2, backoff_base=0.01)
    loop.start()
    try:
        wait_for(lambda: "before" in seen)
        store.create(Key("test/things", "root:org", "", "x"), {"metadata": {"name": "x"}})
        wait_for(lambda: seen.count("x") == 3 and loop.idle)
        assert failures["x"] == 0
    finally:
        loop.stop()


# ---------------------------------------------------------------------------------------------- lifecycle

def test_scheduling_to_ready_with_grants(registry, controller):
    create(registry, "root", "org")
    wait_for(lambda: phase(registry, "root", "org") == "Ready")
    obj = registry.get(CLUSTER_WORKSPACES, "root", "", "org")
    assert obj["status"]["baseURL"] == f"{BASE}/clusters/root:org"
    assert {c["type"]: c["status"] for c in obj["status"]["conditions"]} == {
        "WorkspaceScheduled": "True", "WorkspaceInitialized": "True"}
    assert registry.cluster_exists("root:org")
    role = get(registry, "clusterroles", "root", "workspace-owner:org")
    assert role["rules"][0] == {"apiGroups": ["tenancy.kcp.dev"], "resources": ["clusterworkspaces/content"],
                                "resourceNames": ["org"], "verbs": ["admin", "access"]}
    binding = get(registry, "clusterrolebindings", "root", "workspace-owner:org")
    assert binding["subjects"] == [{"kind": "User", "apiGroup": RBAC, "name": "alice"}]
    inside = get(registry, "clusterrolebindings", "root:org", "workspace-owner")
    assert inside["roleRef"]["name"] == "cluster-admin" and inside["subjects"][0]["name"] == "alice"


def test_a_workspace_takes_two_writes_of_its_object_from_create_to_ready(registry, controller):
    """The finalizer comes with the create (no client ever reads the object without it) and, with no
    initializer waiting, Scheduling -> Ready is one status write: the workspace creation rate (issue 17) rests on
    not writing the object more often than that."""
    watcher = registry.store.watch(CLUSTER_WORKSPACES.storage_key, "root", None, registry.store.current_rv())
    created = create(registry, "root", "org")
    assert created["metadata"]["finalizers"] == [tenancy.FINALIZER]
    assert created["status"] == {"phase": "Scheduling"}
    wait_for(lambda: phase(registry, "root", "org") == "Ready")
    inside = registry.catalog.lookup("root:org", RBAC, "v1", "clusterrolebindings")
    wait_for(lambda: registry.store.get(registry.key(inside, "root:org", "", "workspace-owner")))
    gevent.sleep(0.1)  # the reconcile its own status write triggers must write nothing
    events = [(e.type, e.obj["status"]["phase"], e.obj["metadata"]["finalizers"])
              for e in watcher.take() if e.key.name == "org"]
    assert events == [("ADDED", "Scheduling", [tenancy.FINALIZER]), ("MODIFIED", "Ready", [tenancy.FINALIZER])]


def test_initializers_hold_the_workspace_in_initializing(registry, controller):
    registry.create(WORKSPACE_TYPES, "root", "", {"metadata": {"name": "slow"},
                                                  "spec": {"initializer": True, "initializers": ["other"]}})
    create(registry, "root", "org", type={"name": "slow"})
    wait_for(lambda: phase(registry, "root", "org") == "Initializing")
    obj = registry.get(CLUSTER_WORKSPACES, "root", "", "org")
    assert obj["status"]["initializers"] == ["other", "root:slow"]
    assert registry.cluster_exists("root:org")
    registry.update(CLUSTER_WORKSPACES, "root", "", "org", {**obj, "status": {**obj["status"],
                                                                                "initializers": ["root:slow"]}},
                    subresource="status")
    gevent.sleep(0.05)
    assert phase(registry, "root", "org") == "Initializing"
    obj = registry.get(CLUSTER_WORKSPACES, "root", "", "org")
    registry.update(CLUSTER_WORKSPACES, "root", "", "org", {**obj, "status": {**obj["status"], "initializers": []}},
                    subresource="status")
    wait_for(lambda: phase(registry, "root", "org") == "Ready")
    assert "initializers" not in registry.get(CLUSTER_WORKSPACES, "root", "", "org")["status"]


def test_deletion_removes_nested_content_and_grants(registry, controller):
    create(registry, "root", "org")
    wait_for(lambda: phase(registry, "root", "org") == "Ready")
    create(registry, "root:org", "team")
    wait_for(lambda: phase(registry, "root:org", "team") == "Ready")
    configmaps = registry.catalog.lookup("root:org:team", "", "v1", "configmaps")
    registry.create(configmaps, "root:org:team", "default", {"metadata": {"name": "data"}})
    registry.delete(CLUSTER_WORKSPACES, "root", "", "org")
    wait_for(lambda: registry.store.get(Key(CLUSTER_WORKSPACES.storage_key, "root", "", "org")) is None)
    assert not registry.cluster_exists("root:org") and not registry.cluster_exists("root:org:team")
    assert registry.store.list(configmaps.storage_key, "root:org:team")[0] == []
    assert registry.store.list(CLUSTER_WORKSPACES.storage_key, "root:org")[0] == []
    assert get(registry, "clusterroles", "root", "workspace-owner:org") is None
    assert get(registry, "clusterrolebindings", "root", "workspace-owner:org") is None


def test_workspace_gone_without_finalization_is_cleaned_up(registry, controller):
    create(registry, "root", "org")
    wait_for(lambda: phase(registry, "root", "org") == "Ready")
    controller.stop()
    registry.delete(CLUSTER_WORKSPACES, "root", "", "org")
    obj = registry.get(CLUSTER_WORKSPACES, "root", "", "org")
    # someone strips our finalizer by hand: the object goes at once, the cluster and grants must follow
    registry.update(CLUSTER_WORKSPACES, "root", "", "org", {**obj, "metadata": {**obj["metadata"], "finalizers": []}})
    controller.start()
    # (the initial list cannot show a gone object: the loop acts on its key, as the DELETED event would)
    controller.reconciler.enqueue(Key(CLUSTER_WORKSPACES.storage_key, "root", "", "org"))
    wait_for(lambda: not registry.cluster_exists("root:org"))
    assert get(registry, "clusterroles", "root", "workspace-owner:org") is None


def test_restart_resumes_every_half_done_step(registry):
    # Crash states, written while no controller runs: nothing done, cluster created but status not yet
    # written, and a deletion that removed the cluster but not yet the finalizer.
    create(registry, "root", "fresh")
    create(registry, "root", "half")
    registry.ensure_logical_cluster("root:half")
    create(registry, "root", "going")
    registry.delete(CLUSTER_WORKSPACES, "root", "", "going")
    ctrl = WorkspaceController(registry, base_url=BASE)
    ctrl.start()
    try:
        wait_for(lambda: phase(registry, "root", "fresh") == phase(registry, "root", "half") == "Ready")
        wait_for(lambda: registry.store.get(Key(CLUSTER_WORKSPACES.storage_key, "root", "", "going")) is None)
        assert not registry.cluster_exists("root:going")
    finally:
        ctrl.stop()
    # a later start with another URL corrects baseURL everywhere
    ctrl = WorkspaceController(registry, base_url="https://127.0.0.1:7000")
    ctrl.start()
    try:
        wait_for(lambda: registry.get(CLUSTER_WORKSPACES, "root", "", "fresh")["status"]["baseURL"]
                 == "https://127.0.0.1:7000/clusters/root:fresh")
    finally:
        ctrl.stop()


def test_missing_type_is_retried_not_fatal(registry, controller):
    create(registry, "root", "waiting", type={"name": "late", "path": "root"})
    gevent.sleep(0.1)
    assert phase(registry, "root", "waiting") == "Scheduling"
    registry.create(WORKSPACE_TYPES, "root", "", {"metadata": {"name": "late"}})
    wait_for(lambda: phase(registry, "root", "waiting") == "Ready")


def test_grants_are_corrected_when_tampered(registry, controller):
    create(registry, "root", "org")
    wait_for(lambda: phase(registry, "root", "org") == "Ready")
    bindings = registry.catalog.lookup("root", RBAC, "v1", "clusterrolebindings")
    binding = registry.get(bindings, "root", "", "workspace-owner:org")
    registry.update(bindings, "root", "", "workspace-owner:org",
                    {**binding, "subjects": [{"kind": "User", "apiGroup": RBAC, "name": "mallory"}]})
    controller._grant("root", "org", {"username": "alice"})
    assert registry.get(bindings, "root", "", "workspace-owner:org")["subjects"][0]["name"] == "alice"
    with pytest.raises(errors.NotFound):
        registry.get(bindings, "root", "", "workspace-owner:nothing")


def test_the_owner_binding_comes_with_the_shared_content_each_workspace_naming_its_owner(tmp_path):
    """With the shard's templates the owner's ``workspace-owner`` binding inside is a template object (no row of
    its own) that names each workspace's owner, exactly as the binding written for real would be, kept across a
    restart, and a real row from its first write on."""
    from server.apis.logicalclusters import create_logical_cluster, default_content

    def open_registry(templates: bool) -> Registry:
        reg = Registry(Store(SQLiteBackend(str(tmp_path / ("t.db" if templates else "rows.db")))),
                       Catalog(builtin_types()))
        if templates:
            reg.cluster_template = default_content(reg)
            reg.owned_cluster_template = default_content(reg, owned=True)
        reg.ensure_logical_cluster("root")
        return reg

    def comparable(obj: dict) -> dict:
        md = {k: v for k, v in obj["metadata"].items() if k not in ("uid", "resourceVersion", "creationTimestamp")}
        md["managedFields"] = [{k: v for k, v in e.items() if k != "time"} for e in md["managedFields"]]
        return {**obj, "metadata": md}

    rows, shared = open_registry(False), open_registry(True)
    for reg in (rows, shared):
        create_logical_cluster(reg, "root:a", "alice")
        create_logical_cluster(reg, "root:b", "bob")
        create_logical_cluster(reg, "root:nobody", "")
    rows_before = rows.store.current_rv()
    bindings = shared.catalog.lookup("root:a", RBAC, "v1", "clusterrolebindings").storage_key
    assert shared.store.get_real(Key(bindings, "root:a", "", "workspace-owner")) is None  # no row of its own
    for cluster, owner in (("root:a", "alice"), ("root:b", "bob")):
        obj = get(shared, "clusterrolebindings", cluster, "workspace-owner")
        assert obj["subjects"] == [{"kind": "User", "apiGroup": RBAC, "name": owner}]
        assert comparable(obj) == comparable(get(rows, "clusterrolebindings", cluster, "workspace-owner"))
        listed = [o for o in shared.store.list(bindings, cluster)[0] if o["metadata"]["name"] == "workspace-owner"]
        assert listed == [obj]
    assert get(shared, "clusterrolebindings", "root:nobody", "workspace-owner") is None
    assert get(rows, "clusterrolebindings", "root:nobody", "workspace-owner") is None
    # Ensuring the cluster again writes nothing: the binding is already what it must be.
    rv = shared.store.current_rv()
    create_logical_cluster(shared, "root:a", "alice")
    assert shared.store.current_rv() == rv and rows.store.current_rv() == rows_before
    uid = get(shared, "clusterrolebindings", "root:a", "workspace-owner")["metadata"]["uid"]
    shared.store.close()

    reopened = open_registry(True)
    again = get(reopened, "clusterrolebindings", "root:a", "workspace-owner")
    assert again["metadata"]["uid"] == uid and again["subjects"][0]["name"] == "alice"
    assert get(reopened, "clusterrolebindings", "root:b", "workspace-owner")["subjects"][0]["name"] == "bob"
    # A tenant's write makes it a row, which shadows the template object from then on.
    rt = reopened.catalog.lookup("root:a", RBAC, "v1", "clusterrolebindings")
    reopened.update(rt, "root:a", "", "workspace-owner", {**again, "subjects": [
        {"kind": "User", "apiGroup": RBAC, "name": "carol"}]})
    assert reopened.store.get_real(Key(bindings, "root:a", "", "workspace-owner"))["subjects"][0]["name"] == "carol"
    assert get(reopened, "clusterrolebindings", "root:a", "workspace-owner")["subjects"][0]["name"] == "carol"
    reopened.store.close()
    rows.store.close()
