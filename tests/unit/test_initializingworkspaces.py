"""The initializingworkspaces pieces without HTTP: initializer names, the labels the shard derives, the one status
write allowed, the shard's entry rule for initializers and the stripping of the initializer group, the grants the
workspace controller materializes, and the WorkspaceType URL publication."""

from __future__ import annotations

import pytest

from kcp_virtual.external.delegated import DelegatedAuthenticator
from kcp_virtual.framework import errors
from kcp_virtual.framework.authorization import initializer_group
from kcp_virtual.initializingworkspaces.initializers import (PHASE_LABEL, derived_labels, initializer_label,
                                                             parse)
from kcp_virtual.initializingworkspaces.status import only_removing
from kcp_virtual.initializingworkspaces.virtualworkspace import resolve
from server import pki
from server.apis.tenancy import CLUSTER_WORKSPACES, SHARDS, WORKSPACE_TYPES
from server.auth import workspace_access
from server.auth.authn import ClientCertificateAuthenticator, UnionAuthenticator
from server.auth.authz import Attributes, Decision
from server.auth.impersonation import impersonate
from server.auth.rbac import RBACAuthorizer
from server.auth.requestheader import RequestHeaderAuthenticator
from server.auth.user import UserInfo
from server.controllers.publication import URLPublisher
from server.controllers.workspaces import WorkspaceController
from tests.unit.test_vw_topology import environ_of, peer
from tests.unit.test_workspace_api import registry  # noqa: F401  (the fixture: a registry with tenancy's objects)
from tests.unit.test_workspace_controller import wait_for

RBAC = "rbac.authorization.k8s.io"
INITIALIZER = "root:org:db"
GROUP = initializer_group(INITIALIZER)
PERMISSIONS = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]}]


# ---------------------------------------------------------------------- names and the resolver


@pytest.mark.parametrize("name, expected", [("root:db", ("root", "db")), ("root:org:my-type", ("root:org", "my-type")),
                                            ("a:b:c:d", ("a:b:c", "d"))])
def test_an_initializer_is_its_type_workspace_and_name(name, expected):
    parsed = parse(name)
    assert (parsed.type_cluster, parsed.type_name) == expected and parsed.name == name


@pytest.mark.parametrize("name", ["db", "root:", ":db", "Root:db", "root:Db", "root::db", "root:d_b", "root:-db",
                                  "root:" + "d" * 64, "system:apibindings:x y", ""])
def test_anything_else_is_a_400_that_says_what_is_expected(name):
    with pytest.raises(errors.BadRequest) as exc:
        parse(name)
    assert "expected <workspace path>:<WorkspaceType name>" in exc.value.message


def test_the_resolver_takes_any_segment_and_leaves_judging_it_to_the_authorizer():
    accepted, prefix, context = resolve("/services/initializingworkspaces/root:org:db/clusters/*/apis/x")
    assert accepted and prefix == "/services/initializingworkspaces/root:org:db/clusters/*"
    assert (context.cluster, context.api_domain_key) == ("*", "root:org:db")
    assert resolve("/services/initializingworkspaces/BAD/clusters/root:a/api")[0]
    for path in ("/services/initializingworkspaces/root:org:db", "/services/initializingworkspaces//clusters/*/api",
                 "/services/initializingworkspaces/x/clusters/Bad/api", "/services/initializingworkspaces/x/../y"):
        assert not resolve(path)[0], path


# ---------------------------------------------------------------------- labels the shard derives


def test_labels_follow_status():
    key, value = initializer_label(INITIALIZER)
    assert key.startswith("initializer.internal.kcp.dev/") and len(key.split("/")[1]) <= 63 and len(value) == 56
    assert initializer_label("root:other:db") != (key, value)
    assert derived_labels({"phase": "Initializing", "initializers": [INITIALIZER]}) == {
        PHASE_LABEL: "Initializing", key: value}
    assert derived_labels({"phase": "Ready"}) == {PHASE_LABEL: "Ready"}
    assert derived_labels("garbage") == {} and derived_labels({"initializers": "x"}) == {}


