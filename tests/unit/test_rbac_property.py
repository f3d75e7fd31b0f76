"""Property test: the indexed RBAC authorizer agrees with a straightforward reference evaluator.

Hypothesis draws users (names, groups, service-account identities of either cluster), Roles,
ClusterRoles, RoleBindings, ClusterRoleBindings in a parent cluster and its child workspace, and
requests; the reference below scans every binding on every request, as the RBAC documentation
reads. After a first round of decisions (the index is loaded) the test changes and deletes some
objects through the registry and compares again, so the watch-fed index maintenance is checked too.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from server.apis import builtin_types
from server.apis.rbac import RBAC_TYPES
from server.auth.authz import Attributes
from server.auth.rbac import RBACAuthorizer
from server.auth.user import UserInfo
from server.auth.workspace_access import SA_CLUSTER_EXTRA
from server.registry.generic import Registry
from server.registry.resourcetype import Catalog
from server.storage import SQLiteBackend, Store

TYPES = {rt.plural: rt for rt in RBAC_TYPES}
NAMESPACES = ("ns1", "ns2")
CHILD = "w"

# Small pools, so that drawn rules and requests meet often (about a third of the decisions allow).
VERBS = ("get", "access", "admin", "*")
GROUPS = ("", "tenancy.kcp.dev", "*")
RESOURCES = ("configmaps", "configmaps/status", "*/status", "clusterworkspaces/content", "*/content", "*")
RESOURCE_NAMES = ("a", "w", "")
URLS = ("/api", "/api/*", "/apis*", "/healthz", "*")
USER_NAMES = ("alice", "bob", "system:serviceaccount:ns1:robot", "system:serviceaccount:ns2:robot")
USER_GROUPS = ("devs", "ops", "system:authenticated")
ROLE_NAMES = ("r1", "r2")


# ---------------------------------------------------------------------------------------------------
# Strategies


def _subset(values, min_size=1, max_size=2):
    return st.lists(st.sampled_from(values), min_size=min_size, max_size=max_size, unique=True)


resource_rule = st.fixed_dictionaries({"verbs": _subset(VERBS), "apiGroups": _subset(GROUPS),
                                       "resources": _subset(RESOURCES)},
                                      optional={"resourceNames": _subset(RESOURCE_NAMES, max_size=2)})
url_rule = st.fixed_dictionaries({"verbs": _subset(("get", "post", "*")), "nonResourceURLs": _subset(URLS)})


def _subjects(namespaced: bool):
    """Subjects of a RoleBinding (a ServiceAccount may omit its namespace) or a ClusterRoleBinding."""
    sa_name = st.sampled_from(("robot", "other"))
    if namespaced:
        sa = st.fixed_dictionaries({"kind": st.just("ServiceAccount"), "name": sa_name},
                                   optional={"namespace": st.sampled_from(NAMESPACES)})
    else:
        sa = st.fixed_dictionaries({"kind": st.just("ServiceAccount"), "name": sa_name,
                                    "namespace": st.sampled_from(NAMESPACES)})
    one = st.one_of(st.fixed_dictionaries({"kind": st.just("User"), "name": st.sampled_from(USER_NAMES)}),
                    st.fixed_dictionaries({"kind": st.just("Group"), "name": st.sampled_from(USER_GROUPS)}),
                    sa)
    return st.lists(one, min_size=1, max_size=3)


SUBJECTS = {True: _subjects(True), False: _subjects(False)}
CLUSTER_ROLE_RULES = st.lists(st.one_of(resource_rule, url_rule), min_size=1, max_size=3)
ROLE_RULES = st.lists(resource_rule, min_size=1, max_size=2)


@st.composite
def cluster_policy(draw):
    """RBAC objects of one cluster as (plural, namespace, object)."""
    objects = []
    for name in draw(_subset(ROLE_NAMES, 1, 2)):
        rules = draw(CLUSTER_ROLE_RULES)
        objects.append(("clusterroles", "", {"metadata": {"name": name}, "rules": rules}))
    for name in draw(_subset(ROLE_NAMES, 0, 2)):
        ns = draw(st.sampled_from(NAMESPACES))
        rules = draw(ROLE_RULES)
        objects.append(("roles", ns, {"metadata": {"name": name, "namespace": ns}, "rules": rules}))
    for index in range(draw(st.integers(0, 3))):
        ref = {"kind": "ClusterRole", "name": draw(st.sampled_from(ROLE_NAMES))}
        objects.append(("clusterrolebindings", "", {"metadata": {"name": f"crb{index}"}, "roleRef": ref,
                                                     "subjects": draw(SUBJECTS[False])}))
    for index in range(draw(st.integers(0, 4))):
        ns = draw(st.sampled_from(NAMESPACES))
        ref = {"kind": draw(st.sampled_from(("Role", "ClusterRole"))), "name": draw(st.sampled_from(ROLE_NAMES))}
        objects.append(("rolebindings", ns, {"metadata": {"name": f"rb{index}", "namespace": ns}, "roleRef": ref,
                                             "subjects": draw(SUBJECTS[True])}))
    return objects


@st.composite
def user(draw, parent: str, child: str):
    name = draw(st.sampled_from(USER_NAMES))
    groups = tuple(draw(_subset(USER_GROUPS + ("system:masters",) * (draw(st.integers(0, 9)) == 0), 0, 3)))
    extra = {}
    if name.startswith("system:serviceaccount:") and draw(st.booleans()):
        extra = {SA_CLUSTER_EXTRA: [draw(st.sampled_from((parent, child)))]}
    return UserInfo(name, groups=groups, extra=extra)


@st.composite
def request_attributes(draw, parent: str, child: str):
    who = draw(user(parent, child))
    cluster = draw(st.sampled_from((parent, child)))
    verb = draw(st.sampled_from(("get", "access", "admin", "post", "update")))
    if draw(st.integers(0, 4)) == 0:
        return Attributes(user=who, verb=verb, cluster=cluster, is_resource=False,
                          path=draw(st.sampled_from(("/api", "/api/v1", "/apis", "/healthz", "/metrics"))))
    resource = draw(st.sampled_from(("configmaps", "clusterworkspaces")))
    return Attributes(user=who, verb=verb, cluster=cluster, is_resource=True,
                      api_group=draw(st.sampled_from(GROUPS[:-1])), api_version="v1",
                      namespace=draw(st.sampled_from(("",) + NAMESPACES)), resource=resource,
                      subresource=draw(st.sampled_from(("", "status", "content"))),
                      name=draw(st.sampled_from(("", "a", "w"))))


@st.composite
def targeted_request(draw, policies: dict, parent: str, child: str):
    """A request aimed at one drawn binding: a user it names and a request one of its rules covers,
    then maybe one field changed. Random requests alone would almost never be allowed."""
    cluster = draw(st.sampled_from((parent, parent, child)))
    bindings = [(p, ns, o) for p, ns, o in policies[cluster] if p.endswith("bindings") and o["subjects"]]
    if not bindings:
        return draw(request_attributes(parent, child))
    plural, ns, binding = draw(st.sampled_from(bindings))
    s = draw(st.sampled_from(binding["subjects"]))
    groups = set(draw(_subset(USER_GROUPS, 0, 2)))
    extra = {}
    if s["kind"] == "User":
        name = s["name"]
    elif s["kind"] == "Group":
        name = draw(st.sampled_from(USER_NAMES))
        groups.add(s["name"])
    else:
        name = f"system:serviceaccount:{s.get('namespace') or ns}:{s['name']}"
        extra = {SA_CLUSTER_EXTRA: [draw(st.sampled_from((cluster, cluster, parent, child)))]}
    who = UserInfo(name, groups=tuple(sorted(groups)), extra=extra)
    ref = binding["roleRef"]
    rules = [r for p, rns, o in policies[cluster]
             if o["metadata"]["name"] == ref["name"]
             and ((p == "clusterroles" and ref["kind"] == "ClusterRole") or (p == "roles" and rns == ns))
             for r in o["rules"]]
    if not rules:
        return draw(request_attributes(parent, child))
    rule = draw(st.sampled_from(rules))
    verb = draw(st.sampled_from(rule["verbs"]))
    verb = "get" if verb == "*" else verb
    namespace = ns if plural == "rolebindings" else draw(st.sampled_from(("",) + NAMESPACES))
    if "nonResourceURLs" in rule:
        url = draw(st.sampled_from(rule["nonResourceURLs"]))
        a = Attributes(user=who, verb=verb, cluster=cluster, is_resource=False,
                       path=url.rstrip("*") + draw(st.sampled_from(("", "x", "/v1"))))
    else:
        group = draw(st.sampled_from(rule["apiGroups"]))
        resource, _, sub = draw(st.sampled_from(rule["resources"])).partition("/")
        resource = "configmaps" if resource == "*" else resource
        names = rule.get("resourceNames") or [draw(st.sampled_from(("", "a", "w")))]
        a = Attributes(user=who, verb=verb, cluster=cluster, is_resource=True,
                       api_group="apps" if group == "*" else group, api_version="v1", namespace=namespace,
                       resource=resource, subresource=sub, name=draw(st.sampled_from(names)))
    change = draw(st.sampled_from((None, None, None, None, "verb", "namespace", "name", "subresource", "user")))
    if change == "verb":
        a = replace(a, verb=draw(st.sampled_from(("get", "access", "post"))))
    elif change == "namespace":
        a = replace(a, namespace=draw(st.sampled_from(("",) + NAMESPACES)))
    elif change == "name":
        a = replace(a, name=draw(st.sampled_from(("", "a", "w"))))
    elif change == "subresource":
        a = replace(a, subresource=draw(st.sampled_from(("", "status", "content"))))
    elif change == "user":
        a = replace(a, user=draw(user(parent, child)))
    return a


# ---------------------------------------------------------------------------------------------------
# The reference evaluator: scan everything, as the RBAC docs describe it


def ref_rule_allows(rule: dict, a: Attributes) -> bool:
    if not ("*" in rule["verbs"] or a.verb in rule["verbs"]):
        return False
    if not a.is_resource:
        for url in rule.get("nonResourceURLs", []):
            if url == "*" or url == a.path or (url.endswith("*") and a.path.startswith(url[:-1])):
                return True
        return False
    if "nonResourceURLs" in rule:
        return False
    if not ("*" in rule["apiGroups"] or a.api_group in rule["apiGroups"]):
        return False
    wanted = a.resource + ("/" + a.subresource if a.subresource else "")
    if not any(r == "*" or r == wanted or (a.subresource and r == "*/" + a.subresource) for r in rule["resources"]):
        return False
    names = rule.get("resourceNames") or []
    return not names or a.name in names


def ref_subject_matches(s: dict, who: UserInfo, binding_namespace: str, cluster: str) -> bool:
    if s["kind"] == "User":
        return s["name"] == who.name
    if s["kind"] == "Group":
        return s["name"] in who.groups
    namespace = s.get("namespace") or binding_namespace
    return (who.name == f"system:serviceaccount:{namespace}:{s['name']}"
            and who.extra.get(SA_CLUSTER_EXTRA) == [cluster])


def ref_rbac(objects: list, a: Attributes) -> bool:
    def rules(kind, name, namespace):
        plural = "clusterroles" if kind == "ClusterRole" else "roles"
        for p, ns, obj in objects:
            if p == plural and obj["metadata"]["name"] == name and (kind == "ClusterRole" or ns == namespace):
                return obj["rules"]
        return []

    for plural, ns, obj in objects:
        if plural == "clusterrolebindings" or (plural == "rolebindings" and a.namespace and ns == a.namespace):
            if any(ref_subject_matches(s, a.user, ns, a.cluster) for s in obj["subjects"]):
                if any(ref_rule_allows(r, a) for r in rules(obj["roleRef"]["kind"], obj["roleRef"]["name"], ns)):
                    return True
    return False


def reference(policies: dict, parent: str, a: Attributes) -> bool:
    if "system:masters" in a.user.groups:
        return True
    sa_cluster = a.user.extra.get(SA_CLUSTER_EXTRA)
    if sa_cluster is not None:
        if sa_cluster != [a.cluster]:
            return False
    elif a.cluster != parent:
        name = a.cluster.rsplit(":", 1)[1]
        entered = any(ref_rbac(policies[parent], Attributes(
            user=a.user, verb=verb, cluster=parent, is_resource=True, api_group="tenancy.kcp.dev",
            resource="clusterworkspaces", subresource="content", name=name)) for verb in ("access", "admin"))
        if not entered:
            return False
    return ref_rbac(policies[a.cluster], a)


# ---------------------------------------------------------------------------------------------------
# The property


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    store = Store(SQLiteBackend(str(tmp_path_factory.mktemp("rbac") / "kcp.db")))
    registry = Registry(store, Catalog(builtin_types()))
    yield registry, RBACAuthorizer(registry), itertools.count()
    store.close()


def _load(registry, cluster: str, objects: list) -> None:
    registry.ensure_logical_cluster(cluster)
    namespaces = registry.catalog.lookup(cluster, "", "v1", "namespaces")
    for ns in NAMESPACES:
        registry.create(namespaces, cluster, "", {"metadata": {"name": ns}})
    for plural, ns, obj in objects:
        registry.create(TYPES[plural], cluster, ns, obj)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.data())
def test_authorizer_matches_reference(world, data):
    registry, authz, counter = world
    parent = f"p{next(counter)}"          # a cluster without parent: only its own RBAC applies
    child = f"{parent}:{CHILD}"
    policies = {parent: data.draw(cluster_policy(), "parent"), child: data.draw(cluster_policy(), "child")}
    for cluster, objects in policies.items():
        _load(registry, cluster, objects)
    requests = data.draw(st.lists(st.one_of(request_attributes(parent, child),
                                            targeted_request(policies, parent, child),
                                            targeted_request(policies, parent, child)),
                                  min_size=1, max_size=12), "requests")
    for a in requests:
        assert authz.authorize(a).allowed is reference(policies, parent, a), a

    # Change the policy under the loaded index: delete some objects, rewrite others.
    for cluster, objects in policies.items():
        survivors = []
        for plural, ns, obj in objects:
            action = data.draw(st.sampled_from(("keep", "delete", "rewrite")), f"{cluster} {plural} {ns}")
            rt = TYPES[plural]
            name = obj["metadata"]["name"]
            if action == "delete":
                registry.delete(rt, cluster, ns, name)
                continue
            if action == "rewrite":
                if plural.endswith("bindings"):
                    obj = {**obj, "subjects": data.draw(SUBJECTS[plural == "rolebindings"])}
                else:
                    obj = {**obj, "rules": data.draw(ROLE_RULES if plural == "roles" else CLUSTER_ROLE_RULES)}
                registry.update(rt, cluster, ns, name, obj)
            survivors.append((plural, ns, obj))
        policies[cluster] = survivors
    for a in requests:
        assert authz.authorize(a).allowed is reference(policies, parent, a), a
