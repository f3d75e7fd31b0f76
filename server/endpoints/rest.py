"""HTTP <-> registry for resource requests: decode bodies and query parameters, encode JSON, Table, metadata
and watch streams (kcp_virtual.framework.representation).

``ResourceAPI`` is deliberately independent of where the types and objects come from: the shard
uses it for ``/clusters/<cluster>/...`` and a virtual workspace can use it with its own catalog
and registry.
"""

from __future__ import annotations

import random
import time

from werkzeug.wrappers import Request, Response

from kcp_virtual.framework import decoding, errors, negotiation, representation
from kcp_virtual.framework.negotiation import json_response
from kcp_virtual.framework.requestinfo import RequestInfo
from kcp_virtual.framework.shardclient import list_limit, resource_version_match
from kcp_virtual.framework.watchstream import WatchResponse
from server.endpoints import protobuf
from server.registry import managedfields, patch as patches
from server.registry.generic import ListOptions, Registry, parse_resource_version
from server.registry.resourcetype import RequestContext, ResourceType
from server.registry.schema.fieldvalidation import FieldValidation
from server.registry.selectors import FieldSelector, LabelSelector

JSON = "application/json"
MIN_WATCH_TIMEOUT = 1800.0

_PATCH_CONTENT_TYPES = {
    "merge-patch": patches.MERGE_PATCH,
    "json-patch": patches.JSON_PATCH,
    "strategic-merge-patch": patches.STRATEGIC_MERGE_PATCH,
    "apply-patch": patches.APPLY_PATCH,
}


def read_body(request: Request) -> bytes:
    """The request body, refusing more than 3 MiB (kube's limit for JSON bodies) with a 413 Status."""
    return negotiation.read_limited_body(request.stream, request.content_length)


def decode_body(request: Request, *, allow_empty: bool = False):
    """Parse a JSON, YAML or protobuf request body; malformed input is a 400, never a crash."""
    decoded = _decode_request(request, allow_empty=allow_empty)
    return None if decoded is None else decoded.value


def _decode_request(request: Request, *, allow_empty: bool = False) -> decoding.Decoded | None:
    data = read_body(request)
    if not data.strip():
        if allow_empty:
            return None
        raise errors.BadRequest("the request body is empty; expected a JSON object")
    return _decode(data, negotiation.request_content_kind(request.headers.get("Content-Type", JSON)))


def _decode(data: bytes, kind: str) -> decoding.Decoded:
    if kind == "protobuf":
        try:
            return decoding.Decoded(decoding.off_hub(protobuf.decode, data))
        except protobuf.ProtobufError as exc:
            raise errors.BadRequest(f"the protobuf request body could not be decoded: {exc}") from None
        except protobuf.UnknownKind as exc:
            raise errors.UnsupportedMediaType(
                f'protobuf request bodies of kind "{exc.kind}" (apiVersion "{exc.api_version}") are not supported; '
                "send this object as application/json") from None
    return decoding.decode(data, kind)


def _field_validation(request: Request, decoded: decoding.Decoded) -> FieldValidation:
    """The request's ``fieldValidation``, told about the body's duplicate keys (Strict refuses them)."""
    fields = FieldValidation.from_query(request.args.get("fieldValidation"))
    fields.report_duplicates(decoded.duplicates)
    return fields


def _flag(query, name: str) -> bool:
    return query.get(name, "").lower() in ("true", "1")


def _progress_notify(request) -> bool:
    """``progressNotify=true``: a BOOKMARK every ~20 ms while anything is written (how a virtual-workspace
    process's watch-fed cache proves its freshness). That process acts as ``system:masters``; from anyone
    else the parameter is ignored, as a few thousand such watches would keep the shard busy waking them."""
    if not _flag(request.args, "progressNotify"):
        return False
    user = request.environ.get("kcp.user")
    return user is not None and user.is_master


