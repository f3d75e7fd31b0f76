"""Field sets, fieldsV1, ownership after updates, and server-side apply's merge, removal and conflict rules."""

from __future__ import annotations

import json

import pytest

from kcp_virtual.framework import errors
from server.apis.core import TYPES as BUILTINS
from server.registry.apply import type_of
from server.registry.managedfields import (LAST_APPLIED, MAX_UPDATE_MANAGERS, after_update, applied_object,
                                                   check_field_manager, compare, decode, ensure_named, field_set,
                                                   from_fields_v1, manager_from_user_agent, merge, path_string, remove,
                                                   to_fields_v1)
from server.registry.resourcetype import ResourceType

CONFIGMAP = next(rt for rt in BUILTINS if rt.kind == "ConfigMap")
DEPLOYMENT = next(rt for rt in BUILTINS if rt.kind == "Deployment")
WIDGET_SCHEMA = {"type": "object", "properties": {
    "spec": {"type": "object", "properties": {
        "size": {"type": "integer"}, "color": {"type": "string"},
        "parts": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                  "items": {"type": "object", "properties": {"name": {"type": "string"},
                                                             "count": {"type": "integer"}}}},
        "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
        "args": {"type": "array", "items": {"type": "string"}},
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}},
    "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}}}
WIDGET = ResourceType("example.com", "v1", "Widget", "widgets", "widget", True, schema=WIDGET_SCHEMA,
                      allow_unconditional_update=False, subresources=("status",))


def configmap(data: dict | None = None, **meta) -> dict:
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ns", **meta}}
    if data is not None:
        body["data"] = data
    return body


def widget(**spec) -> dict:
    return {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": "ns"},
            "spec": spec}


def deployment(containers: list) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "ns"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "d"}},
                     "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": containers}}}}


def fields_of(obj: dict, manager: str, operation: str | None = None) -> dict:
    entries = [e for e in obj["metadata"]["managedFields"] if e["manager"] == manager
               and (operation is None or e["operation"] == operation)]
    assert len(entries) == 1, obj["metadata"]["managedFields"]
    return entries[0]["fieldsV1"]


# ---------------------------------------------------------------------------------------------- fieldsV1

def test_fields_v1_of_a_deployment_uses_keys_for_containers_and_ports():
    obj = deployment([{"name": "web", "image": "nginx", "ports": [{"containerPort": 80}],
                       "args": ["-v"], "env": [{"name": "A", "value": "1"}]}])
    fields = to_fields_v1(field_set(obj, type_of(DEPLOYMENT)))
    container = fields["f:spec"]["f:template"]["f:spec"]["f:containers"]['k:{"name":"web"}']
    assert list(container) == [".", "f:args", "f:env", "f:image", "f:name", "f:ports"]
    assert container["f:args"] == {}  # atomic list: a leaf
    assert container["f:ports"] == {'k:{"containerPort":80,"protocol":"TCP"}': {".": {}, "f:containerPort": {}}}
    assert fields["f:spec"]["f:selector"] == {}  # LabelSelector is an atomic struct
    assert "." not in fields["f:spec"] and fields["f:metadata"] == {"f:name": {}, "f:namespace": {}}


def test_fields_v1_sets_maps_and_schemaless_content():
    obj = widget(tags=["a", "b"], args=["x"], free={"deep": {"k": 1}}, parts=[{"name": "p", "count": 2}])
    fields = to_fields_v1(field_set(obj, type_of(WIDGET)))["f:spec"]
    assert fields["f:tags"] == {'v:"a"': {}, 'v:"b"': {}}
    assert fields["f:args"] == {}
    assert fields["f:free"] == {"f:deep": {".": {}, "f:k": {}}}  # map entries are members, declared fields are not
    assert fields["f:parts"] == {'k:{"name":"p"}': {".": {}, "f:count": {}, "f:name": {}}}


def test_fields_v1_round_trips_and_canonicalises_keys():
    paths = field_set(deployment([{"name": "a", "image": "x", "ports": [{"protocol": "UDP", "containerPort": 53}]}]),
                      type_of(DEPLOYMENT))
    encoded = to_fields_v1(paths)
    assert from_fields_v1(json.loads(json.dumps(encoded))) == frozenset(paths)
    assert from_fields_v1({'k:{ "protocol": "UDP", "containerPort": 53 }': {}}) == \
        {('k:{"containerPort":53,"protocol":"UDP"}',)}
    with pytest.raises(ValueError):
        from_fields_v1({"x:nope": {}})


