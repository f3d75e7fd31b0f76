"""OpenAPI of a resource virtual workspace, computed from exactly the API definitions it serves (and v2 for all).

kubectl downloads ``/openapi/v3`` before ``create -f``/``apply``/``edit``: finding a PATCH operation
with a ``fieldValidation`` parameter for the object's kind, it leaves validation to the server; kcp's
virtual workspaces had no OpenAPI for years, and ``kubectl apply`` through them failed (kcp#1449).
Here each definition contributes its schema (an ``openAPIV3Schema``, or an open object) and one
operation per verb its storage offers. Documents are addressed by a content hash so clients cache them.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable

import orjson

__all__ = ["OpenAPIIndex", "group_version_path", "v2_document", "V2_PROTOBUF", "V2_PROTOBUF_ACCEPT"]

_QUERY = ("dryRun", "fieldManager", "fieldValidation", "pretty")
_OPEN_OBJECT = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def group_version_path(definition: Any) -> str:
    return f"api/{definition.version}" if not definition.group else f"apis/{definition.group}/{definition.version}"


def _schema_name(definition: Any) -> str:
    group = ".".join(reversed(definition.group.split("."))) if definition.group else "io.k8s.api.core"
    return f"{group}.{definition.version}.{definition.kind}"


def _gvk(definition: Any) -> dict:
    return {"group": definition.group, "version": definition.version, "kind": definition.kind}


def _operation(definition: Any, action: str, operation_id: str, ref: str) -> dict:
    parameters = [{"name": name, "in": "query", "schema": {"type": "string"}} for name in _QUERY]
    return {"operationId": operation_id, "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": _gvk(definition), "parameters": parameters,
            "responses": {"200": {"description": "OK",
                                  "content": {"application/json": {"schema": {"$ref": ref}}}}}}


def _schema(definition: Any) -> dict:
    schema = dict(definition.schema or _OPEN_OBJECT)
    properties = dict(schema.get("properties") or {})
    properties.setdefault("apiVersion", {"type": "string"})
    properties.setdefault("kind", {"type": "string"})
    properties.setdefault("metadata", dict(_OPEN_OBJECT))
    schema.setdefault("type", "object")
    schema["properties"] = properties
    schema.setdefault("description", f"{definition.kind} ({definition.api_version})")
    schema["x-kubernetes-group-version-kind"] = [_gvk(definition)]
    return schema


# (verb, collection or item, HTTP method, x-kubernetes-action, operation id prefix)
_OPERATIONS = (
    ("list", False, "get", "list", "list"), ("create", False, "post", "post", "create"),
    ("deletecollection", False, "delete", "deletecollection", "deleteCollection"),
    ("get", True, "get", "get", "read"), ("update", True, "put", "put", "replace"),
    ("patch", True, "patch", "patch", "patch"), ("delete", True, "delete", "delete", "delete"),
)
_SUBRESOURCE_OPERATIONS = (("get", "get", "get", "read"), ("update", "put", "put", "replace"),
                           ("patch", "patch", "patch", "patch"))


def group_version_document(definitions: Iterable[Any]) -> dict:
    """The document of one group/version (all ``definitions`` share it)."""
    paths: dict = {}
    schemas: dict = {}
    for d in definitions:
        ref = f"#/components/schemas/{_schema_name(d)}"
        base = "/" + group_version_path(d) + ("/namespaces/{namespace}" if d.namespaced else "")
        collection, item = f"{base}/{d.plural}", f"{base}/{d.plural}/{{name}}"
        verbs = set(d.verbs)
        for verb, on_item, method, action, prefix in _OPERATIONS:
            if verb in verbs:
                paths.setdefault(item if on_item else collection, {})[method] = _operation(
                    d, action, f"{prefix}{d.kind}", ref)
        for sub in d.subresources:
            sub_verbs = set(d.subresource_verbs(sub))
            for verb, method, action, prefix in _SUBRESOURCE_OPERATIONS:
                if verb in sub_verbs:
                    paths.setdefault(f"{item}/{sub}", {})[method] = _operation(
                        d, action, f"{prefix}{d.kind}{sub.title()}", ref)
        schemas[_schema_name(d)] = _schema(d)
    return {"openapi": "3.0.0", "info": {"title": "kcp virtual workspace", "version": "v1.32.0"}, "paths": paths,
            "components": {"schemas": schemas}}


class OpenAPIIndex:
    """``/openapi/v3`` and the per group/version documents, each as bytes with its content hash."""

    def __init__(self, definitions: Iterable[Any]):
        grouped: dict[str, list[Any]] = {}
        for d in definitions:
            grouped.setdefault(group_version_path(d), []).append(d)
        self.documents: dict[str, tuple[bytes, str]] = {}
        for path, members in grouped.items():
            body = orjson.dumps(group_version_document(members), option=orjson.OPT_SORT_KEYS)
            self.documents[path] = (body, hashlib.sha512(body).hexdigest()[:32].upper())

    def root(self, prefix: str) -> bytes:
        """``/openapi/v3``. client-go replaces the whole request path with ``serverRelativeURL``, so the URLs
        carry the virtual workspace's prefix (``/services/<name>/.../clusters/<cluster>``)."""
        return orjson.dumps({"paths": {
            path: {"serverRelativeURL": f"{prefix}/openapi/v3/{path}?hash={digest}"}
            for path, (_, digest) in self.documents.items()}})


# ---------------------------------------------------------------------------------------------- v2

#: What client-go asks ``/openapi/v2`` for, and the type kube answers it with.
V2_PROTOBUF_ACCEPT = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
V2_PROTOBUF = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field."""
    length, size = bytearray(), len(payload)
    while True:
        byte, size = size & 0x7F, size >> 7
        length.append(byte | (0x80 if size else 0))
        if not size:
            break
    return bytes([number << 3 | 2]) + bytes(length) + payload


def v2_document(accept: str | None, version: str) -> tuple[bytes, str]:
    """``/openapi/v2``: ``(body, content type)``, a Swagger 2.0 document with no definitions.

    The schemas live in v3. kubectl 1.32 reads v2 only when v3 cannot tell it that the server validates
    a kind itself (a kind not installed; a view, like ``/clusters/*``, offering no PATCH for it), and
    without v2 it stops with "failed to download openapi". An empty v2 tells it to leave validation to the
    server, so users get kube's own answers: "resource mapping not found ... ensure CRDs are installed
    first", or the server's Status. client-go asks for gnostic's protobuf ``openapi_v2.Document``;
    others get the same document as JSON.
    """
    if accept and "protobuf" in accept:
        info = _field(1, b"Kubernetes") + _field(2, version.encode())  # Info.title, Info.version
        return _field(1, b"2.0") + _field(2, info) + _field(8, b""), V2_PROTOBUF  # swagger, info, paths
    return orjson.dumps({"swagger": "2.0", "info": {"title": "Kubernetes", "version": version}, "paths": {},
                         "definitions": {}}), "application/json"