def test_clients_can_neither_forge_nor_remove_the_labels(registry):
    key, value = initializer_label(INITIALIZER)
    forged = {PHASE_LABEL: "Initializing", key: value, "initializer.internal.kcp.dev/other": "x", "mine": "kept"}
    obj = registry.create(CLUSTER_WORKSPACES, "root", "", {"metadata": {"name": "org", "labels": forged}})
    assert obj["metadata"]["labels"] == {PHASE_LABEL: "Scheduling", "mine": "kept"}
    obj = registry.update(CLUSTER_WORKSPACES, "root", "", "org", {**obj, "status": {
        "phase": "Initializing", "initializers": [INITIALIZER]}}, subresource="status")
    assert obj["metadata"]["labels"] == {PHASE_LABEL: "Initializing", key: value, "mine": "kept"}
    obj = registry.update(CLUSTER_WORKSPACES, "root", "", "org", {**obj, "metadata": {**obj["metadata"], "labels": {}}})
    assert obj["metadata"]["labels"] == {PHASE_LABEL: "Initializing", key: value}
    obj = registry.update(CLUSTER_WORKSPACES, "root", "", "org", {**obj, "status": {
        "phase": "Initializing", "initializers": []}}, subresource="status")
    assert obj["metadata"]["labels"] == {PHASE_LABEL: "Initializing"}


def test_initializer_permissions_are_policy_rules(registry):
    registry.create(WORKSPACE_TYPES, "root", "", {"metadata": {"name": "ok"},
                                                  "spec": {"initializerPermissions": PERMISSIONS}})
    for bad, field in (("all", "spec.initializerPermissions"), ([{"resources": ["x"]}], "verbs"),
                       ([{"verbs": ["get"], "apiGroups": [""]}], "resources")):
        with pytest.raises(errors.Invalid) as exc:
            registry.create(WORKSPACE_TYPES, "root", "", {"metadata": {"name": "bad"},
                                                          "spec": {"initializerPermissions": bad}})
        assert field in exc.value.message


# ---------------------------------------------------------------------- the one status write


STORED = {"metadata": {"name": "ws", "resourceVersion": "7", "labels": {"a": "b"}},
          "spec": {"type": {"name": "db", "path": "root:org"}},
          "status": {"phase": "Initializing", "initializers": ["root:x:y", INITIALIZER, "root:z:w"],
                     "baseURL": "https://x/clusters/root:ws"}}


def _with_status(**status) -> dict:
    return {**STORED, "status": {**STORED["status"], **status}}


@pytest.mark.parametrize("obj", [_with_status(initializers=["root:x:y", "root:z:w"]), STORED])
def test_removing_ourselves_or_nothing_is_allowed(obj):
    assert only_removing(INITIALIZER)(obj, STORED, None) is obj


@pytest.mark.parametrize("obj, field", [
    (_with_status(initializers=["root:x:y", INITIALIZER]), "status.initializers"),            # removed another
    (_with_status(initializers=["root:z:w"]), "status.initializers"),                         # removed two
    (_with_status(initializers=["root:z:w", "root:x:y"]), "status.initializers"),             # reordered
    (_with_status(initializers=["root:x:y", "root:evil:y"]), "status.initializers"),          # swapped for one
    (_with_status(initializers="root:x:y"), "status.initializers"),
    (_with_status(phase="Ready"), "status.phase"),
    (_with_status(baseURL="https://evil"), "status.baseURL"),
    (_with_status(extra=True), "status.extra"),
    ({**STORED, "status": None}, "status"),
    ({**STORED, "spec": {"type": {"name": "other"}}}, "spec"),
    ({**STORED, "metadata": {**STORED["metadata"], "labels": {}}}, "metadata.labels"),
    ({**STORED, "metadata": {**STORED["metadata"], "annotations": {"x": "y"}}}, "metadata.annotations"),
])
def test_anything_else_is_a_422_naming_the_field(obj, field):
    with pytest.raises(errors.Invalid) as exc:
        only_removing(INITIALIZER)(obj, STORED, None)
    assert field in [cause["field"] for cause in exc.value.details["causes"]]
    if field == "status.initializers":
        assert f'only removing the "{INITIALIZER}" initializer is supported' in exc.value.message


