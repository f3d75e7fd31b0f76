"""Strategic merge patch: merge keys, list strategies and directives, as apimachinery's strategicpatch applies them."""

from __future__ import annotations

import json

import pytest

from kcp_virtual.framework import errors
from server.apis.core import TYPES as BUILTINS
from server.registry.resourcetype import ResourceType
from server.registry.strategicpatch import patch_object

DEPLOYMENT = next(rt for rt in BUILTINS if rt.kind == "Deployment")
CONFIGMAP = next(rt for rt in BUILTINS if rt.kind == "ConfigMap")
SERVICEACCOUNT = next(rt for rt in BUILTINS if rt.kind == "ServiceAccount")
WIDGET = ResourceType("example.com", "v1", "Widget", "widgets", "widget", True, schema={"type": "object"},
                      patch_kinds=("json-patch", "merge-patch", "apply-patch"))


def deployment(containers: list, **spec) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "finalizers": ["a", "b"], "labels": {"app": "d", "tier": "web"}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "d"}},
                     "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": containers, **spec}}}}


def pod_spec_patch(**fields) -> dict:
    return {"spec": {"template": {"spec": fields}}}


def containers_of(obj: dict) -> list:
    return obj["spec"]["template"]["spec"]["containers"]


TWO = [{"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}],
        "ports": [{"containerPort": 80}], "args": ["--one", "--two"]},
       {"name": "b", "image": "b:1"}]


def test_containers_merge_by_name():
    out = patch_object(DEPLOYMENT, deployment(TWO), pod_spec_patch(containers=[{"name": "b", "image": "b:2"}]))
    assert [(c["name"], c["image"]) for c in containers_of(out)] == [("a", "a:1"), ("b", "b:2")]
    out = patch_object(DEPLOYMENT, deployment(TWO), pod_spec_patch(containers=[{"name": "c", "image": "c:1"}]))
    assert [c["name"] for c in containers_of(out)] == ["c", "a", "b"]  # new patch items first, as upstream


def test_nested_lists_merge_by_their_keys_and_atomic_lists_are_replaced():
    patch = pod_spec_patch(containers=[{"name": "a", "env": [{"name": "Y", "value": "changed"}],
                                        "ports": [{"containerPort": 443}], "args": ["--three"]}])
    container = containers_of(patch_object(DEPLOYMENT, deployment(TWO), patch))[0]
    assert container["env"] == [{"name": "X", "value": "1"}, {"name": "Y", "value": "changed"}]
    assert [p["containerPort"] for p in container["ports"]] == [443, 80]
    assert container["args"] == ["--three"]


def test_delete_directive_removes_an_item_by_its_merge_key():
    out = patch_object(DEPLOYMENT, deployment(TWO), pod_spec_patch(containers=[{"$patch": "delete", "name": "a"}]))
    assert [c["name"] for c in containers_of(out)] == ["b"]


def test_replace_directive_in_a_list_and_in_a_map():
    out = patch_object(DEPLOYMENT, deployment(TWO),
                       pod_spec_patch(containers=[{"$patch": "replace"}, {"name": "only", "image": "o"}]))
    assert containers_of(out) == [{"name": "only", "image": "o"}]
    out = patch_object(DEPLOYMENT, deployment(TWO), {"metadata": {"labels": {"$patch": "replace", "new": "1"}}})
    assert out["metadata"]["labels"] == {"new": "1"}
    out = patch_object(DEPLOYMENT, deployment(TWO), {"metadata": {"labels": {"$patch": "delete"}}})
    assert out["metadata"]["labels"] == {}
    out = patch_object(DEPLOYMENT, deployment(TWO), {"metadata": {"labels": {"$patch": "merge", "new": "1"}}})
    assert out["metadata"]["labels"] == {"app": "d", "tier": "web", "new": "1"}


def test_set_element_order_orders_the_merged_list():
    patch = pod_spec_patch(**{"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
                              "containers": [{"name": "a", "image": "a:2"}]})
    out = patch_object(DEPLOYMENT, deployment(TWO), patch)
    assert [(c["name"], c["image"]) for c in containers_of(out)] == [("b", "b:1"), ("a", "a:2")]
    assert "$setElementOrder/containers" not in out["spec"]["template"]["spec"]


