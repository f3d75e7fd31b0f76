import copy

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from kcp_virtual.framework.errors import BadRequest, Invalid, RequestEntityTooLarge
from server.registry.patch import (APPLY_PATCH, CR_PATCH_TYPES, JSON_PATCH, MERGE_PATCH, PATCH_TYPES,
                                           STRATEGIC_MERGE_PATCH, json_patch, merge_patch)


def test_patch_type_constants():
    assert PATCH_TYPES == ("application/json-patch+json", "application/merge-patch+json",
                           "application/strategic-merge-patch+json", "application/apply-patch+yaml")
    assert (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, APPLY_PATCH) == PATCH_TYPES
    assert STRATEGIC_MERGE_PATCH not in CR_PATCH_TYPES


# --- merge patch: RFC 7386 appendix A (with object targets) ----------------------------------------

@pytest.mark.parametrize("target, patch, expected", [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ({"a": "foo"}, {"a": {"b": "c"}}, {"a": {"b": "c"}}),
    ({"a": {"b": 1}}, {"a": {"b": [None, 2]}}, {"a": {"b": [None, 2]}}),  # nulls inside lists are kept
])
def test_merge_patch_rfc7386(target, patch, expected):
    assert merge_patch(target, patch) == expected


def test_merge_patch_kubectl_label_and_annotate():
    obj = {"metadata": {"name": "w", "labels": {"a": "1"}, "annotations": {"x": "y"}}, "spec": {"size": 1}}
    out = merge_patch(obj, {"metadata": {"labels": {"foo": "bar"}, "annotations": {"x": None}}})
    assert out == {"metadata": {"name": "w", "labels": {"a": "1", "foo": "bar"}, "annotations": {}},
                   "spec": {"size": 1}}


def test_merge_patch_does_not_mutate_or_alias():
    target = {"a": {"b": [1, 2]}, "c": {"d": 1}}
    patch = {"a": {"x": [3]}, "n": {"m": [4]}}
    t0, p0 = copy.deepcopy(target), copy.deepcopy(patch)
    out = merge_patch(target, patch)
    assert target == t0 and patch == p0
    out["a"]["b"].append(9)
    out["c"]["d"] = 2
    out["a"]["x"].append(9)
    out["n"]["m"].append(9)
    assert target == t0 and patch == p0


def test_merge_patch_raw_body_and_errors():
    assert merge_patch({"a": 1}, b'{"b": 2}') == {"a": 1, "b": 2}
    for bad in (b"[1]", b"null", b"3", [1]):
        with pytest.raises(BadRequest) as info:
            merge_patch({}, bad)
        assert info.value.code == 400
    with pytest.raises(BadRequest):
        merge_patch({}, b"{nope")


_json = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.text("ab", max_size=2),
                     lambda children: st.lists(children, max_size=3)
                     | st.dictionaries(st.text("abc", max_size=2), children, max_size=3), max_leaves=10)


def _reference_merge(target, patch):
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = _reference_merge(result.get(k), v)
    return result


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text("abc", max_size=2), _json, max_size=4),
       st.dictionaries(st.text("abc", max_size=2), _json, max_size=4))
def test_merge_patch_matches_rfc_pseudocode(target, patch):
    before = orjson.dumps(target)
    assert merge_patch(target, patch) == _reference_merge(target, patch)
    assert orjson.dumps(target) == before


# --- JSON patch -------------------------------------------------------------------------------------

DOC = {"metadata": {"name": "w", "resourceVersion": "7", "finalizers": ["kopf.zalando.org/KopfFinalizerMarker"]},
       "spec": {"list": [1, 2, 3], "size": 1}}


