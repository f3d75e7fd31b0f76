"""RBAC: rule matching, type validation, the indexed authorizer, the tenancy rule and the bootstrap policy.

The authorizer tests run on a real Registry over SQLite in tmp_path, so the index is fed by the
store's watch log exactly as in the shard.
"""

from __future__ import annotations

import pytest

from kcp_virtual.framework import errors
from server.apis import builtin_types
from server.apis.rbac import RBAC_TYPES
from server.auth.authz import Attributes
from server.auth.bootstrap_policy import ensure_bootstrap_policy
from server.auth.rbac import RBACAuthorizer, rule_allows
from server.auth.user import UserInfo
from server.auth.workspace_access import SA_CLUSTER_EXTRA, content_attributes
from server.registry.generic import Registry
from server.registry.resourcetype import Catalog
from server.storage import SQLiteBackend, Store

GROUP = "rbac.authorization.k8s.io"
TYPES = {rt.plural: rt for rt in RBAC_TYPES}
ALICE = UserInfo("alice", groups=("devs", "system:authenticated"))
ADMIN = UserInfo("admin", groups=("system:masters", "system:authenticated"))


def res(verb="get", resource="configmaps", group="", namespace="default", name="", sub="", user=ALICE,
        cluster="root") -> Attributes:
    return Attributes(user=user, verb=verb, cluster=cluster, is_resource=True, api_group=group, api_version="v1",
                      namespace=namespace, resource=resource, subresource=sub, name=name)


def path(p: str, verb="get", user=ALICE, cluster="root") -> Attributes:
    return Attributes(user=user, verb=verb, cluster=cluster, is_resource=False, path=p)


# ---------------------------------------------------------------------------------------------------
# Rule matching (kube's RuleAllows)

RULE = {"verbs": ["get", "list"], "apiGroups": [""], "resources": ["configmaps", "pods/log"]}


@pytest.mark.parametrize("rule,attributes,allowed", [
    (RULE, res(), True),
    (RULE, res(verb="list"), True),
    (RULE, res(verb="delete"), False),
    (RULE, res(group="apps"), False),
    (RULE, res(resource="secrets"), False),
    (RULE, res(resource="pods", sub="log", name="p"), True),
    (RULE, res(resource="pods", name="p"), False),                        # pods/log does not grant pods
    (RULE, res(resource="configmaps", sub="status", name="c"), False),    # configmaps does not grant a subresource
    ({**RULE, "verbs": ["*"]}, res(verb="deletecollection"), True),
    ({**RULE, "apiGroups": ["*"]}, res(group="example.com"), True),
    ({**RULE, "resources": ["*"]}, res(resource="deployments", sub="scale", name="d"), True),
    ({**RULE, "resources": ["*/status"]}, res(resource="deployments", sub="status", name="d"), True),
    ({**RULE, "resources": ["*/status"]}, res(resource="deployments", name="d"), False),
    ({**RULE, "resources": ["*/status"]}, res(resource="deployments", sub="scale", name="d"), False),
    ({**RULE, "resourceNames": ["a"]}, res(name="a"), True),
    ({**RULE, "resourceNames": ["a"]}, res(name="b"), False),
    ({**RULE, "resourceNames": ["a"]}, res(verb="list"), False),          # a list has no name
    (RULE, path("/api"), False),                                          # resource rules never match paths
    ({"verbs": ["get"], "nonResourceURLs": ["/healthz"]}, path("/healthz"), True),
    ({"verbs": ["get"], "nonResourceURLs": ["/healthz"]}, path("/healthz/ping"), False),
    ({"verbs": ["get"], "nonResourceURLs": ["/healthz"]}, path("/healthz", verb="post"), False),
    ({"verbs": ["get"], "nonResourceURLs": ["/apis/*"]}, path("/apis/apps/v1"), True),
    ({"verbs": ["get"], "nonResourceURLs": ["/apis/*"]}, path("/apis"), False),
    ({"verbs": ["get"], "nonResourceURLs": ["/apis*"]}, path("/apis"), True),
    ({"verbs": ["*"], "nonResourceURLs": ["*"]}, path("/anything/at/all", verb="put"), True),
    ({"verbs": ["*"], "nonResourceURLs": ["*"]}, res(), False),           # URL rules never match resources
])
def test_rule_allows(rule, attributes, allowed):
    assert rule_allows(rule, attributes) is allowed


