"""OpenAPI v3 documents computed from the served resource types.

kubectl downloads ``/openapi/v3`` before ``apply``/``create -f``/``replace``/``edit`` under its
default strict validation: finding a PATCH operation with a ``fieldValidation`` parameter for the
object's kind, it leaves validation to the server. This module serves exactly that, per
group/version, with schemas that are open objects (``x-kubernetes-preserve-unknown-fields``);
full field schemas (for ``kubectl explain``) come with the kubectl-compatibility issue.
Documents are addressed by a content hash so clients can cache them.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import orjson

from server.resources import ResourceType

_QUERY = ("dryRun", "fieldManager", "fieldValidation", "pretty")


def _gv_path(rt: ResourceType) -> str:
    return f"api/{rt.version}" if not rt.group else f"apis/{rt.group}/{rt.version}"


def _schema_name(rt: ResourceType) -> str:
    group = ".".join(reversed(rt.group.split("."))) if rt.group else "io.k8s.api.core"
    return f"{group}.{rt.version}.{rt.kind}"


def _gvk(rt: ResourceType) -> dict:
    return {"group": rt.group, "version": rt.version, "kind": rt.kind}


def _operation(rt: ResourceType, action: str, verb: str, ref: str) -> dict:
    parameters = [{"name": name, "in": "query", "schema": {"type": "string"}} for name in _QUERY]
    return {"operationId": f"{verb}{rt.kind}", "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": _gvk(rt), "parameters": parameters,
            "responses": {"200": {"description": "OK",
                                  "content": {"application/json": {"schema": {"$ref": ref}}}}}}


def group_version_document(types: Iterable[ResourceType]) -> dict:
    """The document of one group/version (all ``types`` share it)."""
    paths: dict = {}
    schemas: dict = {}
    for rt in types:
        ref = f"#/components/schemas/{_schema_name(rt)}"
        base = "/" + _gv_path(rt) + ("/namespaces/{namespace}" if rt.namespaced else "")
        collection = f"{base}/{rt.plural}"
        item = f"{collection}/{{name}}"
        paths[collection] = {"get": _operation(rt, "list", "list", ref), "post": _operation(rt, "post", "create", ref)}
        paths[item] = {"get": _operation(rt, "get", "read", ref), "put": _operation(rt, "put", "replace", ref),
                       "patch": _operation(rt, "patch", "patch", ref),
                       "delete": _operation(rt, "delete", "delete", ref)}
        for sub in rt.subresources:
            paths[f"{item}/{sub}"] = {"get": _operation(rt, "get", f"read{sub.title()}", ref),
                                      "put": _operation(rt, "put", f"replace{sub.title()}", ref),
                                      "patch": _operation(rt, "patch", f"patch{sub.title()}", ref)}
        schemas[_schema_name(rt)] = {
            "type": "object", "description": f"{rt.kind} ({rt.api_version})",
            "x-kubernetes-group-version-kind": [_gvk(rt)],
            "x-kubernetes-preserve-unknown-fields": True,
            "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                           "metadata": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"}, "paths": paths,
            "components": {"schemas": schemas}}


class OpenAPIIndex:
    """``/openapi/v3`` and the per group/version documents, each as bytes with its content hash."""

    def __init__(self, types: Iterable[ResourceType]):
        grouped: dict[str, list[ResourceType]] = {}
        for rt in types:
            grouped.setdefault(_gv_path(rt), []).append(rt)
        self.documents: dict[str, tuple[bytes, str]] = {}
        for path, members in grouped.items():
            body = orjson.dumps(group_version_document(members), option=orjson.OPT_SORT_KEYS)
            self.documents[path] = (body, hashlib.sha512(body).hexdigest()[:32].upper())

    def root(self, prefix: str = "") -> bytes:
        """``/openapi/v3``. client-go replaces the whole request path with ``serverRelativeURL``, so the
        URLs carry the server's path prefix (``/clusters/<cluster>``, a virtual workspace's prefix)."""
        return orjson.dumps({"paths": {
            path: {"serverRelativeURL": f"{prefix}/openapi/v3/{path}?hash={digest}"}
            for path, (_, digest) in self.documents.items()}})
