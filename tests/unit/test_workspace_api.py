"""tenancy.kcp.dev types: defaulting, validation, owner annotation and type resolution, on a real registry."""

from __future__ import annotations

import orjson
import pytest

from kcp_virtual.framework import errors
from server.apis import builtin_types, tenancy
from server.apis.tenancy import CLUSTER_WORKSPACES, OWNER_ANNOTATION, SHARDS, WORKSPACE_TYPES
from server.auth.user import UserInfo
from server.registry.generic import Registry
from server.registry.resourcetype import Catalog
from server.storage import SQLiteBackend, Store


@pytest.fixture
def registry(tmp_path):
    store = Store(SQLiteBackend(str(tmp_path / "kcp.db")))
    reg = Registry(store, Catalog(builtin_types()))
    reg.ensure_logical_cluster("root")
    tenancy.bootstrap(reg, base_url="https://127.0.0.1:1")
    yield reg
    store.close()


def cw(name: str, **spec) -> dict:
    return {"apiVersion": "tenancy.kcp.dev/v1alpha1", "kind": "ClusterWorkspace", "metadata": {"name": name},
            "spec": spec}


def test_create_defaults_type_finalizer_and_phase(registry):
    obj = registry.create(CLUSTER_WORKSPACES, "root", "", cw("org", ))
    assert obj["spec"]["type"] == {"name": "universal", "path": "root"}
    assert obj["metadata"]["finalizers"] == [tenancy.FINALIZER]
    assert obj["status"] == {"phase": "Scheduling"}


@pytest.mark.parametrize("name", ["Org", "org.team", "org_team", "-org", "a" * 64])
def test_names_must_be_dns_labels(registry, name):
    with pytest.raises(errors.Invalid) as exc:
        registry.create(CLUSTER_WORKSPACES, "root", "", cw(name))
    assert exc.value.details["causes"][0]["field"] == "metadata.name"


@pytest.mark.parametrize("ref, field", [
    ("universal", "spec.type"), ({"path": "root"}, "spec.type.name"), ({"name": "Bad_Type"}, "spec.type.name"),
    ({"name": "universal", "path": "root/org"}, "spec.type.path"),
])
def test_type_reference_is_validated(registry, ref, field):
    with pytest.raises(errors.Invalid) as exc:
        registry.create(CLUSTER_WORKSPACES, "root", "", cw("org", type=ref))
    assert [c["field"] for c in exc.value.details["causes"]] == [field]


def test_type_and_owner_are_immutable_but_may_be_left_out(registry):
    created = registry.create(CLUSTER_WORKSPACES, "root", "", {
        **cw("org"), "metadata": {"name": "org", "annotations": {OWNER_ANNOTATION: "alice"}}})
    # a client that drops the path and the owner annotation keeps both
    body = {**cw("org", type={"name": "universal"}), "metadata": {"name": "org", "labels": {"x": "y"}}}
    updated = registry.update(CLUSTER_WORKSPACES, "root", "", "org", body)
    assert updated["spec"]["type"] == {"name": "universal", "path": "root"}
    assert updated["metadata"]["annotations"][OWNER_ANNOTATION] == "alice"
    assert created["metadata"]["uid"] == updated["metadata"]["uid"]
    with pytest.raises(errors.Invalid, match="spec.type: Invalid value"):
        registry.update(CLUSTER_WORKSPACES, "root", "", "org", cw("org", type={"name": "other", "path": "root"}))
    changed = {**cw("org"), "metadata": {"name": "org", "annotations": {OWNER_ANNOTATION: "mallory"}}}
    with pytest.raises(errors.Invalid, match="owner of a workspace cannot be changed"):
        registry.update(CLUSTER_WORKSPACES, "root", "", "org", changed)


