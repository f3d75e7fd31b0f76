"""JSON merge patch (RFC 7386) and JSON patch (RFC 6902) as the apiserver applies them.

Status codes (``handlers/patch.go``):

* 400 BadRequest: the body is not JSON, or the patch is malformed in a way visible without the
  target document (not an array, an operation that is not an object, unknown/missing ``op``,
  missing ``path``/``from``/``value``, a pointer that is not ``""`` or ``/...``). kube finds some of
  these only while applying and then answers 422; checking them up front gives a clearer 400.
* 413 RequestEntityTooLarge: more than 10000 operations (checked before anything else is validated).
* 422 Invalid: the patch is well formed but cannot be applied to *this* document: a failed ``test``
  (kopf relies on this for optimistic locking), a missing path on remove/replace/move/copy, an index
  out of range. kube's own 422 message here is a generic "the server rejected our request due to an
  error in our request"; ours names the operation and the reason instead.

Neither function mutates its inputs; the result shares nothing with them.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
from jsonpatch import JsonPatch, JsonPatchException, JsonPatchTestFailed
from jsonpointer import JsonPointer, JsonPointerException

from kcp_virtual.framework.errors import BadRequest, Invalid, RequestEntityTooLarge
from kcp_virtual.framework.negotiation import APPLY_PATCH, JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH

#: Every patch content type, in the order kube lists them in its 415 message.
PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, APPLY_PATCH)
#: Custom resources have no strategic merge patch (kube answers 415 for it).
CR_PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, APPLY_PATCH)

MAX_JSON_PATCH_OPERATIONS = 10000

_OPERATIONS = JsonPatch.operations
_NEEDS_VALUE = frozenset(("add", "replace", "test"))
_NEEDS_FROM = frozenset(("move", "copy"))
_MISSING = object()
_SHOWN_VALUE_CHARS = 200


def json_copy(value: Any) -> Any:
    """A deep copy of a JSON document; orjson's C round trip is several times faster than ``copy.deepcopy``."""
    try:
        return orjson.loads(orjson.dumps(value))
    except (orjson.JSONEncodeError, TypeError):
        return copy.deepcopy(value)  # e.g. integers beyond 64 bits


def _decode(body: bytes | str | Any) -> Any:
    if isinstance(body, (bytes, bytearray, memoryview, str)):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"the patch is not valid JSON: {exc}") from None
    return body


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    return "object"

# ---------------------------------------------------------------------------------------------------
# Merge patch