def test_path_strings_read_like_kube():
    assert path_string(("f:spec", "f:containers", 'k:{"name":"c"}', "f:image")) == '.spec.containers[name="c"].image'
    assert path_string(("f:spec", "f:ports", 'k:{"containerPort":80,"protocol":"TCP"}')) == \
        '.spec.ports[containerPort=80,protocol="TCP"]'
    assert path_string(("f:metadata", "f:finalizers", 'v:"x"')) == '.metadata.finalizers[="x"]'


def test_duplicate_or_keyless_items_have_no_field_set():
    node = type_of(DEPLOYMENT)
    with pytest.raises(ValueError, match='duplicate entries for key \\[name="a"\\]'):
        field_set(deployment([{"name": "a"}, {"name": "a"}]), node, strict=True)
    with pytest.raises(ValueError, match='omits key field "name"'):
        field_set(deployment([{"image": "x"}]), node, strict=True)


# ---------------------------------------------------------------------------------------------- walks

def test_compare_reports_added_modified_removed():
    node = type_of(CONFIGMAP)
    added, modified, removed = compare(configmap({"a": "1", "b": "2"}), configmap({"a": "9", "c": "3"}), node)
    assert added == {("f:data", "f:c")} and modified == {("f:data", "f:a")} and removed == {("f:data", "f:b")}


def test_merge_keeps_live_items_and_orders_like_structured_merge_diff():
    node = type_of(DEPLOYMENT)
    live = deployment([{"name": "a", "image": "1"}, {"name": "b", "image": "1"}, {"name": "c", "image": "1"}])
    config = deployment([{"name": "c", "image": "2"}, {"name": "new", "image": "2"}, {"name": "a", "image": "2"}])
    merged = merge(live, config, node)
    containers = merged["spec"]["template"]["spec"]["containers"]
    assert [(c["name"], c["image"]) for c in containers] == [("b", "1"), ("c", "2"), ("new", "2"), ("a", "2")]
    assert live["spec"]["template"]["spec"]["containers"][0]["image"] == "1"  # inputs untouched


def test_remove_and_ensure_named_fields():
    node = type_of(DEPLOYMENT)
    obj = deployment([{"name": "a", "image": "x"}, {"name": "b", "image": "y"}])
    containers = ("f:spec", "f:template", "f:spec", "f:containers")
    out = remove(obj, {containers + ('k:{"name":"b"}',)}, node)
    assert [c["name"] for c in out["spec"]["template"]["spec"]["containers"]] == ["a"]
    named = ensure_named({containers + ('k:{"name":"a"}', "f:image"), ("f:metadata", "f:labels", "f:x")}, node)
    assert ("f:spec",) in named and containers in named and ("f:metadata", "f:labels") in named
    assert containers + ('k:{"name":"a"}',) not in named  # list items are not named fields


# ---------------------------------------------------------------------------------------------- updates

def test_create_owns_everything_but_server_fields():
    obj = configmap({"a": "1"}, labels={"x": "y"}, uid="u", resourceVersion="5",
                    annotations={"kcp.dev/cluster": "root"})
    entries = after_update(CONFIGMAP, None, obj, "kubectl-create", hidden=("kcp.dev/cluster",))
    assert entries[0]["manager"] == "kubectl-create" and entries[0]["operation"] == "Update"
    assert entries[0]["apiVersion"] == "v1" and entries[0]["fieldsType"] == "FieldsV1" and entries[0]["time"]
    assert entries[0]["fieldsV1"] == {"f:data": {".": {}, "f:a": {}}, "f:metadata": {"f:labels": {".": {}, "f:x": {}}}}


def test_custom_resource_create_owns_spec_itself():
    entries = after_update(WIDGET, None, widget(size=1), "m")
    assert entries[0]["fieldsV1"] == {"f:spec": {".": {}, "f:size": {}}}


def test_an_update_takes_changed_fields_from_other_managers():
    created = {**configmap({"a": "1", "b": "2"})}
    created["metadata"]["managedFields"] = after_update(CONFIGMAP, None, created, "creator")
    edited = json.loads(json.dumps(created))
    edited["data"]["a"] = "changed"
    del edited["data"]["b"]
    edited["metadata"]["managedFields"] = after_update(CONFIGMAP, created, edited, "kubectl-edit")
    assert fields_of(edited, "creator") == {"f:data": {}}  # the map itself, a leaf now
    assert fields_of(edited, "kubectl-edit") == {"f:data": {"f:a": {}}}
    unchanged = json.loads(json.dumps(edited))
    assert after_update(CONFIGMAP, edited, unchanged, "other") == edited["metadata"]["managedFields"]


