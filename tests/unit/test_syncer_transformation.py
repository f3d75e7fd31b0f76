"""The syncer view's pieces without a server: target keys, placement, the splitter, spec diffs, the status summary,
and one target's view of an object both ways."""

from __future__ import annotations

import copy
import json

import orjson
import pytest
from hypothesis import given, strategies as st

from kcp_virtual.framework import errors
from kcp_virtual.syncer import specdiff
from kcp_virtual.syncer.placement import (CONFIGMAPS, DEPLOYMENTS, PLACEMENT_ANNOTATION, PlacementError,
                                          parse_placement, placed_keys, spec_diff_annotation, state_label,
                                          status_annotation, sync_target_key, syncer_finalizer)
from kcp_virtual.syncer.splitter import share
from kcp_virtual.syncer.summary import summarize
from kcp_virtual.syncer.transformation import MAX_STATUS_BYTES, TargetView

A, B, C = "aaa", "bbb", "ccc"   # keys, in the splitter's order


def test_key_is_kcps():
    """The vector of kcp's own test (``synctarget_reconcile_test.go``): base-62 sha224 of ``<cluster>:<name>``."""
    assert sync_target_key("demo:root:yourworkspace", "test-cluster") == "aPXkBdRsTD8gXESO47r9qXmkr2kaG5qaox5C8r"
    assert len(state_label(sync_target_key("root:org:team", "a" * 253)).split("/")[1]) <= 63


def test_placed_keys_are_the_sync_labels_sorted():
    labels = {state_label(C): "Sync", state_label(A): "Sync", state_label(B): "", "app": "x"}
    assert placed_keys(labels) == (A, C)
    assert placed_keys(None) == ()


@pytest.mark.parametrize("value,expected", [
    ("a", (("root:app", "a"),)),
    (" a , root:compute/b,,a ", (("root:app", "a"), ("root:compute", "b"))),
    ("", ()),
])
def test_parse_placement(value, expected):
    assert parse_placement(value, "root:app") == expected


@pytest.mark.parametrize("value", ["Not_A_Name", "root:/a", "ROOT/a", "root:x/", 3])
def test_parse_placement_refuses(value):
    with pytest.raises(PlacementError):
        parse_placement(value, "root:app")


@pytest.mark.parametrize("replicas,targets,shares", [
    (5, 2, [3, 2]), (0, 2, [0, 0]), (7, 3, [3, 2, 2]), (1, 3, [1, 0, 0]), (4, 1, [4]), (8, 4, [2, 2, 2, 2])])
def test_splitter(replicas, targets, shares):
    keys = tuple(f"k{i}" for i in range(targets))
    assert [share(replicas, keys, k) for k in keys] == shares
    assert share(replicas, keys, "other") is None


@given(st.integers(0, 10_000), st.integers(1, 200))
def test_shares_add_up_and_differ_by_at_most_one(replicas, targets):
    keys = tuple(f"k{i:03}" for i in range(targets))
    shares = [share(replicas, keys, k) for k in keys]
    assert sum(shares) == replicas and max(shares) - min(shares) <= 1 and shares == sorted(shares, reverse=True)


def test_spec_diff_parse_and_apply():
    specdiff.parse('[{"op": "replace", "path": "/replicas", "value": 2}]')
    for bad in ("{", "{}", '[{"op": "nope"}]', '[{"op": "add", "path": "/x"}]', '[{"op": "remove", "path": "x"}]', 7):
        with pytest.raises(specdiff.SpecDiffError):
            specdiff.parse(bad)
    spec = {"replicas": 1, "template": {"image": "a"}}
    assert specdiff.apply(spec, '[{"op": "replace", "path": "/template/image", "value": "b"}]') == {
        "replicas": 1, "template": {"image": "b"}}
    assert spec == {"replicas": 1, "template": {"image": "a"}}
    with pytest.raises(specdiff.SpecDiffError, match="cannot be applied"):
        specdiff.apply(spec, '[{"op": "remove", "path": "/paused"}]')


# ---------------------------------------------------------------------- summary

def _status(replicas, ready, generation=1, **conditions):
    return {"observedGeneration": generation, "replicas": replicas, "readyReplicas": ready,
            "conditions": [{"type": t, "status": s, "reason": f"r-{t}-{s}"} for t, s in conditions.items()]}


def test_single_target_is_promoted_unchanged():
    status = _status(3, 2, Available="False")
    assert summarize([status]) is status
    assert summarize([None]) == {} and summarize([]) == {}


