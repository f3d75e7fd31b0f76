"""Kubernetes RBAC evaluated per logical cluster, from an index that follows the store.

Semantics are kube's ``plugin/pkg/auth/authorizer/rbac``: ClusterRoleBindings grant their
ClusterRole everywhere in the cluster; RoleBindings grant a Role of their namespace or a
ClusterRole inside their namespace only; a rule allows when verb, API group, resource (``res``,
``res/sub``, ``*``, ``*/sub``) and resourceNames match, or, for non-resource requests, verb and
``nonResourceURLs`` (exact, or a prefix ending in ``*``). Nothing denies; no match is a denial.

Why an index: an authorization decision runs on every request and must not scan all bindings.
Each logical cluster gets a ``ClusterPolicy`` (bindings by subject, roles by name) built on first
use and then kept current from the store's watch log of the four RBAC resources: every decision
first consumes any new RBAC events (skipped in O(1) when the store's resourceVersion has not
moved) and applies them to the loaded clusters' indexes.
"""

from __future__ import annotations

from typing import Callable, Iterable, NamedTuple

from server.auth import workspace_access
from server.auth.authz import Attributes, Decision
from server.auth.user import UserInfo
from server.registry.generic import LOGICAL_CLUSTERS
from server.storage import Key, ResourceExpiredError, Store

GROUP = "rbac.authorization.k8s.io"
ROLES = f"{GROUP}/roles"
CLUSTER_ROLES = f"{GROUP}/clusterroles"
ROLE_BINDINGS = f"{GROUP}/rolebindings"
CLUSTER_ROLE_BINDINGS = f"{GROUP}/clusterrolebindings"
RESOURCES = (ROLES, CLUSTER_ROLES, ROLE_BINDINGS, CLUSTER_ROLE_BINDINGS)
ROLE_RESOURCES = (ROLES, CLUSTER_ROLES)
SERVICE_ACCOUNT_PREFIX = workspace_access.SERVICE_ACCOUNT_PREFIX

DENIED = Decision(False, "")
_UNREAD = object()  # a role the index knows of but has not read yet (``ClusterPolicy._compiled``)


# ---------------------------------------------------------------------------------------------------
# Rules


def _strings(value) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


class Rule:
    """One PolicyRule, compiled to sets so that matching is a few membership tests."""

    __slots__ = ("verbs", "api_groups", "resources", "resource_names", "urls", "url_prefixes", "raw")

    def __init__(self, rule: dict):
        self.raw = rule
        self.verbs = frozenset(_strings(rule.get("verbs")))
        self.api_groups = frozenset(_strings(rule.get("apiGroups")))
        self.resources = frozenset(_strings(rule.get("resources")))
        self.resource_names = frozenset(_strings(rule.get("resourceNames")))
        urls = _strings(rule.get("nonResourceURLs"))
        self.urls = frozenset(u for u in urls if not u.endswith("*"))
        # kube trims every trailing '*' and prefix-matches; "*" itself becomes "" and matches all.
        self.url_prefixes = tuple(u.rstrip("*") for u in urls if u.endswith("*"))

    def allows(self, a: Attributes) -> bool:
        """kube's ``RuleAllows`` for the request ``a``."""
        verbs = self.verbs
        if a.verb not in verbs and "*" not in verbs:
            return False
        if not a.is_resource:
            path = a.path
            return path in self.urls or any(path.startswith(p) for p in self.url_prefixes)
        groups = self.api_groups
        if a.api_group not in groups and "*" not in groups:
            return False
        resources = self.resources
        sub = a.subresource
        if "*" not in resources:
            if sub:
                if f"{a.resource}/{sub}" not in resources and f"*/{sub}" not in resources:
                    return False
            elif a.resource not in resources:
                return False
        names = self.resource_names
        return not names or a.name in names

    @property
    def is_non_resource(self) -> bool:
        return bool(self.urls or self.url_prefixes)


def rule_allows(rule: dict, attributes: Attributes) -> bool:
    """Whether one PolicyRule (as JSON) allows ``attributes``."""
    return Rule(rule).allows(attributes)


def _compile(obj: dict) -> tuple[Rule, ...]:
    rules = obj.get("rules")
    return tuple(Rule(r) for r in rules if isinstance(r, dict)) if isinstance(rules, list) else ()


# ---------------------------------------------------------------------------------------------------
# Per-cluster index