def test_a_status_update_is_owned_per_subresource_and_status_is_ignored_on_the_main_resource():
    old = widget(size=1)
    old["metadata"]["managedFields"] = after_update(WIDGET, None, old, "creator")
    new = json.loads(json.dumps(old))
    new["status"] = {"ready": True}
    entries = after_update(WIDGET, old, new, "controller", subresource="status")
    status = next(e for e in entries if e["manager"] == "controller")
    assert status["subresource"] == "status" and status["fieldsV1"] == {"f:status": {".": {}, "f:ready": {}}}
    assert after_update(WIDGET, old, new, "someone") == old["metadata"]["managedFields"]


def test_sent_managed_fields_replace_the_stored_ones_and_a_single_empty_entry_resets_them():
    old = configmap({"a": "1"})
    old["metadata"]["managedFields"] = after_update(CONFIGMAP, None, old, "creator")
    reset = json.loads(json.dumps(old))
    reset["metadata"]["managedFields"] = [{}]
    assert after_update(CONFIGMAP, old, reset, "x") is None
    kept = json.loads(json.dumps(old))
    kept["metadata"]["managedFields"] = []
    assert after_update(CONFIGMAP, old, kept, "x") == old["metadata"]["managedFields"]


def test_update_managers_are_capped_into_ancient_changes():
    obj = configmap({})
    for i in range(MAX_UPDATE_MANAGERS + 3):
        new = json.loads(json.dumps(obj))
        new["data"][f"k{i}"] = "v"
        new["metadata"]["managedFields"] = after_update(CONFIGMAP, obj, new, f"m{i:02d}")
        obj = new
    managers = [e["manager"] for e in obj["metadata"]["managedFields"]]
    assert len(managers) == MAX_UPDATE_MANAGERS and managers.count("ancient-changes") == 1 and "m00" not in managers
    ancient = fields_of(obj, "ancient-changes")["f:data"]
    assert {"f:k0", "f:k1", "f:k2"} <= set(ancient)


# ---------------------------------------------------------------------------------------------- apply

def test_apply_creates_with_one_apply_entry():
    obj = applied_object(CONFIGMAP, None, configmap({"a": "1"}), "kubectl")
    assert obj["data"] == {"a": "1"}
    [entry] = obj["metadata"]["managedFields"]
    assert (entry["manager"], entry["operation"], entry["fieldsV1"]) == ("kubectl", "Apply", {"f:data": {"f:a": {}}})


def test_apply_removes_what_the_manager_stopped_applying():
    first = applied_object(CONFIGMAP, None, configmap({"a": "1", "b": "2"}, labels={"l": "1"}), "m")
    second = applied_object(CONFIGMAP, first, configmap({"a": "1"}), "m")
    assert second["data"] == {"a": "1"} and "labels" not in second["metadata"]
    assert second["metadata"]["name"] == "c"
    third = applied_object(CONFIGMAP, second, configmap(), "m")
    assert "data" not in third and "managedFields" not in third["metadata"]


def test_apply_keeps_omitted_fields_another_manager_owns():
    first = applied_object(CONFIGMAP, None, configmap({"a": "1", "b": "2"}), "one")
    shared = applied_object(CONFIGMAP, first, configmap({"b": "2"}), "two")  # same value: shared, no conflict
    after = applied_object(CONFIGMAP, shared, configmap({"a": "1"}), "one")
    assert after["data"] == {"a": "1", "b": "2"}
    assert fields_of(after, "two") == {"f:data": {"f:b": {}}}


def test_apply_conflicts_name_the_manager_and_the_field():
    created = configmap({"size": "1"})
    created["metadata"]["managedFields"] = after_update(CONFIGMAP, None, created, "kubectl-client-side-apply")
    with pytest.raises(errors.Conflict) as caught:
        applied_object(CONFIGMAP, created, configmap({"size": "2"}), "other")
    status = caught.value.status()
    assert status["message"] == 'Apply failed with 1 conflict: conflict with "kubectl-client-side-apply" using v1: ' \
                                ".data.size"
    assert status["details"]["causes"] == [{"type": "FieldManagerConflict", "field": ".data.size",
                                            "message": 'conflict with "kubectl-client-side-apply" using v1'}]
    forced = applied_object(CONFIGMAP, created, configmap({"size": "2"}), "other", force=True)
    assert forced["data"] == {"size": "2"}
    assert fields_of(forced, "other") == {"f:data": {"f:size": {}}}
    assert fields_of(forced, "kubectl-client-side-apply") == {"f:data": {}}


