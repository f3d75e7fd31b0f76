"""Authorization attributes, decisions and the ``Authorizer`` protocol of the shard.

The shard's authorizer is ``server.auth.rbac.RBACAuthorizer`` (per-workspace RBAC plus the
workspace-content rule); review APIs and virtual workspaces call it through this protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kcp_virtual.framework.authorization import forbidden
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


def forbidden_message(attributes: Attributes, reason: str = "") -> tuple[str, dict]:
    """The apiserver's 403 wording for a denied request (shared with the virtual workspaces)."""
    error = forbidden(attributes.user, attributes, reason)
    return error.message, error.details or {}