class Grant(NamedTuple):
    """One binding's grant to one subject: which role, and how kube describes it in reasons."""

    binding: tuple[str, str]   # (namespace, name); namespace "" for ClusterRoleBindings
    role_kind: str
    role_name: str
    source: str                # e.g. 'ClusterRoleBinding "x" of ClusterRole "y" to User "z"'


def _subject_key(subject, namespace: str) -> tuple[str, str] | None:
    """Index key of a subject: (kind, name); a ServiceAccount is keyed by its user name."""
    if not isinstance(subject, dict):
        return None
    kind, name = subject.get("kind"), subject.get("name")
    if not isinstance(name, str) or not name:
        return None
    if kind == "ServiceAccount":
        sa_namespace = subject.get("namespace") or namespace
        if not isinstance(sa_namespace, str) or not sa_namespace:
            return None
        return ("ServiceAccount", f"{SERVICE_ACCOUNT_PREFIX}{sa_namespace}:{name}")
    if kind in ("User", "Group"):
        return (kind, name)
    return None


def _describe_subject(subject: dict, namespace: str) -> str:
    if subject.get("kind") == "ServiceAccount":
        return f'ServiceAccount "{subject.get("name")}/{subject.get("namespace") or namespace}"'
    return f'{subject.get("kind")} "{subject.get("name")}"'


class ClusterPolicy:
    """The RBAC objects of one logical cluster: roles by name, bindings by subject (and namespace)."""

    def __init__(self, cluster: str, store: Store):
        self.cluster = cluster
        self.store = store
        # role -> its compiled rules, or _UNREAD until a decision first needs them (then read from the store): a new
        # workspace's bootstrap roles (cluster-admin, admin, edit, view...) are mostly never looked at, and a role
        # served from a template (server.storage.templates) is no dict of its own until read
        self.cluster_roles: dict[str, tuple[Rule, ...] | object] = {}
        self.roles: dict[tuple[str, str], tuple[Rule, ...] | object] = {}
        self.cluster_grants: dict[tuple[str, str], list[Grant]] = {}
        self.grants: dict[str, dict[tuple[str, str], list[Grant]]] = {}  # namespace -> subject -> grants

    @classmethod
    def load(cls, store: Store, cluster: str) -> "ClusterPolicy":
        policy = cls(cluster, store)
        for namespace, name in store.names(CLUSTER_ROLES, cluster):  # read when first needed (``_compiled``)
            policy.cluster_roles[name] = _UNREAD
        for key in store.names(ROLES, cluster):
            policy.roles[key] = _UNREAD
        for resource in (ROLE_BINDINGS, CLUSTER_ROLE_BINDINGS):
            for obj in store.list(resource, cluster, fields=("roleRef", "subjects"))[0]:
                policy.put_binding(resource, obj)
        return policy

    # -- maintenance

    def put_binding(self, resource: str, obj: dict) -> None:
        """Index a (Cluster)RoleBinding's grants (a role is indexed by name only: ``role_changed``)."""
        meta = obj.get("metadata") or {}
        self._put_binding(resource, obj, meta.get("name", ""), meta.get("namespace", ""))

    def role_changed(self, resource: str, key: Key, deleted: bool) -> None:
        roles, index = (self.cluster_roles, key.name) if resource == CLUSTER_ROLES else (self.roles,
                                                                                         (key.namespace, key.name))
        if deleted:
            roles.pop(index, None)
        else:
            roles[index] = _UNREAD

    def remove_binding(self, resource: str, obj: dict) -> None:
        """Drop the grants of a (Cluster)RoleBinding's previous version."""
        meta = obj.get("metadata") or {}
        name, namespace = meta.get("name", ""), meta.get("namespace", "")
        index = self._binding_index(resource, namespace, create=False)
        if index is None:
            return
        for subject in obj.get("subjects") or ():
            key = _subject_key(subject, namespace)
            grants = index.get(key) if key else None
            if grants:
                grants[:] = [g for g in grants if g.binding != (namespace, name)]
                if not grants:
                    del index[key]
        if not index and resource == ROLE_BINDINGS:
            self.grants.pop(namespace, None)

    def _binding_index(self, resource: str, namespace: str, create: bool):
        if resource == CLUSTER_ROLE_BINDINGS:
            return self.cluster_grants
        index = self.grants.get(namespace)
        if index is None and create:
            index = self.grants[namespace] = {}
        return index

    def _put_binding(self, resource: str, obj: dict, name: str, namespace: str) -> None:
        ref = obj.get("roleRef")
        subjects = obj.get("subjects")
        if not isinstance(ref, dict) or not isinstance(subjects, list) or not subjects:
            return
        role_kind, role_name = ref.get("kind", ""), ref.get("name", "")
        if resource == CLUSTER_ROLE_BINDINGS:
            described = f'ClusterRoleBinding "{name}" of {role_kind} "{role_name}" to '
        else:
            described = f'RoleBinding "{name}/{namespace}" of {role_kind} "{role_name}" to '
        index = self._binding_index(resource, namespace, create=True)
        for subject in subjects:
            key = _subject_key(subject, namespace)
            if key is not None:
                source = described + _describe_subject(subject, namespace)
                index.setdefault(key, []).append(Grant((namespace, name), role_kind, role_name, source))

    # -- evaluation

    def grants_for(self, keys: Iterable[tuple[str, str]], namespace: str) -> list[Grant]:
        """The grants that apply to a user with these subject keys, cluster-wide first (kube's order)."""
        found: list[Grant] = []
        cluster_grants = self.cluster_grants
        for key in keys:
            grants = cluster_grants.get(key)
            if grants:
                found += grants
        if namespace:
            index = self.grants.get(namespace)
            if index:
                for key in keys:
                    grants = index.get(key)
                    if grants:
                        found += grants
        return found

    def rules_of(self, grant: Grant) -> tuple[Rule, ...] | None:
        """The rules a grant refers to; None when its role does not exist."""
        if grant.role_kind == "ClusterRole":
            return self._compiled(self.cluster_roles, grant.role_name, CLUSTER_ROLES, "", grant.role_name)
        if grant.role_kind == "Role" and grant.binding[0]:
            return self._compiled(self.roles, (grant.binding[0], grant.role_name), ROLES, grant.binding[0],
                                  grant.role_name)
        return None

    def _compiled(self, roles: dict, key, resource: str, namespace: str, name: str) -> tuple[Rule, ...] | None:
        """The compiled rules of ``roles[key]``, read from the store and compiled on first use (the index follows
        the store's events up to its current resourceVersion, so the store holds the same version)."""
        rules = roles.get(key)
        if rules is not _UNREAD:
            return rules
        obj = self.store.get(Key(resource, self.cluster, namespace, name))
        if obj is None:  # cannot be while the index follows the store; a missing role is no role
            roles.pop(key, None)
            return None
        compiled = roles[key] = _compile(obj)
        return compiled

    def authorize(self, a: Attributes, keys: list[tuple[str, str]]) -> Decision:
        grants = self.grants_for(keys, a.namespace)
        for grant in grants:
            rules = self.rules_of(grant)
            if rules:
                for rule in rules:
                    if rule.allows(a):
                        return Decision(True, "RBAC: allowed by " + grant.source)
        missing = [_not_found(grant) for grant in grants if self.rules_of(grant) is None]
        if not missing:
            return DENIED
        missing = list(dict.fromkeys(missing))
        return Decision(False, "RBAC: " + (missing[0] if len(missing) == 1 else f"[{', '.join(missing)}]"))


