"""Content negotiation: which representation a response uses, and what a request body is.

Ports ``apiserver/pkg/endpoints/handlers/negotiation``: the Accept header is parsed like goautoneg
(clauses ordered by ``q``, then specific before wildcard, otherwise in the client's order), and the first
clause the endpoint can serve wins. Parameters ``as``/``g``/``v`` ask for a conversion, e.g. kubectl's
``application/json;as=Table;v=v1;g=meta.k8s.io``; a clause asking for a conversion the endpoint cannot do
is skipped, so kubectl's trailing plain ``application/json`` is the fallback. Nothing acceptable is a 406.

Responses are only ever JSON (or YAML): protobuf clauses, which client-go sends first, are skipped.
Results are cached by header value, since clients send the same few headers over and over.
"""

from __future__ import annotations

from functools import lru_cache
from types import MappingProxyType
from typing import Iterable, Mapping, NamedTuple

import orjson
import yaml
from werkzeug.wrappers import Response

from kcp_virtual.framework.errors import BadRequest, NotAcceptable, RequestEntityTooLarge, UnsupportedMediaType

__all__ = ["JSON", "YAML", "PROTOBUF", "JSON_PATCH", "MERGE_PATCH", "STRATEGIC_MERGE_PATCH", "APPLY_PATCH",
           "SERVED_MEDIA_TYPES", "META_GROUP", "TABLE_VERSIONS", "DISCOVERY_GROUP", "DISCOVERY_VERSIONS",
           "DISCOVERY_KIND", "CONTENT_KINDS", "BODY_KINDS", "CR_BODY_KINDS", "PATCH_KINDS", "CR_PATCH_KINDS",
           "INCLUDE_OBJECT_VALUES", "MediaType", "Negotiated", "parse_accept", "negotiate", "wants_table",
           "negotiate_discovery", "wants_aggregated_discovery", "table_content_type", "discovery_content_type",
           "include_object", "request_content_kind", "MAX_BODY_BYTES", "read_limited_body", "parse_body",
           "json_response"]

JSON = "application/json"
YAML = "application/yaml"
PROTOBUF = "application/vnd.kubernetes.protobuf"
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

#: Response media types served by default, preferred first (an empty Accept gets the first).
SERVED_MEDIA_TYPES = (JSON, YAML)

META_GROUP = "meta.k8s.io"
TABLE_VERSIONS = ("v1", "v1beta1")
DISCOVERY_GROUP = "apidiscovery.k8s.io"
DISCOVERY_VERSIONS = ("v2", "v2beta1")
DISCOVERY_KIND = "APIGroupDiscoveryList"

# Request body kinds (request_content_kind's results) and the media types behind them.
CONTENT_KINDS = MappingProxyType({
    JSON: "json", YAML: "yaml", PROTOBUF: "protobuf",
    JSON_PATCH: "json-patch", MERGE_PATCH: "merge-patch", STRATEGIC_MERGE_PATCH: "strategic-merge-patch",
    APPLY_PATCH: "apply-patch",
})
_MEDIA_TYPE_OF_KIND = {kind: media for media, kind in CONTENT_KINDS.items()}
#: Bodies of create/update on built-in kinds (kubectl 1.32 sends protobuf for ``kubectl create <kind>``).
BODY_KINDS = ("json", "yaml", "protobuf")
#: Bodies of create/update on custom resources (no protobuf for them upstream).
CR_BODY_KINDS = ("json", "yaml")
#: PATCH on built-in kinds, in kube's order.
PATCH_KINDS = ("json-patch", "merge-patch", "strategic-merge-patch", "apply-patch")
#: PATCH on custom resources: strategic merge is a 415 there.
CR_PATCH_KINDS = ("json-patch", "merge-patch", "apply-patch")

INCLUDE_OBJECT_VALUES = ("Metadata", "None", "Object")

#: Request bodies accepted (kube-apiserver's limit for a single JSON object).
MAX_BODY_BYTES = 3 * 1024 * 1024
#: Deepest nesting of a body, well inside what orjson serializes (254 levels) once an answer wraps the object
#: in a list or a watch event; a deeper body would be stored and then fail every answer with a 500.
MAX_DEPTH = 100


class MediaType(NamedTuple):
    """One Accept clause; ``params`` excludes ``q`` and is read-only."""

    type: str
    subtype: str
    params: Mapping[str, str]
    q: float = 1.0

    @property
    def full_type(self) -> str:
        return f"{self.type}/{self.subtype}"


class Negotiated(NamedTuple):
    """The representation chosen for a response.

    ``kind``/``group``/``version`` are set when the client asked for a conversion (``Table``,
    ``PartialObjectMetadata[List]``, ``APIGroupDiscoveryList``), else None.
    """

    media_type: str
    kind: str | None = None
    group: str | None = None
    version: str | None = None
    pretty: bool = False

    @property
    def content_type(self) -> str:
        """The response ``Content-Type``, e.g. ``application/json;as=Table;v=v1;g=meta.k8s.io``."""
        if self.kind is None:
            return self.media_type
        if self.kind == DISCOVERY_KIND:  # the order client-go's discovery documentation shows
            return f"{self.media_type};g={self.group};v={self.version};as={self.kind}"
        return f"{self.media_type};as={self.kind};v={self.version};g={self.group}"


