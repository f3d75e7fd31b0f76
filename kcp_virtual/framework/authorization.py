"""Authorization attributes and decisions as virtual workspaces see them, and the apiserver's 403 wording.

These mirror ``server.auth.authz`` (same field names, same message) because virtual workspaces never
import ``server``: a ShardClient turns them into a SubjectAccessReview, in-process or over HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from kcp_virtual.framework.errors import Forbidden
from kcp_virtual.framework.requestinfo import RequestInfo

__all__ = ["Attributes", "Decision", "MASTERS", "is_master", "forbidden", "INITIALIZER_GROUP_PREFIX",
           "initializer_group", "without_initializer_groups"]

MASTERS = "system:masters"
#: ``system:kcp:initializer:<initializer>``: the group the initializingworkspaces virtual workspace adds to a caller
#: it forwards into a workspace that initializer is initializing. Only a virtual workspace may assert it: the shard
#: and the external process strip it from every identity a client brings (see ``without_initializer_groups``).
INITIALIZER_GROUP_PREFIX = "system:kcp:initializer:"


def is_master(user: Any) -> bool:
    return MASTERS in (getattr(user, "groups", None) or ())


def initializer_group(initializer: str) -> str:
    return INITIALIZER_GROUP_PREFIX + initializer


def without_initializer_groups(groups) -> tuple[str, ...]:
    """``groups`` less every ``system:kcp:initializer:*`` (what a client claims there is never believed)."""
    return tuple(group for group in groups if not group.startswith(INITIALIZER_GROUP_PREFIX))


class Decision(NamedTuple):
    """An authorizer's answer; a plain ``(allowed, reason)`` tuple works as well."""

    allowed: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Attributes:
    """What a request asks to do, in kube's ``authorizer.Attributes`` terms, in logical cluster ``cluster``."""

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

    @classmethod
    def from_request_info(cls, info: RequestInfo, cluster: str) -> "Attributes":
        return cls(verb=info.verb, cluster=cluster, is_resource=info.is_resource, path=info.path,
                   api_group=info.group, api_version=info.version, namespace=info.namespace,
                   resource=info.resource, subresource=info.subresource, name=info.authorized_name)


def forbidden(user: Any, attributes: Attributes, reason: str = "") -> Forbidden:
    """The apiserver's 403 for a denied request (the wording of ``server.auth.authz.forbidden_message``)."""
    name = getattr(user, "name", "")
    if not attributes.is_resource:
        message = f'forbidden: User "{name}" cannot {attributes.verb} path "{attributes.path}"'
        return Forbidden(message + (f": {reason}" if reason else ""))
    resource = attributes.resource + (f"/{attributes.subresource}" if attributes.subresource else "")
    qualified = f"{attributes.resource}.{attributes.api_group}" if attributes.api_group else attributes.resource
    target = f'{qualified} "{attributes.name}"' if attributes.name else qualified
    scope = f' in the namespace "{attributes.namespace}"' if attributes.namespace else ""
    if not scope and attributes.resource:
        scope = " at the cluster scope"
    message = (f'{target} is forbidden: User "{name}" cannot {attributes.verb} resource "{resource}" in API group '
               f'"{attributes.api_group}"{scope}')
    if attributes.cluster:
        message += f' in workspace "{attributes.cluster}"'
    if reason:
        message += f": {reason}"
    return Forbidden(message, details={"name": attributes.name, "group": attributes.api_group,
                                       "kind": attributes.resource})
