"""CustomResourceDefinitions without HTTP: CRD validation, name decisions, custom resource types, the index that
serves them per logical cluster, the controller's status and cleanup, and OpenAPI documents."""

from __future__ import annotations

import copy

import orjson
import pytest

from kcp_virtual.framework import errors
from server.apis import builtin_types
from server.apis.apiextensions import (CUSTOM_RESOURCE_DEFINITIONS as CRDS, CustomResourceIndex, FINALIZER,
                                       decide_names, validate_crd, version_priority)
from server.controllers.crd import CRDController
from server.endpoints.openapi import OpenAPIIndex, group_version_document
from server.registry.generic import ListOptions, Registry
from server.registry.resourcetype import Catalog
from server.registry.schema.fieldvalidation import FieldValidation
from server.storage import SQLiteBackend, Store

SCHEMA = {"type": "object", "properties": {
    "spec": {"type": "object", "required": ["size"], "properties": {
        "size": {"type": "integer", "minimum": 1}, "color": {"type": "string", "default": "red"}}},
    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}


def crd(plural="widgets", kind="Widget", group="example.com", versions=None, status=None, **names) -> dict:
    version = {"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": SCHEMA},
               "subresources": {"status": {}}, "selectableFields": [{"jsonPath": ".spec.color"}],
               "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}]}
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{group}"},
            "spec": {"group": group, "scope": "Namespaced", "names": {"plural": plural, "kind": kind, **names},
                     "versions": versions or [version]}, **({"status": status} if status else {})}


@pytest.fixture
def shard(tmp_path):
    store = Store(SQLiteBackend(str(tmp_path / "kcp.db")))
    catalog = Catalog(builtin_types())
    index = CustomResourceIndex(store, catalog.builtin_types)
    catalog.add_source(index)
    registry = Registry(store, catalog)
    for cluster in ("root", "root:other"):
        registry.ensure_logical_cluster(cluster)
    yield registry, index, CRDController(registry, index)
    store.close()


def messages(causes):
    return {c["field"]: c["message"] for c in causes}


def test_crd_validation():
    assert validate_crd(crd()) == []
    bad = crd(plural="Widgets", group="nodot")
    bad["spec"]["scope"] = "Global"
    bad["spec"]["versions"][0]["storage"] = False
    got = messages(validate_crd(bad))
    assert got["spec.group"] == 'Invalid value: "nodot": should be a domain with at least one dot'
    assert got["spec.names.plural"].startswith('Invalid value: "Widgets": a lowercase RFC 1123 label')
    assert got["spec.scope"] == 'Unsupported value: "Global": supported values: "Cluster", "Namespaced"'
    assert got["spec.versions"].endswith("must have exactly one version marked as storage version")
    wrong_name = crd()
    wrong_name["metadata"]["name"] = "gadgets.example.com"
    assert messages(validate_crd(wrong_name)) == {
        "metadata.name": 'Invalid value: "gadgets.example.com": must be spec.names.plural+"."+spec.group'}
    no_schema = crd()
    del no_schema["spec"]["versions"][0]["schema"]
    assert messages(validate_crd(no_schema)) == {
        "spec.versions[0].schema.openAPIV3Schema": "Required value: schemas are required"}
    old = crd()
    changed = copy.deepcopy(old)
    changed["spec"]["scope"] = "Cluster"
    assert "field is immutable" in messages(validate_crd(changed, old))["spec.scope"]


def test_version_priority():
    versions = ["v1alpha1", "foo", "v2", "v1beta2", "v1", "v1beta1", "v10", "bar"]
    assert sorted(versions, key=version_priority) == ["v10", "v2", "v1", "v1beta2", "v1beta1", "v1alpha1", "bar",
                                                      "foo"]