def test_json_patch_kopf_finalizer_removal():
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
           {"op": "remove", "path": "/metadata/finalizers/0"}]
    out = json_patch(DOC, ops)
    assert out["metadata"]["finalizers"] == []
    assert DOC["metadata"]["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]


def test_json_patch_all_operations():
    ops = [{"op": "add", "path": "/spec/list/-", "value": {"k": [1]}},
           {"op": "add", "path": "/spec/list/0", "value": 0},
           {"op": "replace", "path": "/spec/size", "value": 5},
           {"op": "copy", "from": "/spec/size", "path": "/spec/copied"},
           {"op": "move", "from": "/spec/copied", "path": "/spec/moved"},
           {"op": "remove", "path": "/spec/list/1"},
           {"op": "test", "path": "/spec/moved", "value": 5.0},
           {"op": "add", "path": "/metadata/labels", "value": {"a~b/c": "x"}},
           {"op": "test", "path": "/metadata/labels/a~0b~1c", "value": "x"}]
    out = json_patch(DOC, ops)
    assert out["spec"] == {"list": [0, 2, 3, {"k": [1]}], "size": 5, "moved": 5}
    out["spec"]["list"][3]["k"].append(2)
    assert ops[0]["value"] == {"k": [1]}  # values are copied into the result


def test_json_patch_raw_body():
    assert json_patch({"a": 1}, b'[{"op":"replace","path":"/a","value":2}]') == {"a": 2}
    assert json_patch({"a": 1}, b"[]") == {"a": 1}


def test_failed_test_is_422_invalid():
    with pytest.raises(Invalid) as info:
        json_patch(DOC, [{"op": "test", "path": "/metadata/resourceVersion", "value": "6"}])
    err = info.value
    assert err.code == 422
    assert err.status()["reason"] == "Invalid"
    assert err.message == ('the JSON patch "test" operation 0 failed at "/metadata/resourceVersion": '
                           'expected "6", found "7"')


def test_failed_test_on_missing_path_and_strict_types():
    with pytest.raises(Invalid) as info:
        json_patch(DOC, [{"op": "test", "path": "/spec/nope", "value": 1}])
    assert "the path does not exist" in info.value.message
    with pytest.raises(Invalid):  # RFC 6902: true is not 1
        json_patch({"a": 1}, [{"op": "test", "path": "/a", "value": True}])


@pytest.mark.parametrize("ops", [
    [{"op": "remove", "path": "/spec/nope"}],
    [{"op": "replace", "path": "/spec/nope", "value": 1}],
    [{"op": "replace", "path": "/spec/list/9", "value": 1}],
    [{"op": "add", "path": "/spec/list/9", "value": 1}],
    [{"op": "add", "path": "/x/y/z", "value": 1}],
    [{"op": "move", "from": "/spec/nope", "path": "/spec/x"}],
    [{"op": "copy", "from": "/spec/list/7", "path": "/spec/x"}],
    [{"op": "replace", "path": "/spec/list/-", "value": 1}],
    [{"op": "remove", "path": ""}],
    [{"op": "replace", "path": "", "value": [1]}],  # the result must stay an object
])
def test_application_errors_are_422(ops):
    with pytest.raises(Invalid) as info:
        json_patch(DOC, ops)
    assert info.value.code == 422
    assert " in {" not in info.value.message  # the document is not dumped into the message


def test_missing_member_message():
    with pytest.raises(Invalid) as info:
        json_patch(DOC, [{"op": "move", "from": "/spec/nope", "path": "/spec/x"}])
    assert info.value.message == ('the JSON patch operation 0 (move "/spec/x") cannot be applied: '
                                  'member "nope" not found')


@pytest.mark.parametrize("ops, fragment", [
    ({"op": "add"}, "expected an array of operations, got object"),
    ("[", "not valid JSON"),
    (b"{", "not valid JSON"),
    (["x"], "operation 0 must be an object, got string"),
    ([{"path": "/a"}], 'operation 0 has no "op"'),
    ([{"op": "frob", "path": "/a"}], 'unknown "op": "frob"'),
    ([{"op": 1, "path": "/a"}], 'unknown "op": 1'),
    ([{"op": "remove"}], 'operation 0 (remove) has no "path"'),
    ([{"op": "remove", "path": "a"}], "must be empty or start with '/'"),
    ([{"op": "remove", "path": "/a~2"}], "'~' must be followed by '0' or '1'"),
    ([{"op": "remove", "path": 5}], '"path" must be a string'),
    ([{"op": "add", "path": "/a"}], 'has no "value"'),
    ([{"op": "test", "path": "/a"}], 'has no "value"'),
    ([{"op": "copy", "path": "/a"}], 'has no "from"'),
    ([{"op": "move", "path": "/a", "from": "x"}], "\"from\" must be empty or start with '/'"),
])
def test_malformed_patches_are_400(ops, fragment):
    with pytest.raises(BadRequest) as info:
        json_patch(DOC, ops)
    assert info.value.code == 400
    assert fragment in info.value.message


def test_malformed_patch_is_rejected_before_anything_applies():
    with pytest.raises(BadRequest):
        json_patch(DOC, [{"op": "test", "path": "/metadata/resourceVersion", "value": "x"}, {"op": "nope"}])


def test_too_many_operations_is_413():
    ops = [{"op": "test", "path": "/spec/size", "value": 1}] * 10001
    with pytest.raises(RequestEntityTooLarge) as info:
        json_patch(DOC, ops)
    assert info.value.code == 413
    assert info.value.message == ("Request entity too large: The allowed maximum operations in a JSON patch is "
                                  "10000, got 10001")
    assert json_patch(DOC, ops[:10000]) == DOC