_EMPTY_PARAMS: Mapping[str, str] = MappingProxyType({})


def _q(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0  # goautoneg ignores ParseFloat's error, leaving 0


@lru_cache(maxsize=512)
def _parse_accept(header: str) -> tuple[MediaType, ...]:
    clauses = []
    for part in header.split(","):
        media_range, *params = part.split(";")
        media_range = media_range.strip()
        if media_range == "*":
            type_, subtype = "*", "*"
        else:
            pieces = media_range.split("/")
            if len(pieces) != 2:
                continue  # goautoneg drops malformed ranges (including an empty one)
            type_, subtype = pieces[0].strip().lower(), pieces[1].strip().lower()
            if not type_ or not subtype:
                continue
        q = 1.0
        found: dict[str, str] = {}
        for param in params:
            key, sep, value = param.partition("=")
            if not sep or "=" in value:
                continue
            key = key.strip()
            if key == "q":
                q = _q(value.strip())
            else:
                found[key] = value.strip()
        clauses.append(MediaType(type_, subtype, MappingProxyType(found) if found else _EMPTY_PARAMS, q))
    # Stable: equal preference keeps the client's order.
    clauses.sort(key=lambda c: (-c.q, c.type == "*", c.subtype == "*"))
    return tuple(clauses)


def parse_accept(header: str | None) -> list[MediaType]:
    """The Accept header's clauses, most preferred first."""
    return list(_parse_accept(header)) if header else []


def _covers(clause: MediaType, media_type: str) -> bool:
    if clause.type == "*" and clause.subtype == "*":
        return True
    type_, _, subtype = media_type.partition("/")
    return clause.type == type_ and (clause.subtype == subtype or clause.subtype == "*")


def _conversion_allowed(kind: str | None, group: str | None, version: str | None, media_type: str, *,
                        table: bool, partial_metadata: bool, discovery: bool) -> bool:
    """``EndpointRestrictions.AllowsMediaTypeTransform`` of a resource endpoint (or of /api, /apis)."""
    if discovery:
        return kind == DISCOVERY_KIND and group == DISCOVERY_GROUP and version in DISCOVERY_VERSIONS
    if kind is None and group is None and version is None:
        return True
    if group != META_GROUP or version not in TABLE_VERSIONS:
        return False
    if kind == "Table":
        return table and media_type in (JSON, YAML)
    if kind in ("PartialObjectMetadata", "PartialObjectMetadataList"):
        return partial_metadata
    return False


@lru_cache(maxsize=512)
def _negotiate(accept: str, media_types: tuple[str, ...], table: bool, partial_metadata: bool, stream: bool,
               discovery: bool) -> Negotiated | None:
    for clause in _parse_accept(accept):
        for media_type in media_types:
            if not _covers(clause, media_type):
                continue
            params = clause.params
            stream_param = params.get("stream")
            if stream_param and (not stream or stream_param != "watch"):
                continue
            kind, group, version = params.get("as"), params.get("g"), params.get("v")
            if not _conversion_allowed(kind, group, version, media_type, table=table,
                                       partial_metadata=partial_metadata, discovery=discovery):
                continue
            if kind is None and group is None and version is None:
                return Negotiated(media_type, pretty=params.get("pretty") == "1")
            return Negotiated(media_type, kind, group, version, params.get("pretty") == "1")
    return None


def _not_acceptable(media_types: Iterable[str], stream: bool) -> NotAcceptable:
    accepted = ", ".join(f"{m};stream=watch" if stream else m for m in media_types)
    return NotAcceptable(f"only the following media types are accepted: {accepted}")


def negotiate(accept: str | None, *, media_types: tuple[str, ...] = SERVED_MEDIA_TYPES, table: bool = True,
              partial_metadata: bool = True, stream: bool = False) -> Negotiated:
    """Choose the response representation for a resource endpoint, or raise ``NotAcceptable``.

    ``table``/``partial_metadata`` say whether this endpoint can convert to those kinds. For a watch pass
    ``stream=True``: only JSON can be streamed (YAML has no stream framing upstream either).
    """
    media_types = tuple(m for m in media_types if m == JSON) if stream else tuple(media_types)
    if not accept:
        if not media_types:
            raise _not_acceptable(media_types, stream)
        return Negotiated(media_types[0])
    result = _negotiate(accept, media_types, table, partial_metadata, stream, False)
    if result is None:
        raise _not_acceptable(media_types, stream)
    return result


def wants_table(accept: str | None, **options) -> str | None:
    """The Table version (``v1``/``v1beta1``) when the first acceptable clause asks for a Table, else None.

    Raises ``NotAcceptable`` when nothing in the header can be served. ``options`` go to ``negotiate``.
    """
    result = negotiate(accept, **options)
    return result.version if result.kind == "Table" else None


def negotiate_discovery(accept: str | None) -> Negotiated:
    """For ``/api`` and ``/apis``: aggregated discovery if any acceptable clause asks for it, else plain JSON.

    Upstream's discovery restrictions reject plain clauses during the aggregated negotiation, so an
    ``as=APIGroupDiscoveryList`` clause wins even after a plain ``application/json``; only q-values order them.
    """
    if accept:
        result = _negotiate(accept, (JSON,), False, False, False, True)
        if result is not None:
            return result
    return negotiate(accept, media_types=(JSON,), table=False, partial_metadata=False)


def wants_aggregated_discovery(accept: str | None) -> str | None:
    """``v2``/``v2beta1`` when the client accepts aggregated discovery, else None (legacy JSON).

    Raises ``NotAcceptable`` when the client accepts neither."""
    result = negotiate_discovery(accept)
    return result.version if result.kind == DISCOVERY_KIND else None


def table_content_type(version: str = "v1", media_type: str = JSON) -> str:
    return f"{media_type};as=Table;v={version};g={META_GROUP}"


def discovery_content_type(version: str = "v2") -> str:
    return f"{JSON};g={DISCOVERY_GROUP};v={version};as={DISCOVERY_KIND}"


def include_object(value: str | None) -> str:
    """The ``includeObject`` query parameter of a Table request: ``Metadata`` (default), ``None`` or ``Object``."""
    if not value:
        return "Metadata"
    if value not in INCLUDE_OBJECT_VALUES:
        raise BadRequest(f'unrecognized includeObject value: "{value}"')
    return value


@lru_cache(maxsize=256)
def _content_kind(content_type: str) -> str | None:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return CONTENT_KINDS.get(media_type or JSON)


def request_content_kind(content_type: str | None, accepted: Iterable[str] | None = None) -> str:
    """What a request body is: ``json``, ``yaml``, ``protobuf`` or a patch kind (``json-patch``,
    ``merge-patch``, ``strategic-merge-patch``, ``apply-patch``).

    ``accepted`` is what this endpoint takes (e.g. ``CR_PATCH_KINDS`` for PATCH on a custom resource);
    anything else is a 415 listing them, in kube's words. An absent Content-Type means JSON, as upstream.
    """
    kind = _content_kind(content_type or "")
    allowed = tuple(accepted) if accepted is not None else tuple(CONTENT_KINDS.values())
    if kind is None or kind not in allowed:
        media = ", ".join(_MEDIA_TYPE_OF_KIND[k] for k in allowed)
        raise UnsupportedMediaType("the body of the request was in an unknown format - accepted media types "
                                   f"include: {media}")
    return kind


def read_limited_body(stream, content_length: int | None) -> bytes:
    """The request body, refusing more than ``MAX_BODY_BYTES`` with a 413 Status (shard and virtual workspaces)."""
    if content_length is not None and content_length > MAX_BODY_BYTES:
        raise RequestEntityTooLarge(f"Request entity too large: limit is {MAX_BODY_BYTES}")
    data = stream.read(MAX_BODY_BYTES + 1)
    if len(data) > MAX_BODY_BYTES:
        raise RequestEntityTooLarge(f"Request entity too large: limit is {MAX_BODY_BYTES}")
    return data


def parse_body(data: bytes, kind: str):
    """A JSON or YAML body (``kind`` from ``request_content_kind``); malformed input is a 400 in kube's words."""
    if kind in ("yaml", "apply-patch"):
        try:
            value = yaml.safe_load(data)
        except yaml.YAMLError as exc:
            raise BadRequest(f"error converting YAML to JSON: {exc}") from None
        try:  # what JSON can say: timestamps become strings; a non-string key or a lone surrogate is refused
            value = orjson.loads(orjson.dumps(value))
        except (TypeError, orjson.JSONDecodeError) as exc:
            raise BadRequest(f"error converting YAML to JSON: {exc}") from None
        deep = _too_deep(value)
    else:
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"couldn't get version/kind; json parse error: {exc}") from None
        deep = data.count(b"{") + data.count(b"[") > MAX_DEPTH and _too_deep(value)  # a cheap count first
    if deep:
        raise BadRequest(f"couldn't get version/kind; json parse error: nested deeper than {MAX_DEPTH} levels")
    return value


def _too_deep(value) -> bool:
    level = [value]
    for _ in range(MAX_DEPTH):
        level = [child for node in level if isinstance(node, (dict, list))
                 for child in (node.values() if isinstance(node, dict) else node)]
        if not level:
            return False
    return any(isinstance(node, (dict, list)) for node in level)


def json_response(body, status: int = 200, content_type: str = JSON, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(body), status=status, content_type=content_type, headers=headers)
