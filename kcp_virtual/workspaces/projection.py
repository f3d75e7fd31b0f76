"""``tenancy.kcp.dev/v1beta1`` Workspace: what a user sees of a ClusterWorkspace, and what a create turns into.

A Workspace is a projection, never stored: the ClusterWorkspace's metadata (without managedFields,
which describe the other version's fields), ``spec.type`` and, of the status, the phase and the URL
of the workspace's own API server (``status.baseURL`` of the ClusterWorkspace). A Workspace created
through the view becomes a ClusterWorkspace with the same name, labels, annotations and type, owned
by the caller (the ``experimental.tenancy.kcp.dev/owner`` annotation, from which the shard grants its access).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from kcp_virtual.framework import errors
from kcp_virtual.framework.shardclient import GroupVersionResource
from kcp_virtual.framework.table import Column, field_getter

__all__ = ["GROUP", "VERSION", "API_VERSION", "KIND", "PLURAL", "CLUSTER_WORKSPACES", "OWNER_ANNOTATION",
           "to_workspace", "to_cluster_workspace", "owner_name", "owner_annotation", "bookmark", "SCHEMA",
           "COLUMNS", "validate_name"]

GROUP = "tenancy.kcp.dev"
VERSION = "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "Workspace"
PLURAL = "workspaces"
CLUSTER_WORKSPACES = GroupVersionResource(GROUP, "v1alpha1", "clusterworkspaces")
#: The shard's owner annotation: JSON ``{"username", "uid", "groups"[, "extra"]}``, or a bare user name.
OWNER_ANNOTATION = "experimental.tenancy.kcp.dev/owner"

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DROPPED_METADATA = ("managedFields",)


def to_workspace(cluster_workspace: dict, resource_version: str | int | None = None) -> dict:
    """The Workspace of a ClusterWorkspace; ``resource_version`` replaces its own (a watch event's label)."""
    meta = {k: v for k, v in (cluster_workspace.get("metadata") or {}).items() if k not in _DROPPED_METADATA}
    if resource_version is not None:
        meta["resourceVersion"] = str(resource_version)
    spec = cluster_workspace.get("spec") or {}
    status = cluster_workspace.get("status") or {}
    workspace: dict[str, Any] = {"kind": KIND, "apiVersion": API_VERSION, "metadata": meta, "spec": {}, "status": {}}
    if spec.get("type") is not None:
        workspace["spec"]["type"] = spec["type"]
    if status.get("phase"):
        workspace["status"]["phase"] = status["phase"]
    if status.get("baseURL"):
        workspace["status"]["URL"] = status["baseURL"]
    return workspace


def bookmark(resource_version: str | int, initial_events_end: bool = False) -> dict:
    metadata: dict = {"resourceVersion": str(resource_version)}
    if initial_events_end:
        metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
    return {"kind": KIND, "apiVersion": API_VERSION, "metadata": metadata}


def owner_name(cluster_workspace: dict) -> str:
    """The user name of a ClusterWorkspace's owner ("" when it has none)."""
    value = ((cluster_workspace.get("metadata") or {}).get("annotations") or {}).get(OWNER_ANNOTATION)
    if not isinstance(value, str) or not value:
        return ""
    try:
        owner = orjson.loads(value)
    except orjson.JSONDecodeError:
        return value
    name = owner.get("username") if isinstance(owner, dict) else None
    return name if isinstance(name, str) else ""


def owner_annotation(user: Any) -> str:
    owner: dict[str, Any] = {"username": user.name, "uid": getattr(user, "uid", "") or "",
                             "groups": list(getattr(user, "groups", ()) or ())}
    extra = getattr(user, "extra", None) or {}
    if extra:
        owner["extra"] = {k: list(v) for k, v in extra.items()}
    return orjson.dumps(owner).decode()


def validate_name(name: Any, field: str = "metadata.name") -> list[dict]:
    """A workspace name is a DNS-1123 label: it becomes a segment of a logical cluster path."""
    if not isinstance(name, str):
        return [{"type": "FieldValueTypeInvalid", "field": field, "message": "Invalid value: must be a string"}]
    messages = []
    if len(name) > 63:
        messages.append("must be no more than 63 characters")
    if not _DNS1123_LABEL.fullmatch(name):
        messages.append("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
                        "and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', "
                        "regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
    return [{"type": "FieldValueInvalid", "field": field, "message": f'Invalid value: "{name}": {m}'}
            for m in messages]


def to_cluster_workspace(workspace: Any, owner: str) -> dict:
    """The ClusterWorkspace a created Workspace stands for (400/422 for what cannot be one)."""
    if not isinstance(workspace, dict):
        raise errors.BadRequest(f"the body of the request is not a {KIND} object")
    kind, api_version = workspace.get("kind"), workspace.get("apiVersion")
    if kind not in (None, "", KIND) or api_version not in (None, "", API_VERSION):
        raise errors.BadRequest(f"the body is a {api_version or '?'} {kind or '?'}, expected an {API_VERSION} {KIND}")
    meta = workspace.get("metadata")
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise errors.BadRequest("metadata must be an object")
    name, generate = meta.get("name"), meta.get("generateName")
    causes: list[dict] = []
    if name:
        causes += validate_name(name)
    elif generate:
        causes += validate_name(generate if not isinstance(generate, str) else generate + "x", "metadata.generateName")
    else:
        causes.append({"type": "FieldValueRequired", "field": "metadata.name",
                       "message": "Required value: name or generateName is required"})
    spec = workspace.get("spec")
    if spec is not None and not isinstance(spec, dict):
        causes.append({"type": "FieldValueTypeInvalid", "field": "spec", "message": "Invalid value: must be an object"})
    if causes:
        raise errors.Invalid.for_fields(KIND, GROUP, name if isinstance(name, str) else "", causes)
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise errors.BadRequest("metadata.annotations must be an object")
    out_meta = {k: v for k, v in meta.items() if k in ("name", "generateName", "labels")}
    out_meta["annotations"] = {**annotations, OWNER_ANNOTATION: owner}
    out: dict[str, Any] = {"apiVersion": CLUSTER_WORKSPACES.api_version, "kind": "ClusterWorkspace",
                           "metadata": out_meta, "spec": {}}
    if spec and spec.get("type") is not None:
        out["spec"]["type"] = spec["type"]
    return out


COLUMNS = (Column("Type", "string", "", "The type of the workspace", 0, field_getter("spec", "type", "name")),
           Column("Phase", "string", "", "The current phase (Scheduling, Initializing, Ready)", 0,
                  field_getter("status", "phase")),
           Column("URL", "string", "", "The URL of the workspace's API server", 0, field_getter("status", "URL")))

_TYPE_REFERENCE = {"type": "object", "description": "A WorkspaceType: its name and the workspace it is defined in.",
                   "properties": {"name": {"type": "string"}, "path": {"type": "string"}}}
SCHEMA = {
    "type": "object",
    "description": "A workspace the caller may access: a projection of a ClusterWorkspace (tenancy.kcp.dev/v1alpha1).",
    "properties": {
        "spec": {"type": "object", "properties": {"type": _TYPE_REFERENCE}},
        "status": {"type": "object", "properties": {
            "phase": {"type": "string", "description": "Scheduling, Initializing or Ready"},
            "URL": {"type": "string", "description": "The URL of the workspace's API server"}}},
    },
}