def test_status_is_validated(registry):
    obj = registry.create(CLUSTER_WORKSPACES, "root", "", cw("org"))
    with pytest.raises(errors.Invalid, match="status.phase: Unsupported value"):
        registry.update(CLUSTER_WORKSPACES, "root", "", "org", {**obj, "status": {"phase": "Done"}},
                        subresource="status")
    with pytest.raises(errors.Invalid, match="status.initializers"):
        registry.update(CLUSTER_WORKSPACES, "root", "", "org", {**obj, "status": {"initializers": [""]}},
                        subresource="status")


def test_owner_annotation_round_trip():
    user = UserInfo("alice", "42", ("devs", "system:authenticated"))
    value = tenancy.owner_annotation_value(user)
    assert orjson.loads(value) == {"username": "alice", "uid": "42", "groups": ["devs", "system:authenticated"]}
    holder = {"metadata": {"annotations": {OWNER_ANNOTATION: value}}}
    assert tenancy.owner_of(holder)["username"] == "alice"
    assert tenancy.owner_of({"metadata": {"annotations": {OWNER_ANNOTATION: "bob"}}})["username"] == "bob"
    assert tenancy.owner_of({"metadata": {}}) is None
    assert tenancy.owner_of({"metadata": {"annotations": {OWNER_ANNOTATION: '{"groups": []}'}}}) is None


def test_workspace_types_validate_initializers(registry):
    for bad in (["a", "a"], ["a/b"], [""], "root:x", [1]):
        with pytest.raises(errors.Invalid):
            registry.create(WORKSPACE_TYPES, "root", "", {"metadata": {"name": "t"}, "spec": {"initializers": bad}})
    with pytest.raises(errors.Invalid):
        registry.create(WORKSPACE_TYPES, "root", "", {"metadata": {"name": "t"}, "spec": {"initializer": "yes"}})
    wt = registry.create(WORKSPACE_TYPES, "root", "", {"metadata": {"name": "t"},
                                                      "spec": {"initializers": ["x:y"], "initializer": True}})
    assert tenancy.type_initializers(wt, "root") == ["x:y", "root:t"]


def test_types_resolve_in_the_parent_then_its_ancestors(registry):
    for cluster in ("root:org", "root:org:team"):
        registry.ensure_logical_cluster(cluster)
    registry.create(WORKSPACE_TYPES, "root:org", "", {"metadata": {"name": "team"}})
    store = registry.store
    assert tenancy.ancestry("root:org:team") == ["root:org:team", "root:org", "root"]
    assert tenancy.resolve_type(store, "root:org:team", {"name": "team"})[0] == "root:org"
    assert tenancy.resolve_type(store, "root:org:team", {"name": "universal"})[0] == "root"
    assert tenancy.resolve_type(store, "root", {"name": "team"}) is None
    assert tenancy.resolve_type(store, "root:org:team", {"name": "team", "path": "root"}) is None


def test_bootstrap_is_idempotent_and_follows_the_configured_urls(registry):
    tenancy.bootstrap(registry, base_url="https://127.0.0.1:2", virtual_workspace_url="https://vw:6444")
    tenancy.bootstrap(registry, base_url="https://127.0.0.1:2", virtual_workspace_url="https://vw:6444")
    shard = registry.get(SHARDS, "root", "", "root")
    assert shard["spec"] == {"baseURL": "https://127.0.0.1:2", "virtualWorkspaceURL": "https://vw:6444"}
    assert registry.get(WORKSPACE_TYPES, "root", "", "universal")["spec"] == {}
    with pytest.raises(errors.Invalid, match="spec.baseURL"):
        registry.create(SHARDS, "root", "", {"metadata": {"name": "other"}, "spec": {"baseURL": "ftp://x"}})
    other = registry.create(SHARDS, "root", "", {"metadata": {"name": "other"}, "spec": {"baseURL": "https://x"}})
    assert other["spec"]["virtualWorkspaceURL"] == "https://x"


def test_printer_columns():
    names = [c.name for c in CLUSTER_WORKSPACES.table_columns() if not c.priority]
    assert names == ["Name", "Type", "Phase", "URL", "Age"]
    assert [c.name for c in CLUSTER_WORKSPACES.table_columns() if c.priority] == ["Shard"]  # -o wide