# ---------------------------------------------------------------------- the shard's entry rule


WAITING = {"status": {"phase": "Initializing", "initializers": [INITIALIZER]}}
NO = Decision(False, "")


@pytest.mark.parametrize("user, workspace, allowed", [
    (UserInfo("sa", groups=(GROUP,)), WAITING, True),
    (UserInfo("system:serviceaccount:default:sa", groups=(GROUP,), extra={"authentication.kcp.io/cluster": ["root:org"]}),
     WAITING, True),                                                                       # of the type's workspace
    (UserInfo("sa", groups=(GROUP,)), {"status": {"phase": "Ready"}}, False),
    (UserInfo("sa", groups=(GROUP,)), {"status": {"phase": "Initializing", "initializers": ["root:org:other"]}}, False),
    (UserInfo("sa", groups=(initializer_group("root:evil:db"),)), WAITING, False),          # same type name elsewhere
    (UserInfo("sa"), WAITING, False),
    (UserInfo("sa", groups=(GROUP,)), None, False),
])
def test_an_initializer_enters_only_a_workspace_waiting_for_it(user, workspace, allowed):
    decision = workspace_access.may_enter(lambda attributes: NO, user, "root:team",
                                          lambda cluster: workspace_access.initializers_waiting(workspace))
    assert decision.allowed is allowed
    assert not workspace_access.may_enter(lambda a: NO, user, "*", lambda c: [INITIALIZER]).allowed


def test_the_rbac_authorizer_reads_the_workspace(registry):
    obj = registry.create(CLUSTER_WORKSPACES, "root", "", {"metadata": {"name": "team"}})
    authorizer = RBACAuthorizer(registry)
    user = UserInfo("sa", groups=(GROUP,))
    assert not authorizer.may_enter(user, "root:team").allowed
    registry.update(CLUSTER_WORKSPACES, "root", "", "team", {**obj, "status": {
        "phase": "Initializing", "initializers": [INITIALIZER]}}, subresource="status")
    assert authorizer.may_enter(user, "root:team").reason == f'initializer "{INITIALIZER}" of this workspace'


# ---------------------------------------------------------------------- nobody brings the group


class _AllowAll:
    def authorize(self, attributes):
        return Decision(True, "")


def test_impersonating_the_group_is_only_for_system_masters():
    requested = {"HTTP_IMPERSONATE_USER": "bob", "HTTP_IMPERSONATE_GROUP": f"devs,{GROUP}"}
    alice = UserInfo("alice", groups=("system:authenticated",))
    assert impersonate(dict(requested), alice, _AllowAll(), "root:team").groups == ("devs", "system:authenticated")
    admin = UserInfo("vw", groups=("system:masters",))
    assert GROUP in impersonate(dict(requested), admin, _AllowAll(), "root:team").groups


def test_no_authenticator_of_the_shard_keeps_the_group():
    shard_ca, proxy_ca = pki.CA.create("kcp-shard-ca"), pki.CA.create("kcp-requestheader-ca")
    union = UnionAuthenticator([ClientCertificateAuthenticator(issuers=["kcp-shard-ca"]),
                                RequestHeaderAuthenticator([proxy_ca.cert])])
    by_cert = union.authenticate({"kcp.peer_certificate": {**peer(shard_ca.issue("mallory", [GROUP, "team"])[0]),
                                                           "issuer": "kcp-shard-ca"}})
    assert by_cert.groups == ("team", "system:authenticated")
    environ = environ_of({"X-Remote-User": "mallory", "X-Remote-Group": f"team,{GROUP}"})
    environ["kcp.peer_certificate"] = {**peer(proxy_ca.issue("kcp-shard-proxy")[0]), "issuer": "kcp-requestheader-ca"}
    assert union.authenticate(environ).groups == ("team", "system:authenticated")


