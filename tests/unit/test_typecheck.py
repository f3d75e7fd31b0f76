"""Built-in kinds refuse what their Go types refuse (400, kube's words), on every write path; stored ones repaired."""

from __future__ import annotations

import pytest

from kcp_virtual.framework import errors
from server.apis import builtin_types
from server.registry import patch as patches
from server.registry.generic import ListOptions
from server.registry.repair import repair_stored_types
from server.registry.schema import builtins, typecheck
from tests.unit.test_authn import registry  # noqa: F401  (the fixture: a root cluster on SQLite)


def error(kind, obj, group="", version="v1"):
    return typecheck.decode_error(kind, version, builtins.resource_schema(group, version, kind), obj)


def prefix(kind):
    return f'{kind} in version "v1" cannot be handled as a {kind}: '


@pytest.mark.parametrize("kind, group, obj, expected", [
    ("ConfigMap", "", {"data": {"port": 8080}},
     "json: cannot unmarshal number into Go struct field ConfigMap.data of type string"),
    ("ConfigMap", "", {"binaryData": {"a": "!not base64"}}, "illegal base64 data at input byte 0"),
    ("ConfigMap", "", {"metadata": {"labels": {"version": 1}}},
     "json: cannot unmarshal number into Go struct field ObjectMeta.metadata.labels of type string"),
    ("Deployment", "apps", {"spec": "three"},
     "json: cannot unmarshal string into Go struct field Deployment.spec of type v1.DeploymentSpec"),
    ("Deployment", "apps", {"spec": {"replicas": "3"}},
     "json: cannot unmarshal string into Go struct field DeploymentSpec.spec.replicas of type int64"),
    ("Deployment", "apps", {"spec": {"template": {"spec": {"containers": [{"name": "a", "image": 5}]}}}},
     "json: cannot unmarshal number into Go struct field Container.spec.template.spec.containers.image of type "
     "string"),
    ("Deployment", "apps", {"spec": {"template": {"spec": {"containers": {"name": "a"}}}}},
     "json: cannot unmarshal object into Go struct field PodSpec.spec.template.spec.containers of type "
     "[]v1.Container"),
    ("Deployment", "apps", {"spec": {"strategy": {"rollingUpdate": {"maxSurge": True}}}},
     "json: cannot unmarshal bool into Go value of type int32"),
    ("Deployment", "apps", {"spec": {"template": {"spec": {"containers": [
        {"name": "a", "resources": {"limits": {"cpu": "lots"}}}]}}}},
     "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"),
    ("Lease", "coordination.k8s.io", {"spec": {"leaseDurationSeconds": 1.5}},
     "json: cannot unmarshal number 1.5 into Go struct field LeaseSpec.spec.leaseDurationSeconds of type int64"),
    ("Lease", "coordination.k8s.io", {"spec": {"renewTime": "yesterday"}},
     'parsing time "yesterday" as "2006-01-02T15:04:05Z07:00": cannot parse "yesterday" as RFC 3339'),
    ("Role", "rbac.authorization.k8s.io", {"rules": [{"verbs": "get"}]},
     "json: cannot unmarshal string into Go struct field PolicyRule.rules.verbs of type []string"),
])
def test_mismatches_in_go_words(kind, group, obj, expected):
    assert error(kind, obj, group) == prefix(kind) + expected


@pytest.mark.parametrize("kind, group, obj", [
    ("ConfigMap", "", {"data": {"a": "1"}, "binaryData": {"b": "aGVsbG8="}, "immutable": None}),
    ("Deployment", "apps", {"spec": {"replicas": 2, "strategy": {"rollingUpdate": {"maxSurge": "25%",
                                                                                  "maxUnavailable": 1}},
                                     "template": {"spec": {"containers": [{"name": "a", "resources": {
                                         "limits": {"cpu": 1, "memory": "1.5Gi"}, "requests": {"cpu": "100m"}}}],
                                         "volumes": [{"name": "v", "emptyDir": {"sizeLimit": "1e3"}}]}}}}),
    ("Lease", "coordination.k8s.io", {"spec": {"renewTime": "2024-01-01T00:00:00.000000Z"}}),
    ("CustomResourceDefinition", "apiextensions.k8s.io", {"spec": {"versions": [{"schema": {"openAPIV3Schema": {
        "type": "object", "additionalProperties": True, "default": {"x": [1, "a"]}, "items": [{}]}}}]}}),
])
def test_what_go_accepts_passes(kind, group, obj):
    assert error(kind, obj, group) is None