def test_names_go_to_built_ins_then_accepted_then_older_crds():
    builtins = [rt for rt in builtin_types() if rt.group == "coordination.k8s.io"]
    lease = crd(plural="leases", kind="MyLease", group="coordination.k8s.io")
    assert decide_names([lease], builtins)["leases.coordination.k8s.io"].reason == "PluralConflict"
    first, second = crd(), crd(plural="gadgets", kind="Widget", singular="gadget")
    first["metadata"]["creationTimestamp"] = second["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    decided = decide_names([second, first], [])
    assert decided["gadgets.example.com"].accepted and not decided["widgets.example.com"].accepted  # name order
    first["status"] = {"conditions": [{"type": "NamesAccepted", "status": "True"}]}
    decided = decide_names([second, first], [])
    assert decided["widgets.example.com"].accepted
    assert decided["gadgets.example.com"].reason == "KindConflict"
    assert decided["gadgets.example.com"].message == '"Widget" is already in use'
    short = crd(plural="things", kind="Thing", shortNames=["wd"])
    first["spec"]["names"]["shortNames"] = ["wd"]
    assert decide_names([first, short], [])["things.example.com"].reason == "ShortNamesConflict"


def test_index_serves_a_crd_as_soon_as_it_is_stored(shard):
    registry, index, _ = shard
    catalog = registry.catalog
    assert catalog.lookup("root", "example.com", "v1", "widgets") is None
    registry.create(CRDS, "root", "", crd())
    rt = catalog.lookup("root", "example.com", "v1", "widgets")
    assert rt is not None and rt.kind == "Widget" and rt.namespaced and rt.singular == "widget"
    assert catalog.lookup("root:other", "example.com", "v1", "widgets") is None      # per logical cluster
    assert catalog.lookup("*", "example.com", "v1", "widgets") is None               # wildcard: built-ins only
    assert rt in catalog.types("root") and rt not in catalog.types("root:other")
    assert [c.name for c in rt.table_columns()] == ["Name", "Size"]
    assert set(rt.field_selectors) == {"metadata.name", "metadata.namespace", "spec.color"}
    assert not rt.allow_unconditional_update and "strategic-merge-patch" not in rt.patch_kinds
    # A status-only change keeps the very same types (caches keyed by them survive).
    stored = registry.get(CRDS, "root", "", "widgets.example.com")
    registry.update(CRDS, "root", "", "widgets.example.com", {**stored, "status": {"x": 1}}, subresource="status")
    assert catalog.lookup("root", "example.com", "v1", "widgets") is rt
    assert stored["metadata"]["finalizers"] == [FINALIZER]


def test_custom_resources_are_pruned_defaulted_and_validated(shard):
    registry, _, _ = shard
    registry.create(CRDS, "root", "", crd())
    rt = registry.catalog.lookup("root", "example.com", "v1", "widgets")
    fields = FieldValidation("Warn")
    obj = registry.create(rt, "root", "default", {"apiVersion": "example.com/v1", "kind": "Widget",
                                                  "metadata": {"name": "w1", "bogus": 1},
                                                  "spec": {"size": 2, "foo": 1}, "status": {"s": 1}},
                          field_validation=fields)
    assert obj["spec"] == {"size": 2, "color": "red"} and "status" not in obj
    assert fields.warnings == ['unknown field "metadata.bogus"', 'unknown field "spec.foo"']
    with pytest.raises(errors.BadRequest):
        registry.create(rt, "root", "default", {"metadata": {"name": "w2"}, "spec": {"size": 2, "foo": 1}},
                        field_validation=FieldValidation("Strict"))
    with pytest.raises(errors.Invalid) as exc:
        registry.create(rt, "root", "default", {"metadata": {"name": "w3"}, "spec": {"size": 0}})
    assert exc.value.details["causes"][0]["field"] == "spec.size"
    with pytest.raises(errors.Invalid) as exc:
        registry.update(rt, "root", "default", "w1", {"metadata": {"name": "w1"}, "spec": {"size": 3}})
    assert "must be specified for an update" in exc.value.message


def test_controller_writes_conditions_and_finalizes(shard):
    registry, index, controller = shard
    registry.create(CRDS, "root", "", crd())
    registry.create(CRDS, "root", "", crd(plural="gadgets", kind="Widget", singular="gadget"))
    for name in ("widgets.example.com", "gadgets.example.com"):
        controller.reconcile(registry.key(CRDS, "root", "", name))
    widgets = registry.get(CRDS, "root", "", "widgets.example.com")
    conditions = {c["type"]: c for c in widgets["status"]["conditions"]}
    assert conditions["NamesAccepted"]["status"] == conditions["Established"]["status"] == "True"
    assert widgets["status"]["acceptedNames"]["kind"] == "Widget" and widgets["status"]["storedVersions"] == ["v1"]
    gadgets = registry.get(CRDS, "root", "", "gadgets.example.com")
    conditions = {c["type"]: c for c in gadgets["status"]["conditions"]}
    assert (conditions["NamesAccepted"]["reason"], conditions["Established"]["reason"]) == ("KindConflict",
                                                                                            "NotAccepted")
    assert registry.catalog.lookup("root", "example.com", "v1", "gadgets") is None
    rt = registry.catalog.lookup("root", "example.com", "v1", "widgets")
    registry.create(rt, "root", "default", {"metadata": {"name": "w1"}, "spec": {"size": 1}})
    registry.create(rt, "root", "default", {"metadata": {"name": "held", "finalizers": ["x/y"]}, "spec": {"size": 1}})
    registry.delete(CRDS, "root", "", "widgets.example.com")
    with pytest.raises(errors.MethodNotAllowed):   # terminating: no new objects
        registry.create(registry.catalog.lookup("root", "example.com", "v1", "widgets"), "root", "default",
                        {"metadata": {"name": "w2"}, "spec": {"size": 1}})
    key = registry.key(CRDS, "root", "", "widgets.example.com")
    with pytest.raises(errors.Conflict):           # "held" still has its finalizer
        controller.reconcile(key)
    terminating = {c["type"]: c for c in registry.get(CRDS, "root", "", "widgets.example.com")["status"][
        "conditions"]}["Terminating"]
    assert terminating["reason"] == "InstanceDeletionInProgress"
    rt = registry.catalog.lookup("root", "example.com", "v1", "widgets")
    assert [o["metadata"]["name"] for o in registry.list(rt, "root", "", ListOptions())["items"]] == ["held"]
    registry.patch(rt, "root", "default", "held", "application/merge-patch+json", {"metadata": {"finalizers": None}})
    controller.reconcile(key)
    with pytest.raises(errors.NotFound):
        registry.get(CRDS, "root", "", "widgets.example.com")
    assert registry.catalog.lookup("root", "example.com", "v1", "widgets") is None
    controller.reconcile(key)    # the gadgets CRD gets the names now
    assert registry.catalog.lookup("root", "example.com", "v1", "gadgets") is not None


def test_a_created_crd_carries_the_status_kube_gives_it(shard):
    """As kube's strategy: the create response and every read after it have ``status`` (the storage version
    stored, no names accepted, no conditions yet) before the controller ran; a new storage version joins."""
    registry, _, controller = shard
    created = registry.create(CRDS, "root", "", crd(status={"storedVersions": ["bogus"]}))
    expected = {"conditions": [], "acceptedNames": {"plural": "", "kind": ""}, "storedVersions": ["v1"]}
    assert created["status"] == expected
    assert registry.get(CRDS, "root", "", "widgets.example.com")["status"] == expected
    v1 = crd()["spec"]["versions"][0]
    v2 = {**v1, "name": "v2"}
    updated = registry.update(CRDS, "root", "", "widgets.example.com", {
        **created, "spec": {**created["spec"], "versions": [{**v1, "storage": False}, v2]}})
    assert updated["status"]["storedVersions"] == ["v1", "v2"]
    controller.reconcile(registry.key(CRDS, "root", "", "widgets.example.com"))
    status = registry.get(CRDS, "root", "", "widgets.example.com")["status"]
    assert status["storedVersions"] == ["v1", "v2"] and status["acceptedNames"]["kind"] == "Widget"


def test_several_versions_store_one_and_show_each(shard):
    registry, _, _ = shard
    v1 = crd()["spec"]["versions"][0]
    beta = {**v1, "name": "v1beta1", "storage": False}
    registry.create(CRDS, "root", "", crd(versions=[beta, v1]))
    types = [rt for rt in registry.catalog.types("root") if rt.group == "example.com"]
    assert [rt.version for rt in types] == ["v1", "v1beta1"]
    v1_rt, beta_rt = types
    stored = registry.create(beta_rt, "root", "default", {"apiVersion": "example.com/v1beta1", "kind": "Widget",
                                                          "metadata": {"name": "w"}, "spec": {"size": 1}})
    assert stored["apiVersion"] == "example.com/v1"
    assert beta_rt.convert(stored)["apiVersion"] == "example.com/v1beta1" and v1_rt.convert(stored) is stored
    patched = registry.patch(beta_rt, "root", "default", "w", "application/merge-patch+json", {"spec": {"size": 2}})
    assert patched["spec"]["size"] == 2 and patched["apiVersion"] == "example.com/v1"


def test_openapi_documents():
    store_free = crd()
    from server.apis.apiextensions import custom_resource_types
    rt = custom_resource_types(store_free)[0]
    doc = group_version_document([rt])
    widget = doc["components"]["schemas"]["com.example.v1.Widget"]
    assert widget["x-kubernetes-group-version-kind"] == [{"group": "example.com", "version": "v1", "kind": "Widget"}]
    assert widget["properties"]["spec"]["properties"]["size"] == {"type": "integer", "minimum": 1}
    assert "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta" in doc["components"]["schemas"]
    patch = doc["paths"]["/apis/example.com/v1/namespaces/{namespace}/widgets/{name}"]["patch"]
    assert "fieldValidation" in [p["name"] for p in patch["parameters"]]
    configmaps = [t for t in builtin_types() if t.plural == "configmaps"]
    core = group_version_document(configmaps)["components"]["schemas"]
    assert core["io.k8s.api.core.v1.ConfigMap"]["properties"]["data"]["additionalProperties"] == {"type": "string"}
    first, second = OpenAPIIndex([rt, *configmaps]), OpenAPIIndex([*configmaps, rt])
    assert first.documents == second.documents            # shared, memoized per group/version
    changed = copy.deepcopy(store_free)
    changed["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["x"] = {
        "type": "string"}
    other = OpenAPIIndex([custom_resource_types(changed)[0]])
    assert other.documents["apis/example.com/v1"][1] != first.documents["apis/example.com/v1"][1]
    assert orjson.loads(first.root("/clusters/root"))["paths"]["api/v1"]["serverRelativeURL"].startswith(
        "/clusters/root/openapi/v3/api/v1?hash=")
