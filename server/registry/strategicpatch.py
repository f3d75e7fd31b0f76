"""Strategic merge patch (``application/strategic-merge-patch+json``) on built-in kinds.

A port of apimachinery ``util/strategicpatch`` as the apiserver runs it (``MergeParallelList``,
``IgnoreUnmatchedNulls``), driven by the patch strategies and merge keys of ``server.registry.apply``:

* objects merge key by key; ``null`` deletes; a list with ``patchStrategy=merge`` merges with the
  current one (items of a list of objects matched by their ``patchMergeKey``, e.g. containers by
  ``name``; scalars as a set), every other list is replaced;
* ``$patch: replace`` (an object or, as a list item, the whole list is replaced), ``$patch: delete``
  (an object becomes empty; a list item with the merge key is removed), ``$patch: merge``;
* ``$retainKeys: [...]`` drops the object's other keys; ``$deleteFromPrimitiveList/<f>: [...]`` removes
  values from a primitive list; ``$setElementOrder/<f>: [...]`` orders the merged list (kubectl's
  client-side apply sends it with every merged list).

Custom resources have no strategic merge patch upstream: 415, in kube's words.
"""

from __future__ import annotations

from typing import Any

import orjson

from kcp_virtual.framework import errors
from server.registry.apply import UNTYPED, ListOf, Struct, child_of, type_of
from server.registry.patch import json_copy

__all__ = ["strategic_merge", "patch_object", "DIRECTIVE", "RETAIN_KEYS", "SET_ELEMENT_ORDER",
           "DELETE_FROM_PRIMITIVE_LIST"]

DIRECTIVE = "$patch"
RETAIN_KEYS = "$retainKeys"
SET_ELEMENT_ORDER = "$setElementOrder/"
DELETE_FROM_PRIMITIVE_LIST = "$deleteFromPrimitiveList/"
_MISSING = object()
_UNSUPPORTED = ("the body of the request was in an unknown format - accepted media types include: "
                "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml")


def patch_object(rt, current: dict, patch: Any) -> dict:
    """``current`` with a strategic merge patch applied, for resource type ``rt`` (415 for custom resources)."""
    if "strategic-merge-patch" not in rt.patch_kinds:
        raise errors.UnsupportedMediaType(_UNSUPPORTED)
    return strategic_merge(current, patch, type_of(rt))


def strategic_merge(original: dict, patch: Any, node=UNTYPED) -> dict:
    """Apply ``patch`` to ``original`` (neither is modified); 400 for malformed patches."""
    if isinstance(patch, (bytes, str)):
        try:
            patch = orjson.loads(patch)
        except orjson.JSONDecodeError as exc:
            raise errors.BadRequest(f"the patch is not valid JSON: {exc}") from None
    if not isinstance(patch, dict):
        raise errors.BadRequest("json: cannot unmarshal a strategic merge patch that is not an object into "
                                "Go value of type map[string]interface {}")
    result = _merge_map(json_copy(original) if isinstance(original, dict) else {}, json_copy(patch), node)
    return result if isinstance(result, dict) else {}


def _bad(message: str) -> errors.BadRequest:
    return errors.BadRequest(f"invalid strategic merge patch: {message}")


def _shown(value: Any) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) < 200 else text[:200] + "..."


def _sub(node, key: str):
    return child_of(node, key)[0] if isinstance(node, Struct) else UNTYPED


def _strategy(node) -> tuple[bool, str | None]:
    """(merge the list?, merge key) of a list's node."""
    if isinstance(node, ListOf) and node.smp_merge:
        return True, node.smp_key
    return False, None


