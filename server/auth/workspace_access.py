"""The tenancy rule: who may enter a workspace's content at all.

Entering ``root:org:team`` requires verb ``access`` or ``admin`` on ``clusterworkspaces/content``
named ``team`` (group ``tenancy.kcp.dev``) in the parent ``root:org``, evaluated by the parent's
RBAC; then the RBAC inside the workspace applies. ``system:masters`` bypasses both. A workspace
without a parent (``root``) has only its own RBAC. A service account exists in exactly one logical
cluster: it may enter that one (and its RBAC decides the rest) and no other.

One more way in, for initializers: a member of ``system:kcp:initializer:<initializer>`` (a group only the
initializingworkspaces virtual workspace asserts: ``server.app`` strips it from clients) may enter a workspace
while it is Initializing with ``<initializer>`` in ``status.initializers`` -- a service account of the type's
workspace included. Inside, RBAC decides as always: the group holds what the workspace type's
``initializerPermissions`` grant (materialized there by the workspace controller).

The rule takes the RBAC evaluation as a function so that the shard's authorizer and the virtual
workspaces (per-object ``access`` checks in the ``workspaces`` view) share one definition.
"""

from __future__ import annotations

from typing import Callable, Sequence

from kcp_virtual.framework.authorization import INITIALIZER_GROUP_PREFIX
from server.auth.authz import Attributes, Decision
from server.auth.user import UserInfo

TENANCY_GROUP = "tenancy.kcp.dev"
TENANCY_VERSION = "v1alpha1"
CONTENT_VERBS = ("access", "admin")
WILDCARD = "*"
# Set by the service-account authenticator: the logical cluster that issued the token.
SA_CLUSTER_EXTRA = "authentication.kcp.io/cluster"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"

ALLOWED_MASTERS = Decision(True, "system:masters")
ALLOWED_NO_PARENT = Decision(True, "no parent workspace")
ALLOWED_OWN_SERVICE_ACCOUNT = Decision(True, "service account of this workspace")
DENIED_WILDCARD = Decision(False, "the cross-cluster view is reserved for system:masters")
DENIED_FOREIGN_SERVICE_ACCOUNT = Decision(False, "service accounts may only access their own workspace")
DENIED_NO_ACCESS = Decision(False, "workspace access not permitted")
#: Where ClusterWorkspaces are stored (``server.apis.tenancy.CLUSTER_WORKSPACES.storage_key``; auth is below apis).
CLUSTER_WORKSPACES_KEY = f"{TENANCY_GROUP}/clusterworkspaces"
INITIALIZING = "Initializing"


def parent_of(cluster: str) -> tuple[str, str]:
    """``root:org:team`` -> (``root:org``, ``team``); a cluster without parent gives ("", name)."""
    parent, _, name = cluster.rpartition(":")
    return parent, name


def service_account_cluster(user: UserInfo) -> str | None:
    """The issuing cluster of a service-account user, None for every other user (the extra alone
    does not make a service account: only a ``system:serviceaccount:`` name with it does)."""
    clusters = user.extra.get(SA_CLUSTER_EXTRA) if user.extra else None
    if not clusters or not user.name.startswith(SERVICE_ACCOUNT_PREFIX):
        return None
    return clusters[0] if len(clusters) == 1 else ""  # several clusters is malformed: matches none


def content_attributes(user: UserInfo, cluster: str, verb: str) -> Attributes:
    """The attributes checked in the parent of ``cluster`` to let ``user`` in with ``verb``."""
    parent, name = parent_of(cluster)
    return Attributes(user=user, verb=verb, cluster=parent, is_resource=True, api_group=TENANCY_GROUP,
                      api_version=TENANCY_VERSION, resource="clusterworkspaces", subresource="content", name=name)


def initializers_waiting(workspace: dict | None) -> Sequence[str]:
    """The initializers a stored ClusterWorkspace waits for while it is Initializing (else none)."""
    status = (workspace or {}).get("status") or {}
    if status.get("phase") != INITIALIZING:
        return ()
    initializers = status.get("initializers")
    return initializers if isinstance(initializers, list) else ()


def _as_initializer(user: UserInfo, cluster: str, initializing: Callable[[str], Sequence[str]]) -> Decision | None:
    names = [g[len(INITIALIZER_GROUP_PREFIX):] for g in user.groups if g.startswith(INITIALIZER_GROUP_PREFIX)]
    if not names or cluster == WILDCARD or ":" not in cluster:
        return None
    waiting = initializing(cluster)
    for name in names:
        if name in waiting:
            return Decision(True, f'initializer "{name}" of this workspace')
    return None


def may_enter(evaluate: Callable[[Attributes], Decision], user: UserInfo, cluster: str,
              initializing: Callable[[str], Sequence[str]] = lambda cluster: ()) -> Decision:
    """Whether ``user`` may use ``cluster`` at all; ``evaluate`` is RBAC inside ``Attributes.cluster``,
    ``initializing(cluster)`` the initializers its workspace waits for (``initializers_waiting``)."""
    if user.is_master:
        return ALLOWED_MASTERS
    initializer = _as_initializer(user, cluster, initializing)
    if initializer is not None:
        return initializer
    if cluster == WILDCARD:
        return DENIED_WILDCARD
    sa_cluster = service_account_cluster(user)
    if sa_cluster is not None:
        return ALLOWED_OWN_SERVICE_ACCOUNT if sa_cluster == cluster else DENIED_FOREIGN_SERVICE_ACCOUNT
    if ":" not in cluster:
        return ALLOWED_NO_PARENT
    for verb in CONTENT_VERBS:
        decision = evaluate(content_attributes(user, cluster, verb))
        if decision.allowed:
            return decision
    return DENIED_NO_ACCESS
