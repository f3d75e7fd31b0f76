"""The oracle's own reading of who may do what: kube RBAC and kcp's tenancy rule, from the model alone.

Written from the rules as documented (DESIGN.md section 3, kube's RBAC), not from ``server.auth``: the
point is to disagree with the server when the server is wrong. A caller is a user with groups or a
service account of one workspace; bindings live in a workspace, ClusterRoleBindings for the whole
workspace, RoleBindings for one namespace; a service account matches a ServiceAccount subject only in
its own workspace, and enters no other workspace at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

READ = ("get", "list", "watch")
WRITE = ("create", "update", "patch", "delete", "deletecollection")
TENANCY = "tenancy.kcp.dev"
AUTHENTICATED = "system:authenticated"


@dataclass(frozen=True)
class Rule:
    verbs: tuple[str, ...]
    groups: tuple[str, ...]
    resources: tuple[str, ...]
    names: tuple[str, ...] = ()

    def allows(self, verb: str, group: str, resource: str, name: str) -> bool:
        return ((verb in self.verbs or "*" in self.verbs) and (group in self.groups or "*" in self.groups)
                and (resource in self.resources or "*" in self.resources)
                and (not self.names or name in self.names))


#: The bootstrap ClusterRoles every workspace has, as far as the probed resources go (kube's view and edit).
BOOTSTRAP_ROLES = {
    "view": (Rule(READ, ("",), ("configmaps",)),),
    "edit": (Rule(READ, ("",), ("configmaps", "secrets")), Rule(WRITE, ("",), ("configmaps", "secrets"))),
}


@dataclass(frozen=True)
class Caller:
    """Who calls: ``name`` and ``groups`` as authenticated; ``sa_cluster`` for a service account's own workspace."""

    key: str
    name: str
    groups: tuple[str, ...]
    sa_cluster: str | None = None

    @property
    def sa(self) -> tuple[str, str] | None:  # (namespace, name)
        if self.sa_cluster is None:
            return None
        _, _, namespace, name = self.name.split(":")
        return namespace, name


@dataclass(frozen=True)
class Subject:
    kind: str  # User, Group, ServiceAccount
    name: str
    namespace: str = ""

    def matches(self, caller: Caller, cluster: str) -> bool:
        if self.kind == "User":
            return caller.name == self.name
        if self.kind == "Group":
            return self.name in caller.groups
        return caller.sa == (self.namespace, self.name) and caller.sa_cluster == cluster


@dataclass(frozen=True)
class Binding:
    """A (Cluster)RoleBinding: ``namespace`` empty for a ClusterRoleBinding."""

    name: str
    cluster: str
    namespace: str
    role: str
    subject: Subject


@dataclass
class Policy:
    roles: dict[tuple[str, str], tuple[Rule, ...]] = field(default_factory=dict)  # (cluster, name) -> rules
    bindings: dict[str, Binding] = field(default_factory=dict)  # name -> binding

    def rules_of(self, cluster: str, role: str) -> tuple[Rule, ...]:
        return self.roles.get((cluster, role)) or BOOTSTRAP_ROLES.get(role, ())

    def allows(self, caller: Caller, cluster: str, verb: str, group: str, resource: str, namespace: str = "",
               name: str = "") -> bool:
        """RBAC inside ``cluster`` alone; ``namespace`` empty for a cluster-wide request."""
        for binding in self.bindings.values():
            if binding.cluster != cluster or (binding.namespace and binding.namespace != namespace):
                continue
            if not binding.subject.matches(caller, cluster):
                continue
            if any(rule.allows(verb, group, resource, name) for rule in self.rules_of(cluster, binding.role)):
                return True
        return False

    def may_enter(self, caller: Caller, cluster: str) -> bool:
        """kcp's tenancy rule: a service account only its own workspace; a user ``root`` (no parent) and a child
        with ``access`` or ``admin`` on its ``clusterworkspaces/content`` in the parent."""
        if caller.sa_cluster is not None:
            return caller.sa_cluster == cluster
        if ":" not in cluster:
            return True
        parent, _, name = cluster.rpartition(":")
        return any(self.allows(caller, parent, verb, TENANCY, "clusterworkspaces/content", "", name)
                   for verb in ("access", "admin"))

    def permits(self, caller: Caller, cluster: str, verb: str, group: str, resource: str, namespace: str = "",
                name: str = "") -> bool:
        """What the shard must decide for a request of ``caller`` in ``cluster``."""
        return self.may_enter(caller, cluster) and self.allows(caller, cluster, verb, group, resource, namespace,
                                                               name)