def test_summary_of_several_targets():
    summary = summarize([_status(3, 3, 2, Available="True", ReplicaFailure="False"),
                         _status(2, 1, 1, Available="True", ReplicaFailure="True")])
    assert (summary["replicas"], summary["readyReplicas"], summary["observedGeneration"]) == (5, 4, 1)
    assert [(c["type"], c["status"], c["reason"]) for c in summary["conditions"]] == [
        ("Available", "True", "r-Available-True"), ("ReplicaFailure", "True", "r-ReplicaFailure-True")]


def test_summary_while_a_target_has_not_reported():
    summary = summarize([_status(3, 3, Available="True"), None])
    assert summary["replicas"] == 3 and "observedGeneration" not in summary
    assert summary["conditions"] == [{"type": "Available", "status": "Unknown", "reason": "NotReported",
                                      "message": "not every sync target reported this condition"}]
    assert summarize([_status(1, 1, Available="False"), _status(1, 1, Available="True")])["conditions"][0][
        "status"] == "False"


# ---------------------------------------------------------------------- one target's view

def _deployment(replicas=5, keys=(A, B), annotations=None, finalizers=None, status=None):
    obj = {"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": "d", "namespace": "ns", "uid": "u", "resourceVersion": "10", "generation": 2,
                        "labels": {"app": "d", **{state_label(k): "Sync" for k in keys}},
                        "annotations": {"kcp.dev/cluster": "root:app", "user": "note", PLACEMENT_ANNOTATION: "x",
                                        **(annotations or {})},
                        "managedFields": [{"manager": "kubectl"}]},
           "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"image": "nginx"}]}}},
           "status": status or {"replicas": 5}}
    if finalizers:
        obj["metadata"]["finalizers"] = finalizers
    return obj


def test_to_view_shows_the_targets_share_and_nothing_of_the_others():
    reported = {"replicas": 3, "readyReplicas": 3}
    stored = _deployment(annotations={status_annotation(A): json.dumps(reported),
                                      status_annotation(B): json.dumps({"replicas": 2}),
                                      spec_diff_annotation(B): "[]"},
                         finalizers=[syncer_finalizer(A), syncer_finalizer(B), "user/keep"])
    before = copy.deepcopy(stored)
    view = TargetView(A, DEPLOYMENTS).to_view(stored)
    assert stored == before   # the shard's object is shared: never changed
    meta = view["metadata"]
    assert meta["labels"] == {"app": "d", state_label(A): "Sync"}
    assert meta["annotations"] == {"kcp.dev/cluster": "root:app", "user": "note"}
    assert meta["finalizers"] == [syncer_finalizer(A)] and "managedFields" not in meta
    assert view["spec"]["replicas"] == 3 and view["status"] == reported
    b = TargetView(B, DEPLOYMENTS).to_view(stored)
    assert b["spec"]["replicas"] == 2 and b["status"] == {"replicas": 2} and "finalizers" in b["metadata"]
    assert "status" not in TargetView(C, DEPLOYMENTS).to_view(stored)   # not reported (nor placed)


