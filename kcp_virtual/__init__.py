"""kcp-virtual's virtual workspaces, and the public API to write one as a plugin.

A virtual workspace is a name, a resolver (which ``/services/<name>/...`` paths it serves), an authorizer,
and either API definitions with their storages (``resource_virtual_workspace``: discovery, OpenAPI, CRUD,
watch and Table output come with it) or a handler (``proxy_virtual_workspace``, or a plain
``VirtualWorkspace``). Package it with an entry point of group ``kcp_virtual.virtual_workspaces`` named like
the virtual workspace, and ``kcp start`` and ``kcp virtual-workspaces`` serve it (README, "Writing a virtual
workspace"; ``examples/tls_inventory`` is a complete one). What this module exports is the stable API;
everything under ``kcp_virtual.framework`` may change.
"""

from kcp_virtual.framework import errors
from kcp_virtual.framework.authorization import Attributes, Decision
from kcp_virtual.framework.proxy import proxy_virtual_workspace
from kcp_virtual.framework.resource import APIDefinition, resource_virtual_workspace
from kcp_virtual.framework.shardclient import GroupVersionResource, ListQuery, ShardClient, User
from kcp_virtual.framework.storage import (ALL_VERBS, READ_VERBS, ForwardingStorage, Transformation, as_caller,
                                           as_virtual_workspace)
from kcp_virtual.framework.table import Column
from kcp_virtual.framework.virtualworkspace import Context, Request, Resolution, VirtualWorkspace, cluster_path_resolver

__all__ = [
    # what a virtual workspace is
    "VirtualWorkspace", "Context", "Request", "Resolution", "cluster_path_resolver",
    # the resource kind
    "resource_virtual_workspace", "APIDefinition", "ForwardingStorage", "Transformation", "Column",
    "ALL_VERBS", "READ_VERBS", "as_caller", "as_virtual_workspace",
    # the proxy kind
    "proxy_virtual_workspace",
    # reaching the shard, deciding
    "ShardClient", "GroupVersionResource", "ListQuery", "User", "Attributes", "Decision", "errors",
]
