"""Request bodies to JSON values, without letting one tenant's body stall the shard for everyone.

A body is bytes any authenticated caller chooses, decoded on the one gevent hub that serves every
workspace, so decoding is bounded in what it builds and in how long it holds the hub:

* YAML: libyaml composes the node graph (in C), then one pass over that graph, memoized per node,
  measures what it would expand to before anything is constructed. Aliases are refused past
  go-yaml's own rule (kube's YAML decoder: "document contains excessive aliasing") and whenever the
  expansion holds more nodes than the largest plain body could (``MAX_EXPANDED_NODES``), so a
  few hundred bytes of nested anchors never become millions of objects. Recursive aliases are
  refused too. Scalars become what kube's YAML-to-JSON conversion makes of them: timestamps stay
  strings, non-string keys become strings, ``.inf``/``.nan`` are refused.
* JSON: orjson.
* Both: nesting deeper than ``MAX_DEPTH`` is a 400 (orjson cannot encode past 254 levels, and a
  stored object must stay encodable with its managedFields, in lists and in watch events), and
  duplicate keys are reported (``Decoded.duplicates``), for ``fieldValidation`` to judge.
* Bodies larger than ``OFF_HUB_BYTES`` are decoded on the hub's worker thread (``off_hub``, which
  the shard's protobuf decoder uses too; ``offhub`` says why that keeps the hub serving).
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, NamedTuple, TypeVar

import orjson
import yaml

from kcp_virtual.framework import offhub
from kcp_virtual.framework.errors import BadRequest

__all__ = ["MAX_DEPTH", "MAX_EXPANDED_NODES", "OFF_HUB_BYTES", "Decoded", "check_nesting", "decode", "decode_json",
           "decode_yaml", "off_hub"]

#: Deepest nesting of objects and arrays a body (or a JSON-patched object) may have. kube objects nest
#: about 15 deep; with managedFields, in a list or a watch event, 128 stays well within orjson's 254.
MAX_DEPTH = 128
#: What a YAML body may expand to through aliases: about as many nodes as a plain 3 MiB body can hold.
MAX_EXPANDED_NODES = 1_500_000
#: Bodies above this size are decoded off the hub.
OFF_HUB_BYTES = offhub.THRESHOLD_BYTES

_T = TypeVar("_T")


class Decoded(NamedTuple):
    """A decoded body and what fieldValidation reports about it: duplicate keys, in kube's words."""

    value: Any
    duplicates: tuple[str, ...] = ()


def decode(data: bytes, kind: str) -> Decoded:
    """A JSON or YAML body (``kind`` from ``negotiation.request_content_kind``); malformed input is a 400
    in kube's words: a body's ``couldn't get version/kind``, a patch's ``error decoding patch``."""
    if kind in ("yaml", "apply-patch"):
        return decode_yaml(data)
    return decode_json(data, error_prefix="couldn't get version/kind; json parse error: " if kind == "json"
                       else "error decoding patch: ")


def off_hub(decode: Callable[[bytes], _T], data: bytes) -> _T:
    """``decode(data)``, on the hub's worker thread when ``data`` is big enough to hold the hub for
    milliseconds (``offhub``); exceptions are raised here, in the calling greenlet."""
    return offhub.run_if(len(data), decode, data)


# ---------------------------------------------------------------------------------------------- JSON

# A key is a string closed by a quote that is not escaped, then a colon. Inside a string, such a quote
# cannot occur (it would end the string), so on valid JSON this counts the keys exactly.
_KEY_END = re.compile(rb'(?<!\\)(?:\\\\)*"[ \t\r\n]*:')


def decode_json(data: bytes, *, error_prefix: str = "") -> Decoded:
    """A JSON body; malformed or too deep is a ``BadRequest`` whose message starts with ``error_prefix``."""
    return off_hub(lambda raw: _decode_json(raw, error_prefix), data)


def _decode_json(data: bytes, error_prefix: str) -> Decoded:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"{error_prefix}{exc}") from None
    keys = check_nesting(value, error_prefix)
    if keys and len(_KEY_END.findall(data)) > keys:  # some key was written twice
        return Decoded(value, tuple(_json_duplicates(data)))
    return Decoded(value)