def test_integral_numbers_in_integer_fields_become_integers():
    obj = {"spec": {"replicas": 3.0}}
    assert error("Deployment", obj, "apps") is None
    assert obj["spec"]["replicas"] == 3 and type(obj["spec"]["replicas"]) is int


def _wrong_value(schema: dict):
    """A value of the wrong JSON type for ``schema``."""
    return 5 if schema.get("type") in ("string", "object", "array", "boolean") or "properties" in schema else True


def _typed_field(rt):
    schema = rt.structural_schema()
    for name, sub in schema["properties"].items():
        if name not in ("apiVersion", "kind", "metadata") and (sub.get("type") or sub.get("properties")):
            return name, sub
    return None


STORED = [rt for rt in builtin_types() if rt.structural_schema() is not None and not rt.handlers
          and _typed_field(rt) is not None]


@pytest.mark.parametrize("rt", STORED, ids=lambda rt: rt.kind)
@pytest.mark.parametrize("how", ["create", "update", "merge-patch", "apply"])
def test_every_built_in_kind_refuses_wrong_types_on_every_write(registry, rt, how):
    rt = registry.catalog.lookup("root", rt.group, rt.version, rt.plural)
    field, schema = _typed_field(rt)
    namespace = "default" if rt.namespaced else ""
    bad = {"apiVersion": rt.api_version, "kind": rt.kind, "metadata": {"name": "bad-types"},
           field: _wrong_value(schema)}
    with pytest.raises(errors.BadRequest) as exc:
        if how == "create":
            registry.create(rt, "root", namespace, bad)
        elif how == "apply":
            registry.apply(rt, "root", namespace, "bad-types", bad, field_manager="test")
        else:
            good = {"metadata": {"name": "bad-types"}}
            if rt.kind == "Deployment":
                good["spec"] = {"selector": {"matchLabels": {"a": "b"}},
                                "template": {"metadata": {"labels": {"a": "b"}}}}
            if rt.kind.endswith("RoleBinding"):
                good["roleRef"] = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"}
            if rt.kind == "CustomResourceDefinition":
                pytest.skip("a valid CRD needs a full spec; create and apply cover it")
            registry.create(rt, "root", namespace, good)
            if how == "update":
                registry.update(rt, "root", namespace, "bad-types", bad)
            else:
                registry.patch(rt, "root", namespace, "bad-types", patches.MERGE_PATCH, {field: _wrong_value(schema)})
    assert exc.value.status()["message"].startswith(prefix(rt.kind)), exc.value.status()
    listed = registry.list(rt, "root", namespace, ListOptions())
    for item in listed["items"]:
        assert typecheck.decode_error(rt.kind, rt.version, rt.structural_schema(), item) is None


def test_repair_fixes_what_yaml_meant_and_reports_the_rest():
    obj = {"data": {"port": 8080, "debug": True, "ratio": 0.5, "nested": {"x": 1}}}
    changed, unfixed = typecheck.repair("ConfigMap", builtins.resource_schema("", "v1", "ConfigMap"), obj)
    assert changed
    assert obj["data"] == {"port": "8080", "debug": "true", "ratio": "0.5", "nested": {"x": 1}}
    assert unfixed == ["json: cannot unmarshal object into Go struct field ConfigMap.data of type string"]


def test_start_up_repairs_stored_objects_older_writes_let_through(registry):
    rt = registry.catalog.lookup("root", "", "v1", "configmaps")
    good = registry.create(rt, "root", "default", {"metadata": {"name": "good"}, "data": {"a": "1"}})

    def stored(name, data):  # as an older kcp-virtual stored it: straight into storage, unchecked
        obj = {"apiVersion": "v1", "kind": "ConfigMap", "data": data,
               "metadata": {"name": name, "namespace": "default", "uid": name,
                            "annotations": {"kcp.dev/cluster": "root"}}}
        return registry.store.create(registry.key(rt, "root", "default", name), obj)

    stored("meant", {"port": 8080, "debug": True})
    lost = stored("lost", {"nested": {"x": 1}})
    assert repair_stored_types(registry) == (1, 1)
    assert registry.get(rt, "root", "default", "meant")["data"] == {"port": "8080", "debug": "true"}
    assert registry.get(rt, "root", "default", "lost") == lost  # left for an administrator
    assert registry.get(rt, "root", "default", "good") == good
    assert repair_stored_types(registry) == (0, 1)  # idempotent
