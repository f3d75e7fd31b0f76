"""The pure parts of the workspaces virtual workspace: rules to visible names, who a binding names, the
Workspace projection, what a patch may change, the URL resolver, and the ``kcp ws`` path rules."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from kcp_virtual.cli.workspace import Kubeconfig, WorkspaceError, resolve_path
from kcp_virtual.framework import errors
from kcp_virtual.framework.authorization import Attributes
from kcp_virtual.framework.negotiation import APPLY_PATCH, JSON_PATCH, MERGE_PATCH
from kcp_virtual.workspaces import projection
from kcp_virtual.workspaces.patching import patched_metadata
from kcp_virtual.workspaces.storage import View
from kcp_virtual.workspaces.virtualworkspace import authorize, resolve
from kcp_virtual.workspaces.visibility import (EVERYTHING, NOTHING, BoundRoles, Visibility, grants_content,
                                               subject_matches, visibility)

T = "tenancy.kcp.dev"


def rule(verbs=("access",), groups=(T,), resources=("clusterworkspaces/content",), names=None) -> dict:
    r = {"verbs": list(verbs), "apiGroups": list(groups), "resources": list(resources)}
    if names is not None:
        r["resourceNames"] = list(names)
    return r


@pytest.mark.parametrize("r, expected", [
    (rule(), True),
    (rule(verbs=("admin",)), True),
    (rule(verbs=("*",)), True),
    (rule(verbs=("get", "list")), False),
    (rule(groups=("*",)), True),
    (rule(groups=("",)), False),
    (rule(resources=("*/content",)), True),
    (rule(resources=("*",)), True),
    (rule(resources=("clusterworkspaces",)), False),       # the object, not its content
    (rule(resources=("workspaces/content",)), False),
    ({"verbs": ["*"], "nonResourceURLs": ["*"]}, False),
    ("not a rule", False),
])
def test_which_rules_grant_content(r, expected):
    assert grants_content(r) is expected


def test_visibility_is_the_union_of_names_unless_one_rule_has_none():
    assert visibility([]) == NOTHING
    assert visibility([rule(names=["a"]), rule(verbs=("admin",), names=["b", "c"]),
                       rule(verbs=("get",), names=["d"])]) == Visibility(names=frozenset("abc"))
    assert visibility([rule(names=["a"]), rule(groups=("*",))]) == EVERYTHING
    assert "anything" in EVERYTHING and "a" not in NOTHING


def test_changed_names():
    a, ab = Visibility(names=frozenset("a")), Visibility(names=frozenset("ab"))
    assert a.changed(ab) == {"b"} and ab.changed(a) == {"b"}
    assert a.changed(a) == frozenset()
    assert EVERYTHING.changed(EVERYTHING) == frozenset()
    assert a.changed(EVERYTHING) is None and EVERYTHING.changed(NOTHING) is None


USER = SimpleNamespace(name="alice", groups=("team", "system:authenticated"))


@pytest.mark.parametrize("subject, expected", [
    ({"kind": "User", "name": "alice"}, True),
    ({"kind": "User", "name": "bob"}, False),
    ({"kind": "Group", "name": "team"}, True),
    ({"kind": "Group", "name": "system:authenticated"}, True),
    ({"kind": "Group", "name": "alice"}, False),
    ({"kind": "ServiceAccount", "name": "alice", "namespace": "default"}, False),
    ({"kind": "User"}, False),
    (None, False),
])
def test_subject_matches(subject, expected):
    assert subject_matches(subject, USER) is expected


def test_service_account_subjects():
    sa = SimpleNamespace(name="system:serviceaccount:ns:robot", groups=())
    assert subject_matches({"kind": "ServiceAccount", "name": "robot", "namespace": "ns"}, sa)
    assert not subject_matches({"kind": "ServiceAccount", "name": "robot", "namespace": "other"}, sa)


def binding(name: str, role: str, *subjects: tuple[str, str]) -> dict:
    return {"metadata": {"name": name}, "roleRef": {"kind": "ClusterRole", "name": role},
            "subjects": [{"kind": kind, "name": subject} for kind, subject in subjects]}


def test_bound_roles_follow_binding_events():
    bound = BoundRoles(USER, [binding("b1", "r1", ("User", "alice")), binding("b2", "r2", ("User", "bob")),
                              binding("b3", "r1", ("Group", "team"))])
    assert bound.binds("r1") and not bound.binds("r2")
    # an event about someone else is irrelevant
    assert not bound.binding_event("ADDED", binding("b4", "r4", ("User", "bob")))
    # the binding stops naming alice: relevant (it did), r1 still bound through b3
    assert bound.binding_event("MODIFIED", binding("b1", "r1", ("User", "bob")))
    assert bound.binds("r1")
    assert bound.binding_event("DELETED", binding("b3", "r1", ("Group", "team")))
    assert not bound.binds("r1")
    # a binding that newly names alice
    assert bound.binding_event("MODIFIED", binding("b2", "r2", ("Group", "team")))
    assert bound.binds("r2")


CW = {"apiVersion": "tenancy.kcp.dev/v1alpha1", "kind": "ClusterWorkspace",
      "metadata": {"name": "team", "uid": "u1", "resourceVersion": "7", "labels": {"a": "b"},
                   "annotations": {projection.OWNER_ANNOTATION: json.dumps({"username": "alice", "groups": []}),
                                   "kcp.dev/cluster": "root:org"},
                   "managedFields": [{"manager": "kcp"}]},
      "spec": {"type": {"name": "universal", "path": "root"}},
      "status": {"phase": "Ready", "baseURL": "https://h/clusters/root:org:team", "conditions": []}}


def test_projection():
    ws = projection.to_workspace(CW)
    assert ws["kind"] == "Workspace" and ws["apiVersion"] == "tenancy.kcp.dev/v1beta1"
    assert ws["spec"] == {"type": {"name": "universal", "path": "root"}}
    assert ws["status"] == {"phase": "Ready", "URL": "https://h/clusters/root:org:team"}
    assert "managedFields" not in ws["metadata"] and ws["metadata"]["labels"] == {"a": "b"}
    assert projection.to_workspace(CW, resource_version=9)["metadata"]["resourceVersion"] == "9"
    assert CW["metadata"]["resourceVersion"] == "7"  # the input is left alone
    assert [c.getter(ws) for c in projection.COLUMNS] == ["universal", "Ready", "https://h/clusters/root:org:team"]


def test_owner():
    assert projection.owner_name(CW) == "alice"
    assert projection.owner_name({"metadata": {"annotations": {projection.OWNER_ANNOTATION: "bob"}}}) == "bob"
    assert projection.owner_name({"metadata": {}}) == ""
    user = SimpleNamespace(name="carol", uid="c", groups=("g",), extra={"k": ("v",)})
    assert json.loads(projection.owner_annotation(user)) == {"username": "carol", "uid": "c", "groups": ["g"],
                                                             "extra": {"k": ["v"]}}


def test_created_workspace_becomes_a_cluster_workspace():
    obj = projection.to_cluster_workspace({"apiVersion": "tenancy.kcp.dev/v1beta1", "kind": "Workspace",
                                           "metadata": {"name": "x", "labels": {"l": "1"}, "uid": "ignored"},
                                           "spec": {"type": {"name": "special"}}, "status": {"phase": "Ready"}},
                                          owner="OWNER")
    assert obj == {"apiVersion": "tenancy.kcp.dev/v1alpha1", "kind": "ClusterWorkspace",
                   "metadata": {"name": "x", "labels": {"l": "1"},
                                "annotations": {projection.OWNER_ANNOTATION: "OWNER"}},
                   "spec": {"type": {"name": "special"}}}


@pytest.mark.parametrize("body, error", [
    ({"metadata": {"name": "Bad_Name"}}, errors.Invalid),
    ({"metadata": {"name": "x" * 64}}, errors.Invalid),
    ({"metadata": {}}, errors.Invalid),
    ({"metadata": {"name": "ok"}, "spec": "nope"}, errors.Invalid),
    ({"kind": "ConfigMap", "metadata": {"name": "ok"}}, errors.BadRequest),
    ({"apiVersion": "v1", "metadata": {"name": "ok"}}, errors.BadRequest),
    ([], errors.BadRequest),
])
def test_bad_workspaces_are_refused(body, error):
    with pytest.raises(error):
        projection.to_cluster_workspace(body, owner="o")


def test_names_are_dns_labels():
    assert projection.validate_name("team-1") == []
    assert projection.validate_name("generate-", "metadata.generateName")  # checked with a suffix by the caller
    assert projection.to_cluster_workspace({"metadata": {"generateName": "team-"}}, "o")["metadata"] == {
        "generateName": "team-", "annotations": {projection.OWNER_ANNOTATION: "o"}}


def test_patches_change_labels_and_annotations_only():
    ws = projection.to_workspace(CW)
    labels, annotations, rv = patched_metadata(ws, MERGE_PATCH, {"metadata": {"labels": {"a": None, "c": "d"},
                                                                              "annotations": {"note": "x"}}})
    assert labels == {"c": "d"} and annotations["note"] == "x" and rv == ""
    labels, _, _ = patched_metadata(ws, JSON_PATCH, [{"op": "add", "path": "/metadata/labels/e", "value": "f"}])
    assert labels == {"a": "b", "e": "f"}
    for patch in ({"spec": {"type": {"name": "other"}}}, {"status": {"phase": "Scheduling"}},
                  {"metadata": {"annotations": {projection.OWNER_ANNOTATION: "mallory"}}},
                  {"metadata": {"name": "renamed"}}, {"metadata": {"labels": {"a": 1}}}):
        with pytest.raises(errors.Invalid):
            patched_metadata(ws, MERGE_PATCH, patch)
    with pytest.raises(errors.Conflict):
        patched_metadata(ws, MERGE_PATCH, {"metadata": {"resourceVersion": "6", "labels": {"x": "y"}}})
    assert patched_metadata(ws, MERGE_PATCH, {"metadata": {"resourceVersion": "7"}})[2] == "7"
    with pytest.raises(errors.UnsupportedMediaType):
        patched_metadata(ws, APPLY_PATCH, {})
    with pytest.raises(errors.Invalid):
        patched_metadata(ws, JSON_PATCH, [{"op": "remove", "path": "/metadata/labels/nope"}])


def test_personal_view_shows_what_the_caller_owns():
    everyone = View(SimpleNamespace(name="alice"), "root:org", False, EVERYTHING)
    personal = View(SimpleNamespace(name="alice"), "root:org", True, EVERYTHING)
    assert everyone.shows(CW) and personal.shows(CW)
    assert not View(SimpleNamespace(name="bob"), "root:org", True, EVERYTHING).shows(CW)
    assert not personal.with_names(NOTHING).shows(CW)


@pytest.mark.parametrize("path, prefix, org, scope", [
    ("/services/workspaces/root/all/apis/tenancy.kcp.dev/v1beta1/workspaces", "/services/workspaces/root/all",
     "root", "all"),
    ("/services/workspaces/root:org/personal", "/services/workspaces/root:org/personal", "root:org", "personal"),
    ("/services/workspaces/root:org:team/all/", "/services/workspaces/root:org:team/all", "root:org:team", "all"),
])
def test_resolver_accepts(path, prefix, org, scope):
    accepted, got_prefix, context = resolve(path)
    assert accepted and got_prefix == prefix
    assert (context.cluster, context.api_domain_key, dict(context.values)) == (org, scope,
                                                                              {"org": org, "scope": scope})


@pytest.mark.parametrize("path", [
    "/services/workspaces/root", "/services/workspaces/root/some/apis", "/services/workspaces/*/all/apis",
    "/services/workspaces/Root/all", "/services/workspaces//all", "/services/other/root/all",
    "/services/workspaces/root/all/apis/../../x", "/services/workspaces/root:/all",
])
def test_resolver_rejects(path):
    assert not resolve(path)[0]


def test_authorizer_lets_discovery_and_workspaces_through():
    context = resolve("/services/workspaces/root/all")[2]
    assert authorize(USER, Attributes("get", "root", False, path="/apis"), context)[0]
    assert authorize(USER, Attributes("list", "root", True, api_group=T, resource="workspaces"), context)[0]
    assert not authorize(USER, Attributes("list", "root", True, resource="configmaps"), context)[0]


def test_cli_paths():
    assert resolve_path("root:org", "team") == "root:org:team"
    assert resolve_path("root:org", "..") == "root"
    assert resolve_path("root:org", "root") == "root"
    assert resolve_path("root:org", "root:other:x") == "root:other:x"
    for current, target in (("root", ".."), ("root:org", "Bad"), ("root:org", "a::b")):
        with pytest.raises(WorkspaceError):
            resolve_path(current, target)


def test_cli_reads_the_workspace_from_the_server_url(tmp_path):
    path = tmp_path / "config"
    path.write_text(json.dumps({"current-context": "c", "contexts": [{"name": "c", "context": {"cluster": "k"}}],
                                "clusters": [{"name": "k", "cluster": {"server": "https://h:6443/clusters/root:org"}}]}))
    config = Kubeconfig.load(str(path), None)
    assert config.location() == ("https://h:6443", "root:org")
    config.switch("root:org:team")
    assert Kubeconfig.load(str(path), None).location() == ("https://h:6443", "root:org:team")
    config.cluster["server"] = "https://h:6443"
    with pytest.raises(WorkspaceError):
        config.location()
