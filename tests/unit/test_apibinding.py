"""The APIs model without HTTP: schema/export/binding validation, the bound-resource index (identity storage keys,
trust in binding status, the wildcard view) and the binding controller's decisions, on a real registry."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest

from kcp_virtual.framework import errors
from server.apis import builtin_types
from server.apis.apiextensions import CUSTOM_RESOURCE_DEFINITIONS
from server.apis.apis_kcp import (APIBINDINGS, APIEXPORTS, APIRESOURCESCHEMAS, EXPORT_LABEL, export_label_value,
                                  schema_as_crd, set_condition)
from server.apis.bound import BoundResourceIndex
from server.auth.rbac import RBACAuthorizer
from server.auth.user import UserInfo
from server.controllers.apibinding import PARKED_PREFIX, APIBindingController
from server.controllers.apiexport import APIExportController
from server.registry.generic import ListOptions, Registry
from server.registry.resourcetype import Catalog, RequestContext
from server.storage import Key, SQLiteBackend, Store

SCHEMA = {"type": "object", "properties": {"spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}}


def schema_obj(prefix="v1", group="example.io", plural="widgets", kind="Widget", **version) -> dict:
    return {"metadata": {"name": f"{prefix}.{plural}.{group}"},
            "spec": {"group": group, "scope": "Namespaced", "names": {"plural": plural, "kind": kind},
                     "versions": [{"name": "v1", "served": True, "storage": True, "schema": SCHEMA, **version}]}}


def fields(causes) -> list[str]:
    return [c["field"] for c in causes]


# ---------------------------------------------------------------------------------------------- validation

def test_schema_name_is_prefix_plural_group():
    for name, ok in (("v1.widgets.example.io", True), ("today-2.widgets.example.io", True),
                     ("widgets.example.io", False), ("v1.gadgets.example.io", False), ("V1.widgets.example.io", False)):
        obj = schema_obj()
        obj["metadata"]["name"] = name
        APIRESOURCESCHEMAS.prepare(obj, None)
        assert ("metadata.name" not in fields(APIRESOURCESCHEMAS.validate(obj, None))) == ok, name


def test_schema_is_validated_like_a_crd_with_paths_as_written():
    obj = schema_obj(schema={"type": "object", "properties": {"spec": {}}})
    APIRESOURCESCHEMAS.prepare(obj, None)
    assert "spec.versions[0].schema.properties[spec].type" in fields(APIRESOURCESCHEMAS.validate(obj, None))
    crd_form = schema_obj(schema={"openAPIV3Schema": {"type": "object", "properties": {"spec": {}}}})
    APIRESOURCESCHEMAS.prepare(crd_form, None)
    assert "spec.versions[0].schema.openAPIV3Schema.properties[spec].type" in fields(
        APIRESOURCESCHEMAS.validate(crd_form, None))
    no_group = schema_obj(group="")
    no_group["metadata"]["name"] = "v1.widgets.core"
    assert "spec.group" in fields(APIRESOURCESCHEMAS.validate(no_group, None))
    good = schema_obj()
    APIRESOURCESCHEMAS.prepare(good, None)
    assert good["spec"]["names"]["singular"] == "widget" and good["spec"]["names"]["listKind"] == "WidgetList"
    assert APIRESOURCESCHEMAS.validate(good, None) == []
    changed = copy.deepcopy(good)
    changed["spec"]["scope"] = "Cluster"
    assert fields(APIRESOURCESCHEMAS.validate(changed, good)) == ["spec"]
    assert APIRESOURCESCHEMAS.validate(copy.deepcopy(good), good) == []


def test_schema_as_crd_accepts_both_schema_forms():
    kcp = schema_as_crd(schema_obj())
    crd = schema_as_crd(schema_obj(schema={"openAPIV3Schema": SCHEMA}))
    assert kcp == crd and kcp["spec"]["versions"][0]["schema"] == {"openAPIV3Schema": SCHEMA}


def test_export_identity_defaults_and_never_changes():
    export = {"metadata": {"name": "widgets"}}
    APIEXPORTS.prepare(export, None)
    assert export["spec"]["identity"] == {"secretRef": {"namespace": "kcp-system", "name": "widgets"}}
    assert APIEXPORTS.validate(export, None) == []
    hashed = {**export, "status": {"identityHash": "a" * 64}}
    assert fields(APIEXPORTS.validate({**export, "status": {"identityHash": "b" * 64}}, hashed)) == [
        "status.identityHash"]
    moved = copy.deepcopy(export)
    moved["spec"]["identity"]["secretRef"]["name"] = "other"
    assert fields(APIEXPORTS.validate(moved, export)) == ["spec.identity"]
    assert fields(APIEXPORTS.validate({**export, "spec": {**export["spec"], "latestResourceSchemas": ["a", "a"]}},
                                      None)) == ["spec.latestResourceSchemas[1]"]


def test_binding_reference_is_required_labelled_and_immutable():
    assert fields(APIBINDINGS.validate({"metadata": {"name": "b"}, "spec": {}}, None)) == ["spec.reference.workspace"]
    binding = {"metadata": {"name": "b", "annotations": {"kcp.dev/cluster": "root:consumer"},
                            "labels": {EXPORT_LABEL: "forged"}},
               "spec": {"reference": {"workspace": {"exportName": "widgets"}}}}
    APIBINDINGS.prepare(binding, None)
    assert binding["metadata"]["labels"][EXPORT_LABEL] == export_label_value("root:consumer", "widgets")
    assert APIBINDINGS.validate(binding, None) == []
    moved = copy.deepcopy(binding)
    moved["spec"]["reference"]["workspace"]["path"] = "root:elsewhere"
    assert fields(APIBINDINGS.validate(moved, binding)) == ["spec.reference"]
    bad_path = copy.deepcopy(binding)
    bad_path["spec"]["reference"]["workspace"]["path"] = "Root/x"
    assert fields(APIBINDINGS.validate(bad_path, None)) == ["spec.reference.workspace.path"]


def test_conditions_move_their_transition_time_only_with_their_status():
    first = set_condition([], "Ready", "False", "APIExportNotFound", "not found", "t1")
    assert first == [{"type": "Ready", "status": "False", "reason": "APIExportNotFound", "message": "not found",
                      "lastTransitionTime": "t1"}]
    assert set_condition(first, "Ready", "False", "Other", "m", "t2")[0]["lastTransitionTime"] == "t1"
    assert set_condition(first, "Ready", "True", "", "", "t3") == [{"type": "Ready", "status": "True",
                                                                    "lastTransitionTime": "t3"}]


# ---------------------------------------------------------------------------------------------- on a registry

@pytest.fixture
def store(tmp_path):
    s = Store(SQLiteBackend(str(tmp_path / "kcp.db")))
    yield s
    s.close()


class World:
    """A registry whose catalog serves bound resources, and the two controllers, driven by hand."""

    def __init__(self, store: Store):
        self.store = store
        self.catalog = Catalog(builtin_types())
        self.index = BoundResourceIndex(store)
        self.catalog.add_source(self.index)
        self.registry = Registry(store, self.catalog)
        self.exports = APIExportController(self.registry)
        self.bindings = APIBindingController(self.registry, self.index)
        for cluster in ("root", "root:p1", "root:p2", "root:c1", "root:c2"):
            self.registry.ensure_logical_cluster(cluster)

    def provide(self, cluster: str, export: str = "widgets", schemas=None) -> str:
        for schema in schemas or [schema_obj()]:
            self.registry.create(APIRESOURCESCHEMAS, cluster, "", schema)
        names = [s["metadata"]["name"] for s in schemas or [schema_obj()]]
        self.registry.create(APIEXPORTS, cluster, "", {"metadata": {"name": export},
                                                       "spec": {"latestResourceSchemas": names}})
        self.exports.reconcile(Key(APIEXPORTS.storage_key, cluster, "", export))
        return self.registry.get(APIEXPORTS, cluster, "", export)["status"]["identityHash"]

    def bind(self, cluster: str, provider: str, name: str = "widgets", export: str = "widgets") -> dict:
        self.registry.create(APIBINDINGS, cluster, "", {"metadata": {"name": name}, "spec": {
            "reference": {"workspace": {"path": provider, "exportName": export}}}})
        return self.reconcile(cluster, name)

    def reconcile(self, cluster: str, name: str = "widgets") -> dict:
        self.bindings.reconcile(Key(APIBINDINGS.storage_key, cluster, "", ""))
        return self.registry.get(APIBINDINGS, cluster, "", name)

    def widgets(self, cluster: str, resource: str = "widgets"):
        return self.catalog.lookup(cluster, "example.io", "v1", resource)


@pytest.fixture
def world(store):
    return World(store)


def reason(binding: dict, type_: str = "Ready") -> str:
    return next(c.get("reason", "") for c in binding["status"]["conditions"] if c["type"] == type_)


def test_identity_is_part_of_the_storage_key(world):
    identity = world.provide("root:p1")
    assert world.widgets("root:c1") is None
    assert world.bind("root:c1", "root:p1")["status"]["phase"] == "Bound"
    rt = world.widgets("root:c1")
    assert rt.storage_key == f"example.io/widgets:{identity}" and rt.identity == identity
    assert world.widgets("root:c1", f"widgets:{identity}") is rt
    assert world.widgets("root:c1", "widgets:" + "0" * 64) is None
    assert world.widgets("*", f"widgets:{identity}") is rt         # shared by every binding of the export
    assert world.widgets("*", "widgets") is None
    world.registry.create(rt, "root:c1", "default", {"metadata": {"name": "w"}, "spec": {"size": 1}})
    assert [o["metadata"]["name"] for o in world.registry.list(rt, "*", "", ListOptions())["items"]] == ["w"]
    assert [t.plural for t in world.catalog.types("root:c1") if t.group == "example.io"] == ["widgets"]


def test_wildcard_is_served_from_the_export_before_any_binding(world):
    identity = world.provide("root:p1")
    rt = world.widgets("*", f"widgets:{identity}")
    assert rt is not None and rt.identity == identity
    assert world.registry.list(rt, "*", "", ListOptions())["items"] == []


def test_a_forged_binding_status_is_not_served(world):
    identity_1 = world.provide("root:p1")
    identity_2 = world.provide("root:p2")
    bound = world.bind("root:c1", "root:p1")
    forged = copy.deepcopy(bound)
    forged["status"]["boundResources"][0]["schema"]["identityHash"] = identity_2  # p2's objects under a p1 binding
    world.registry.update(APIBINDINGS, "root:c1", "", "widgets", forged, subresource="status")
    assert world.widgets("root:c1") is None
    assert world.widgets("root:c1", f"widgets:{identity_1}") is None
    assert world.reconcile("root:c1")["status"]["boundResources"][0]["schema"]["identityHash"] == identity_1
    assert world.widgets("root:c1").identity == identity_1


def test_conflicts_built_in_crd_and_other_binding(world):
    world.provide("root:p1")
    world.provide("root:p2")
    world.provide("root:p1", export="roles", schemas=[schema_obj(group="rbac.authorization.k8s.io", plural="roles",
                                                                  kind="Role")])
    assert reason(world.bind("root:c1", "root:p1", name="roles", export="roles")) == "NamingConflicts"
    world.registry.create(CUSTOM_RESOURCE_DEFINITIONS, "root:c2", "", schema_as_crd(schema_obj()))
    conflicted = world.bind("root:c2", "root:p1")
    assert reason(conflicted, "BindingUpToDate") == "NamingConflicts"
    assert "CustomResourceDefinition" in next(c["message"] for c in conflicted["status"]["conditions"]
                                              if c["type"] == "BindingUpToDate")
    assert world.bind("root:c1", "root:p1", name="first")["status"]["phase"] == "Bound"
    second = world.bind("root:c1", "root:p2", name="second")
    assert second["status"]["phase"] == "Binding" and reason(second) == "NamingConflicts"
    # a CRD that comes after a binding does not take the name away from it
    world.registry.create(CUSTOM_RESOURCE_DEFINITIONS, "root:c1", "", schema_as_crd(schema_obj()))
    assert world.reconcile("root:c1", "first")["status"]["phase"] == "Bound"
    assert world.widgets("root:c1").identity                          # the bound resource, not the CRD


def test_export_and_schema_problems_are_explained_and_heal(world):
    world.bind("root:c1", "root:p1")
    assert reason(world.reconcile("root:c1"), "APIExportValid") == "APIExportNotFound"
    world.registry.create(APIEXPORTS, "root:p1", "", {"metadata": {"name": "widgets"},
                                                      "spec": {"latestResourceSchemas": ["v1.widgets.example.io"]}})
    assert reason(world.reconcile("root:c1"), "APIExportValid") == "APIExportNotReady"
    world.exports.reconcile(Key(APIEXPORTS.storage_key, "root:p1", "", "widgets"))
    pending = world.reconcile("root:c1")
    assert reason(pending, "BindingUpToDate") == "APIResourceSchemaNotFound" and pending["status"]["phase"] == "Binding"
    world.registry.create(APIRESOURCESCHEMAS, "root:p1", "", schema_obj())
    assert world.reconcile("root:c1")["status"]["phase"] == "Bound"
    # the export going away later keeps what is bound served, and says so
    world.registry.delete(APIEXPORTS, "root:p1", "", "widgets")
    gone = world.reconcile("root:c1")
    assert gone["status"]["phase"] == "Bound" and reason(gone, "APIExportValid") == "APIExportNotFound"
    assert world.widgets("root:c1") is not None


def test_unbinding_parks_objects_and_rebinding_restores_them(world):
    identity = world.provide("root:p1")
    world.bind("root:c1", "root:p1")
    rt = world.widgets("root:c1")
    created = world.registry.create(rt, "root:c1", "default", {"metadata": {"name": "w"}, "spec": {"size": 2}})
    world.registry.delete(APIBINDINGS, "root:c1", "", "widgets")
    world.bindings.reconcile(Key(APIBINDINGS.storage_key, "root:c1", "", ""))
    assert world.widgets("root:c1") is None
    assert world.registry.list(rt, "*", "", ListOptions())["items"] == []
    parked = world.store.list(PARKED_PREFIX + rt.storage_key, "root:c1")[0]
    assert [o["metadata"]["uid"] for o in parked] == [created["metadata"]["uid"]]
    world.bind("root:c1", "root:p1", name="again")
    back = world.registry.get(world.widgets("root:c1"), "root:c1", "default", "w")
    assert back["metadata"]["uid"] == created["metadata"]["uid"] and back["spec"] == {"size": 2}
    assert world.store.list(PARKED_PREFIX + rt.storage_key, "root:c1")[0] == []
    assert world.widgets("*", f"widgets:{identity}") is rt
    # a deleted workspace takes its bound objects, parked or not, with it
    world.registry.delete(APIBINDINGS, "root:c1", "", "again")
    world.bindings.reconcile(Key(APIBINDINGS.storage_key, "root:c1", "", ""))
    world.registry.delete_logical_cluster("root:c1")
    world.bindings.reconcile(Key(APIBINDINGS.storage_key, "root:c1", "", ""))
    assert not any(world.store.list(resource, "root:c1")[0] for resource in world.store.counts())


def test_bind_needs_the_bind_verb(world):
    """The create handler asks the RBAC of the export's workspace (a real RBACAuthorizer) for ``bind``."""
    rbac = "rbac.authorization.k8s.io"
    roles = world.catalog.lookup("root:p1", rbac, "v1", "clusterroles")
    role_bindings = world.catalog.lookup("root:p1", rbac, "v1", "clusterrolebindings")
    world.registry.create(roles, "root:p1", "", {"metadata": {"name": "bind-widgets"}, "rules": [
        {"apiGroups": ["apis.kcp.dev"], "resources": ["apiexports"], "verbs": ["bind"], "resourceNames": ["widgets"]}]})
    world.registry.create(role_bindings, "root:p1", "", {
        "metadata": {"name": "bind-widgets"},
        "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": "bind-widgets"},
        "subjects": [{"kind": "User", "apiGroup": rbac, "name": "bob"}]})
    services = SimpleNamespace(registry=world.registry, authorizer=RBACAuthorizer(world.registry))

    def create(user: str, export: str = "widgets", groups=()):
        body = {"metadata": {"name": f"{user}-{export}"},
                "spec": {"reference": {"workspace": {"path": "root:p1", "exportName": export}}}}
        ctx = RequestContext(user=UserInfo(user, "", tuple(groups)), cluster="root:c1", namespace="", name="",
                             subresource="", body=body, request=None, services=services)
        return APIBINDINGS.handlers[("create", "")](ctx)

    with pytest.raises(errors.Forbidden) as denied:
        create("alice")
    assert denied.value.message.endswith("no permission to bind to export root:p1:widgets")
    with pytest.raises(errors.Forbidden):
        create("bob", "gadgets")
    assert create("bob")[0] == 201
    assert create("root-admin", "gadgets", groups=["system:masters"])[0] == 201