def test_to_view_applies_the_spec_diff_after_the_split():
    diff = '[{"op": "replace", "path": "/template/spec/containers/0/image", "value": "edge"}]'
    stored = _deployment(7, (A, B, C), annotations={spec_diff_annotation(B): diff})
    b = TargetView(B, DEPLOYMENTS).to_view(stored)
    assert b["spec"]["replicas"] == 2 and b["spec"]["template"]["spec"]["containers"][0]["image"] == "edge"
    assert TargetView(A, DEPLOYMENTS).to_view(stored)["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx"
    broken = _deployment(annotations={spec_diff_annotation(A): '[{"op": "remove", "path": "/paused"}]'})
    assert TargetView(A, DEPLOYMENTS).to_view(broken)["spec"]["replicas"] == 3   # shown without the diff


def test_configmaps_are_not_split_and_have_no_status():
    stored = {"metadata": {"name": "c", "labels": {state_label(A): "Sync"}}, "data": {"replicas": "5"}}
    assert TargetView(A, CONFIGMAPS).to_view(stored) == stored
    assert TargetView(A, CONFIGMAPS).transformation().status_from_view is None


def test_from_view_lets_the_syncer_set_only_its_finalizer():
    target = TargetView(A, DEPLOYMENTS)
    stored = _deployment(finalizers=["user/keep"])
    view = target.to_view(stored)
    mine = copy.deepcopy(view)
    mine["metadata"]["finalizers"] = [syncer_finalizer(A)]
    mine["status"] = {"replicas": 99}   # ignored on the object itself, as kube does
    written = target.from_view(mine, stored)
    assert written["metadata"]["finalizers"] == ["user/keep", syncer_finalizer(A)]
    assert written["spec"] == stored["spec"] and written["status"] == stored["status"]
    assert written["metadata"]["annotations"] == stored["metadata"]["annotations"]
    assert target.from_view(view, {**stored, "metadata": written["metadata"]})["metadata"]["finalizers"] == [
        "user/keep"]
    for change, field in ((("spec", "replicas"), "spec"), (("metadata", "labels"), "metadata.labels"),
                          (("metadata", "annotations"), "metadata.annotations")):
        changed = copy.deepcopy(view)
        changed[change[0]][change[1]] = {"other": 1} if change[0] == "metadata" else 9
        with pytest.raises(errors.Invalid) as refused:
            target.from_view(changed, stored)
        assert [c["field"] for c in refused.value.details["causes"]] == [field]
    with pytest.raises(errors.MethodNotAllowed):
        target.from_view(view, None)


def test_a_status_write_is_kept_per_target():
    target = TargetView(A, DEPLOYMENTS)
    stored = _deployment()
    written = target.status_from_view({**target.to_view(stored), "status": {"readyReplicas": 3}}, stored)
    assert orjson.loads(written["metadata"]["annotations"][status_annotation(A)]) == {"readyReplicas": 3}
    assert written["status"] == stored["status"] and written["metadata"]["resourceVersion"] == "10"
    cleared = target.status_from_view({**target.to_view(stored), "status": None}, written)
    assert status_annotation(A) not in cleared["metadata"]["annotations"]
    for status, error in (("ready", "must be an object"), ({"x": "y" * MAX_STATUS_BYTES}, "Too long")):
        with pytest.raises(errors.Invalid, match=error):
            target.status_from_view({**target.to_view(stored), "status": status}, stored)


def test_a_stale_status_write_applies_only_while_the_view_is_unchanged():
    target = TargetView(A, DEPLOYMENTS)
    stored = _deployment()
    seen = target.to_view(stored)
    other_reported = {**stored, "metadata": {**stored["metadata"], "resourceVersion": "11", "annotations": {
        **stored["metadata"]["annotations"], status_annotation(B): "{}"}}}
    assert target.status_from_view(seen, other_reported)["metadata"]["resourceVersion"] == "11"
    rescaled = {**other_reported, "spec": {**stored["spec"], "replicas": 7}}
    assert target.status_from_view(seen, rescaled)["metadata"]["resourceVersion"] == "10"   # the shard says 409
    b_left = {**other_reported, "metadata": {**other_reported["metadata"], "labels": {state_label(A): "Sync"}}}
    assert target.status_from_view(seen, b_left)["metadata"]["resourceVersion"] == "10"     # a's share moved


def test_transformation_writes_status_as_the_whole_object():
    transformation = TargetView(A, DEPLOYMENTS).transformation()
    stored = _deployment()
    obj, subresource = transformation.write({**transformation.to_view(stored, None), "status": {}}, stored, None,
                                            "status")
    assert subresource == "" and status_annotation(A) in obj["metadata"]["annotations"]
    assert transformation.write(transformation.to_view(stored, None), stored, None, "")[1] == ""


# ---------------------------------------------------------------------- the URL

@pytest.mark.parametrize("path,accepted", [
    ("/services/syncer/root:compute/east/0b2f-11/clusters/*/api/v1/configmaps", True),
    ("/services/syncer/root:compute/east/0b2f-11/clusters/root:app/apis/apps/v1", True),
    ("/services/syncer/root:compute/east/clusters/*/api", False),              # no UID
    ("/services/syncer/Root/east/u/clusters/*/api", False),                    # not a workspace path
    ("/services/syncer/root/East_1/u/clusters/*/api", False),                  # not a SyncTarget name
    ("/services/syncer/root/east/u%2F/clusters/*/api", False),
    ("/services/syncer/root/east/u/clusters/*/api/../../x", False),
    ("/services/syncer/root/east//clusters/*/api", False),
])
def test_resolve(path, accepted):
    from kcp_virtual.syncer.virtualworkspace import resolve
    resolution = resolve(path)
    assert resolution.accepted is accepted
    if accepted:
        values = resolution.context.values
        assert values["key"] == sync_target_key(values["target_cluster"], values["target_name"])
        assert path[len(resolution.prefix):].startswith("/api")