def _merge_into(target: dict, patch: dict) -> None:
    """RFC 7386 MergePatch on a private copy: null deletes, objects merge, anything else replaces."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict):
            current = target.get(key)
            if not isinstance(current, dict):
                current = target[key] = {}  # a non-object (or absent) target member is replaced by an object
            _merge_into(current, value)
        elif isinstance(value, list):
            target[key] = json_copy(value)  # lists are replaced wholesale, nulls inside them kept
        else:
            target[key] = value


def merge_patch(target: dict, patch: Any) -> dict:
    """Apply a JSON merge patch (a decoded object, or the raw body) to an object.

    A non-object patch would replace the whole resource, which can never decode into a Kubernetes
    object, so it is a 400 (kube: "Invalid JSON Patch").
    """
    patch = _decode(patch)
    if not isinstance(patch, dict):
        raise BadRequest(f"a merge patch must be a JSON object (RFC 7386), got {_type_name(patch)}")
    result = json_copy(target) if isinstance(target, dict) else {}
    _merge_into(result, patch)
    return result

# ---------------------------------------------------------------------------------------------------
# JSON patch


def _pointer_error(pointer: Any) -> str | None:
    """Why ``pointer`` is not an RFC 6901 JSON pointer, or None when it is one."""
    if not isinstance(pointer, str):
        return f"must be a string, got {_type_name(pointer)}"
    if pointer and pointer[0] != "/":
        return "must be empty or start with '/'"
    i = pointer.find("~")
    while i != -1:
        if pointer[i + 1:i + 2] not in ("0", "1"):
            return "'~' must be followed by '0' or '1'"
        i = pointer.find("~", i + 2)
    return None


def _check_operation(index: int, op: Any) -> None:
    if not isinstance(op, dict):
        raise BadRequest(f"invalid JSON patch: operation {index} must be an object, got {_type_name(op)}")
    name = op.get("op")
    if name is None:
        raise BadRequest(f"invalid JSON patch: operation {index} has no \"op\"")
    if not isinstance(name, str) or name not in _OPERATIONS:
        raise BadRequest(f"invalid JSON patch: operation {index} has an unknown \"op\": "
                         f"{orjson.dumps(name).decode()} (expected add, remove, replace, move, copy or test)")
    if "path" not in op:
        raise BadRequest(f"invalid JSON patch: operation {index} ({name}) has no \"path\"")
    why = _pointer_error(op["path"])
    if why:
        raise BadRequest(f"invalid JSON patch: operation {index} ({name}): \"path\" {why}")
    if name in _NEEDS_VALUE and "value" not in op:
        raise BadRequest(f"invalid JSON patch: operation {index} ({name} {op['path']}) has no \"value\"")
    if name in _NEEDS_FROM:
        if "from" not in op:
            raise BadRequest(f"invalid JSON patch: operation {index} ({name} {op['path']}) has no \"from\"")
        why = _pointer_error(op["from"])
        if why:
            raise BadRequest(f"invalid JSON patch: operation {index} ({name}): \"from\" {why}")


def _shown(value: Any) -> str:
    try:
        text = orjson.dumps(value).decode()
    except (orjson.JSONEncodeError, TypeError):
        text = repr(value)
    return text if len(text) <= _SHOWN_VALUE_CHARS else text[:_SHOWN_VALUE_CHARS] + "..."


def _reason(exc: Exception) -> str:
    """The library's message, minus the whole document jsonpointer appends to "member not found" errors."""
    cause = exc if isinstance(exc, (KeyError, IndexError)) else exc.__context__
    if isinstance(cause, KeyError) and cause.args:
        return f"member {_shown(cause.args[0])} not found"
    if isinstance(cause, IndexError):
        return "array index out of range"
    text = str(exc) or type(exc).__name__
    cut = text.find("' not found in ")
    return text[:cut + len("' not found")] if cut != -1 else text


def _test_failed(index: int, op: dict, doc: Any) -> Invalid:
    path = op["path"]
    try:
        actual = JsonPointer(path).resolve(doc, _MISSING)
    except JsonPointerException:
        actual = _MISSING
    found = "the path does not exist" if actual is _MISSING else f"found {_shown(actual)}"
    return Invalid(f"the JSON patch \"test\" operation {index} failed at {_shown(path)}: "
                   f"expected {_shown(op['value'])}, {found}")


def json_patch(target: dict, ops: Any) -> dict:
    """Apply an RFC 6902 patch (decoded list, or the raw body) to an object; see the module doc for errors."""
    ops = _decode(ops)
    if not isinstance(ops, list):
        raise BadRequest(f"invalid JSON patch: expected an array of operations, got {_type_name(ops)}")
    if len(ops) > MAX_JSON_PATCH_OPERATIONS:
        raise RequestEntityTooLarge("Request entity too large: The allowed maximum operations in a JSON patch is "
                                    f"{MAX_JSON_PATCH_OPERATIONS}, got {len(ops)}")
    for index, op in enumerate(ops):
        _check_operation(index, op)

    doc: Any = json_copy(target)  # applied in place on our copy; a failure simply discards it
    for index, op in enumerate(ops):
        name = op["op"]
        try:
            doc = _OPERATIONS[name](op).apply(doc)
        except JsonPatchTestFailed:
            raise _test_failed(index, op, doc) from None
        except (JsonPatchException, JsonPointerException, KeyError, IndexError, TypeError, ValueError) as exc:
            # Structure was checked above, so what is left depends on the document, e.g. "replace /list/-".
            raise Invalid(f"the JSON patch operation {index} ({name} {_shown(op['path'])}) cannot be applied: "
                          f"{_reason(exc)}") from None
    if not isinstance(doc, dict):
        raise Invalid(f"the JSON patch replaced the object with a JSON {_type_name(doc)}; the result must be an object")
    return doc