def _not_found(grant: Grant) -> str:
    return f'{grant.role_kind.lower()}.{GROUP} "{grant.role_name}" not found'


def subject_keys(user: UserInfo, cluster: str) -> list[tuple[str, str]]:
    """The index keys a user matches in ``cluster``: its name, its groups, and its service account
    identity only when the token was issued by this very cluster."""
    keys = [("User", user.name)]
    keys += [("Group", group) for group in user.groups]
    if workspace_access.service_account_cluster(user) == cluster:
        keys.append(("ServiceAccount", user.name))
    return keys


# ---------------------------------------------------------------------------------------------------
# The authorizer


class RBACAuthorizer:
    """The shard's authorizer: system:masters, then the tenancy rule, then RBAC inside the cluster."""

    def __init__(self, registry):
        self.store: Store = registry.store
        #: fn(attributes in a parent cluster this shard does not hold) -> Decision, or None (unknown: RBAC here)
        self.parent_reviews: Callable[[Attributes], Decision | None] | None = None
        self._policies: dict[str, ClusterPolicy] = {}
        self._seen_rv = self.store.current_rv()
        self._watchers = self._watch(self._seen_rv)

    # -- index maintenance

    def _watch(self, rv: int) -> list:
        return [self.store.watch(resource, None, None, rv) for resource in RESOURCES]

    def _sync(self) -> None:
        """Apply RBAC writes since the last call to the loaded indexes (nothing to do if no write at all)."""
        rv = self.store.current_rv()
        if rv == self._seen_rv:
            return
        try:
            for watcher in self._watchers:
                for event in watcher.next(0):
                    policy = self._policies.get(event.key.cluster)
                    if policy is None:
                        continue
                    resource = event.key.resource
                    if resource in ROLE_RESOURCES:  # a name is all the index keeps of a role (``_compiled``)
                        policy.role_changed(resource, event.key, event.type == "DELETED")
                        continue
                    if event.prev is not None:
                        policy.remove_binding(resource, event.prev)
                    if event.type != "DELETED":
                        policy.put_binding(resource, event.obj)
        except ResourceExpiredError:
            # We were idle longer than the watch history: start over from the store.
            for watcher in self._watchers:
                watcher.close()
            self._policies.clear()
            self._watchers = self._watch(rv)
        self._seen_rv = rv

    def policy(self, cluster: str) -> ClusterPolicy:
        """The current RBAC index of ``cluster``."""
        self._sync()
        policy = self._policies.get(cluster)
        if policy is None:
            policy = self._policies[cluster] = ClusterPolicy.load(self.store, cluster)
        return policy

    # -- decisions

    def authorize(self, attributes: Attributes) -> Decision:
        user = attributes.user
        if user.is_master:
            return workspace_access.ALLOWED_MASTERS
        entry = self.may_enter(user, attributes.cluster)
        if not entry.allowed:
            return entry
        return self.evaluate(attributes)

    def evaluate(self, attributes: Attributes) -> Decision:
        """RBAC alone, inside ``attributes.cluster`` (no tenancy rule, no masters bypass)."""
        cluster = attributes.cluster
        if cluster == workspace_access.WILDCARD:
            return workspace_access.DENIED_WILDCARD
        return self.policy(cluster).authorize(attributes, subject_keys(attributes.user, cluster))

    def may_enter(self, user: UserInfo, cluster: str) -> Decision:
        """Whether ``user`` may use logical cluster ``cluster`` at all (see ``workspace_access``)."""
        return workspace_access.may_enter(self._evaluate_in_parent, user, cluster, self._initializing)

    def _evaluate_in_parent(self, attributes: Attributes) -> Decision:
        """The tenancy rule's check in the parent: RBAC here, or -- a parent on another shard -- that shard's
        answer (``parent_reviews``, set on a shard of several: ``server.controllers.shards.ParentReviews``)."""
        if self.parent_reviews is not None and self.store.get(
                Key(LOGICAL_CLUSTERS, attributes.cluster, "", "cluster")) is None:
            decision = self.parent_reviews(attributes)
            if decision is not None:
                return decision
        return self.evaluate(attributes)

    def _initializing(self, cluster: str):
        parent, name = workspace_access.parent_of(cluster)
        return workspace_access.initializers_waiting(
            self.store.get(Key(workspace_access.CLUSTER_WORKSPACES_KEY, parent, "", name)))

    def rules_for(self, user: UserInfo, cluster: str, namespace: str) -> tuple[list[dict], list[dict]]:
        """``(resourceRules, nonResourceRules)`` of ``user`` in ``cluster``/``namespace``, as
        SelfSubjectRulesReview reports them; nothing where the user may not enter."""
        if user.is_master:
            return ([{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
                    [{"verbs": ["*"], "nonResourceURLs": ["*"]}])
        if not self.may_enter(user, cluster).allowed:
            return [], []
        policy = self.policy(cluster)
        resource_rules: list[dict] = []
        non_resource_rules: list[dict] = []
        seen: set = set()
        for grant in policy.grants_for(subject_keys(user, cluster), namespace):
            identity = (grant.binding, grant.role_kind, grant.role_name)
            if identity in seen:
                continue
            seen.add(identity)
            for rule in policy.rules_of(grant) or ():
                raw = rule.raw
                if rule.is_non_resource:
                    non_resource_rules.append({"verbs": list(raw.get("verbs") or []),
                                               "nonResourceURLs": list(raw.get("nonResourceURLs") or [])})
                else:
                    converted = {"verbs": list(raw.get("verbs") or []),
                                 "apiGroups": list(raw.get("apiGroups") or []),
                                 "resources": list(raw.get("resources") or [])}
                    if raw.get("resourceNames"):
                        converted["resourceNames"] = list(raw["resourceNames"])
                    resource_rules.append(converted)
        return resource_rules, non_resource_rules
