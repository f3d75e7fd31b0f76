"""The ClusterWorkspace resource as the shard serves it and this view shows it: names, printer columns, schema.

The shard's ``server.apis.tenancy`` uses the same columns, so ``kubectl get clusterworkspaces`` prints the
same table through the view (plus its Workspace column) as on the shard. The schema is what the view's
OpenAPI v3 documents (``kubectl explain``); the shard validates what is written.
"""

from __future__ import annotations

from kcp_virtual.framework import table
from kcp_virtual.framework.shardclient import GroupVersionResource

__all__ = ["GROUP", "VERSION", "KIND", "PLURAL", "CLUSTER_WORKSPACES", "WORKSPACE_TYPES", "COLUMNS", "SCHEMA"]

GROUP, VERSION = "tenancy.kcp.dev", "v1alpha1"
KIND, PLURAL = "ClusterWorkspace", "clusterworkspaces"
CLUSTER_WORKSPACES = GroupVersionResource(GROUP, VERSION, PLURAL)
WORKSPACE_TYPES = GroupVersionResource(GROUP, VERSION, "workspacetypes")


def _column(name: str, getter, description: str) -> table.Column:
    return table.Column(name=name, type="string", description=description, getter=getter)


COLUMNS = (_column("Type", table.field_getter("spec", "type", "name"), "Type of the workspace"),
           _column("Phase", table.field_getter("status", "phase"),
                   "The current phase (e.g. Scheduling, Initializing, Ready)"),
           _column("URL", table.field_getter("status", "baseURL"), "URL to access the workspace"),
           table.Column(name="Shard", type="string", description="The shard it lives on", priority=1,
                        getter=table.field_getter("status", "location", "current")))

_STRING = {"type": "string"}
SCHEMA = {
    "type": "object",
    "description": "ClusterWorkspace stands for the logical cluster <its workspace>:<its name>. In the "
                   "initializingworkspaces view: one that is Initializing and waits for this initializer.",
    "properties": {
        "spec": {"type": "object", "properties": {
            "type": {"type": "object", "description": "The WorkspaceType of the workspace.", "properties": {
                "name": {**_STRING, "description": "Name of the WorkspaceType."},
                "path": {**_STRING, "description": "Logical cluster path of the WorkspaceType's workspace."}}}}},
        "status": {"type": "object", "properties": {
            "phase": {**_STRING, "enum": ["Scheduling", "Initializing", "Ready"],
                      "description": "Scheduling, then Initializing while initializers remain, then Ready."},
            "initializers": {"type": "array", "items": _STRING,
                             "description": "Initializers that still have to initialize the workspace; each "
                                            "removes only itself, through the initializingworkspaces view."},
            "baseURL": {**_STRING, "description": "URL of the workspace's own API (/clusters/<logical cluster>)."},
            "conditions": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
        }},
    },
}
