"""``meta.k8s.io`` Table responses (what ``kubectl get`` asks for), built like the apiserver builds them.

Two column conventions exist upstream and both are kept:

* the generic convertor (``apiserver/pkg/registry/rest/table.go``) gives ``Name`` and ``Created At``,
  whose cell is the creation timestamp as an RFC 3339 string (kubectl prints it verbatim);
* CRDs (``apiextensions-apiserver/.../tableconvertor``) give ``Name``, the ``additionalPrinterColumns``
  (or, when there are none, ``Age``), with cells typed by the column: a ``date`` cell is turned into a
  human-readable age ("5m", "3d4h") on the server, a missing value is ``null``, and kubectl shows
  ``<none>`` for it.

Rows carry a ``PartialObjectMetadata`` by default: without it ``kubectl get -A`` prints an empty
NAMESPACE column and ``--show-labels`` prints nothing. Tables are only serialized, so rows share
values (not the metadata dict itself) with the input objects: treat the result as read-only.
"""

from __future__ import annotations

import math
import time
from datetime import datetime
from functools import lru_cache
from typing import Any, Callable, Iterable, Sequence

import orjson

from kcp_virtual.framework.errors import BadRequest
from kcp_virtual.framework.gofmt import go_float

__all__ = [
    "Column", "NAME_COLUMN", "CREATED_AT_COLUMN", "AGE_COLUMN", "DEFAULT_COLUMNS", "jsonpath_column",
    "crd_columns", "to_table", "partial_object_metadata", "human_duration", "INCLUDE_OBJECT_VALUES",
    "NAME_DESCRIPTION", "CREATION_TIMESTAMP_DESCRIPTION", "field_getter",
]

NAME_DESCRIPTION = (
    "Name must be unique within a namespace. Is required when creating resources, although some resources may "
    "allow a client to request the generation of an appropriate name automatically. Name is primarily intended "
    "for creation idempotence and configuration definition. Cannot be updated. More info: "
    "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names")
CREATION_TIMESTAMP_DESCRIPTION = (
    "CreationTimestamp is a timestamp representing the server time when this object was created. It is not "
    "guaranteed to be set in happens-before order across separate operations. Clients may not set this value. "
    "It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. "
    "More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata")

INCLUDE_OBJECT_VALUES = ("Metadata", "None", "Object")
_ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time.Time in RFC 3339, what the generic convertor prints


class Column:
    """A column definition plus the function that computes its cell from an object."""

    __slots__ = ("name", "type", "format", "description", "priority", "getter", "definition")

    def __init__(self, name: str, type: str = "string", format: str = "", description: str = "",
                 priority: int = 0, getter: Callable[[dict], Any] | None = None):
        self.name = name
        self.type = type
        self.format = format
        self.description = description
        self.priority = priority
        self.getter = getter or (lambda obj: None)
        # Built once: every Table response and watch event reuses it.
        self.definition = {"name": name, "type": type, "format": format, "description": description,
                           "priority": priority}

    def __repr__(self) -> str:
        return f"Column({self.name!r}, {self.type!r})"


def _name(obj: dict) -> Any:
    return (obj.get("metadata") or {}).get("name") or ""


def _created_at(obj: dict) -> Any:
    return (obj.get("metadata") or {}).get("creationTimestamp") or _ZERO_TIME


NAME_COLUMN = Column("Name", "string", "name", NAME_DESCRIPTION, 0, _name)
CREATED_AT_COLUMN = Column("Created At", "date", "", CREATION_TIMESTAMP_DESCRIPTION, 0, _created_at)
#: The generic convertor's columns (built-in kinds without their own printer).
DEFAULT_COLUMNS: tuple[Column, ...] = (NAME_COLUMN, CREATED_AT_COLUMN)

# ---------------------------------------------------------------------------------------------------
# Ages (apimachinery/pkg/util/duration.HumanDuration)


def field_getter(*path: str) -> Callable[[dict], Any]:
    """A column's value getter for a fixed field path (``spec``, ``type``, ``name``): None where it is missing."""
    def getter(obj: dict) -> Any:
        value: Any = obj
        for step in path:
            if not isinstance(value, dict):
                return None
            value = value.get(step)
        return value
    return getter