# ---------------------------------------------------------------------------------------------------
# Validation, defaulting and printer columns


def messages(rt, obj, old=None) -> list[str]:
    causes = rt.prepare(obj, old) + rt.validate(obj, old)
    return [f'{c["field"]}: {c["message"]}' for c in causes]


def test_role_rules_validation_messages():
    role = {"metadata": {"name": "r", "namespace": "ns"}, "rules": [
        {"apiGroups": [""], "resources": ["pods"]},
        {"verbs": ["get"], "nonResourceURLs": ["/healthz"]},
        {"verbs": ["get"], "nonResourceURLs": ["/x"], "resources": ["pods"]},
        {"verbs": ["get"]},
    ]}
    assert messages(TYPES["roles"], role) == [
        "rules[0].verbs: Required value: verbs must contain at least one value",
        'rules[1].nonResourceURLs: Invalid value: []string{"/healthz"}: namespaced rules cannot apply to '
        "non-resource URLs",
        'rules[2].nonResourceURLs: Invalid value: []string{"/x"}: namespaced rules cannot apply to non-resource URLs',
        'rules[2].nonResourceURLs: Invalid value: []string{"/x"}: rules cannot apply to both regular resources and '
        "non-resource URLs",
        "rules[3].apiGroups: Required value: resource rules must supply at least one api group",
        "rules[3].resources: Required value: resource rules must supply at least one resource",
    ]
    cluster_role = {"metadata": {"name": "system:x"}, "rules": [{"verbs": ["get"], "nonResourceURLs": ["/healthz"]}]}
    assert messages(TYPES["clusterroles"], cluster_role) == []
    assert messages(TYPES["clusterroles"], {"metadata": {"name": "x"}, "rules": "nope"}) == [
        'rules: Invalid value: "nope": must be a list']


def test_binding_defaults_and_validation():
    binding = {"metadata": {"name": "b", "namespace": "ns"}, "roleRef": {"kind": "Role", "name": "r"},
               "subjects": [{"kind": "User", "name": "alice"}, {"kind": "ServiceAccount", "name": "sa"}]}
    assert messages(TYPES["rolebindings"], binding) == []
    assert binding["roleRef"]["apiGroup"] == GROUP
    assert binding["subjects"][0]["apiGroup"] == GROUP and "apiGroup" not in binding["subjects"][1]

    bad = {"metadata": {"name": "b"}, "roleRef": {"apiGroup": "example.com", "kind": "Role", "name": ""},
           "subjects": [{"kind": "Robot", "name": "r2"}, {"kind": "ServiceAccount", "name": "sa"},
                        {"kind": "Group", "apiGroup": "x", "name": ""}]}
    assert messages(TYPES["clusterrolebindings"], bad) == [
        'roleRef.apiGroup: Unsupported value: "example.com": supported values: "rbac.authorization.k8s.io"',
        'roleRef.kind: Unsupported value: "Role": supported values: "ClusterRole"',
        "roleRef.name: Required value",
        'subjects[0].kind: Unsupported value: "Robot": supported values: "ServiceAccount", "User", "Group"',
        "subjects[1].namespace: Required value",
        "subjects[2].name: Required value",
        'subjects[2].apiGroup: Unsupported value: "x": supported values: "rbac.authorization.k8s.io"',
    ]
    assert messages(TYPES["rolebindings"], {"metadata": {"name": "b"}}) == ["roleRef: Required value"]


def test_role_ref_is_immutable():
    old = {"metadata": {"name": "b"}, "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "view"},
           "subjects": [{"kind": "User", "name": "alice"}]}
    new = {**old, "roleRef": {"kind": "ClusterRole", "name": "edit"}, "subjects": [{"kind": "User", "name": "bob"}]}
    assert messages(TYPES["clusterrolebindings"], new, old) == [
        'roleRef: Invalid value: rbac.RoleRef{APIGroup:"rbac.authorization.k8s.io", Kind:"ClusterRole", '
        'Name:"edit"}: cannot change roleRef']
    same_ref = {**old, "roleRef": {"kind": "ClusterRole", "name": "view"}, "subjects": []}
    assert messages(TYPES["clusterrolebindings"], same_ref, old) == []