class ResourceAPI:
    """Serves resource requests for one catalog+registry."""

    def __init__(self, registry: Registry, *, bookmark_interval: float = 60.0):
        self.registry = registry
        self.bookmark_interval = bookmark_interval

    def handle(self, request: Request, cluster: str, info: RequestInfo, rt: ResourceType, user=None,
               services=None) -> Response:
        refused = errors.MethodNotAllowed.for_request(info.verb, info.name, rt.plural, cluster == "*")
        if refused is not None:
            raise refused
        if info.subresource and info.subresource not in rt.subresources:
            raise errors.NotFound.path()
        custom = rt.handlers.get((info.verb, info.subresource))
        if custom is not None:
            body = decode_body(request) if request.method in ("POST", "PUT", "PATCH") else None
            if isinstance(body, dict) and not info.subresource:  # reviews: nothing stored, still typed
                self.registry.check_decodable(rt, body)
            status, result = custom(RequestContext(user=user, cluster=cluster, namespace=info.namespace,
                                                   name=info.name, subresource=info.subresource, body=body,
                                                   request=request, services=services))
            return json_response(result, status=status)
        if info.subresource:
            # custom subresources were handled above; stored ones (status) take get/update/patch
            if info.verb not in ("get", "update", "patch") or any(s == info.subresource for _, s in rt.handlers):
                raise errors.MethodNotAllowed.for_verb(info.verb, f"{rt.plural}/{info.subresource}")
        elif info.verb not in rt.verbs:
            raise errors.MethodNotAllowed.for_verb(info.verb, rt.plural)
        handler = getattr(self, "_" + info.verb)
        return handler(request, cluster, info, rt)

    # ------------------------------------------------------------------ reads

    def _get(self, request, cluster, info, rt) -> Response:
        negotiated = representation.negotiate(request.headers.get("Accept"))
        obj = self.registry.get(rt, cluster, info.namespace, info.name)
        return self._object_response(request, rt, obj, negotiated=negotiated)

    def _list(self, request, cluster, info, rt) -> Response:
        negotiated = representation.negotiate(request.headers.get("Accept"))
        result = self.registry.list(rt, cluster, info.namespace, self._list_options(request, rt))
        if rt.convert is not None:
            result["items"] = [rt.convert(item) for item in result["items"]]
        return representation.list_response(negotiated, result, columns=rt.table_columns, query=request.args)

    def _watch(self, request, cluster, info, rt) -> Response:
        query = request.args
        options = self._list_options(request, rt)
        if info.name:  # GET .../name?watch=true watches one object
            options.field_selector = FieldSelector.parse(f"metadata.name={info.name}", rt.field_selectors) \
                if options.field_selector is None else options.field_selector
        send_initial = None
        if "sendInitialEvents" in query:
            send_initial = _flag(query, "sendInitialEvents")
            if send_initial and query.get("resourceVersionMatch") != "NotOlderThan":
                raise errors.Invalid("resourceVersionMatch: Forbidden: sendInitialEvents requires setting "
                                     "resourceVersionMatch to NotOlderThan")
        options.resource_version_match = ""
        if options.resource_version not in ("", "0"):
            parse_resource_version(options.resource_version)
        timeout = query.get("timeoutSeconds")
        if timeout:
            try:
                seconds = float(int(timeout))
            except ValueError:
                raise errors.BadRequest(f'timeoutSeconds: Invalid value: "{timeout}"') from None
        else:
            seconds = MIN_WATCH_TIMEOUT * (1 + random.random())
        deadline = time.monotonic() + max(seconds, 0.0)
        encode = representation.watch_encoder(representation.negotiate(request.headers.get("Accept"), stream=True),
                                              columns=rt.table_columns, query=query, api_version=rt.api_version,
                                              kind=rt.kind)
        watch = self.registry.watch(rt, cluster, info.namespace, options, send_initial_events=send_initial,
                                    allow_bookmarks=_flag(query, "allowWatchBookmarks"),
                                    progress_notify=_progress_notify(request),
                                    bookmark_interval=self.bookmark_interval, deadline=deadline)
        return WatchResponse.of(watch, encode, request.environ, JSON)

    # ------------------------------------------------------------------ writes

    def _create(self, request, cluster, info, rt) -> Response:
        if info.name:
            raise errors.MethodNotAllowed.for_verb("create", rt.plural)
        decoded = _decode_request(request)
        fields = _field_validation(request, decoded)
        obj = self.registry.create(rt, cluster, info.namespace, decoded.value, dry_run=self._dry_run(request),
                                   field_validation=fields,
                                   field_manager=self._field_manager(request, "CreateOptions"))
        return self._object_response(request, rt, obj, status=201, warnings=fields)

    def _update(self, request, cluster, info, rt) -> Response:
        decoded = _decode_request(request)
        fields = _field_validation(request, decoded)
        obj = self.registry.update(rt, cluster, info.namespace, info.name, decoded.value,
                                   subresource=info.subresource,
                                   dry_run=self._dry_run(request), field_validation=fields,
                                   field_manager=self._field_manager(request, "UpdateOptions"))
        return self._object_response(request, rt, obj, warnings=fields)

    def _patch(self, request, cluster, info, rt) -> Response:
        kind = negotiation.request_content_kind(request.headers.get("Content-Type", ""), rt.patch_kinds)
        patch_type = _PATCH_CONTENT_TYPES.get(kind)
        if patch_type is None:
            raise errors.UnsupportedMediaType(
                "the body of the request was in an unknown format - accepted media types include: "
                "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml")
        if patch_type == patches.APPLY_PATCH:
            manager = request.args.get("fieldManager", "")
            managedfields.check_field_manager(manager, "PatchOptions", required=True)
            decoded = _decode(read_body(request), kind)
            fields = _field_validation(request, decoded)
            obj, created = self.registry.apply(rt, cluster, info.namespace, info.name, decoded.value,
                                               field_manager=manager,
                                               force=_flag(request.args, "force"), subresource=info.subresource,
                                               dry_run=self._dry_run(request), field_validation=fields)
            return self._object_response(request, rt, obj, status=201 if created else 200, warnings=fields)
        if "force" in request.args:
            raise errors.Invalid.for_fields("PatchOptions", "meta.k8s.io", "", [{
                "type": "FieldValueForbidden", "field": "force",
                "message": "Forbidden: may not be specified for non-apply patch"}])
        decoded = _decode(read_body(request), kind)
        fields = _field_validation(request, decoded)
        obj = self.registry.patch(rt, cluster, info.namespace, info.name, patch_type, decoded.value,
                                  subresource=info.subresource, dry_run=self._dry_run(request),
                                  field_validation=fields, field_manager=self._field_manager(request, "PatchOptions"))
        return self._object_response(request, rt, obj, warnings=fields)

    def _delete(self, request, cluster, info, rt) -> Response:
        options = self._delete_options(request)
        result = self.registry.delete(rt, cluster, info.namespace, info.name, options)
        if rt.convert is not None and result.get("kind") == rt.kind:
            result = rt.convert(result)
        return json_response(result)

    def _deletecollection(self, request, cluster, info, rt) -> Response:
        options = self._delete_options(request)
        result = self.registry.delete_collection(rt, cluster, info.namespace, self._list_options(request, rt),
                                                 options)
        return json_response(result)

    # ------------------------------------------------------------------ helpers

    def _object_response(self, request, rt: ResourceType, obj: dict, status: int = 200,
                         warnings: FieldValidation | None = None, negotiated=None) -> Response:
        if rt.convert is not None:
            obj = rt.convert(obj)
        response = representation.object_response(
            negotiated or representation.negotiate(request.headers.get("Accept")), obj, columns=rt.table_columns,
            query=request.args, read=request.method == "GET", status=status)
        if warnings is not None:
            for name, value in warnings.headers():
                response.headers.add(name, value)
        return response

    @staticmethod
    def _field_manager(request, options_kind: str) -> str:
        """``?fieldManager=``, else what kube derives from the User-Agent (``kubectl``, ``OpenAPI-Generator``)."""
        value = request.args.get("fieldManager", "")
        managedfields.check_field_manager(value, options_kind)
        return value or managedfields.manager_from_user_agent(request.headers.get("User-Agent"))

    @staticmethod
    def _dry_run(request) -> bool:
        values = request.args.getlist("dryRun")
        for value in values:
            if value != "All":
                raise errors.BadRequest(f'dryRun: Unsupported value: "{value}": supported values: "All"')
        return bool(values)

    @staticmethod
    def _delete_options(request) -> dict:
        body = decode_body(request, allow_empty=True) or {}
        if not isinstance(body, dict):
            raise errors.BadRequest("DeleteOptions must be a JSON object")
        if request.args.get("propagationPolicy"):
            body.setdefault("propagationPolicy", request.args["propagationPolicy"])
        if request.args.getlist("dryRun"):
            body.setdefault("dryRun", request.args.getlist("dryRun"))
        for value in body.get("dryRun") or []:
            if value != "All":
                raise errors.BadRequest(f'dryRun: Unsupported value: "{value}": supported values: "All"')
        return body

    @staticmethod
    def _list_options(request, rt: ResourceType) -> ListOptions:
        query = request.args
        limit_value = list_limit(query)
        label = query.get("labelSelector", "")
        field = query.get("fieldSelector", "")
        match = resource_version_match(query)
        return ListOptions(
            label_selector=LabelSelector.parse(label) if label.strip() else None,
            field_selector=FieldSelector.parse(field, rt.field_selectors) if field.strip() else None,
            limit=limit_value, continue_token=query.get("continue", ""),
            resource_version=query.get("resourceVersion", ""), resource_version_match=match)


__all__ = ["ResourceAPI", "json_response", "decode_body", "read_body"]
