"""Field ownership (``metadata.managedFields``) and server-side apply, as structured-merge-diff does them.

Every write records who set which fields. A *field set* is a frozenset of paths; a path is a tuple of
fieldsV1 elements: ``f:<field>``, ``k:{"name":"c"}`` (an associative-list item by its keys, sorted),
``v:<json>`` (a set item) and ``i:<index>``. Paths walk the typed view of ``server.registry.apply``.

* An **Update** (create, update, any non-apply patch) takes every field it adds or changes, away
  from whoever owned it, and no one keeps fields it removes (``upstream merge.Updater.Update``).
* An **Apply** merges the configuration into the live object, makes the applier own exactly the
  configuration's fields, removes fields it applied last time and omits now unless another manager
  owns them, and fails with a 409 listing the conflicts when it would change fields other managers
  own, unless forced (then they lose them) (``merge.Updater.Apply``).
* ``apiVersion``, ``kind`` and the server-set metadata are never owned (``stripMetaManager``); status
  is ignored on the main resource of a type with a status subresource, and all but status on it.
* kubectl's own field manager ``kubectl`` may take over fields of a client-side apply whose values it
  still has in its ``last-applied-configuration`` annotation, and keeps that annotation current
  (``lastAppliedManager``, ``lastAppliedUpdater``); Update managers beyond ten are merged, oldest first,
  into ``ancient-changes`` (``capManagersManager``).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Iterable

import orjson

from kcp_virtual.framework import errors
from server.registry.apply import SCALAR, UNTYPED, ListOf, Struct, child_of, shape, type_of, zero_object

__all__ = ["FieldError", "Entry", "field_set", "compare", "merge", "remove", "ensure_named", "to_fields_v1",
           "from_fields_v1", "path_string", "decode", "encode", "after_update", "applied_object",
           "manager_from_user_agent", "check_field_manager", "LAST_APPLIED", "MAX_UPDATE_MANAGERS"]

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
MAX_UPDATE_MANAGERS = 10
ANCIENT_CHANGES = "ancient-changes"
FIELD_MANAGER_MAX_LENGTH = 128
_MISSING = object()
_STRIPPED = frozenset([("f:apiVersion",), ("f:kind",), ("f:metadata",)] + [
    ("f:metadata", f"f:{name}") for name in ("name", "namespace", "creationTimestamp", "selfLink", "uid",
                                            "clusterName", "generation", "managedFields", "resourceVersion")])


class FieldError(ValueError):
    """An applied configuration that has no field set: duplicate or keyless items of an associative list."""


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


# ---------------------------------------------------------------------------------------------- path elements

def _item_element(node: ListOf, item: Any, index: int, path: tuple, strict: bool) -> str:
    if node.kind == "set":
        return "v:" + _json(item)
    key = {}
    for name in node.keys:
        if isinstance(item, dict) and name in item:
            key[name] = item[name]
        elif name in node.defaults:
            key[name] = node.defaults[name]
        elif strict:
            raise FieldError(f"{path_string(path)}: element {index}: associative list with keys has an element "
                             f'that omits key field "{name}" (and doesn\'t have default value)')
        else:
            return f"i:{index}"
    return "k:" + _json(key)


def _items(node: ListOf, items: list, path: tuple, strict: bool) -> list[tuple[str, Any]]:
    out, seen = [], set()
    for index, item in enumerate(items):
        element = _item_element(node, item, index, path, strict)
        if element in seen:
            if strict:
                raise FieldError(f"{path_string(path)}: duplicate entries for key {_element_string(element)}")
            element = f"i:{index}"
        seen.add(element)
        out.append((element, item))
    return out


@lru_cache(maxsize=4096)
def _canonical(element: str) -> str:
    """A fieldsV1 key in the form we produce (keys sorted, compact JSON); ValueError when malformed."""
    prefix, _, rest = element.partition(":")
    if prefix == "f" and _:
        return element
    if prefix == "i" and rest.isdigit():
        return element
    if prefix in ("k", "v") and _:
        try:
            value = orjson.loads(rest)
        except orjson.JSONDecodeError:
            raise ValueError(f"invalid path element {element!r}") from None
        if prefix == "k" and not isinstance(value, dict):
            raise ValueError(f"invalid path element {element!r}")
        return f"{prefix}:{_json(value)}"
    raise ValueError(f"invalid path element {element!r}")


def _value_rank(value: Any) -> tuple:
    if value is None:
        return (0,)
    if isinstance(value, bool):
        return (1, value)
    if isinstance(value, (int, float)):
        return (2, value)
    if isinstance(value, str):
        return (3, value.encode())
    return (4, _json(value).encode())


@lru_cache(maxsize=4096)
def _element_order(element: str) -> tuple:
    """structured-merge-diff's PathElement order: fields, then keys, values, indexes."""
    prefix, rest = element[0], element[2:]
    if prefix == "f":
        return (0, rest.encode())
    if prefix == "k":
        return (1, tuple((name.encode(), _value_rank(v)) for name, v in sorted(orjson.loads(rest).items())))
    if prefix == "v":
        return (2, _value_rank(orjson.loads(rest)))
    return (3, int(rest))