def test_printer_columns_are_kubes():
    assert [c.name for c in TYPES["roles"].table_columns()] == ["Name", "Created At"]
    assert [c.name for c in TYPES["clusterroles"].table_columns()] == ["Name", "Created At"]
    columns = TYPES["rolebindings"].table_columns()
    assert [c.name for c in columns] == ["Name", "Role", "Age", "Users", "Groups", "ServiceAccounts"]
    binding = {"roleRef": {"kind": "ClusterRole", "name": "view"},
               "subjects": [{"kind": "User", "name": "a"}, {"kind": "User", "name": "b"},
                            {"kind": "ServiceAccount", "name": "sa", "namespace": "ns"}]}
    assert [columns[i].getter(binding) for i in (1, 3, 4, 5)] == ["ClusterRole/view", "a, b", "", "ns:sa"]


# ---------------------------------------------------------------------------------------------------
# The authorizer on a real registry


@pytest.fixture
def authz(registry):
    return RBACAuthorizer(registry)


def create(registry, plural, obj, cluster="root", namespace=""):
    return registry.create(TYPES[plural], cluster, namespace, obj)


def role(name, *rules, namespace=""):
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"metadata": meta, "rules": list(rules)}


def binding(name, kind, role_name, *subjects, namespace=""):
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"metadata": meta, "roleRef": {"kind": kind, "name": role_name}, "subjects": list(subjects)}


def user(name):
    return {"kind": "User", "name": name}


def group(name):
    return {"kind": "Group", "name": name}


CM_READ = {"verbs": ["get", "list"], "apiGroups": [""], "resources": ["configmaps"]}


def test_role_binding_grants_in_its_namespace_only(registry, authz):
    create(registry, "roles", role("cm-reader", CM_READ, namespace="default"), namespace="default")
    assert not authz.authorize(res()).allowed
    create(registry, "rolebindings", binding("rb", "Role", "cm-reader", user("alice"), namespace="default"),
           namespace="default")
    decision = authz.authorize(res())
    assert decision.allowed
    assert decision.reason == 'RBAC: allowed by RoleBinding "rb/default" of Role "cm-reader" to User "alice"'
    registry.create(registry.catalog.lookup("root", "", "v1", "namespaces"), "root", "", {"metadata": {"name": "o"}})
    assert not authz.authorize(res(namespace="o")).allowed
    assert not authz.authorize(res(namespace="")).allowed            # a list across namespaces is cluster scope
    assert not authz.authorize(res(cluster="root:other", user=UserInfo("alice"))).allowed


def test_cluster_role_binding_grants_everywhere_in_the_cluster(registry, authz):
    create(registry, "clusterroles", role("cm-reader", CM_READ))
    create(registry, "clusterrolebindings", binding("crb", "ClusterRole", "cm-reader", group("devs")))
    assert authz.authorize(res(namespace="anywhere")).allowed
    assert authz.authorize(res(namespace="")).allowed
    assert not authz.authorize(res(user=UserInfo("bob", groups=("ops",)))).allowed
    # A RoleBinding to the ClusterRole grants it only in the binding's namespace.
    create(registry, "rolebindings", binding("rb", "ClusterRole", "cm-reader", user("bob"), namespace="default"),
           namespace="default")
    bob = UserInfo("bob", groups=("ops",))
    assert authz.authorize(res(user=bob)).allowed
    assert not authz.authorize(res(user=bob, namespace="")).allowed


def test_index_follows_updates_and_deletes(registry, authz):
    crole = create(registry, "clusterroles", role("r", CM_READ))
    crb = create(registry, "clusterrolebindings", binding("crb", "ClusterRole", "r", user("alice")))
    assert authz.authorize(res()).allowed
    # the role changes: its rules are re-read
    registry.update(TYPES["clusterroles"], "root", "", "r",
                    {**crole, "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"]}]})
    assert not authz.authorize(res()).allowed
    assert authz.authorize(res(resource="secrets")).allowed
    # the binding's subjects change
    registry.update(TYPES["clusterrolebindings"], "root", "", "crb", {**crb, "subjects": [user("bob")]})
    assert not authz.authorize(res(resource="secrets")).allowed
    assert authz.authorize(res(resource="secrets", user=UserInfo("bob"))).allowed
    registry.delete(TYPES["clusterrolebindings"], "root", "", "crb")
    assert not authz.authorize(res(resource="secrets", user=UserInfo("bob"))).allowed


def test_missing_role_is_the_deny_reason(registry, authz):
    create(registry, "clusterrolebindings", binding("crb", "ClusterRole", "nope", user("alice")))
    decision = authz.authorize(res())
    assert decision == type(decision)(False, f'RBAC: clusterrole.{GROUP} "nope" not found')
    assert authz.authorize(res(user=UserInfo("bob"))).reason == ""


