"""What a resource endpoint answers with: the objects, a ``meta.k8s.io`` Table, or only their metadata.

``as=PartialObjectMetadata[List];g=meta.k8s.io;v=v1`` is what client-go's metadata client asks for (the
garbage collector, controller-runtime's metadata-only watches); its watch decoder knows no other kind, so a
full object in a watch event breaks such an informer on the first event. One negotiation per request, shared
by the shard's REST handler and every virtual workspace.

As upstream (``apiserver/pkg/endpoints/handlers/response.go``): a Table only for GET and LIST (and watch
events); metadata for every object a request returns, the objects writes return and each watch event except
ERROR's Status; one object asked for as a list, or a list as one object, is a 406 in upstream's words.
Metadata keeps ``managedFields`` (it is the whole ObjectMeta); a Table row's object leaves them out.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import orjson
from werkzeug.wrappers import Response

from kcp_virtual.framework import negotiation, table
from kcp_virtual.framework.errors import NotAcceptable
from kcp_virtual.framework.negotiation import JSON, META_GROUP, Negotiated, json_response
from kcp_virtual.framework.watchstream import TableLines, json_line

__all__ = ["PARTIAL", "PARTIAL_LIST", "negotiate", "metadata_only", "metadata_only_list", "MetadataLines",
           "object_response", "list_response", "watch_encoder"]

PARTIAL = "PartialObjectMetadata"
PARTIAL_LIST = "PartialObjectMetadataList"
_JSON_ONLY = (JSON,)  # responses are JSON; YAML and protobuf clauses are skipped

Columns = Callable[[], Sequence[table.Column]]


def negotiate(accept: str | None, *, stream: bool = False) -> Negotiated:
    """The representation of a resource endpoint's response (406 when nothing in ``accept`` can be served)."""
    return negotiation.negotiate(accept, media_types=_JSON_ONLY, stream=stream)


def metadata_only(obj: dict, version: str = "v1") -> dict:
    """``obj`` as a ``meta.k8s.io/<version>`` PartialObjectMetadata (its metadata shared, not copied)."""
    return {"kind": PARTIAL, "apiVersion": f"{META_GROUP}/{version}", "metadata": obj.get("metadata") or {}}


def metadata_only_list(result: dict, version: str = "v1") -> dict:
    """A list as a PartialObjectMetadataList: its list metadata (resourceVersion, continue, remainingItemCount)
    and each item's metadata."""
    return {"kind": PARTIAL_LIST, "apiVersion": f"{META_GROUP}/{version}", "metadata": result.get("metadata") or {},
            "items": [metadata_only(item, version) for item in result.get("items") or ()]}


class MetadataLines:
    """Watch events as PartialObjectMetadata; ERROR's Status stays as it is (upstream's ``transformObject``)."""

    __slots__ = ("version",)

    def __init__(self, version: str):
        self.version = version

    def __call__(self, event) -> bytes:
        obj = event.object if event.type == "ERROR" else metadata_only(event.object, self.version)
        return orjson.dumps({"type": event.type, "object": obj}) + b"\n"


def _go_type(api_version: str, kind: str) -> str:
    """How upstream's messages name a type: ``*v1.ConfigMapList``."""
    return f"*{api_version.rpartition('/')[2]}.{kind}"


def _not_a_list(api_version: str, kind: str) -> NotAcceptable:
    return NotAcceptable(f"you requested {PARTIAL_LIST}, but the requested object is not a list "
                         f"({_go_type(api_version, kind)})")


def object_response(negotiated: Negotiated, obj: dict, *, columns: Columns, query: Mapping[str, str],
                    read: bool, status: int = 200) -> Response:
    """One object as negotiated; ``read`` is whether the request was a GET (only those become Tables)."""
    kind = negotiated.kind
    if kind == PARTIAL:
        return json_response(metadata_only(obj, negotiated.version), status=status,
                             content_type=negotiated.content_type)
    if kind == PARTIAL_LIST:
        raise _not_a_list(obj.get("apiVersion", ""), obj.get("kind", ""))
    if kind == "Table" and read:
        body = table.to_table([obj], columns(), list_meta={"resourceVersion": obj["metadata"].get(
            "resourceVersion", "")}, include_object=negotiation.include_object(query.get("includeObject")),
            version=negotiated.version)
        return json_response(body, content_type=negotiated.content_type)
    return json_response(obj, status=status)


def list_response(negotiated: Negotiated, result: dict, *, columns: Columns, query: Mapping[str, str]) -> Response:
    """A LIST's result as negotiated (``result["items"]`` decoded unless the client wants the objects)."""
    kind = negotiated.kind
    if kind == PARTIAL_LIST:
        return json_response(metadata_only_list(result, negotiated.version), content_type=negotiated.content_type)
    if kind == PARTIAL:
        raise NotAcceptable(f"you requested {PARTIAL}, but the requested object is a list "
                            f"({_go_type(result.get('apiVersion', ''), result.get('kind', ''))})")
    if kind == "Table":
        body = table.to_table(result["items"], columns(), list_meta=result["metadata"],
                              include_object=negotiation.include_object(query.get("includeObject")),
                              version=negotiated.version)
        return json_response(body, content_type=negotiated.content_type)
    return json_response(result)


def watch_encoder(negotiated: Negotiated, *, columns: Columns, query: Mapping[str, str], api_version: str,
                  kind: str) -> Callable:
    """How each event of a watch is written (``api_version``/``kind``: the watched objects', for a 406)."""
    if negotiated.kind == PARTIAL:
        return MetadataLines(negotiated.version)
    if negotiated.kind == PARTIAL_LIST:
        raise _not_a_list(api_version, kind)
    if negotiated.kind == "Table":
        return TableLines(columns(), negotiation.include_object(query.get("includeObject")), negotiated.version)
    return json_line
