"""Which workspaces of an org a user sees: the user's rules there, evaluated once and matched by name.

The tenancy rule (``server.auth.workspace_access``): a user may enter ``<org>:<name>`` with verb ``access`` or
``admin`` on ``clusterworkspaces/content`` named ``<name>`` in ``<org>``; ``system:masters`` enters
everything. So the set of workspaces a user sees in ``<org>`` is a function of the user's
cluster-wide rules in ``<org>`` and of names alone: a rule with ``resourceNames`` adds those names, a
rule without adds every name. Asking the shard for the rules once (a SelfSubjectRulesReview) and
matching thousands of names here is what makes a list of a 10,000-workspace org cheap, and asking
for every request is what keeps it from ever being stale (kcp#1581): there is no cache to lag.

Matching follows kube's ``RuleAllows``: ``*`` wildcards in verbs, apiGroups and resources, ``*/content``
for the subresource of any resource; a rule on ``clusterworkspaces`` alone does not cover its
``content`` subresource. Only ClusterRoleBindings matter (workspaces are cluster-scoped), which is
also why ``BoundRoles`` follows ClusterRoleBindings only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

__all__ = ["TENANCY_GROUP", "CONTENT_VERBS", "Visibility", "NOTHING", "EVERYTHING", "visibility", "grants_content",
           "subject_matches", "BoundRoles"]

TENANCY_GROUP = "tenancy.kcp.dev"
CONTENT_VERBS = frozenset({"access", "admin"})
_CONTENT_RESOURCES = frozenset({"clusterworkspaces/content", "*/content", "*"})
_SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"


@dataclass(frozen=True, slots=True)
class Visibility:
    """The names a user may enter: every name (``everything``) or exactly ``names``."""

    everything: bool = False
    names: frozenset[str] = frozenset()

    def __contains__(self, name: str) -> bool:
        return self.everything or name in self.names

    def changed(self, other: "Visibility") -> frozenset[str] | None:
        """The names whose visibility differs between ``self`` and ``other``; None when that is unbounded."""
        if self.everything and other.everything:
            return frozenset()
        if self.everything or other.everything:
            return None
        return self.names ^ other.names


NOTHING = Visibility()
EVERYTHING = Visibility(everything=True)


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, (list, tuple)) else ()


def grants_content(rule: dict) -> bool:
    """Whether a PolicyRule allows ``access`` or ``admin`` on ``clusterworkspaces/content`` for some name."""
    if not isinstance(rule, dict):
        return False
    verbs = _strings(rule.get("verbs"))
    if "*" not in verbs and not CONTENT_VERBS.intersection(verbs):
        return False
    groups = _strings(rule.get("apiGroups"))
    if "*" not in groups and TENANCY_GROUP not in groups:
        return False
    return not _CONTENT_RESOURCES.isdisjoint(_strings(rule.get("resources")))


def visibility(resource_rules: Iterable[dict]) -> Visibility:
    """The names ``resource_rules`` (a SelfSubjectRulesReview's ``resourceRules``) let their user enter."""
    names: set[str] = set()
    for rule in resource_rules:
        if not grants_content(rule):
            continue
        rule_names = _strings(rule.get("resourceNames"))
        if not rule_names:
            return EVERYTHING
        names.update(rule_names)
    return Visibility(names=frozenset(names)) if names else NOTHING


def subject_matches(subject: Any, user: Any, namespace: str = "") -> bool:
    """Whether an RBAC subject names ``user`` (by name, one of its groups, or as its service account)."""
    if not isinstance(subject, dict):
        return False
    kind, name = subject.get("kind"), subject.get("name")
    if not isinstance(name, str) or not name:
        return False
    if kind == "User":
        return name == user.name
    if kind == "Group":
        return name in (getattr(user, "groups", ()) or ())
    if kind == "ServiceAccount":
        sa_namespace = subject.get("namespace") or namespace
        return user.name == f"{_SERVICE_ACCOUNT_PREFIX}{sa_namespace}:{name}"
    return False


def _binds(binding: dict, user: Any) -> str | None:
    """The ClusterRole a ClusterRoleBinding grants ``user``, or None when it does not name the user."""
    subjects = binding.get("subjects")
    if not isinstance(subjects, list) or not any(subject_matches(s, user) for s in subjects):
        return None
    ref = binding.get("roleRef")
    if not isinstance(ref, dict) or ref.get("kind") != "ClusterRole" or not isinstance(ref.get("name"), str):
        return None
    return ref["name"]


def _name(obj: dict) -> str:
    return (obj.get("metadata") or {}).get("name") or ""


class BoundRoles:
    """The ClusterRoles of one logical cluster that are bound to one user, kept current from binding events.

    It tells a watch which RBAC events can change what its user sees, so that the many RBAC writes
    that concern others (every new workspace grants its owner a role) cost a dictionary lookup, not
    a rules review.
    """

    def __init__(self, user: Any, bindings: Iterable[dict] = ()):
        self.user = user
        self._role_of: dict[str, str] = {}     # binding name -> role it grants the user
        self._roles: Counter[str] = Counter()
        for binding in bindings:
            self._set(_name(binding), _binds(binding, user))

    def _set(self, binding: str, role: str | None) -> None:
        old = self._role_of.pop(binding, None)
        if old is not None:
            self._roles[old] -= 1
            if not self._roles[old]:
                del self._roles[old]
        if role is not None:
            self._role_of[binding] = role
            self._roles[role] += 1

    def binding_event(self, event_type: str, binding: dict) -> bool:
        """Apply a ClusterRoleBinding event; whether it may change the user's rules (it named the user
        before or names the user now)."""
        name = _name(binding)
        before = name in self._role_of
        role = _binds(binding, self.user)
        self._set(name, None if event_type == "DELETED" else role)
        return before or role is not None

    def binds(self, role: str) -> bool:
        """Whether ClusterRole ``role`` is bound to the user (so a change of it may change the user's rules)."""
        return role in self._roles
