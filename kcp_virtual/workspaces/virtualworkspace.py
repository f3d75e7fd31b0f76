"""The ``workspaces`` virtual workspace: ``kubectl get workspaces`` shows exactly the workspaces you may enter.

URL: ``/services/workspaces/<org>/<all|personal>/apis/tenancy.kcp.dev/v1beta1/workspaces``, where
``<org>`` is any workspace path (``root``, ``root:org``...). Unlike the other virtual workspaces there
is no ``/clusters/`` part: the org is the only logical cluster it serves, so clients use the URL as a
server without further decoration. ``all`` shows every ClusterWorkspace of ``<org>`` the caller may
enter (``access`` or ``admin`` on ``clusterworkspaces/content``); ``personal`` those of them it owns.

Its authorizer admits discovery and the ``workspaces`` resource; the storage decides each request
from the caller's live rules (see ``storage.py``), because the decision and the answer come from the
same rules review. Readiness needs nothing: there is no cache to fill, which is also why it is never
stale (kcp's informer-fed authorization cache was, kcp#1581).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from kcp_virtual.framework.authorization import Attributes
from kcp_virtual.framework.resource import APIDefinition, resource_virtual_workspace
from kcp_virtual.framework.shardclient import ShardClient
from kcp_virtual.framework.virtualworkspace import (NOT_ACCEPTED, SERVICES_PREFIX, Context, Resolution,
                                                    VirtualWorkspace, is_cluster_name)
from kcp_virtual.workspaces import projection
from kcp_virtual.workspaces.storage import ALL, PERSONAL, WorkspaceStorage

__all__ = ["NAME", "SCOPES", "resolve", "authorize", "workspaces", "url_path"]

NAME = "workspaces"
SCOPES = (ALL, PERSONAL)
_BASE = f"{SERVICES_PREFIX}/{NAME}/"


def url_path(org: str, scope: str = ALL) -> str:
    """``/services/workspaces/<org>/<scope>``: the server path clients use (append ``/apis/...``)."""
    return f"{_BASE}{org}/{scope}"


def resolve(path: str) -> Resolution:
    """``/services/workspaces/<org>/<scope>[/...]``: the org is the context's cluster, the scope its API-domain key."""
    if not path.startswith(_BASE):
        return NOT_ACCEPTED
    parts = path[len(_BASE):].split("/", 2)
    if len(parts) < 2:
        return NOT_ACCEPTED
    org, scope = parts[0], parts[1]
    if scope not in SCOPES or not is_cluster_name(org):
        return NOT_ACCEPTED
    if len(parts) == 3 and any(segment in (".", "..") for segment in parts[2].split("/")):
        return NOT_ACCEPTED
    return Resolution(True, url_path(org, scope), Context(org, scope, MappingProxyType({"org": org, "scope": scope})))


def authorize(user: Any, attributes: Attributes, context: Context) -> tuple[bool, str]:
    """Discovery, OpenAPI and ``/version`` for everyone; ``workspaces`` is decided by the storage per request."""
    if not attributes.is_resource:
        return (attributes.verb in ("get", "head"), "")
    if attributes.api_group == projection.GROUP and attributes.resource == projection.PLURAL:
        return True, ""
    return False, "the workspaces virtual workspace serves workspaces.tenancy.kcp.dev only"


def workspaces(shard: ShardClient) -> VirtualWorkspace:
    """The stock factory: an entry point of group ``kcp_virtual.virtual_workspaces`` (setup.cfg), so ``kcp start``
    and ``kcp virtual-workspaces`` serve it."""
    storage = WorkspaceStorage(shard)
    definitions = (APIDefinition(projection.GROUP, projection.VERSION, projection.KIND, projection.PLURAL,
                                 "workspace", False, storage, short_names=("ws",), categories=("kcp",),
                                 columns=projection.COLUMNS, schema=projection.SCHEMA),)
    return resource_virtual_workspace(NAME, resolve=resolve, apis=lambda context: definitions, authorize=authorize,
                                      version=shard.version)
