"""Structural schema semantics (pruning, defaulting, validation, structure checks), the built-in schemas and
``fieldValidation``: pure functions, kube's field paths and messages."""

from __future__ import annotations

import pytest

from kcp_virtual.framework import errors
from server.registry.schema import builtins, structural
from server.registry.schema.fieldvalidation import FieldValidation

SPEC = {
    "type": "object", "required": ["size"], "properties": {
        "size": {"type": "integer", "minimum": 1, "maximum": 10},
        "ratio": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "multipleOf": 0.5},
        "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
        "name": {"type": "string", "minLength": 2, "maxLength": 5, "pattern": "^[a-z]+$"},
        "parts": {"type": "array", "minItems": 1, "maxItems": 2,
                  "items": {"type": "object", "properties": {"id": {"type": "integer", "default": 0}}}},
        "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
        "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["port"],
                  "items": {"type": "object", "properties": {"port": {"type": "integer"}}}},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "port": {"x-kubernetes-int-or-string": True},
        "note": {"type": "string", "nullable": True},
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                 "properties": {"known": {"type": "object", "properties": {"a": {"type": "string"}}}}},
        "template": {"type": "object", "x-kubernetes-embedded-resource": True,
                     "properties": {"spec": {"type": "object", "properties": {"x": {"type": "string"}}}}},
        "limits": {"type": "object", "minProperties": 1, "maxProperties": 2,
                   "x-kubernetes-preserve-unknown-fields": True},
    }}
SCHEMA = {"type": "object", "properties": {"spec": SPEC, "status": {"type": "object",
                                                                      "x-kubernetes-preserve-unknown-fields": True}}}
META = {"type": "object", "properties": {"name": {"type": "string"}, "labels": {"type": "object"}}}


def messages(causes):
    return {c["field"]: c["message"] for c in causes}


