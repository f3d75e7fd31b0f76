"""The virtual workspace framework: virtual workspaces, the ``/services/`` dispatcher and the two kinds.

Read in this order: ``virtualworkspace`` (what a virtual workspace is), ``dispatcher`` (how a request
finds one), ``shardclient`` (how they reach the shard), ``resource`` + ``storage`` (the resource
kind) and ``proxy`` (the proxy kind). ``errors``, ``requestinfo``, ``discovery``, ``table``,
``negotiation`` and ``watchstream`` are the Kubernetes API machinery the shard shares with them.
This package never imports ``server`` (DESIGN.md section 1).
"""

from kcp_virtual.framework.authorization import Attributes, Decision
from kcp_virtual.framework.dispatcher import Dispatcher
from kcp_virtual.framework.proxy import proxy_virtual_workspace
from kcp_virtual.framework.resource import APIDefinition, resource_virtual_workspace
from kcp_virtual.framework.shardclient import GroupVersionResource, ListQuery, ShardClient, User
from kcp_virtual.framework.storage import ForwardingStorage, Transformation, as_caller, as_virtual_workspace
from kcp_virtual.framework.virtualworkspace import (Context, Request, Resolution, VirtualWorkspace,
                                                    cluster_path_resolver)

__all__ = ["Attributes", "Decision", "Dispatcher", "proxy_virtual_workspace", "APIDefinition",
           "resource_virtual_workspace", "GroupVersionResource", "ListQuery", "ShardClient", "User",
           "ForwardingStorage", "Transformation", "as_caller", "as_virtual_workspace", "Context", "Request",
           "Resolution", "VirtualWorkspace", "cluster_path_resolver"]