def _path_order(path: tuple) -> tuple:
    return tuple(_element_order(e) for e in path)


def _go_string(value: Any) -> str:
    """apimachinery ``value.ToString``: strings quoted, other scalars bare."""
    if isinstance(value, str):
        return _json(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return _json(value)


def _element_string(element: str) -> str:
    prefix, rest = element[0], element[2:]
    if prefix == "f":
        return "." + rest
    if prefix == "k":
        return "[" + ",".join(f"{k}={_go_string(v)}" for k, v in sorted(orjson.loads(rest).items())) + "]"
    if prefix == "v":
        return f"[={_go_string(orjson.loads(rest))}]"
    return f"[{rest}]"


def path_string(path: Iterable[str]) -> str:
    """A path as kube prints it in conflicts: ``.spec.containers[name="c"].image``."""
    return "".join(_element_string(e) for e in path)


# ---------------------------------------------------------------------------------------------- fieldsV1

def to_fields_v1(paths: Iterable[tuple]) -> dict:
    """The fieldsV1 JSON of a field set: a member with children is marked by ``".": {}``."""
    members = set(paths)
    tree: dict = {}
    for path in members:
        node = tree
        for element in path:
            node = node.setdefault(element, {})

    def emit(node: dict, path: tuple) -> dict:
        out: dict = {}
        if node and path in members:
            out["."] = {}
        for element in sorted(node, key=_element_order):
            out[element] = emit(node[element], path + (element,))
        return out

    return emit(tree, ())


def from_fields_v1(data: Any) -> frozenset:
    """The field set of a fieldsV1 document; ValueError when it is not one."""
    out: set = set()

    def walk(node: Any, path: tuple) -> None:
        if not isinstance(node, dict):
            raise ValueError("fieldsV1 nodes must be objects")
        for element, child in node.items():
            if element == ".":
                if path:
                    out.add(path)
                continue
            sub = path + (_canonical(element),)
            if not child:
                out.add(sub)
            else:
                walk(child, sub)

    walk(data if data is not None else {}, ())
    return frozenset(out)


# ---------------------------------------------------------------------------------------------- typed walks

def field_set(value: Any, node, *, strict: bool = False) -> set:
    """The paths a value sets (``TypedValue.ToFieldSet``): leaves, associative/set items, map entries,
    and empty or null fields; ``strict`` refuses duplicate or keyless associative items (FieldError)."""
    out: set = set()
    _collect(value, node, (), out, strict)
    return out


def _collect(value: Any, node, path: tuple, out: set, strict: bool) -> None:
    node = shape(node, value)
    if isinstance(node, Struct) and isinstance(value, dict):
        if node.atomic:
            if path:
                out.add(path)
            return
        for key, child in value.items():
            sub, declared = child_of(node, key)
            element_path = path + ("f:" + key,)
            _collect(child, sub, element_path, out, strict)
            if child is None or (isinstance(child, dict) and not child) or not declared:
                out.add(element_path)
        return
    if isinstance(node, ListOf) and node.kind != "atomic" and isinstance(value, list):
        for element, item in _items(node, value, path, strict):
            item_path = path + (element,)
            _collect(item, node.elem, item_path, out, strict)
            out.add(item_path)
        return
    if path:
        out.add(path)


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return _json(a) == _json(b)
    except TypeError:
        return a == b


def compare(lhs: Any, rhs: Any, node) -> tuple[set, set, set]:
    """``(added, modified, removed)`` paths from ``lhs`` to ``rhs`` (``TypedValue.Compare``): every node of
    an added or removed subtree, leaves whose value changed."""
    added: set = set()
    modified: set = set()
    removed: set = set()
    _compare(lhs, rhs, node, (), added, modified, removed)
    return added, modified, removed


def _subtree(value: Any, node, path: tuple, out: set) -> None:
    node = shape(node, value)
    if path:
        out.add(path)
    if isinstance(node, Struct) and isinstance(value, dict) and not node.atomic:
        for key, child in value.items():
            _subtree(child, child_of(node, key)[0], path + ("f:" + key,), out)
    elif isinstance(node, ListOf) and node.kind != "atomic" and isinstance(value, list):
        for element, item in _items(node, value, path, False):
            _subtree(item, node.elem, path + (element,), out)


def _compare(lhs, rhs, node, path, added, modified, removed) -> None:
    if lhs is _MISSING:
        _subtree(rhs, node, path, added)
        return
    if rhs is _MISSING:
        _subtree(lhs, node, path, removed)
        return
    node = shape(node, rhs if rhs is not None else lhs)
    if lhs is None and isinstance(rhs, (dict, list)) and rhs:  # null is an empty collection to a granular type
        lhs = type(rhs)()
    elif rhs is None and isinstance(lhs, (dict, list)) and lhs:
        rhs = type(lhs)()
    if isinstance(node, Struct) and not node.atomic and isinstance(lhs, dict) and isinstance(rhs, dict) \
            and (lhs or rhs):
        for key in {**lhs, **rhs}:
            _compare(lhs.get(key, _MISSING), rhs.get(key, _MISSING), child_of(node, key)[0], path + ("f:" + key,),
                     added, modified, removed)
        return
    if isinstance(node, ListOf) and node.kind != "atomic" and isinstance(lhs, list) and isinstance(rhs, list) \
            and (lhs or rhs):
        left = dict(reversed(_items(node, lhs, path, False)))
        right = dict(reversed(_items(node, rhs, path, False)))
        for element in {**left, **right}:
            _compare(left.get(element, _MISSING), right.get(element, _MISSING), node.elem, path + (element,),
                     added, modified, removed)
        return
    if path and not _same(lhs, rhs):
        modified.add(path)


def merge(live: Any, config: Any, node) -> Any:
    """The configuration merged into the live value (``TypedValue.Merge``): the configuration wins on
    leaves; granular maps merge by key, associative lists and sets by item (in a merged order that keeps
    both sides' relative order); atomic values are replaced. Inputs are not modified."""
    if live is _MISSING:
        return config
    if config is _MISSING:
        return live
    node = shape(node, config if config is not None else live)
    if isinstance(node, Struct) and not node.atomic and isinstance(live, dict) \
            and (isinstance(config, dict) or config is None):
        if not config:
            return live if live else config
        out = dict(live)
        for key, value in config.items():
            out[key] = merge(live.get(key, _MISSING), value, child_of(node, key)[0])
        return out
    if isinstance(node, ListOf) and node.kind != "atomic" and isinstance(live, list) \
            and (isinstance(config, list) or config is None):
        if not config:
            return live if live else config
        return _merge_list(live, config, node)
    return config


def _merge_list(lhs: list, rhs: list, node: ListOf) -> list:
    """structured-merge-diff's ``mergingWalker.visitListItems``."""
    left = _items(node, lhs, (), False)
    right = _items(node, rhs, (), False)
    observed_left = dict(reversed(left))
    observed_right = dict(reversed(right))
    shared = [element for element, _ in right if element in observed_left]
    shared_at = 0

    def next_shared():
        return shared[shared_at] if shared_at < len(shared) else None

    out: list = []
    merged_right: set = set()
    li = ri = 0
    while li < len(left) or ri < len(right):
        if li < len(left) and ri < len(right):
            element = left[li][0]
            if element == right[ri][0]:
                merged_right.add(element)
                out.append(merge(observed_left[element], observed_right[element], node.elem))
                li += 1
                ri += 1
                shared_at += 1
                continue
            if element in observed_right and next_shared() is not None and next_shared() != element:
                li += 1
                continue
        if li < len(left):
            element = left[li][0]
            if element not in observed_right:
                out.append(left[li][1])
                li += 1
                continue
            if element in merged_right:
                li += 1
                continue
        if ri < len(right):
            element = right[ri][0]
            merged_right.add(element)
            out.append(merge(observed_left.get(element, _MISSING), observed_right[element], node.elem))
            ri += 1
            if next_shared() == element:
                shared_at += 1
    return out


def remove(value: Any, paths: Iterable[tuple], node) -> Any:
    """``value`` without the items at ``paths`` (``TypedValue.RemoveItems``); the input is not modified."""
    members = set(paths)
    if not members:
        return value
    prefixes = {path[:i] for path in members for i in range(1, len(path))}
    return _remove(value, node, (), members, prefixes)


def _remove(value, node, path, members, prefixes):
    node = shape(node, value)
    if isinstance(node, Struct) and isinstance(value, dict) and not node.atomic:
        out = {}
        for key, child in value.items():
            sub_path = path + ("f:" + key,)
            if sub_path in members:
                continue
            if sub_path in prefixes:
                child = _remove(child, child_of(node, key)[0], sub_path, members, prefixes)
            out[key] = child
        return out
    if isinstance(node, ListOf) and node.kind != "atomic" and isinstance(value, list):
        out = []
        for element, item in _items(node, value, path, False):
            sub_path = path + (element,)
            if sub_path in members:
                continue
            if sub_path in prefixes:
                item = _remove(item, node.elem, sub_path, members, prefixes)
            out.append(item)
        return out
    return value


def ensure_named(paths: Iterable[tuple], root) -> set:
    """The paths plus every declared struct field on their way (``Set.EnsureNamedFieldsAreMembers``): owning
    ``spec.a`` keeps ``spec`` alive, owning a map entry does not keep the map."""
    out = set(paths)
    for path in list(out):
        node = root
        for i, element in enumerate(path[:-1]):
            if element.startswith("f:"):
                if isinstance(node, Struct):
                    node, declared = child_of(node, element[2:])
                    if declared:
                        out.add(path[:i + 1])
                else:
                    node = UNTYPED
            else:
                node = node.elem if isinstance(node, ListOf) else UNTYPED
            if node is UNTYPED or node is SCALAR:
                break
    return out


# ---------------------------------------------------------------------------------------------- entries

@dataclass(frozen=True)
class Entry:
    """One ``managedFields`` entry."""

    manager: str
    operation: str              # Apply | Update
    api_version: str
    time: str | None
    subresource: str
    fields: frozenset

    @property
    def identity(self) -> tuple:
        """Entries are told apart by manager, operation and subresource, and an Update's by version too."""
        return (self.manager, self.operation, self.subresource,
                self.api_version if self.operation == "Update" else "")


def decode(entries: Any) -> list[Entry]:
    """The entries of ``metadata.managedFields``; ValueError when they are malformed."""
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise ValueError("managedFields must be a list")
    out = []
    for raw in entries:
        if not isinstance(raw, dict):
            raise ValueError("managedFields entries must be objects")
        if raw.get("fieldsType", "FieldsV1") not in ("FieldsV1", "", None):
            raise ValueError(f'unsupported fieldsType "{raw.get("fieldsType")}"')
        operation = raw.get("operation") or ""
        if operation not in ("Apply", "Update", ""):
            raise ValueError(f'unsupported operation "{operation}"')
        out.append(Entry(str(raw.get("manager") or ""), operation, str(raw.get("apiVersion") or ""),
                         raw.get("time") or None, str(raw.get("subresource") or ""),
                         from_fields_v1(raw.get("fieldsV1"))))
    return out


_ENCODED_KEPT = 2048
_encoded: dict[frozenset, bytes] = {}


def _fields_v1(fields: frozenset) -> dict:
    """``to_fields_v1(fields)``, remembered: every workspace's default roles have the same field sets, and building
    the tree was a quarter of a new workspace's CPU. Kept as JSON, so that no two objects share the dict."""
    encoded = _encoded.get(fields)
    if encoded is None:
        if len(_encoded) >= _ENCODED_KEPT:
            _encoded.clear()
        encoded = _encoded[fields] = orjson.dumps(to_fields_v1(fields))
    return orjson.loads(encoded)


def encode(entries: Iterable[Entry]) -> list[dict]:
    """``metadata.managedFields`` in kube's order: Apply before Update, then oldest first, then by manager."""
    out = []
    for entry in sorted(entries, key=lambda e: (e.operation, e.time or "", e.manager, e.api_version,
                                                e.subresource)):
        raw = {"manager": entry.manager, "operation": entry.operation, "apiVersion": entry.api_version}
        if entry.time:
            raw["time"] = entry.time
        raw["fieldsType"] = "FieldsV1"
        raw["fieldsV1"] = _fields_v1(entry.fields)
        if entry.subresource:
            raw["subresource"] = entry.subresource
        out.append(raw)
    return out


def _cap(entries: list[Entry]) -> list[Entry]:
    updaters = sorted((e for e in entries if e.operation == "Update"), key=lambda e: (e.time or "", e.manager))
    excess = len(updaters) - MAX_UPDATE_MANAGERS
    if excess <= 0:
        return entries
    oldest = updaters[:excess + 1]
    version = oldest[-1].api_version
    oldest += [e for e in updaters[excess + 1:] if e.identity == (ANCIENT_CHANGES, "Update", "", version)]
    bucket = Entry(ANCIENT_CHANGES, "Update", version, max(e.time or "" for e in oldest) or None, "",
                   frozenset().union(*(e.fields for e in oldest)))
    dropped = {id(e) for e in oldest}
    return [e for e in entries if id(e) not in dropped] + [bucket]


# ---------------------------------------------------------------------------------------------- operations

def _ignored(rt, subresource: str):
    """Paths a write of this (sub)resource does not own: status via the main resource, the rest via status."""
    if subresource == "status":
        return lambda path: path[0] != "f:status"
    if rt.has_status:
        return lambda path: path[0] == "f:status"
    return lambda path: False


def _owned(paths: Iterable[tuple], ignored) -> frozenset:
    return frozenset(p for p in paths if p not in _STRIPPED and not ignored(p))


def _view(obj: dict | None, hidden: tuple) -> dict:
    """What ownership is computed on: no managedFields, no server-owned annotations."""
    if not obj:
        return {}
    meta = dict(obj.get("metadata") or {})
    meta.pop("managedFields", None)
    annotations = meta.get("annotations")
    if annotations and any(name in annotations for name in hidden):
        annotations = {k: v for k, v in annotations.items() if k not in hidden}
        if annotations:
            meta["annotations"] = annotations
        else:
            meta.pop("annotations")
    return {**obj, "metadata": meta}


def _decoded(obj: dict | None) -> list[Entry]:
    try:
        return decode(((obj or {}).get("metadata") or {}).get("managedFields"))
    except ValueError:
        return []


def after_update(rt, old: dict | None, new: dict, manager: str, *, subresource: str = "",
                 hidden: tuple = ()) -> list[dict] | None:
    """``new``'s ``managedFields`` after ``manager`` wrote it over ``old`` (None: created it). Entries sent
    with ``new`` replace the stored ones (clients may edit them; ``[{}]`` resets them), as upstream."""
    node = type_of(rt)
    entries = [] if subresource else _decoded(new)
    if not entries:
        entries = _decoded(old)
    entries = [e for e in entries if e.manager or e.fields]
    before = _view(old, hidden) if old is not None else zero_object(rt)
    after = _view(new, hidden)
    added, modified, removed = compare(before, after, node)
    ignored = _ignored(rt, subresource)
    changed = _owned(added | modified, ignored)
    out = []
    for entry in entries:
        fields = entry.fields - changed - removed
        if fields:
            out.append(replace(entry, fields=fields) if fields != entry.fields else entry)
    if changed:
        identity = (manager, "Update", subresource, rt.api_version)
        mine = next((e for e in out if e.identity == identity), None)
        if mine is None:
            out.append(Entry(manager, "Update", rt.api_version, _now(), subresource, changed))
        else:
            out[out.index(mine)] = replace(mine, fields=mine.fields | changed, time=_now())
    return encode(_cap(out)) or None


def _config_errors(rt, config: Any) -> dict:
    if not isinstance(config, dict):
        raise errors.BadRequest("error decoding YAML: the apply configuration must be an object")
    version = config.get("apiVersion")
    if version != rt.api_version:
        raise errors.BadRequest(f"Incorrect version specified in apply patch. Specified patch version: "
                                f"{version or ''}, expected: {rt.api_version}")
    if config.get("kind") != rt.kind:
        raise errors.BadRequest(f"the kind in the apply configuration ({config.get('kind') or ''}) does not "
                                f"match the expected kind ({rt.kind})")
    meta = config.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise errors.BadRequest("metadata must be an object")
    if (meta or {}).get("managedFields") is not None:
        raise errors.BadRequest("metadata.managedFields must be nil")
    return config


def _allowed_by_last_applied(node, live: dict) -> frozenset:
    """Fields of kubectl's client-side ``last-applied-configuration`` whose live values are still those."""
    text = ((live.get("metadata") or {}).get("annotations") or {}).get(LAST_APPLIED)
    if not text:
        return frozenset()
    try:
        last = orjson.loads(text)
        fields = field_set(last, node)
    except (orjson.JSONDecodeError, FieldError):
        return frozenset()
    _, modified, _ = compare(last, live, node)
    return frozenset(fields - modified)


def conflict_error(conflicts: dict[Entry, frozenset]) -> errors.Conflict:
    """409 with kube's message and one ``FieldManagerConflict`` cause per field."""
    listed = []
    for entry in sorted(conflicts, key=lambda e: (e.manager, e.operation, e.api_version, e.subresource)):
        who = _json(entry.manager)
        if entry.subresource:
            who += f" with subresource {_json(entry.subresource)}"
        if entry.operation == "Update":
            who += f" using {entry.api_version}"
        for path in sorted(conflicts[entry], key=_path_order):
            listed.append((who, path_string(path)))
    causes = [{"type": "FieldManagerConflict", "message": f"conflict with {who}", "field": field}
              for who, field in listed]
    if len(listed) == 1:
        message = f"Apply failed with 1 conflict: conflict with {listed[0][0]}: {listed[0][1]}"
    else:
        lines, current = [], None
        for who, field in listed:
            if who != current:
                lines.append(f"conflicts with {who}:")
                current = who
            lines.append(f"- {field}")
        message = f"Apply failed with {len(listed)} conflicts: " + "\n".join(lines)
    return errors.Conflict(message, details={"causes": causes})


def applied_object(rt, live: dict | None, config: Any, manager: str, *, force: bool = False,
                   subresource: str = "", hidden: tuple = ()) -> dict:
    """The object server-side apply of ``config`` by ``manager`` makes of ``live`` (None: it creates it),
    with its ``managedFields``; raises the 409 of unforced conflicts and 400s for bad configurations."""
    config = _config_errors(rt, config)
    node = type_of(rt)
    ignored = _ignored(rt, subresource)
    config = _view(config, hidden)
    try:
        configured = field_set(config, node, strict=True)
    except FieldError as exc:
        meta = config.get("metadata") or {}
        where = f'{meta.get("namespace", "")}/{meta.get("name", "")}' if rt.namespaced else meta.get("name", "")
        raise errors.BadRequest(f"failed to create typed patch object ({where}; {rt.api_version}, "
                                f"Kind={rt.kind}): {exc}") from None
    applied = _owned(configured, ignored)
    entries = _decoded(live)
    current = _view(live, hidden)
    merged = merge(current, config, node)
    identity = (manager, "Apply", subresource, "")
    last = next((e for e in entries if e.identity == identity), None)
    mine = Entry(manager, "Apply", rt.api_version, last.time if last else None, subresource, applied)
    others = [e for e in entries if e.identity != identity]
    if last is not None and last.fields:
        # what the configuration names (stripped fields too: ``metadata`` itself stays) is never pruned
        still_owned = frozenset().union(configured, _STRIPPED, *(e.fields for e in others))
        merged = remove(merged, ensure_named(last.fields, node) - ensure_named(still_owned, node), node)
    added, modified, removed = compare(current, merged, node)
    changed = frozenset(p for p in added | modified if not ignored(p))
    conflicts = {e: e.fields & changed for e in others if e.fields & changed}
    if conflicts and not force:
        if manager == "kubectl" and live is not None:
            allowed = _allowed_by_last_applied(node, current)
            conflicts = {e: fields - allowed for e, fields in conflicts.items() if fields - allowed}
        if conflicts:
            raise conflict_error(conflicts)
    kept = []
    for entry in others:
        fields = entry.fields - changed - removed
        if fields:
            kept.append(replace(entry, fields=fields) if fields != entry.fields else entry)
    if applied:
        if last is None or changed or removed:
            mine = replace(mine, time=_now())
        kept.append(mine)
    if manager == "kubectl" and LAST_APPLIED in ((current.get("metadata") or {}).get("annotations") or {}):
        merged = _with_last_applied(merged, config)
    meta = merged.setdefault("metadata", {}) if isinstance(merged, dict) else {}
    encoded = encode(_cap(kept))
    if encoded:
        meta["managedFields"] = encoded
    else:
        meta.pop("managedFields", None)
    return merged


def _with_last_applied(obj: dict, config: dict) -> dict:
    """kubectl's client-side apply annotation, kept in step with what ``kubectl`` applies server-side."""
    shown = dict(config)
    meta = dict(shown.get("metadata") or {})
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != LAST_APPLIED}
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    shown["metadata"] = meta
    out_meta = dict(obj.get("metadata") or {})
    out_meta["annotations"] = {**(out_meta.get("annotations") or {}), LAST_APPLIED: _json(shown)}
    return {**obj, "metadata": out_meta}