def check_nesting(value: Any, error_prefix: str = "") -> int:
    """A ``BadRequest`` when ``value`` nests deeper than ``MAX_DEPTH``; else the number of keys in it."""
    keys = 0
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BadRequest(f"{error_prefix}exceeded max depth of {MAX_DEPTH}")
        if type(node) is dict:
            keys += len(node)
            children = node.values()
        elif type(node) is list:
            children = node
        else:
            continue
        stack.extend((child, depth + 1) for child in children if type(child) in (dict, list))
    return keys


def _json_duplicates(data: bytes) -> list[str]:
    """``duplicate field "<path>"`` for every key written twice in one object (the slow, exact pass)."""
    import json

    seen: dict[int, list[str]] = {}
    keep = []  # the dicts, alive until their ids are matched below

    def pairs_hook(pairs):
        obj = dict(pairs)
        if len(obj) != len(pairs):
            names, dups = set(), []
            for name, _ in pairs:
                if name in names and name not in dups:
                    dups.append(name)
                names.add(name)
            seen[id(obj)] = dups
            keep.append(obj)
        return obj

    root = json.loads(data, object_pairs_hook=pairs_hook)
    found: list[str] = []
    stack = [(root, "")]
    while stack:
        node, path = stack.pop()
        if type(node) is dict:
            found.extend(f'duplicate field "{_child(path, name)}"' for name in seen.get(id(node), ()))
            stack.extend((v, _child(path, k)) for k, v in reversed(node.items()))
        elif type(node) is list:
            stack.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(node))))
    return found


def _child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


# ---------------------------------------------------------------------------------------------- YAML

_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when PyYAML was built with it
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _JSONConstructor(yaml.constructor.SafeConstructor):
    """SafeConstructor producing only what JSON carries, as kube's YAML-to-JSON conversion does."""

    def construct_yaml_timestamp(self, node):
        return self.construct_scalar(node)

    def construct_yaml_binary(self, node):
        return "".join(self.construct_scalar(node).split())

    def construct_yaml_set(self, node):
        yield dict.fromkeys(self.construct_mapping(node))

    def construct_yaml_float(self, node):
        value = super().construct_yaml_float(node)
        if math.isinf(value) or math.isnan(value):
            raise yaml.constructor.ConstructorError(None, None, f"json: unsupported value: {value}",
                                                    node.start_mark)
        return value

    def construct_yaml_int(self, node):
        value = super().construct_yaml_int(node)
        return value if -(1 << 63) <= value < (1 << 64) else float(value)  # as orjson reads such a JSON number

    def construct_mapping(self, node, deep=False):
        mapping = super().construct_mapping(node, deep)
        if all(type(k) is str for k in mapping):
            return mapping
        return {_key_string(k): v for k, v in mapping.items()}


for _tag, _method in (("timestamp", "construct_yaml_timestamp"), ("binary", "construct_yaml_binary"),
                      ("set", "construct_yaml_set"), ("float", "construct_yaml_float"),
                      ("int", "construct_yaml_int")):
    _JSONConstructor.add_constructor(f"tag:yaml.org,2002:{_tag}", getattr(_JSONConstructor, _method))
_JSONConstructor.add_constructor("tag:yaml.org,2002:map", _JSONConstructor.construct_yaml_map)


def _key_string(key) -> str:
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, float):
        return f"{key:g}"
    if isinstance(key, (int, str)):
        return str(key)
    raise yaml.constructor.ConstructorError(None, None, f"unsupported map key: {key!r}")


class _Loader(_SAFE_LOADER.__mro__[1], _JSONConstructor, yaml.resolver.Resolver):
    """libyaml's parser and composer (or PyYAML's), our constructor, the YAML 1.1 resolver."""

    def __init__(self, stream):
        _SAFE_LOADER.__mro__[1].__init__(self, stream)
        _JSONConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)


def decode_yaml(data: bytes) -> Decoded:
    """A YAML body (one document); malformed, too deep or too aliased is a ``BadRequest`` in kube's words."""
    return off_hub(_decode_yaml, data)