def _clean(value: Any) -> Any:
    """A patch value taken as it is (nothing to merge with): no directives, no nulls."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()
                if not k.startswith("$") and v is not None
                and not (isinstance(v, dict) and v.get(DIRECTIVE) == "delete")}
    if isinstance(value, list):
        return [_clean(v) for v in value if not (isinstance(v, dict) and DIRECTIVE in v)]
    return value


def _merge_map(original: dict, patch: dict, node) -> dict:
    """``mergeMap``; works in place on private copies."""
    if DIRECTIVE in patch:
        directive = patch.pop(DIRECTIVE)
        if directive == "replace":
            return _clean(patch)
        if directive == "delete":
            return {}
        if directive != "merge":
            raise _bad(f"unknown patch type: {directive} in map: {_shown(patch)}")
    if RETAIN_KEYS in patch:
        keep = patch.pop(RETAIN_KEYS)
        if not isinstance(keep, list):
            raise _bad(f"{RETAIN_KEYS} must be a list, got {_shown(keep)}")
        kept = {k for k in keep if isinstance(k, str)}
        for key in [k for k in original if k not in kept]:
            del original[key]
    for key in [k for k in patch if k.startswith(SET_ELEMENT_ORDER)]:
        _apply_element_order(original, patch, key, node)
    for key, value in patch.items():
        delete_list = key.startswith(DELETE_FROM_PRIMITIVE_LIST)
        if delete_list:
            key = key[len(DELETE_FROM_PRIMITIVE_LIST):]
            if not isinstance(value, list):
                raise _bad(f"{DELETE_FROM_PRIMITIVE_LIST}{key} must be a list, got {_shown(value)}")
        elif key.startswith("$"):
            continue  # an order already applied, or a directive we do not know
        if value is None:
            original.pop(key, None)
            continue
        current = original.get(key, _MISSING)
        if current is _MISSING or _kind(current) != _kind(value):
            if not delete_list:
                original[key] = _clean(value)
            continue
        if isinstance(value, dict):
            original[key] = _merge_map(current, value, _sub(node, key))
        elif isinstance(value, list):
            original[key] = _merge_list(current, value, _sub(node, key), delete_list)
        else:
            original[key] = value
    return original


def _kind(value: Any) -> str:
    return "map" if isinstance(value, dict) else "list" if isinstance(value, list) else "scalar"


def _merge_list(original: list, patch: list, node, delete_list: bool = False) -> list:
    """``mergeSliceHandler``/``mergeSlice``: merge when the field's strategy says so, else replace."""
    merging, merge_key = _strategy(node)
    if delete_list:
        dropped = {_identity(v) for v in patch}
        return [v for v in original if _identity(v) not in dropped]
    if not merging:
        return _clean(patch)
    if not original and not patch:
        return original
    maps = _element_kind(original, patch)
    if not maps:
        merged = _dedupe(original + patch)
        key = None
    else:
        if not merge_key:
            raise _bad("cannot merge lists without merge key")
        original, patch = _special_elements(original, patch, merge_key)
        merged = _merge_by_key(original, patch, merge_key, node.elem)
        key = merge_key
    patch_items, server_only = _partition(merged, patch, key)
    return _normalize(patch_items, server_only, patch, original, key)


def _element_kind(*lists: list) -> bool:
    """True for lists of objects; 400 for lists mixing objects and scalars, or holding lists."""
    kinds = {_kind(v) for items in lists for v in items}
    if "list" in kinds:
        raise _bad("lists of lists are not supported")
    if len(kinds) > 1:
        raise _bad("the items of a list must all be objects or all be scalars")
    return kinds == {"map"}