def human_duration(seconds: float) -> str:
    """Go's ``duration.HumanDuration``: ~2-3 significant figures, e.g. ``90s``, ``5m3s``, ``7h12m``, ``3d4h``."""
    s = math.floor(seconds) if seconds >= 0 else math.ceil(seconds)  # Go truncates toward zero
    if s < -1:
        return "<invalid>"  # more than the 2 s of clock skew tolerated
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rem = s % 60
        return f"{minutes}m{rem}s" if rem else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        rem = minutes % 60
        return f"{hours}h{rem}m" if rem else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rem = hours % 24
        return f"{hours // 24}d{rem}h" if rem else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        rem = (hours // 24) % 365
        return f"{hours // 24 // 365}y{rem}d" if rem else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


@lru_cache(maxsize=16384)
def _epoch(timestamp: str) -> float | None:
    """RFC 3339 to epoch seconds, cached: every row of every list re-reads the same creation timestamps."""
    try:
        parsed = datetime.fromisoformat(timestamp)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None  # RFC 3339 requires an offset
    return parsed.timestamp()


def _date_cell(value: str) -> str:
    if value == "" or value == "null":
        return "<unknown>"  # metav1.Time's zero value
    epoch = _epoch(value)
    if epoch is None:
        return "<invalid>"
    return human_duration(time.time() - epoch)

# ---------------------------------------------------------------------------------------------------
# JSONPath columns


def _as_text(value: Any) -> str:
    """How kube's JSONPath printer renders a value in a ``string`` column."""
    if isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_float(value)
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _cell(column_type: str, value: Any) -> Any:
    """``cellForJSONValue``: a value of the wrong JSON type for its column is ``null``."""
    if value is None:
        return None
    if column_type == "string":
        return _as_text(value)
    if column_type == "integer":
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value):
            return int(value)
        return None
    if column_type == "number":
        if isinstance(value, bool):
            return None
        return float(value) if isinstance(value, (int, float)) else None
    if column_type == "boolean":
        return value if isinstance(value, bool) else None
    if column_type == "date":
        return _date_cell(value) if isinstance(value, str) else None
    return None


_WILDCARD = object()


def _compile_path(json_path: str) -> tuple[Any, ...]:
    """``.a.b[0]['c.d'][*]`` (braces optional) into steps: str keys, int indexes, or ``_WILDCARD``."""
    path = json_path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1].strip()
    if path and path[0] not in ".[":
        path = "." + path  # "spec.x" is taken as ".spec.x"
    steps: list[Any] = []
    i, n = 0, len(path)
    while i < n:
        ch = path[i]
        if ch == ".":
            i += 1
            name = []
            while i < n and path[i] not in ".[":
                if path[i] == "\\" and i + 1 < n:  # '\.' keeps a dot inside a key
                    i += 1
                name.append(path[i])
                i += 1
            if name:
                steps.append("".join(name))
            elif i < n:  # ".." (recursive descent) and ".[" are not simple paths
                raise ValueError(f"unrecognized column definition {json_path!r}")
        elif ch == "[":
            end = path.find("]", i)
            if end == -1:
                raise ValueError(f"unrecognized column definition {json_path!r}")
            inner = path[i + 1:end].strip()
            if inner == "*":
                steps.append(_WILDCARD)
            elif len(inner) >= 2 and inner[0] == inner[-1] and inner[0] in "'\"":
                steps.append(inner[1:-1])
            else:
                try:
                    steps.append(int(inner))
                except ValueError:
                    raise ValueError(f"unrecognized column definition {json_path!r}") from None
            i = end + 1
        else:
            raise ValueError(f"unrecognized column definition {json_path!r}")
    return tuple(steps)


_NOT_FOUND = object()