def test_prune_reports_every_unknown_field_with_its_path():
    obj = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "junk": 1},
           "spec": {"size": 1, "bogus": True, "parts": [{"id": 1, "x": 2}], "labels": {"a": "b"},
                    "free": {"anything": {"goes": 1}, "known": {"a": "s", "b": 1}},
                    "template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "zzz": 1},
                                 "spec": {"x": "1", "y": 2}}},
           "status": {"whatever": [1]}, "extra": 1}
    unknown = structural.prune(SCHEMA, obj, object_meta=META)
    assert sorted(unknown) == ["extra", "metadata.junk", "spec.bogus", "spec.free.known.b", "spec.parts[0].x",
                               "spec.template.metadata.zzz", "spec.template.spec.y"]
    assert obj == {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
                   "spec": {"size": 1, "parts": [{"id": 1}], "labels": {"a": "b"},
                            "free": {"anything": {"goes": 1}, "known": {"a": "s"}},
                            "template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                                         "spec": {"x": "1"}}},
                   "status": {"whatever": [1]}}


def test_object_without_properties_keeps_nothing():
    obj = {"spec": {"a": 1}}
    assert structural.prune({"type": "object", "properties": {"spec": {"type": "object"}}}, obj, root=False) == \
        ["spec.a"]
    assert obj == {"spec": {}}


def test_defaults_fill_absent_and_null_fields():
    obj = {"spec": {"size": 1, "color": None, "note": None, "parts": [{}, {"id": 3}], "name": None}}
    structural.default(SCHEMA, obj)
    assert obj["spec"] == {"size": 1, "color": "red", "note": None, "parts": [{"id": 0}, {"id": 3}]}
    empty = {"spec": {}}
    structural.default(SCHEMA, empty)
    assert empty == {"spec": {"color": "red"}}


def test_validation_messages_follow_kube():
    obj = {"spec": {"ratio": 0, "color": "pink", "name": "ABCDEFG", "parts": [], "tags": ["a", "a"],
                    "ports": [{"port": 1}, {"port": 1}], "labels": {"k": 1}, "port": 1.5, "limits": {},
                    "template": {"metadata": {}}}}
    got = messages(structural.validate(SCHEMA, obj))
    assert got == {
        "spec.size": "Required value",
        "spec.ratio": "Invalid value: 0: spec.ratio in body should be greater than 0",
        "spec.color": 'Unsupported value: "pink": supported values: "red", "blue"',
        "spec.name": "Invalid value: \"ABCDEFG\": spec.name in body should match '^[a-z]+$'",
        "spec.parts": "Invalid value: []: spec.parts in body should have at least 1 items",
        "spec.tags[1]": 'Duplicate value: "a"',
        "spec.ports[1]": 'Duplicate value: {"port":1}',
        "spec.labels[k]": 'Invalid value: "integer": spec.labels[k] in body must be of type string: "integer"',
        "spec.port": 'Invalid value: "number": spec.port in body must be of type integer,string: "number"',
        "spec.limits": "Invalid value: {}: spec.limits in body should have at least 1 properties",
        "spec.template.apiVersion": "Required value: must not be empty",
        "spec.template.kind": "Required value: must not be empty",
    }
    causes = structural.validate(SCHEMA, obj)
    assert {c["type"] for c in causes if c["field"] == "spec.name"} == {"FieldValueTooLong", "FieldValueInvalid"}
    assert "Too long: may not be more than 5 bytes" in [c["message"] for c in causes]


def test_validation_bounds_lengths_and_nulls():
    assert messages(structural.validate(SCHEMA, {"spec": {"size": 11, "name": "a", "parts": [{}, {}, {}],
                                                          "ratio": 0.7}})) == {
        "spec.size": "Invalid value: 11: spec.size in body should be less than or equal to 10",
        "spec.name": 'Invalid value: "a": spec.name in body should be at least 2 chars long',
        "spec.parts": "Too many: 3: must have at most 2 items",
        "spec.ratio": "Invalid value: 0.7: spec.ratio in body should be a multiple of 0.5"}
    assert structural.validate(SCHEMA, {"spec": {"size": 0}})[0]["message"] == \
        "Invalid value: 0: spec.size in body should be greater than or equal to 1"
    assert messages(structural.validate(SCHEMA, {"spec": {"size": None, "note": None}})) == {
        "spec.size": 'Invalid value: "null": spec.size in body must be of type integer: "null"'}
    assert structural.validate(SCHEMA, {"spec": {"size": 2, "port": "http", "labels": {}, "ratio": 1.5}}) == []


def test_combinators():
    schema = {"type": "object", "properties": {"v": {"anyOf": [{"type": "integer"}, {"type": "string"}],
                                                     "not": {"enum": [0]}}}}
    assert structural.validate(schema, {"v": 1}) == []
    assert [c["field"] for c in structural.validate(schema, {"v": True})] == ["v"]
    assert "must not validate the schema (not)" in structural.validate(schema, {"v": 0})[0]["message"]


def test_check_structural():
    path = "spec.versions[0].schema.openAPIV3Schema"
    assert structural.check_structural(SCHEMA, path) == []
    bad = {"properties": {"a": {"properties": {}}, "b": {"type": "array"}, "c": {"type": "integer", "default": "x"},
                          "d": {"type": "object", "properties": {"e": {"type": "string"}},
                                "additionalProperties": {"type": "string"}},
                          "f": {"type": "date"}, "g": {"$ref": "#/x", "type": "object"}}}
    got = messages(structural.check_structural(bad, path))
    assert got[f"{path}.type"] == "Required value: must not be empty at the root"
    assert got[f"{path}.properties[a].type"] == "Required value: must not be empty for specified object fields"
    assert got[f"{path}.properties[b].items"] == "Required value: must be specified"
    assert f"{path}.properties[c].default" in got
    assert got[f"{path}.properties[d].additionalProperties"].startswith("Forbidden")
    assert got[f"{path}.properties[f].type"].startswith('Unsupported value: "date"')
    assert got[f"{path}.properties[g].$ref"] == "Forbidden: $ref is not supported"


def test_builtin_schemas_are_linked_and_complete():
    deployment = builtins.resource_schema("apps", "v1", "Deployment")
    container = deployment["properties"]["spec"]["properties"]["template"]["properties"]["spec"]["properties"][
        "containers"]["items"]
    assert {"name", "image", "ports", "env", "livenessProbe", "resources"} <= set(container["properties"])
    assert deployment["properties"]["metadata"] is builtins.object_meta()
    assert builtins.resource_schema("", "v1", "ConfigMap")["properties"]["data"]["additionalProperties"] == \
        {"type": "string"}
    assert builtins.resource_schema("tenancy.kcp.dev", "v1alpha1", "ClusterWorkspace") is None
    obj = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {
        "strategy": {"rollingUpdate": {"maxSurge": "25%"}}, "template": {"spec": {"containers": [
            {"name": "c", "image": "i", "colour": 1, "resources": {"limits": {"cpu": "1"}}}]}}}}
    assert structural.prune(deployment, obj, object_meta=builtins.object_meta()) == [
        "spec.template.spec.containers[0].colour"]
    crd_schema = builtins.resource_schema("apiextensions.k8s.io", "v1", "CustomResourceDefinition")
    crd = {"spec": {"versions": [{"schema": {"openAPIV3Schema": {"type": "object", "properties": {"a": {
        "type": "string", "x-kubernetes-preserve-unknown-fields": True, "default": {"x": 1}, "typo": 1}}}}}]}}
    assert structural.prune(crd_schema, crd) == [
        "spec.versions[0].schema.openAPIV3Schema.properties[a].typo"]


def test_field_validation_modes():
    strict = FieldValidation("Strict")
    with pytest.raises(errors.BadRequest) as exc:
        strict.report(["spec.foo", "spec.bar"])
    assert exc.value.message == 'strict decoding error: unknown field "spec.foo", unknown field "spec.bar"'
    warn = FieldValidation.from_query(None)
    warn.report(["spec.foo"])
    warn.report(["spec.foo"])   # a retried patch reports again: one warning
    assert warn.headers() == [("Warning", '299 - "unknown field \\"spec.foo\\""')]
    ignore = FieldValidation("Ignore")
    ignore.report(["spec.foo"])
    assert ignore.warnings == []
    with pytest.raises(errors.BadRequest):
        FieldValidation("Loose")