def _identity(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _dedupe(values: list) -> list:
    seen, out = set(), []
    for value in values:
        ident = _identity(value)
        if ident not in seen:
            seen.add(ident)
            out.append(value)
    return out


def _key_of(item: Any, merge_key: str) -> Any:
    if not isinstance(item, dict) or merge_key not in item:
        raise _bad(f"map: {_shown(item)} does not contain declared merge key: {merge_key}")
    return _identity(item[merge_key])


def _special_elements(original: list, patch: list, merge_key: str) -> tuple[list, list]:
    """``mergeSliceWithSpecialElements``: items that are ``$patch`` directives."""
    plain, replace = [], False
    for item in patch:
        directive = item.get(DIRECTIVE, _MISSING)
        if directive is _MISSING:
            plain.append(item)
        elif directive == "delete":
            key = _key_of(item, merge_key)
            original = [o for o in original if not (isinstance(o, dict) and merge_key in o
                                                    and _identity(o[merge_key]) == key)]
        elif directive == "replace":
            replace = True
        elif directive == "merge":
            raise _bad("merging lists cannot yet be specified in the patch")
        else:
            raise _bad(f"unknown patch type: {directive} in map: {_shown(item)}")
    if replace:
        return _clean(plain), []
    return original, plain


def _merge_by_key(original: list, patch: list, merge_key: str, elem) -> list:
    """``mergeSliceWithoutSpecialElements``."""
    merged = list(original)
    for item in patch:
        key = _key_of(item, merge_key)
        for i, existing in enumerate(merged):
            if isinstance(existing, dict) and merge_key in existing and _identity(existing[merge_key]) == key:
                merged[i] = _merge_map(existing, item, elem)
                break
        else:
            merged.append(_clean(item))
    return merged


def _position(items: list, key: str | None):
    """item -> index in ``items`` (by merge key, or by value for scalars)."""
    index: dict = {}
    for i, item in enumerate(items):
        if key is None:
            ident = _identity(item)
        elif isinstance(item, dict) and key in item:
            ident = _identity(item[key])
        else:
            continue
        index.setdefault(ident, i)
    return index


def _ident(item: Any, key: str | None) -> bytes | None:
    if key is None:
        return _identity(item)
    return _identity(item[key]) if isinstance(item, dict) and key in item else None


def _partition(merged: list, patch: list, key: str | None) -> tuple[list, list]:
    in_patch = _position(patch, key)
    patch_items, server_only = [], []
    for item in merged:
        (patch_items if _ident(item, key) in in_patch else server_only).append(item)
    return patch_items, server_only


def _sorted_by(items: list, order: list, key: str | None) -> list:
    """``normalizeSliceOrder``: by position in ``order`` (unknown items last, stably), without the items
    ``order`` marks ``$patch: delete``."""
    positions = _position(order, key)
    deleted = {_ident(o, key) for o in order if isinstance(o, dict) and o.get(DIRECTIVE) == "delete"} if key else set()
    ranked = sorted(enumerate(items), key=lambda p: (positions.get(_ident(p[1], key), len(order)), p[0]))
    return [item for _, item in ranked if _ident(item, key) not in deleted]


def _normalize(patch_items: list, server_only: list, patch_order: list, server_order: list,
               key: str | None) -> list:
    """``normalizeElementOrder`` and ``mergeSortedSlice``: patch items in the patch's order, server-only
    items in the server's, interleaved by the server's order where both sides know the items."""
    left = _sorted_by(server_only, server_order, key)
    right = _sorted_by(patch_items, patch_order, key)
    positions = _position(server_order, key)
    out, i, j = [], 0, 0
    while i < len(left) or j < len(right):
        if i >= len(left):
            out.append(right[j])
            j += 1
        elif j >= len(right):
            out.append(left[i])
            i += 1
        else:
            li, ri = positions.get(_ident(left[i], key)), positions.get(_ident(right[j], key))
            if li is not None and ri is not None and li < ri:
                out.append(left[i])
                i += 1
            else:
                out.append(right[j])
                j += 1
    return out


def _check_order(patch_list: list, order: list, key: str | None) -> None:
    """``validatePatchWithSetOrderList``: the patch's items appear in the order list, in its order."""
    items = [p for p in patch_list if not (isinstance(p, dict) and DIRECTIVE in p)]
    if not items or not order:
        return
    pi = oi = 0
    while pi < len(items) and oi < len(order):
        if _ident(items[pi], key) == _ident(order[oi], key):
            pi += 1
        oi += 1
    if pi < len(items):
        raise _bad(f"the order in patch list {_shown(patch_list)} doesn't match {SET_ELEMENT_ORDER} list "
                   f"{_shown(order)}")


def _apply_element_order(original: dict, patch: dict, directive: str, node) -> None:
    """``mergePatchIntoOriginal``: merge the list ``$setElementOrder/<field>`` names and put it in that order."""
    order = patch.pop(directive)
    if not isinstance(order, list):
        raise _bad(f"{directive} must be a list, got {_shown(order)}")
    field = directive[len(SET_ELEMENT_ORDER):]
    current = original.get(field, _MISSING)
    patched = patch.get(field, _MISSING)
    if current is not _MISSING and not isinstance(current, list):
        raise _bad(f"{field} is not a list")
    if patched is not _MISSING and patched is not None and not isinstance(patched, list):
        raise _bad(f"{field} in the patch is not a list")
    if patched is None:
        return  # the list is deleted below
    sub = _sub(node, field)
    maps = _element_kind(current if isinstance(current, list) else [], patched if isinstance(patched, list) else [],
                         order)
    key = _strategy(sub)[1] if maps else None  # a replaced list of objects: items told apart by value
    if isinstance(patched, list):
        _check_order(patched, order, key)
    if isinstance(current, list) and not isinstance(patched, list):
        merged = current
    elif isinstance(patched, list) and not isinstance(current, list):
        merged = _clean(patched)
    elif isinstance(patched, list):
        merged = _merge_list(current, patched, sub)
    else:
        return
    patch_items, server_only = _partition(merged, order, key)
    original[field] = _normalize(patch_items, server_only, order, current if isinstance(current, list) else [],
                                 key)
    patch.pop(field, None)
