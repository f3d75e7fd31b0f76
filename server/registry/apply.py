"""How the fields of an API type merge: the typed view server-side apply and strategic merge patch walk.

Kubernetes marks its Go types with ``+listType=map|set|atomic``, ``+listMapKey``, ``+structType=atomic``,
``+mapType=atomic`` (what structured-merge-diff, and so server-side apply and ``managedFields``, go by)
and ``patchStrategy``/``patchMergeKey`` struct tags (what strategic merge patch goes by). Our built-in
schemas (``server.registry.schema.builtins``) come from the Python client's models, which lost those markers,
so the tables below restore them for the kinds we serve. Custom resources carry theirs in the CRD
schema (``x-kubernetes-list-type``, ``x-kubernetes-list-map-keys``, ``x-kubernetes-map-type``); a CRD
list without a list type is atomic, as upstream.

A type is a tree of nodes:

* :class:`Struct`: an object. ``fields`` are its declared properties; ``elem`` the type of any other
  key (``additionalProperties``; a plain map has no declared fields). ``atomic``: owned and replaced
  as a whole (``+structType=atomic``, ``+mapType=atomic``).
* :class:`ListOf`: ``kind`` ``map`` (associative: items identified by ``keys``), ``set`` (scalars
  identified by value) or ``atomic``; ``smp_merge``/``smp_key`` are the strategic-merge strategy.
* :data:`SCALAR`, and :data:`UNTYPED` for schemaless content (``x-kubernetes-preserve-unknown-fields``):
  its objects are granular maps and its lists atomic, as structured-merge-diff's deduced type.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass, field
from typing import Any

from server.registry.schema import builtins

__all__ = ["Struct", "ListOf", "SCALAR", "UNTYPED", "type_of", "zero_object", "shape", "child_of"]

PRESERVE = "x-kubernetes-preserve-unknown-fields"
INT_OR_STRING = "x-kubernetes-int-or-string"
EMBEDDED = "x-kubernetes-embedded-resource"


class _Leaf:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


SCALAR = _Leaf("SCALAR")
UNTYPED = _Leaf("UNTYPED")


@dataclass(eq=False)
class Struct:
    fields: dict = field(default_factory=dict)
    elem: Any = None          # type of undeclared keys; None: undeclared keys are schemaless
    atomic: bool = False


@dataclass(eq=False)
class ListOf:
    elem: Any
    kind: str = "atomic"      # map | set | atomic
    keys: tuple = ()          # map: the key fields, in declaration order
    defaults: dict = field(default_factory=dict)   # map: key field -> default (ports' protocol)
    smp_merge: bool = False   # strategic merge: patchStrategy=merge (else the patch's list replaces)
    smp_key: str | None = None


_UNTYPED_MAP = Struct(elem=UNTYPED)
_UNTYPED_LIST = ListOf(UNTYPED)


def shape(node, value):
    """The node that describes ``value``: schemaless content gets the deduced type of its JSON shape."""
    if node is UNTYPED:
        if isinstance(value, dict):
            return _UNTYPED_MAP
        if isinstance(value, list):
            return _UNTYPED_LIST
        return SCALAR
    return node


def child_of(node: Struct, key: str) -> tuple[Any, bool]:
    """The type of ``key`` in a struct and whether it is a declared field (else a map entry)."""
    sub = node.fields.get(key)
    if sub is not None:
        return sub, True
    return (node.elem if node.elem is not None else UNTYPED), False


# ---------------------------------------------------------------------------------------------- built-in markers

def _map(*keys, smp: str | None = None) -> dict:
    names = tuple(k if isinstance(k, str) else k[0] for k in keys)
    defaults = {k[0]: k[1] for k in keys if not isinstance(k, str)}
    return {"kind": "map", "keys": names, "defaults": defaults, "smp_merge": smp is not None, "smp_key": smp}


_SET_MERGE = {"kind": "set", "smp_merge": True}
_CORE = "io.k8s.api.core.v1."
_META = "io.k8s.apimachinery.pkg.apis.meta.v1."
_CONTAINER_LISTS = {
    "ports": _map("containerPort", ("protocol", "TCP"), smp="containerPort"),
    "env": _map("name", smp="name"),
    "volumeMounts": _map("mountPath", smp="mountPath"),
    "volumeDevices": _map("devicePath", smp="devicePath"),
}
#: (component, field) -> list semantics; every other built-in list is atomic (and replaced by a strategic patch).
_LISTS: dict[str, dict[str, dict]] = {
    _META + "ObjectMeta": {"finalizers": _SET_MERGE, "ownerReferences": _map("uid", smp="uid")},
    _CORE + "PodSpec": {
        "volumes": _map("name", smp="name"),
        "initContainers": _map("name", smp="name"),
        "containers": _map("name", smp="name"),
        "ephemeralContainers": _map("name", smp="name"),
        "imagePullSecrets": _map("name", smp="name"),
        "hostAliases": _map("ip", smp="ip"),
        "topologySpreadConstraints": _map("topologyKey", "whenUnsatisfiable", smp="topologyKey"),
        "resourceClaims": _map("name", smp="name"),
        "schedulingGates": _map("name", smp="name"),
    },
    _CORE + "Container": _CONTAINER_LISTS,
    _CORE + "EphemeralContainer": _CONTAINER_LISTS,
    _CORE + "ResourceRequirements": {"claims": _map("name")},
    _CORE + "ServiceAccount": {"secrets": _map("name", smp="name")},
    _CORE + "NamespaceStatus": {"conditions": _map("type", smp="type")},
    "io.k8s.api.apps.v1.DeploymentStatus": {"conditions": _map("type", smp="type")},
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinitionStatus": {
        "conditions": _map("type")},
}
#: ``+structType=atomic`` components.
_ATOMIC_STRUCTS = frozenset({
    _META + "LabelSelector", _META + "OwnerReference", _CORE + "LocalObjectReference", _CORE + "ObjectReference",
    _CORE + "ConfigMapKeySelector", _CORE + "SecretKeySelector", _CORE + "ObjectFieldSelector",
    _CORE + "ResourceFieldSelector", _CORE + "NodeSelector", _CORE + "TypedLocalObjectReference",
    _CORE + "FileKeySelector", "io.k8s.api.rbac.v1.RoleRef",
})
#: ``+mapType=atomic`` fields.
_ATOMIC_MAPS = frozenset({(_CORE + "PodSpec", "nodeSelector")})

#: What a built-in kind's zero value already holds (Go's non-pointer structs): an Update that creates an
#: object owns what it adds to this, so ``f:spec`` of a Deployment is no member but of a custom resource is.
_ZEROS = {
    ("apps", "Deployment"): {"spec": {"template": {"metadata": {}, "spec": {"containers": None}}, "strategy": {}},
                             "status": {}},
    ("", "Namespace"): {"spec": {}, "status": {}},
    ("coordination.k8s.io", "Lease"): {"spec": {}},
    ("apiextensions.k8s.io", "CustomResourceDefinition"): {"spec": {"names": {}}, "status": {"acceptedNames": {}}},
}


def zero_object(rt) -> dict:
    """The object an Update-create is compared against (a fresh copy)."""
    zero = _ZEROS.get((rt.group, rt.kind)) if rt.schema is None else None
    out = {"apiVersion": rt.api_version, "kind": rt.kind, "metadata": {}}
    if zero:
        out.update(copy.deepcopy(zero))
    return out


# ---------------------------------------------------------------------------------------------- schema -> node

def _ref_name(schema: dict) -> str | None:
    ref = schema.get("$ref")
    if ref is None and len(schema.get("allOf") or ()) == 1:
        ref = schema["allOf"][0].get("$ref")
    return ref.rsplit("/", 1)[1] if isinstance(ref, str) else None


_components: dict[str, Struct] = {}


def _component(name: str):
    node = _components.get(name)
    if node is not None:
        return node
    schema = builtins.components().get(name)
    if schema is None:
        return UNTYPED
    node = _components[name] = Struct(atomic=name in _ATOMIC_STRUCTS)  # registered first: types may recurse
    built = _node(schema, owner=name)
    if isinstance(built, Struct):
        node.fields, node.elem = built.fields, built.elem
        node.atomic = node.atomic or built.atomic
    else:
        _components[name] = built
        return built
    return node


def _list_node(schema: dict, spec: dict | None):
    items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
    elem = _node(items) if items else UNTYPED
    if spec is None:
        kind = schema.get("x-kubernetes-list-type") or "atomic"
        keys = tuple(schema.get("x-kubernetes-list-map-keys") or ())
        spec = {"kind": kind if kind in ("map", "set") else "atomic", "keys": keys}
        props = items.get("properties") or {}
        spec["defaults"] = {k: props[k]["default"] for k in keys if "default" in (props.get(k) or {})}
    if spec["kind"] == "map" and not spec.get("keys"):
        spec = {**spec, "kind": "atomic"}
    return ListOf(elem, spec["kind"], tuple(spec.get("keys") or ()), dict(spec.get("defaults") or {}),
                  spec.get("smp_merge", False), spec.get("smp_key"))


def _node(schema: dict, owner: str | None = None):
    """The node of an OpenAPI schema; ``owner`` names the built-in component whose properties these are."""
    if not isinstance(schema, dict):
        return UNTYPED
    ref = _ref_name(schema)
    if ref is not None:
        return _component(ref)
    if schema.get(INT_OR_STRING):
        return SCALAR
    kind = schema.get("type")
    properties = schema.get("properties")
    additional = schema.get("additionalProperties")
    if kind == "array":
        return _list_node(schema, None)
    if kind == "object" or properties or isinstance(additional, dict):
        markers = _LISTS.get(owner, {}) if owner else {}
        fields = {}
        for name, sub in (properties or {}).items():
            if owner and isinstance(sub, dict) and sub.get("type") == "array":
                fields[name] = _list_node(sub, markers.get(name))
            else:
                fields[name] = _node(sub)
                if owner and (owner, name) in _ATOMIC_MAPS and isinstance(fields[name], Struct):
                    fields[name] = Struct(fields[name].fields, fields[name].elem, atomic=True)
        if isinstance(additional, dict):
            elem = _node(additional)
        elif additional is True or schema.get(PRESERVE):
            elem = UNTYPED
        elif not properties:
            elem = UNTYPED  # a free-form object
        else:
            elem = None
        node = Struct(fields, elem, atomic=schema.get("x-kubernetes-map-type") == "atomic")
        if schema.get(EMBEDDED):
            _add_resource_fields(node)
        return node
    if schema.get(PRESERVE):
        return UNTYPED
    return SCALAR


def _add_resource_fields(node: Struct) -> None:
    node.fields.setdefault("apiVersion", SCALAR)
    node.fields.setdefault("kind", SCALAR)
    node.fields["metadata"] = _component(builtins.OBJECT_META)


_custom: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_builtin_roots: dict[tuple, Struct] = {}


def type_of(rt) -> Struct:
    """The root node of a resource type: a custom resource's from its CRD schema, a built-in kind's from
    its upstream schema and the tables above, anything else schemaless below ``metadata``."""
    if rt.schema is not None:
        node = _custom.get(rt)
        if node is None:
            built = _node(rt.schema)
            node = Struct(dict(built.fields), built.elem if built.elem is not None else None, False) \
                if isinstance(built, Struct) else Struct(elem=UNTYPED)
            _add_resource_fields(node)
            _custom[rt] = node
        return node
    key = (rt.group, rt.version, rt.kind)
    node = _builtin_roots.get(key)
    if node is None:
        name = builtins.schema_name(rt.group, rt.version, rt.kind)
        built = _component(name) if name else None
        if isinstance(built, Struct):
            node = built
        else:
            node = Struct(elem=UNTYPED)
            _add_resource_fields(node)
        _builtin_roots[key] = node
    return node