def _walk(value: Any, steps: tuple[Any, ...], start: int) -> Any:
    for pos in range(start, len(steps)):
        step = steps[pos]
        if step.__class__ is str:
            if not isinstance(value, dict):
                return _NOT_FOUND
            value = value.get(step, _NOT_FOUND)
            if value is _NOT_FOUND:
                return _NOT_FOUND
        elif step is _WILDCARD:
            # kube keeps the first result; with missing keys allowed, that is the first element that has one.
            items = value if isinstance(value, list) else (
                [value[k] for k in sorted(value)] if isinstance(value, dict) else ())
            for item in items:
                found = _walk(item, steps, pos + 1)
                if found is not _NOT_FOUND:
                    return found
            return _NOT_FOUND
        else:
            if not isinstance(value, list) or not -len(value) <= step < len(value):
                return _NOT_FOUND
            value = value[step]
    return value


def jsonpath_column(name: str, type: str, json_path: str, description: str = "", priority: int = 0,
                    format: str = "") -> Column:
    """A CRD ``additionalPrinterColumns`` entry: ``jsonpath_column("Replicas", "integer", ".spec.replicas")``.

    Paths are kube's "simple JSONPath": ``.a.b``, ``[0]``/``[-1]``, ``['key.with.dots']``, ``[*]``.
    """
    steps = _compile_path(json_path)

    def getter(obj: dict) -> Any:
        found = _walk(obj, steps, 0)
        return None if found is _NOT_FOUND else _cell(type, found)

    return Column(name, type, format,
                  description or f"Custom resource definition column (in JSONPath format): {json_path}",
                  priority, getter)


#: What CRDs without ``additionalPrinterColumns`` show after ``Name``.
AGE_COLUMN = jsonpath_column("Age", "date", ".metadata.creationTimestamp", CREATION_TIMESTAMP_DESCRIPTION)


def crd_columns(additional_printer_columns: Iterable[dict] | None) -> list[Column]:
    """Columns for one CRD version: ``Name`` then its printer columns, or ``Name``, ``Age`` when it has none."""
    columns = [NAME_COLUMN]
    for col in additional_printer_columns or ():
        columns.append(jsonpath_column(col["name"], col.get("type", "string"), col["jsonPath"],
                                       col.get("description") or "", col.get("priority") or 0,
                                       col.get("format") or ""))
    if len(columns) == 1:
        columns.append(AGE_COLUMN)
    return columns

# ---------------------------------------------------------------------------------------------------
# Tables


def partial_object_metadata(obj: dict, api_version: str = "meta.k8s.io/v1") -> dict:
    """The row object for ``includeObject=Metadata``; ``managedFields`` are left out (kubectl never shows them)."""
    meta = obj.get("metadata") or {}
    if "managedFields" in meta:
        meta = {k: v for k, v in meta.items() if k != "managedFields"}
    return {"kind": "PartialObjectMetadata", "apiVersion": api_version, "metadata": meta}


def to_table(objects: Iterable[dict], columns: Sequence[Column], *, list_meta: dict | None = None,
             include_object: str = "Metadata", no_headers: bool = False, version: str = "v1") -> dict:
    """A ``meta.k8s.io/<version>`` Table of ``objects``.

    ``list_meta`` is the list's ``metadata`` (resourceVersion, continue, remainingItemCount); for a single
    object or a watch event pass ``{"resourceVersion": <the object's>}``. ``no_headers`` is for watch events
    after the first, which carry no column definitions. ``version`` is the ``v`` the client asked for
    (``v1`` or ``v1beta1``); the row objects use it too.
    """
    api_version = "meta.k8s.io/" + version
    getters = [c.getter for c in columns]
    if include_object == "Metadata":
        rows = [{"cells": [g(obj) for g in getters], "object": partial_object_metadata(obj, api_version)}
                for obj in objects]
    elif include_object == "None":
        rows = [{"cells": [g(obj) for g in getters], "object": None} for obj in objects]
    elif include_object == "Object":
        rows = [{"cells": [g(obj) for g in getters], "object": obj} for obj in objects]
    else:
        raise BadRequest(f'unrecognized includeObject value: "{include_object}"')
    metadata = {k: v for k, v in (list_meta or {}).items() if v is not None}
    return {
        "kind": "Table",
        "apiVersion": api_version,
        "metadata": metadata,
        "columnDefinitions": [] if no_headers else [c.definition for c in columns],
        "rows": rows,
    }
