"""kcp_virtual.framework.representation: metadata-only bodies and which representation a request gets."""

from __future__ import annotations

import orjson
import pytest

from kcp_virtual.framework import representation
from kcp_virtual.framework.errors import NotAcceptable
from kcp_virtual.framework.watchstream import json_line

OBJ = {"kind": "ConfigMap", "apiVersion": "v1", "data": {"k": "v"},
       "metadata": {"name": "a", "resourceVersion": "7", "managedFields": [{"manager": "kubectl"}]}}
LIST = {"kind": "ConfigMapList", "apiVersion": "v1", "items": [OBJ],
        "metadata": {"resourceVersion": "9", "continue": "c", "remainingItemCount": 3}}


class Event:
    def __init__(self, type_, obj):
        self.type, self.object = type_, obj


def negotiated(accept: str, stream: bool = False):
    return representation.negotiate(accept, stream=stream)


def test_metadata_only_keeps_the_whole_object_meta_and_shares_it():
    partial = representation.metadata_only(OBJ)
    assert partial == {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": OBJ["metadata"]}
    assert partial["metadata"] is OBJ["metadata"]


def test_metadata_only_list_keeps_the_list_metadata():
    body = representation.metadata_only_list(LIST, "v1beta1")
    assert (body["kind"], body["apiVersion"], body["metadata"]) == (
        "PartialObjectMetadataList", "meta.k8s.io/v1beta1", LIST["metadata"])
    assert body["items"] == [representation.metadata_only(OBJ, "v1beta1")]


def test_watch_lines_convert_every_event_but_errors():
    lines = representation.MetadataLines("v1")
    bookmark = {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"resourceVersion": "12"}}
    assert orjson.loads(lines(Event("BOOKMARK", bookmark)))["object"] == representation.metadata_only(bookmark)
    assert orjson.loads(lines(Event("DELETED", OBJ)))["object"]["kind"] == "PartialObjectMetadata"
    status = {"kind": "Status", "apiVersion": "v1", "code": 410}
    assert orjson.loads(lines(Event("ERROR", status)))["object"] == status


def test_the_first_acceptable_clause_decides():
    columns = lambda: []  # noqa: E731 - no Table asked for
    one = negotiated("application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json")
    response = representation.object_response(one, OBJ, columns=columns, query={}, read=True)
    assert orjson.loads(response.get_data())["kind"] == "PartialObjectMetadata"
    plain = negotiated("application/json,application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1")
    assert orjson.loads(representation.object_response(plain, OBJ, columns=columns, query={}, read=True)
                        .get_data()) == OBJ
    assert representation.watch_encoder(plain, columns=columns, query={}, api_version="v1",
                                        kind="ConfigMap") is json_line


def test_a_list_as_one_object_and_one_object_as_a_list_are_406():
    columns = lambda: []  # noqa: E731
    with pytest.raises(NotAcceptable, match=r"is a list \(\*v1.ConfigMapList\)"):
        representation.list_response(negotiated("application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"),
                                     LIST, columns=columns, query={})
    as_list = negotiated("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1")
    with pytest.raises(NotAcceptable, match=r"is not a list \(\*v1.ConfigMap\)"):
        representation.object_response(as_list, OBJ, columns=columns, query={}, read=True)
    with pytest.raises(NotAcceptable, match=r"is not a list \(\*v1.Widget\)"):
        representation.watch_encoder(negotiated("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
                                                stream=True), columns=columns, query={},
                                     api_version="example.com/v1", kind="Widget")