def test_role_update_with_changed_role_ref_is_422(registry):
    create(registry, "clusterrolebindings", binding("crb", "ClusterRole", "view", user("alice")))
    with pytest.raises(errors.Invalid) as exc:
        registry.patch(TYPES["clusterrolebindings"], "root", "", "crb", "application/merge-patch+json",
                       {"roleRef": {"name": "edit"}})
    assert exc.value.status()["message"] == (
        f'ClusterRoleBinding.{GROUP} "crb" is invalid: roleRef: Invalid value: rbac.RoleRef{{APIGroup:"{GROUP}", '
        'Kind:"ClusterRole", Name:"edit"}: cannot change roleRef')
    assert exc.value.code == 422


def test_service_account_subjects_match_only_tokens_of_their_cluster(registry, authz):
    registry.ensure_logical_cluster("root:ws")
    for cluster in ("root", "root:ws"):
        create(registry, "roles", role("r", CM_READ, namespace="default"), cluster=cluster, namespace="default")
        create(registry, "rolebindings", binding("rb", "Role", "r", {"kind": "ServiceAccount", "name": "robot"},
                                                 namespace="default"), cluster=cluster, namespace="default")
    name = "system:serviceaccount:default:robot"
    own = UserInfo(name, groups=("system:serviceaccounts",), extra={SA_CLUSTER_EXTRA: ["root"]})
    assert authz.authorize(res(user=own)).allowed
    assert not authz.authorize(res(user=own, cluster="root:ws")).allowed          # a foreign workspace
    assert not authz.authorize(res(user=UserInfo(name))).allowed                  # no issuing cluster: no SA
    ws_sa = UserInfo(name, extra={SA_CLUSTER_EXTRA: ["root:ws"]})
    assert authz.authorize(res(user=ws_sa, cluster="root:ws")).allowed            # enters its own workspace
    assert authz.may_enter(ws_sa, "root:ws").allowed and not authz.may_enter(ws_sa, "root:ws:x").allowed
    # the extra alone makes no service account: a plain user with it still needs access in the parent
    assert not authz.may_enter(UserInfo("alice", extra={SA_CLUSTER_EXTRA: ["root:ws"]}), "root:ws").allowed


def test_masters_bypass_and_wildcard(registry, authz):
    assert authz.authorize(res(user=ADMIN, cluster="root:nowhere:deep")).allowed
    assert authz.authorize(res(user=ADMIN, cluster="*")).allowed
    create(registry, "clusterroles", role("all", {"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}))
    create(registry, "clusterrolebindings", binding("all", "ClusterRole", "all", user("alice")))
    assert authz.authorize(res()).allowed
    assert not authz.authorize(res(cluster="*")).allowed


def test_entering_a_workspace_needs_content_access_in_the_parent(registry, authz):
    registry.ensure_logical_cluster("root:team")
    create(registry, "clusterroles", role("all", {"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]},
                                          {"verbs": ["*"], "nonResourceURLs": ["*"]}), cluster="root:team")
    create(registry, "clusterrolebindings", binding("all", "ClusterRole", "all", user("alice")), cluster="root:team")
    inside = res(cluster="root:team")
    assert authz.authorize(inside) == authz.may_enter(ALICE, "root:team")
    assert not authz.authorize(inside).allowed
    assert authz.authorize(inside).reason == "workspace access not permitted"
    assert authz.rules_for(ALICE, "root:team", "default") == ([], [])

    # access on another workspace's content does not count
    content = {"verbs": ["access"], "apiGroups": ["tenancy.kcp.dev"], "resources": ["clusterworkspaces/content"],
               "resourceNames": ["other"]}
    create(registry, "clusterroles", role("enter", content))
    create(registry, "clusterrolebindings", binding("enter", "ClusterRole", "enter", group("devs")))
    assert not authz.authorize(inside).allowed
    registry.patch(TYPES["clusterroles"], "root", "", "enter", "application/merge-patch+json",
                   {"rules": [{**content, "resourceNames": ["other", "team"]}]})
    assert authz.may_enter(ALICE, "root:team").allowed
    assert authz.authorize(inside).allowed
    assert authz.authorize(path("/anything", cluster="root:team")).allowed
    # the parent's RBAC lets in, the workspace's RBAC decides
    assert not authz.authorize(res(cluster="root:team", user=UserInfo("carol", groups=("devs",)))).allowed
    # admin counts as well as access; the check is exactly the one content_attributes describes
    attrs = content_attributes(ALICE, "root:team", "admin")
    assert (attrs.cluster, attrs.resource, attrs.subresource, attrs.name) == ("root", "clusterworkspaces",
                                                                              "content", "team")


def test_rules_for(registry, authz):
    create(registry, "clusterroles", role("r", CM_READ, {"verbs": ["get"], "nonResourceURLs": ["/healthz"]}))
    create(registry, "clusterrolebindings", binding("a", "ClusterRole", "r", user("alice"), group("devs")))
    create(registry, "roles", role("s", {"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"],
                                         "resourceNames": ["s1"]}, namespace="default"), namespace="default")
    create(registry, "rolebindings", binding("b", "Role", "s", group("devs"), namespace="default"),
           namespace="default")
    resource_rules, non_resource = authz.rules_for(ALICE, "root", "default")
    assert resource_rules == [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["configmaps"]},
                              {"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"], "resourceNames": ["s1"]}]
    assert non_resource == [{"verbs": ["get"], "nonResourceURLs": ["/healthz"]}]
    assert authz.rules_for(ALICE, "root", "")[0] == resource_rules[:1]
    assert authz.rules_for(ADMIN, "root", "")[0] == [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}]


