"""The resource kind of virtual workspace: a Kubernetes API surface made of API definitions and their storages.

``apis(context)`` chooses the definitions for a request (by its API-domain key, typically); the
handler then serves, from exactly those definitions:

* discovery, legacy (``/api``, ``/api/v1``, ``/apis``, ``/apis/<g>``, ``/apis/<g>/<v>``) and aggregated;
* OpenAPI v3 (``/openapi/v3``), ``/version`` (the shard's) and the root path list;
* get, list, watch, create, update, patch, delete, deletecollection and ``status``, each only if the
  definition's storage offers it (405 otherwise) -- discovery lists the same verbs. In the wildcard
  view (``/clusters/*``) only list and watch exist, across every logical cluster;
* Table output for ``kubectl get`` (with a Workspace column in the wildcard view) and watches with
  the shard's semantics (resourceVersion, bookmarks, 410 ERROR events, DELETED for objects that leave
  the view), since the storage hands the shard's own watch through.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Callable, Sequence

from werkzeug.wrappers import Response

from kcp_virtual.framework import decoding, discovery, errors, negotiation, representation, table
from kcp_virtual.framework.authorization import Decision
from kcp_virtual.framework.negotiation import json_response
from kcp_virtual.framework.openapi import OpenAPIIndex, v2_document
from kcp_virtual.framework.shardclient import CLUSTER_ANNOTATION, ListQuery
from kcp_virtual.framework.storage import ForwardingStorage
from kcp_virtual.framework.virtualworkspace import WILDCARD, Context, Request, VirtualWorkspace, always_ready
from kcp_virtual.framework.watchstream import WatchResponse, as_watch

__all__ = ["APIDefinition", "ResourceHandler", "resource_virtual_workspace", "WILDCARD_VERBS", "WORKSPACE_COLUMN"]

JSON = "application/json"
WILDCARD_VERBS = frozenset({"list", "watch"})
_OPENAPI_CACHE_SIZE = 64
_VERSION_PATHS = ("/version", "/version/")


def _cluster_of(obj: dict) -> str:
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(CLUSTER_ANNOTATION, "")


#: In the wildcard view two objects may share namespace and name; this column tells them apart.
WORKSPACE_COLUMN = table.Column("Workspace", "string", "", "The logical cluster the object lives in.", 0,
                                _cluster_of)


@dataclass(frozen=True, eq=False)
class APIDefinition:
    """One resource a virtual workspace serves: names, scope, printer columns, schema, and its storage.

    Verbs and subresources come from the storage, so discovery, OpenAPI and the 405s agree with what
    the storage can do. ``columns`` follow the Name column in Table output; ``schema`` is the
    ``openAPIV3Schema`` shown in OpenAPI (None: an object with any fields).
    """

    group: str
    version: str
    kind: str
    plural: str
    singular: str
    namespaced: bool
    storage: ForwardingStorage
    short_names: tuple = ()
    categories: tuple = ()
    columns: tuple = ()
    schema: dict | None = None
    wildcard_view: bool = False   # the /clusters/* variant: list and watch only (see ``for_wildcard``)
    patch_kinds: tuple = negotiation.PATCH_KINDS  # custom resources: CR_PATCH_KINDS (no strategic merge)

    @cached_property
    def verbs(self) -> tuple[str, ...]:
        return tuple(sorted(self.allowed_verbs))

    @cached_property
    def allowed_verbs(self) -> frozenset[str]:
        return self.storage.verbs & WILDCARD_VERBS if self.wildcard_view else self.storage.verbs

    @cached_property
    def subresources(self) -> tuple[str, ...]:
        return () if self.wildcard_view else tuple(self.storage.subresources)

    def subresource_verbs(self, subresource: str) -> list[str]:
        return sorted(self.storage.subresources.get(subresource, ()))

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    group_version = api_version

    def table_columns(self) -> list[table.Column]:
        workspace = [WORKSPACE_COLUMN] if self.wildcard_view else []
        return [table.NAME_COLUMN, *workspace, *self.columns, table.AGE_COLUMN]

    @cached_property
    def for_wildcard(self) -> "APIDefinition":
        return self if self.wildcard_view else replace(self, wildcard_view=True)


APIs = Callable[[Context], Sequence[APIDefinition]]


def _decode_body(request: Request, accepted: Sequence[str], *, allow_empty: bool = False):
    """The JSON or YAML body (protobuf bodies are a 415 here: send JSON to a virtual workspace)."""
    kind = negotiation.request_content_kind(request.http.headers.get("Content-Type", JSON), accepted)
    data = negotiation.read_limited_body(request.http.stream, request.http.content_length)
    if not data.strip():
        if allow_empty:
            return None
        raise errors.BadRequest("the request body is empty; expected a JSON object")
    return kind, decoding.decode(data, kind).value


def _dry_run(request: Request) -> bool:
    values = request.http.args.getlist("dryRun")
    for value in values:
        if value != "All":
            raise errors.BadRequest(f'dryRun: Unsupported value: "{value}": supported values: "All"')
    return bool(values)


def _delete_options(request: Request) -> dict:
    decoded = _decode_body(request, ("json", "yaml"), allow_empty=True)
    body = decoded[1] if decoded else {}
    if not isinstance(body, dict):
        raise errors.BadRequest("DeleteOptions must be a JSON object")
    args = request.http.args
    if args.get("propagationPolicy"):
        body.setdefault("propagationPolicy", args["propagationPolicy"])
    if args.getlist("dryRun"):
        body.setdefault("dryRun", args.getlist("dryRun"))
    for value in body.get("dryRun") or []:
        if value != "All":
            raise errors.BadRequest(f'dryRun: Unsupported value: "{value}": supported values: "All"')
    return body


_PATCH_TYPES = {"merge-patch": negotiation.MERGE_PATCH, "json-patch": negotiation.JSON_PATCH,
                "strategic-merge-patch": negotiation.STRATEGIC_MERGE_PATCH, "apply-patch": negotiation.APPLY_PATCH}


class ResourceHandler:
    """The handler of a resource virtual workspace; see the module docstring."""

    def __init__(self, apis: APIs, *, version: Callable[[], dict]):
        self.apis = apis
        self.version = version
        self._openapi: OrderedDict[tuple, OpenAPIIndex] = OrderedDict()

    def __call__(self, request: Request) -> Response:
        if request.path in _VERSION_PATHS:  # the shard's, whatever the definitions
            return json_response(self.version())
        return self.serve(request, self.apis(request.context))

    def serve(self, request: Request, apis: Sequence[APIDefinition]) -> Response:
        """The request served from ``apis``, what ``apis(request.context)`` returned: for a handler in front
        of this one that has them already (the apiexport virtual workspace finds them with its binding check)."""
        path = request.path
        # the wildcard view has its own definitions (list and watch, a Workspace column)
        definitions = [d.for_wildcard for d in apis] if request.context.cluster == WILDCARD else apis
        if path.startswith("/openapi/"):
            return self._serve_openapi(request, definitions)
        if path in _VERSION_PATHS:
            return json_response(self.version())
        info = request.info
        if not info.is_resource:
            if request.http.method not in ("GET", "HEAD"):
                raise errors.MethodNotAllowed(f"{request.http.method} is not supported on {path}")
            if not info.api_prefix:
                if path.strip("/"):
                    raise errors.NotFound.path()
                return json_response({"paths": discovery.root_paths(definitions)})
            return self._discovery(request, definitions)
        definition = None
        for d in definitions:
            if d.plural == info.resource and d.version == info.version and d.group == info.group:
                definition = d
                break
        if definition is None or (info.api_prefix == "api") != (definition.group == ""):
            raise errors.NotFound.path()
        refused = errors.MethodNotAllowed.for_request(info.verb, info.name, definition.plural, definition.wildcard_view)
        if refused is not None:
            raise refused
        if not definition.namespaced and info.namespace and info.resource != "namespaces":
            raise errors.NotFound.path()
        verb = info.verb
        if info.subresource:
            if info.subresource not in definition.subresources:
                raise errors.NotFound.path()
            if verb not in definition.subresource_verbs(info.subresource):
                raise errors.MethodNotAllowed.for_verb(verb, f"{definition.plural}/{info.subresource}")
        elif verb not in definition.allowed_verbs:
            raise errors.MethodNotAllowed.for_verb(verb, definition.plural)
        if verb == "create" and info.name:
            raise errors.MethodNotAllowed.for_verb(verb, definition.plural)
        return getattr(self, "_" + verb)(request, definition)

    # ------------------------------------------------------------------ reads

    def _get(self, request: Request, d: APIDefinition) -> Response:
        negotiated = representation.negotiate(request.http.headers.get("Accept"))
        obj = d.storage.get(request, request.info.namespace, request.info.name)
        return self._object_response(request, d, obj, negotiated=negotiated)

    def _list(self, request: Request, d: APIDefinition) -> Response:
        query = ListQuery.from_args(request.http.args)
        negotiated = representation.negotiate(request.http.headers.get("Accept"))
        result = d.storage.list(request, request.info.namespace, query, encoded=negotiated.kind is None)
        return representation.list_response(negotiated, result, columns=d.table_columns, query=request.http.args)

    def _watch(self, request: Request, d: APIDefinition) -> Response:
        query = ListQuery.from_args(request.http.args, watch=True)
        if request.info.name and not query.field_selector:  # GET .../<name>?watch=true watches one object
            query = replace(query, field_selector=f"metadata.name={request.info.name}")
        http = request.http
        encode = representation.watch_encoder(representation.negotiate(http.headers.get("Accept"), stream=True),
                                              columns=d.table_columns, query=http.args,
                                              api_version=d.api_version, kind=d.kind)
        watch = as_watch(d.storage.watch(request, request.info.namespace, query))
        return WatchResponse.of(watch, encode, http.environ, JSON)

    # ------------------------------------------------------------------ writes

    def _create(self, request: Request, d: APIDefinition) -> Response:
        _, body = _decode_body(request, ("json", "yaml"))
        if not isinstance(body, dict):
            raise errors.BadRequest(f"the body of the request is not a {d.kind} object")
        obj = d.storage.create(request, request.info.namespace, body, dry_run=_dry_run(request))
        return self._object_response(request, d, obj, status=201)

    def _update(self, request: Request, d: APIDefinition) -> Response:
        _, body = _decode_body(request, ("json", "yaml"))
        if not isinstance(body, dict):
            raise errors.BadRequest(f"the body of the request is not a {d.kind} object")
        info = request.info
        obj = d.storage.update(request, info.namespace, info.name, body, subresource=info.subresource,
                               dry_run=_dry_run(request))
        return self._object_response(request, d, obj)

    def _patch(self, request: Request, d: APIDefinition) -> Response:
        kind, body = _decode_body(request, d.patch_kinds)
        info = request.info
        obj = d.storage.patch(request, info.namespace, info.name, _PATCH_TYPES[kind], body,
                              subresource=info.subresource, dry_run=_dry_run(request))
        return self._object_response(request, d, obj)

    def _delete(self, request: Request, d: APIDefinition) -> Response:
        info = request.info
        return json_response(d.storage.delete(request, info.namespace, info.name, _delete_options(request)))

    def _deletecollection(self, request: Request, d: APIDefinition) -> Response:
        options = _delete_options(request)
        query = ListQuery.from_args(request.http.args)
        return json_response(d.storage.delete_collection(request, request.info.namespace, query, options))

    def _object_response(self, request: Request, d: APIDefinition, obj: dict, status: int = 200,
                         negotiated=None) -> Response:
        http = request.http
        return representation.object_response(negotiated or representation.negotiate(http.headers.get("Accept")),
                                              obj, columns=d.table_columns, query=http.args,
                                              read=http.method == "GET", status=status)

    # ------------------------------------------------------------------ discovery and OpenAPI

    def _discovery(self, request: Request, definitions: Sequence[APIDefinition]) -> Response:
        info = request.info
        accept = request.http.headers.get("Accept", "")
        if info.api_prefix == "api" and not info.version:
            aggregated = negotiation.wants_aggregated_discovery(accept)
            if aggregated:
                return json_response(discovery.aggregated(definitions, core=True, version=aggregated),
                                     content_type=discovery.AGGREGATED_CONTENT_TYPE.format(v=aggregated))
            return json_response(discovery.api_versions(definitions, request.http.host))
        if info.api_prefix == "apis" and not info.group:
            aggregated = negotiation.wants_aggregated_discovery(accept)
            if aggregated:
                return json_response(discovery.aggregated(definitions, core=False, version=aggregated),
                                     content_type=discovery.AGGREGATED_CONTENT_TYPE.format(v=aggregated))
            return json_response(discovery.api_group_list(definitions))
        if info.api_prefix == "apis" and not info.version:
            body = discovery.api_group(definitions, info.group)
        elif info.api_prefix == "api" and info.version == "v1" and not any(d.group == "" for d in definitions):
            # /api always advertises v1 (clients expect the legacy group), so v1 exists, empty
            body = {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1", "resources": []}
        else:
            body = discovery.api_resource_list(definitions, info.group, info.version)
        if body is None:
            raise errors.NotFound.path()
        return json_response(body)

    def _serve_openapi(self, request: Request, definitions: Sequence[APIDefinition]) -> Response:
        """``/openapi/v3[/<gv>]``, and ``/openapi/v2`` without definitions (``openapi.v2_document`` says why)."""
        if request.path.rstrip("/") == "/openapi/v2":
            body, content_type = v2_document(request.http.headers.get("Accept"), self.version().get("gitVersion", ""))
            return Response(body, content_type=content_type)
        definitions = tuple(definitions)
        index = self._openapi.get(definitions)
        if index is None:
            index = self._openapi[definitions] = OpenAPIIndex(definitions)
            while len(self._openapi) > _OPENAPI_CACHE_SIZE:
                self._openapi.popitem(last=False)
        else:
            self._openapi.move_to_end(definitions)
        path = request.path
        if path.rstrip("/") == "/openapi/v3":
            return Response(index.root(request.prefix), content_type=JSON)
        document = index.documents.get(path[len("/openapi/v3/"):]) if path.startswith("/openapi/v3/") else None
        if document is None:
            raise errors.NotFound.path()
        return Response(document[0], content_type=JSON,
                        headers={"Cache-Control": "public, immutable", "Etag": f'"{document[1]}"'})


def resource_virtual_workspace(name: str, *, resolve, apis: APIs, authorize: Callable[..., Decision | tuple],
                               version: Callable[[], dict], ready: Callable[[], bool] = always_ready,
                               ) -> VirtualWorkspace:
    """A virtual workspace serving ``apis(context)``; ``version`` is the shard's (``shard_client.version``)."""
    return VirtualWorkspace(name=name, resolve=resolve, authorize=authorize, ready=ready,
                            handler=ResourceHandler(apis, version=version))
