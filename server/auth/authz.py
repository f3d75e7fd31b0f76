"""Authorization attributes and the shard's authorizer.

Until per-workspace RBAC lands (the identity issue), the policy is: any authenticated user may
use any logical cluster; the cross-cluster wildcard ``/clusters/*`` is for ``system:masters``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from server.auth.user import UserInfo


@dataclass(frozen=True, slots=True)
class Attributes:
    user: UserInfo
    verb: str
    cluster: str
    is_resource: bool
    path: str = ""
    api_group: str = ""
    api_version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str = ""


class Authorizer(Protocol):
    def authorize(self, attributes: Attributes) -> Decision: ...


class AuthenticatedUsersAuthorizer:
    """Any authenticated user in a logical cluster; the wildcard cluster only for system:masters."""

    def authorize(self, attributes: Attributes) -> Decision:
        if attributes.user.is_master:
            return Decision(True, "system:masters")
        if attributes.cluster == "*":
            return Decision(False, "the cross-cluster view is reserved for system:masters")
        return Decision(True, "authenticated")


def forbidden_message(attributes: Attributes, reason: str = "") -> tuple[str, dict]:
    """The apiserver's 403 wording for a denied request."""
    user = attributes.user.name
    if not attributes.is_resource:
        msg = f'forbidden: User "{user}" cannot {attributes.verb} path "{attributes.path}"'
        return msg + (f": {reason}" if reason else ""), {}
    resource = attributes.resource + (f"/{attributes.subresource}" if attributes.subresource else "")
    qualified = f"{attributes.resource}.{attributes.api_group}" if attributes.api_group else attributes.resource
    target = f'{qualified} "{attributes.name}"' if attributes.name else qualified
    scope = f' in the namespace "{attributes.namespace}"' if attributes.namespace else ""
    if not scope and attributes.resource:
        scope = " at the cluster scope"
    msg = (f'{target} is forbidden: User "{user}" cannot {attributes.verb} resource "{resource}" in API group '
           f'"{attributes.api_group}"{scope}')
    if attributes.cluster:
        msg += f' in workspace "{attributes.cluster}"'
    if reason:
        msg += f": {reason}"
    return msg, {"name": attributes.name, "group": attributes.api_group, "kind": attributes.resource}
