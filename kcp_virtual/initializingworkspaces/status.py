"""The one write an initializer may make: remove itself from ``status.initializers``.

``only_removing(initializer)`` is the view's ``Transformation.from_view`` for status updates and patches: it
receives the object as the caller would have it stored and the stored object it was checked against (the
framework then writes it pinned to that object's resourceVersion, so nothing can change in between), and
refuses with one 422 naming every field that differs otherwise. Allowed are exactly two outcomes: the stored
status with ``initializer`` taken out of ``status.initializers`` (order kept), or the stored status unchanged.
Stricter than kcp v0.10, which only counted one entry fewer and so let an initializer swap another's name for
its own removal. Spec, labels and annotations sent along must equal the stored ones (a status write would
ignore them; saying so beats silently dropping them).
"""

from __future__ import annotations

from typing import Callable

from kcp_virtual.framework import errors
from kcp_virtual.framework.virtualworkspace import Context
from kcp_virtual.initializingworkspaces.clusterworkspaces import GROUP, KIND

__all__ = ["only_removing"]


def _forbidden(field: str, why: str) -> dict:
    return {"type": "FieldValueForbidden", "field": field, "message": f"Forbidden: {why}"}


def only_removing(initializer: str) -> Callable[[dict, "dict | None", Context], dict]:
    only = f'only removing the "{initializer}" initializer is supported'

    def from_view(obj: dict, stored: dict | None, context: Context) -> dict:
        name = (stored or {}).get("metadata", {}).get("name", "")
        if not isinstance(obj, dict) or stored is None:
            raise errors.BadRequest(f"the body of the request is not a {KIND} object")
        old_status = stored.get("status") or {}
        new_status = obj.get("status")
        causes = []
        if not isinstance(new_status, dict):
            causes.append({"type": "FieldValueRequired", "field": "status",
                           "message": f"Required value: the status, with {only}"})
            new_status = {}
        old_initializers = list(old_status.get("initializers") or ())
        new_initializers = new_status.get("initializers") or []
        removed = [i for i in old_initializers if i != initializer]
        if new_initializers not in (old_initializers, removed):
            causes.append({"type": "FieldValueInvalid", "field": "status.initializers",
                           "message": f"Invalid value: {_show(new_initializers)}: {only} (currently "
                                      f"{_show(old_initializers)})"})
        for key in sorted(set(old_status) | set(new_status)):
            if key != "initializers" and old_status.get(key) != new_status.get(key):
                causes.append(_forbidden(f"status.{key}", f"initializer \"{initializer}\" may only remove itself "
                                                          "from status.initializers"))
        if "spec" in obj and obj.get("spec") != stored.get("spec"):
            causes.append(_forbidden("spec", "cannot be changed through the initializingworkspaces virtual workspace"))
        meta, old_meta = obj.get("metadata"), stored.get("metadata") or {}
        if isinstance(meta, dict):
            for key in ("labels", "annotations"):
                if key in meta and (meta[key] or {}) != (old_meta.get(key) or {}):
                    causes.append(_forbidden(f"metadata.{key}", "cannot be changed through the initializingworkspaces "
                                                                "virtual workspace"))
        if causes:
            raise errors.Invalid.for_fields(KIND, GROUP, name, causes)
        return obj

    return from_view


def _show(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(f'"{v}"' if isinstance(v, str) else repr(v) for v in value) + "]"
    return repr(value)