def test_kubectl_client_side_apply_patch_removing_a_container_and_an_env_var():
    patch = pod_spec_patch(**{"$setElementOrder/containers": [{"name": "a"}], "containers": [
        {"$setElementOrder/env": [{"name": "Y"}], "env": [{"$patch": "delete", "name": "X"}], "image": "a:2",
         "name": "a"}, {"$patch": "delete", "name": "b"}]})
    patch["metadata"] = {"labels": {"tier": None}}
    out = patch_object(DEPLOYMENT, deployment(TWO), patch)
    assert containers_of(out) == [{"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "2"}],
                                   "ports": [{"containerPort": 80}], "args": ["--one", "--two"]}]
    assert out["metadata"]["labels"] == {"app": "d"}
    assert "$" not in json.dumps(out)


def test_primitive_lists_with_merge_strategy_union_and_delete_from_primitive_list():
    out = patch_object(DEPLOYMENT, deployment(TWO), {"metadata": {"finalizers": ["c", "a"]}})
    assert out["metadata"]["finalizers"] == ["c", "a", "b"]
    out = patch_object(DEPLOYMENT, deployment(TWO), {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}})
    assert out["metadata"]["finalizers"] == ["b"]
    out = patch_object(DEPLOYMENT, deployment(TWO), {"metadata": {"$setElementOrder/finalizers": ["b", "a"]}})
    assert out["metadata"]["finalizers"] == ["b", "a"]


def test_retain_keys_drops_the_other_keys():
    volumes = [{"name": "v", "configMap": {"name": "cm"}}]
    patch = pod_spec_patch(volumes=[{"name": "v", "$retainKeys": ["name", "secret"], "secret": {"secretName": "s"}}],
                           strategy=None)
    out = patch_object(DEPLOYMENT, deployment(TWO, volumes=volumes), patch)
    assert out["spec"]["template"]["spec"]["volumes"] == [{"name": "v", "secret": {"secretName": "s"}}]
    current = deployment(TWO)
    current["spec"]["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}
    out = patch_object(DEPLOYMENT, current, {"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}})
    assert out["spec"]["strategy"] == {"type": "Recreate"}


def test_lists_without_a_merge_strategy_are_replaced():
    sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "s"},
          "secrets": [{"name": "one"}], "imagePullSecrets": [{"name": "p1"}]}
    out = patch_object(SERVICEACCOUNT, sa, {"secrets": [{"name": "two"}], "imagePullSecrets": [{"name": "p2"}]})
    assert out["secrets"] == [{"name": "two"}, {"name": "one"}]  # merged by name
    assert out["imagePullSecrets"] == [{"name": "p2"}]            # atomic: replaced
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}}
    assert patch_object(CONFIGMAP, cm, {"data": {"a": None, "c": "3"}})["data"] == {"b": "2", "c": "3"}


def test_values_taken_whole_lose_their_directives_and_nulls():
    current = deployment(TWO)
    del current["metadata"]["labels"]
    out = patch_object(DEPLOYMENT, current, {"metadata": {"labels": {"a": "1", "gone": None, "$patch": "merge"}}})
    assert out["metadata"]["labels"] == {"a": "1"}


def test_malformed_patches_are_bad_requests():
    with pytest.raises(errors.BadRequest, match="does not contain declared merge key: name"):
        patch_object(DEPLOYMENT, deployment(TWO), pod_spec_patch(containers=[{"image": "x"}]))
    with pytest.raises(errors.BadRequest, match="unknown patch type"):
        patch_object(DEPLOYMENT, deployment(TWO), {"metadata": {"labels": {"$patch": "explode"}}})
    with pytest.raises(errors.BadRequest, match="doesn't match"):
        patch_object(DEPLOYMENT, deployment(TWO), pod_spec_patch(**{
            "$setElementOrder/containers": [{"name": "a"}], "containers": [{"name": "b", "image": "x"}]}))
    with pytest.raises(errors.BadRequest):
        patch_object(DEPLOYMENT, deployment(TWO), ["not", "an", "object"])


def test_custom_resources_get_415_in_kubes_words():
    with pytest.raises(errors.UnsupportedMediaType) as caught:
        patch_object(WIDGET, {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}, {})
    assert caught.value.status()["message"] == (
        "the body of the request was in an unknown format - accepted media types include: "
        "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml")


def test_inputs_are_not_modified():
    current = deployment(TWO)
    patch = pod_spec_patch(**{"$setElementOrder/containers": [{"name": "a"}], "containers": [
        {"$patch": "delete", "name": "b"}]})
    before_current, before_patch = json.dumps(current), json.dumps(patch)
    patch_object(DEPLOYMENT, current, patch)
    assert (json.dumps(current), json.dumps(patch)) == (before_current, before_patch)
