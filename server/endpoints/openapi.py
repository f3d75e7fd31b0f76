"""OpenAPI v3 documents computed from the served resource types, with real schemas.

kubectl downloads ``/openapi/v3`` before ``apply``/``create -f``/``replace``/``edit`` under its
default strict validation: finding a PATCH operation with a ``fieldValidation`` parameter for the
object's kind, it leaves validation to the server (which then answers ``fieldValidation=Strict``).
``kubectl explain`` walks ``components.schemas`` from the kind's ``x-kubernetes-group-version-kind``.

Schemas: built-in kinds get upstream's (``server.registry.schema.builtins``, with every component they
reference), custom resources their CRD version's ``openAPIV3Schema`` with ``apiVersion``, ``kind``
and ``metadata`` filled in as kube publishes them, anything else an open object. Each group/version
document is serialized once per distinct set of types (custom resource types are rebuilt only when
their CRD's spec changes) and addressed by its content hash, so clients cache them and a CRD change
shows up as a new hash.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Iterable

import orjson

from server.registry.resourcetype import ResourceType
from server.registry.schema import builtins

_QUERY = ("dryRun", "fieldManager", "fieldValidation", "pretty")
_OBJECT_META_REF = {"$ref": f"#/components/schemas/{builtins.OBJECT_META}"}
_SCALE = "io.k8s.api.autoscaling.v1.Scale"
_MAX_DOCUMENTS = 512


def _gv_path(rt: ResourceType) -> str:
    return f"api/{rt.version}" if not rt.group else f"apis/{rt.group}/{rt.version}"


def _gvk(rt: ResourceType) -> dict:
    return {"group": rt.group, "version": rt.version, "kind": rt.kind}


def _own_schema_name(rt: ResourceType) -> str:
    group = ".".join(reversed(rt.group.split("."))) if rt.group else "io.k8s.api.core"
    return f"{group}.{rt.version}.{rt.kind}"


def _operation(rt: ResourceType, action: str, verb: str, ref: str, gvk: dict | None = None) -> dict:
    parameters = [{"name": name, "in": "query", "schema": {"type": "string"}}
                  for name in _QUERY]
    return {"operationId": f"{verb}{rt.kind}", "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk or _gvk(rt), "parameters": parameters,
            "responses": {"200": {"description": "OK",
                                  "content": {"application/json": {"schema": {"$ref": ref}}}}}}


def _custom_resource_schema(rt: ResourceType) -> dict:
    """A CRD version's schema as kube publishes it: the standard fields added, the group/version/kind named."""
    schema = dict(rt.schema or {})
    properties = dict(schema.get("properties") or {})
    properties["apiVersion"] = {"type": "string", "description": (
        "APIVersion defines the versioned schema of this representation of an object. Servers should convert "
        "recognized schemas to the latest internal value, and may reject unrecognized values.")}
    properties["kind"] = {"type": "string", "description": (
        "Kind is a string value representing the REST resource this object represents. Servers may infer this "
        "from the endpoint the client submits requests to. Cannot be updated. In CamelCase.")}
    properties["metadata"] = {"allOf": [_OBJECT_META_REF], "description": (
        "Standard object's metadata. More info: "
        "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata")}
    schema["properties"] = properties
    schema.setdefault("type", "object")
    schema["x-kubernetes-group-version-kind"] = [_gvk(rt)]
    return schema


def group_version_document(types: Iterable[ResourceType]) -> dict:
    """The document of one group/version (all ``types`` share it)."""
    paths: dict = {}
    schemas: dict = {}
    referenced: set[str] = set()
    for rt in types:
        builtin_name = builtins.schema_name(rt.group, rt.version, rt.kind) if rt.schema is None else None
        if builtin_name:
            name = builtin_name
            referenced.add(name)
        elif rt.schema is not None:
            name = _own_schema_name(rt)
            schemas[name] = _custom_resource_schema(rt)
            referenced.add(builtins.OBJECT_META)
        else:
            name = _own_schema_name(rt)
            schemas[name] = {
                "type": "object", "description": f"{rt.kind} ({rt.api_version})",
                "x-kubernetes-group-version-kind": [_gvk(rt)], "x-kubernetes-preserve-unknown-fields": True,
                "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                               "metadata": _OBJECT_META_REF}}
            referenced.add(builtins.OBJECT_META)
        ref = f"#/components/schemas/{name}"
        base = "/" + _gv_path(rt) + ("/namespaces/{namespace}" if rt.namespaced else "")
        collection = f"{base}/{rt.plural}"
        item = f"{collection}/{{name}}"
        paths[collection] = {"get": _operation(rt, "list", "list", ref), "post": _operation(rt, "post", "create", ref)}
        paths[item] = {"get": _operation(rt, "get", "read", ref), "put": _operation(rt, "put", "replace", ref),
                       "patch": _operation(rt, "patch", "patch", ref),
                       "delete": _operation(rt, "delete", "delete", ref)}
        for sub in rt.subresources:
            sub_ref, gvk = ref, None
            if sub == "scale":
                sub_ref, gvk = f"#/components/schemas/{_SCALE}", {"group": "autoscaling", "version": "v1",
                                                                   "kind": "Scale"}
                referenced.add(_SCALE)
            title = sub.title()
            paths[f"{item}/{sub}"] = {"get": _operation(rt, "get", f"read{title}", sub_ref, gvk),
                                      "put": _operation(rt, "put", f"replace{title}", sub_ref, gvk),
                                      "patch": _operation(rt, "patch", f"patch{title}", sub_ref, gvk)}
    schemas.update(builtins.closure(referenced))
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"}, "paths": paths,
            "components": {"schemas": dict(sorted(schemas.items()))}}


# Serialized documents by the exact types they describe (ResourceType identity), most recent last.
_documents: "OrderedDict[tuple, tuple[bytes, str]]" = OrderedDict()


def _document(members: tuple[ResourceType, ...]) -> tuple[bytes, str]:
    cached = _documents.get(members)
    if cached is not None:
        _documents.move_to_end(members)
        return cached
    body = orjson.dumps(group_version_document(members), option=orjson.OPT_SORT_KEYS)
    cached = _documents[members] = (body, hashlib.sha512(body).hexdigest()[:32].upper())
    if len(_documents) > _MAX_DOCUMENTS:
        _documents.popitem(last=False)
    return cached


class OpenAPIIndex:
    """``/openapi/v3`` and the per group/version documents, each as bytes with its content hash.

    Cheap to build per request: the documents themselves are shared by every index (and every
    logical cluster) that serves the same types.
    """

    def __init__(self, types: Iterable[ResourceType]):
        grouped: dict[str, list[ResourceType]] = {}
        for rt in types:
            grouped.setdefault(_gv_path(rt), []).append(rt)
        self.documents: dict[str, tuple[bytes, str]] = {
            path: _document(tuple(members)) for path, members in grouped.items()}

    def root(self, prefix: str = "") -> bytes:
        """``/openapi/v3``. client-go replaces the whole request path with ``serverRelativeURL``, so the
        URLs carry the server's path prefix (``/clusters/<cluster>``, a virtual workspace's prefix)."""
        return orjson.dumps({"paths": {
            path: {"serverRelativeURL": f"{prefix}/openapi/v3/{path}?hash={digest}"}
            for path, (_, digest) in self.documents.items()}})