def _decode_yaml(data: bytes) -> Decoded:
    loader = _Loader(data)
    try:
        try:
            node = loader.get_single_node()
            if node is None:
                return Decoded(None)
            duplicates = _yaml_shape(node)
            return Decoded(loader.construct_document(node), duplicates)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise BadRequest(f"error converting YAML to JSON: yaml: {exc}") from None


class _Excessive(yaml.YAMLError):
    def __str__(self):
        return "document contains excessive aliasing"


def _allowed_alias_ratio(decoded: int) -> float:
    """go-yaml's ``allowedAliasRatio``: generous for small documents, strict for huge ones."""
    if decoded <= 400_000:
        return 0.99
    if decoded >= 4_000_000:
        return 0.10
    return 0.99 - 0.89 * (decoded - 400_000) / 3_600_000


def _yaml_shape(root: yaml.Node) -> tuple[str, ...]:
    """Walk the composed graph once; raise for excessive aliasing or nesting, return the duplicate keys.

    Depth first in document order, so the first edge reaching a node is its definition (anchors come
    before their aliases) and every later edge an alias. Per node, memoized, so the walk is linear in
    the document and not in its expansion: how many nodes and alias references it expands to (as
    go-yaml counts them while decoding) and how deep it nests. An alias to a node still being walked is
    recursive: refused, like any expansion past ``MAX_EXPANDED_NODES``.
    """
    sizes: dict[int, tuple[int, int, int]] = {}  # id -> (expanded nodes, expanded aliases, height)
    alias_edges: dict[int, int] = {}  # parent id -> how many of its edges are aliases
    active: set[int] = set()
    duplicates: list[str] = []
    stack: list = [(root, 0, "", 1, False)]  # (node, parent id, path, depth, post-order)
    while stack:
        node, parent, path, depth, post = stack.pop()
        nid = id(node)
        if post:
            active.discard(nid)
            nodes, aliases, height = 1, alias_edges.pop(nid, 0), 0
            for child in _children(node):
                c_nodes, c_aliases, c_height = sizes[id(child)]
                nodes += c_nodes
                aliases += c_aliases
                height = max(height, c_height)
            height += not isinstance(node, yaml.ScalarNode)  # scalars nest nothing, as in JSON
            if nodes > MAX_EXPANDED_NODES:
                raise _Excessive()
            if height > MAX_DEPTH:
                raise yaml.YAMLError(f"exceeded max depth of {MAX_DEPTH}")
            sizes[nid] = (nodes, aliases, height)
            continue
        if nid in active:
            raise _Excessive()  # an alias of its own ancestor
        if nid in sizes:
            alias_edges[parent] = alias_edges.get(parent, 0) + 1
            continue
        if depth > MAX_DEPTH and not isinstance(node, yaml.ScalarNode):
            raise yaml.YAMLError(f"exceeded max depth of {MAX_DEPTH}")
        active.add(nid)
        stack.append((node, parent, path, depth, True))
        if isinstance(node, yaml.MappingNode):
            duplicates.extend(_duplicate_keys(node, path))
            for key_node, value_node in reversed(node.value):
                value_path = _child(path, key_node.value) if isinstance(key_node, yaml.ScalarNode) else path
                stack.append((value_node, nid, value_path, depth + 1, False))
                stack.append((key_node, nid, path, depth + 1, False))
        elif isinstance(node, yaml.SequenceNode):
            for i in range(len(node.value) - 1, -1, -1):
                stack.append((node.value[i], nid, f"{path}[{i}]", depth + 1, False))
    nodes, aliases, _ = sizes[id(root)]
    if aliases > 100 and nodes > 1000 and aliases / nodes > _allowed_alias_ratio(nodes):
        raise _Excessive()
    return tuple(duplicates)


def _children(node: yaml.Node):
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            yield key_node
            yield value_node
    elif isinstance(node, yaml.SequenceNode):
        yield from node.value


def _duplicate_keys(node: yaml.MappingNode, path: str) -> list[str]:
    seen: set = set()
    found: list[str] = []
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
            continue
        ident = (key_node.tag, key_node.value)
        if ident in seen:
            shown = f'duplicate field "{_child(path, key_node.value)}"'
            if shown not in found:
                found.append(shown)
        seen.add(ident)
    return found