# ---------------------------------------------------------------------------------------------- request rules

def manager_from_user_agent(user_agent: str | None) -> str:
    """The manager of a write that names none: the User-Agent up to its first ``/`` (``kubectl``,
    ``OpenAPI-Generator``, ``kopf``), printable characters only, at most 128 bytes (``prefixFromUserAgent``)."""
    prefix = (user_agent or "").split("/", 1)[0]
    out, size = [], 0
    for char in prefix:
        if not char.isprintable():
            continue
        size += len(char.encode())
        if size > FIELD_MANAGER_MAX_LENGTH:
            break
        out.append(char)
    return "".join(out)


def check_field_manager(value: str, options_kind: str, *, required: bool = False) -> None:
    """422 for an unusable ``fieldManager`` query parameter, worded as kube's ``ValidateFieldManager``."""
    causes = []
    if not value and required:
        causes.append({"type": "FieldValueRequired", "field": "fieldManager",
                       "message": "Required value: is required for apply patch"})
    if len(value.encode()) > FIELD_MANAGER_MAX_LENGTH:
        causes.append({"type": "FieldValueTooLong", "field": "fieldManager",
                       "message": f"Too long: may not be more than {FIELD_MANAGER_MAX_LENGTH} bytes"})
    for i, char in enumerate(value):
        if not char.isprintable():
            causes.append({"type": "FieldValueInvalid", "field": "fieldManager",
                           "message": f"Invalid value: {_json(value)}: invalid character "
                                      f"U+{ord(char):04X} {unicodedata.name(char, '')!s} (at position {i})"})
            break
    if causes:
        raise errors.Invalid.for_fields(options_kind, "meta.k8s.io", "", causes)