def test_several_conflicts_are_listed_per_manager():
    live = applied_object(CONFIGMAP, None, configmap({"a": "1", "b": "1"}), "first")
    with pytest.raises(errors.Conflict) as caught:
        applied_object(CONFIGMAP, live, configmap({"a": "2", "b": "2"}), "second")
    assert caught.value.status()["message"] == \
        'Apply failed with 2 conflicts: conflicts with "first":\n- .data.a\n- .data.b'


def test_apply_merges_associative_lists_and_replaces_atomic_ones():
    node_rt = WIDGET
    live = applied_object(node_rt, None, widget(parts=[{"name": "a", "count": 1}], args=["1", "2"], tags=["x"]), "one")
    live = applied_object(node_rt, live, widget(parts=[{"name": "b", "count": 2}], args=["3"], tags=["y"]), "two",
                          force=True)
    assert live["spec"]["parts"] == [{"name": "a", "count": 1}, {"name": "b", "count": 2}]
    assert live["spec"]["tags"] == ["x", "y"]
    assert live["spec"]["args"] == ["3"]
    assert fields_of(live, "one") == {"f:spec": {"f:parts": {'k:{"name":"a"}': {".": {}, "f:count": {}, "f:name": {}}},
                                                 "f:tags": {'v:"x"': {}}}}
    dropped = applied_object(node_rt, live, widget(tags=["x"]), "one")
    assert dropped["spec"]["parts"] == [{"name": "b", "count": 2}]


def test_apply_ignores_status_on_the_main_resource():
    obj = applied_object(WIDGET, None, {**widget(size=1), "status": {"ready": True}}, "m")
    assert fields_of(obj, "m") == {"f:spec": {"f:size": {}}}


def test_apply_refuses_bad_configurations():
    with pytest.raises(errors.BadRequest, match="Incorrect version specified in apply patch"):
        applied_object(CONFIGMAP, None, {**configmap(), "apiVersion": "v2"}, "m")
    with pytest.raises(errors.BadRequest, match="metadata.managedFields must be nil"):
        applied_object(CONFIGMAP, None, configmap(managedFields=[]), "m")
    with pytest.raises(errors.BadRequest, match="failed to create typed patch object"):
        applied_object(DEPLOYMENT, None, deployment([{"name": "a"}, {"name": "a"}]), "m")


def test_kubectl_takes_over_fields_it_applied_client_side_and_keeps_the_annotation():
    last = configmap({"a": "1"})
    live = configmap({"a": "1"}, annotations={LAST_APPLIED: json.dumps(last)})
    live["metadata"]["managedFields"] = after_update(CONFIGMAP, None, live, "kubectl-client-side-apply")
    obj = applied_object(CONFIGMAP, live, configmap({"a": "2"}), "kubectl")
    assert obj["data"] == {"a": "2"}
    assert json.loads(obj["metadata"]["annotations"][LAST_APPLIED])["data"] == {"a": "2"}
    with pytest.raises(errors.Conflict):
        applied_object(CONFIGMAP, live, configmap({"a": "2"}), "someone-else")


# ---------------------------------------------------------------------------------------------- request rules

def test_field_manager_rules():
    assert manager_from_user_agent("kubectl/v1.32.4 (linux/amd64) kubernetes/abc") == "kubectl"
    assert manager_from_user_agent("OpenAPI-Generator/37.0.2/python") == "OpenAPI-Generator"
    assert manager_from_user_agent(None) == ""
    with pytest.raises(errors.Invalid) as caught:
        check_field_manager("", "PatchOptions", required=True)
    assert caught.value.status()["message"] == \
        'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch'
    with pytest.raises(errors.Invalid, match="Too long"):
        check_field_manager("x" * 129, "CreateOptions")
    check_field_manager("", "CreateOptions")


def test_decode_rejects_malformed_entries():
    with pytest.raises(ValueError):
        decode([{"manager": "m", "operation": "Delete"}])
    with pytest.raises(ValueError):
        decode("nope")