def test_index_rebuilds_after_the_watch_history_expired(tmp_path):
    store = Store(SQLiteBackend(str(tmp_path / "kcp.db")), history_max_events=1)
    try:
        registry = Registry(store, Catalog(builtin_types()))
        registry.ensure_logical_cluster("root")
        authz = RBACAuthorizer(registry)
        assert not authz.authorize(res()).allowed          # root's index is loaded
        create(registry, "clusterroles", role("r", CM_READ))
        for name in ("a", "b", "c", "d"):
            create(registry, "clusterrolebindings", binding(name, "ClusterRole", "r", user(name)))
        create(registry, "clusterrolebindings", binding("e", "ClusterRole", "r", user("alice")))
        assert authz.authorize(res()).allowed
        assert authz.authorize(res(user=UserInfo("c"))).allowed
    finally:
        store.close()


def test_bootstrap_policy_in_every_logical_cluster(registry, authz):
    registry.cluster_hooks.append(ensure_bootstrap_policy)
    registry.ensure_logical_cluster("root")
    registry.ensure_logical_cluster("root")                     # idempotent
    names = {o["metadata"]["name"] for o in registry.store.list(f"{GROUP}/clusterroles", "root")[0]}
    assert {"cluster-admin", "admin", "edit", "view", "system:basic-user", "system:discovery"} <= names
    registry.ensure_logical_cluster("root:team")
    assert len(registry.store.list(f"{GROUP}/clusterrolebindings", "root:team")[0]) == 4
    someone = UserInfo("someone", groups=("system:authenticated",))
    for p in ("/api", "/api/v1", "/apis", "/apis/apps/v1", "/version", "/healthz", "/openapi/v3"):
        assert authz.authorize(path(p, user=someone)).allowed, p
    assert not authz.authorize(path("/metrics", user=someone)).allowed
    for group_, resource in (("authorization.k8s.io", "selfsubjectaccessreviews"),
                             ("authorization.k8s.io", "selfsubjectrulesreviews"),
                             ("authentication.k8s.io", "selfsubjectreviews")):
        assert authz.authorize(res("create", resource, group_, namespace="", user=someone)).allowed
    assert not authz.authorize(res(user=someone)).allowed
    # the default roles grant what their names say
    for role_name, verb, resource, allowed in (("view", "list", "configmaps", True), ("view", "get", "secrets", False),
                                               ("edit", "create", "secrets", True), ("edit", "create", "roles", False),
                                               ("admin", "create", "rolebindings", True)):
        who = UserInfo(f"u-{role_name}")
        if not registry.store.get(registry.key(TYPES["rolebindings"], "root", "default", f"rb-{role_name}")):
            create(registry, "rolebindings", binding(f"rb-{role_name}", "ClusterRole", role_name, user(who.name),
                                                     namespace="default"), namespace="default")
        group_ = GROUP if resource.startswith("role") else ""
        assert authz.authorize(res(verb, resource, group_, user=who)).allowed is allowed, (role_name, verb, resource)