def test_the_external_process_drops_the_group_too():
    users, proxies = pki.CA.create("kcp-shard-ca"), pki.CA.create("kcp-requestheader-ca")
    authenticator = DelegatedAuthenticator(None, client_cas=[users.cert], requestheader_cas=[proxies.cert])
    environ = environ_of({"X-Remote-User": "mallory", "X-Remote-Group": GROUP})
    environ["kcp.peer_certificate"] = peer(proxies.issue("kcp-shard-proxy")[0])
    assert authenticator.authenticate(environ).groups == ("system:authenticated",)
    by_cert = authenticator.authenticate({"kcp.peer_certificate": peer(users.issue("mallory", [GROUP])[0])})
    assert by_cert.groups == ("system:authenticated",)


# ---------------------------------------------------------------------- the controllers


def test_initializer_permissions_are_materialized_while_initializing(registry):
    registry.ensure_logical_cluster("root:org")
    registry.create(WORKSPACE_TYPES, "root:org", "", {"metadata": {"name": "db"}, "spec": {
        "initializer": True, "initializerPermissions": PERMISSIONS}})
    controller = WorkspaceController(registry, base_url="https://127.0.0.1:1")
    controller.start()
    try:
        registry.create(CLUSTER_WORKSPACES, "root", "", {"metadata": {"name": "team"},
                                                         "spec": {"type": {"name": "db", "path": "root:org"}}})
        obj = wait_for(lambda: (lambda o: o if o["status"]["phase"] == "Initializing" else None)(
            registry.get(CLUSTER_WORKSPACES, "root", "", "team")))
        roles = registry.catalog.lookup("root:team", RBAC, "v1", "clusterroles")
        bindings = registry.catalog.lookup("root:team", RBAC, "v1", "clusterrolebindings")
        assert registry.get(roles, "root:team", "", GROUP)["rules"] == PERMISSIONS
        assert registry.get(bindings, "root:team", "", GROUP)["subjects"] == [
            {"kind": "Group", "apiGroup": RBAC, "name": GROUP}]
        allowed = RBACAuthorizer(registry).authorize(Attributes(
            user=UserInfo("system:serviceaccount:default:sa", groups=(GROUP,),
                          extra={"authentication.kcp.io/cluster": ["root:org"]}),
            verb="create", cluster="root:team", is_resource=True, namespace="default", resource="configmaps"))
        assert allowed.allowed, allowed
        registry.update(CLUSTER_WORKSPACES, "root", "", "team", {**obj, "status": {**obj["status"], "initializers": []}},
                        subresource="status")
        wait_for(lambda: registry.get(CLUSTER_WORKSPACES, "root", "", "team")["status"]["phase"] == "Ready")
        with pytest.raises(errors.NotFound):
            registry.get(roles, "root:team", "", GROUP)
        with pytest.raises(errors.NotFound):
            registry.get(bindings, "root:team", "", GROUP)
    finally:
        controller.stop()


def test_every_workspace_type_publishes_its_initializer_url_per_shard(registry):
    registry.create(WORKSPACE_TYPES, "root", "", {"metadata": {"name": "db"}, "spec": {"initializer": True}})
    publisher = URLPublisher(registry, WORKSPACE_TYPES, lambda cluster, name: f"/services/initializingworkspaces/"
                                                                             f"{cluster}:{name}", name="test")
    publisher.start()
    try:
        def urls():
            return [vw["url"] for vw in (registry.get(WORKSPACE_TYPES, "root", "", "db").get("status") or {})
                    .get("virtualWorkspaces") or ()]
        wait_for(lambda: urls() == ["https://127.0.0.1:1/services/initializingworkspaces/root:db"])
        registry.create(SHARDS, "root", "", {"metadata": {"name": "b"}, "spec": {"baseURL": "https://b:1",
                                                                               "virtualWorkspaceURL": "https://vw:2"}})
        wait_for(lambda: sorted(urls()) == ["https://127.0.0.1:1/services/initializingworkspaces/root:db",
                                            "https://vw:2/services/initializingworkspaces/root:db"])
        condition = registry.get(WORKSPACE_TYPES, "root", "", "db")["status"]["conditions"][0]
        assert (condition["type"], condition["status"]) == ("VirtualWorkspaceURLsReady", "True")
    finally:
        publisher.stop()
