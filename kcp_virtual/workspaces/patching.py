"""Patches of a Workspace: only its labels and annotations can change, since everything else is the
ClusterWorkspace's (an immutable type, a controller-owned status) or the system's (owner, cluster).

``kubectl label``/``annotate`` work through it, and so do ``kubectl create -f`` and ``apply``: kubectl
validates objects on the server only when the OpenAPI of the kind has a PATCH operation with a
``fieldValidation`` parameter, and otherwise falls back to the protobuf OpenAPI v2, which virtual
workspaces do not serve (kcp#1449) -- so a kind without patch cannot be created with ``kubectl create -f``.
"""

from __future__ import annotations

from typing import Any

from kcp_virtual.framework import errors
from kcp_virtual.framework.storage import apply_patch
from kcp_virtual.workspaces.projection import GROUP, KIND, OWNER_ANNOTATION

__all__ = ["patched_metadata", "PROTECTED_ANNOTATIONS"]

#: Set by the system: the owner (immutable on the shard too) and the logical cluster of the object.
PROTECTED_ANNOTATIONS = (OWNER_ANNOTATION, "kcp.dev/cluster")
_MUTABLE_METADATA = ("labels", "annotations", "resourceVersion", "managedFields")


def _apply(document: dict, patch_type: str, patch: Any) -> dict:
    # no lists to merge by key in what may change, so strategic merge is a merge patch here
    result = apply_patch(document, patch_type, patch, strategic_as_merge=True, who="the workspaces view")
    if not isinstance(result.get("metadata"), dict):
        raise errors.BadRequest("the patched object is not a valid JSON object")
    return result


def _string_map(value: Any, field: str, causes: list[dict]) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        causes.append({"type": "FieldValueTypeInvalid", "field": field,
                       "message": "Invalid value: must be a map of strings"})
        return {}
    return value


def patched_metadata(workspace: dict, patch_type: str, patch: Any) -> tuple[dict, dict, str]:
    """``(labels, annotations, pinned resourceVersion or "")`` of ``workspace`` after ``patch``; 422 when the
    patch changes anything else, 409 when it pins a resourceVersion other than the workspace's."""
    current_rv = str(workspace["metadata"].get("resourceVersion") or "")
    unpinned = {**workspace, "metadata": {k: v for k, v in workspace["metadata"].items() if k != "resourceVersion"}}
    result = _apply(unpinned, patch_type, patch)  # a resourceVersion in the result is the client's
    name = workspace["metadata"].get("name", "")
    old_meta, meta = unpinned["metadata"], result["metadata"]
    causes = [{"type": "FieldValueForbidden", "field": key,
               "message": "Forbidden: may not be changed through the workspaces view"}
              for key in sorted(set(workspace) | set(result)) if key != "metadata" and workspace.get(key) != result.get(key)]
    causes += [{"type": "FieldValueForbidden", "field": f"metadata.{key}",
                "message": "Forbidden: may not be changed through the workspaces view"}
               for key in sorted(set(old_meta) | set(meta))
               if key not in _MUTABLE_METADATA and old_meta.get(key) != meta.get(key)]
    labels = _string_map(meta.get("labels"), "metadata.labels", causes)
    annotations = _string_map(meta.get("annotations"), "metadata.annotations", causes)
    old_annotations = old_meta.get("annotations") or {}
    causes += [{"type": "FieldValueForbidden", "field": f"metadata.annotations[{key}]",
                "message": "Forbidden: set by the system"}
               for key in PROTECTED_ANNOTATIONS if annotations.get(key) != old_annotations.get(key)]
    if causes:
        raise errors.Invalid.for_fields(KIND, GROUP, name, causes)
    rv = str(meta.get("resourceVersion") or "")
    if rv and rv != current_rv:
        raise errors.Conflict.modified("workspaces", GROUP, name)
    return labels, annotations, rv
