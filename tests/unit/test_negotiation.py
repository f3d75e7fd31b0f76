import pytest

from kcp_virtual.framework.errors import BadRequest, NotAcceptable, UnsupportedMediaType
from kcp_virtual.framework.negotiation import (BODY_KINDS, CR_BODY_KINDS, CR_PATCH_KINDS, PATCH_KINDS, MediaType,
                                               Negotiated, discovery_content_type, include_object, negotiate,
                                               negotiate_discovery, parse_accept, request_content_kind,
                                               table_content_type, wants_aggregated_discovery, wants_table)

KUBECTL_GET = ("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,"
               "application/json")
KUBECTL_DISCOVERY = ("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
                     "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json")
CLIENT_GO_TYPED = "application/vnd.kubernetes.protobuf,application/json"


def test_parse_accept_keeps_order_and_params():
    clauses = parse_accept(KUBECTL_GET)
    assert [(c.full_type, dict(c.params)) for c in clauses] == [
        ("application/json", {"as": "Table", "v": "v1", "g": "meta.k8s.io"}),
        ("application/json", {"as": "Table", "v": "v1beta1", "g": "meta.k8s.io"}),
        ("application/json", {})]
    assert parse_accept("") == [] and parse_accept(None) == []


def test_parse_accept_q_and_wildcards():
    clauses = parse_accept("*/*;q=0.8, text/*, application/yaml;q=0.9, application/json, bogus, a/b/c, *")
    assert [(c.full_type, c.q) for c in clauses] == [
        ("application/json", 1.0), ("text/*", 1.0), ("*/*", 1.0), ("application/yaml", 0.9), ("*/*", 0.8)]
    assert parse_accept(" Application/JSON ; q = 0.5 ")[0] == MediaType("application", "json", {}, 0.5)
    assert parse_accept("application/json;q=abc")[0].q == 0.0


def test_kubectl_get_wants_table_v1():
    assert wants_table(KUBECTL_GET) == "v1"
    result = negotiate(KUBECTL_GET)
    assert result == Negotiated("application/json", "Table", "meta.k8s.io", "v1")
    assert result.content_type == "application/json;as=Table;v=v1;g=meta.k8s.io" == table_content_type("v1")


@pytest.mark.parametrize("accept, expected", [
    ("application/json", None),
    ("", None),
    (None, None),
    ("*/*", None),
    ("application/json, */*", None),
    (CLIENT_GO_TYPED, None),
    ("application/json;as=Table;v=v1beta1;g=meta.k8s.io", "v1beta1"),
    ("application/json, application/json;as=Table;v=v1;g=meta.k8s.io", None),  # plain JSON offered first
    ("application/json;q=0.5, application/json;as=Table;v=v1;g=meta.k8s.io", "v1"),
    ("application/json;as=Table;v=v2;g=meta.k8s.io, application/json", None),  # no such Table version
    ("application/json;as=Table, application/json", None),  # as without g/v is not a Table request
    ("application/yaml;as=Table;v=v1;g=meta.k8s.io", "v1"),
])
def test_wants_table(accept, expected):
    assert wants_table(accept) == expected


def test_table_unsupported_falls_back_or_406():
    assert wants_table(KUBECTL_GET, table=False) is None
    with pytest.raises(NotAcceptable):
        wants_table("application/json;as=Table;v=v1;g=meta.k8s.io", table=False)


def test_partial_object_metadata():
    result = negotiate("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json")
    assert (result.kind, result.version) == ("PartialObjectMetadataList", "v1")
    assert negotiate("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json",
                     partial_metadata=False).kind is None


def test_media_types():
    assert negotiate("application/yaml").media_type == "application/yaml"
    assert negotiate("application/*").media_type == "application/json"
    assert negotiate("application/yaml;q=0.9,application/json").media_type == "application/json"
    assert negotiate("application/json;pretty=1").pretty
    with pytest.raises(NotAcceptable):
        negotiate("application/yaml", media_types=("application/json",))


@pytest.mark.parametrize("accept", ["application/xml", "text/html", "application/vnd.kubernetes.protobuf",
                                    "application/json;as=Foo;g=x;v=y", "image/*"])
def test_not_acceptable(accept):
    with pytest.raises(NotAcceptable) as info:
        negotiate(accept)
    assert info.value.code == 406
    assert info.value.message == "only the following media types are accepted: application/json, application/yaml"


def test_watch_streams():
    assert negotiate("application/json", stream=True).media_type == "application/json"
    assert negotiate("application/yaml, application/json", stream=True).media_type == "application/json"
    assert negotiate("application/json;stream=watch", stream=True).media_type == "application/json"
    assert wants_table(KUBECTL_GET, stream=True) == "v1"
    with pytest.raises(NotAcceptable) as info:
        negotiate("application/yaml", stream=True)
    assert info.value.message == "only the following media types are accepted: application/json;stream=watch"
    with pytest.raises(NotAcceptable):
        negotiate("application/json;stream=watch")  # not a watch endpoint


def test_discovery():
    assert wants_aggregated_discovery(KUBECTL_DISCOVERY) == "v2"
    assert wants_aggregated_discovery(KUBECTL_DISCOVERY.replace(";v=v2;", ";v=v3;")) == "v2beta1"
    assert wants_aggregated_discovery("application/json, */*") is None
    assert wants_aggregated_discovery(None) is None
    assert wants_aggregated_discovery(KUBECTL_GET) is None
    # Upstream rejects plain clauses while looking for aggregated discovery, so order does not matter.
    assert wants_aggregated_discovery(
        "application/json, application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList") == "v2"
    assert negotiate_discovery(KUBECTL_DISCOVERY).content_type == discovery_content_type("v2") == \
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    with pytest.raises(NotAcceptable):
        wants_aggregated_discovery("application/xml")


def test_include_object():
    assert include_object(None) == "Metadata"
    assert include_object("") == "Metadata"
    assert include_object("Object") == "Object"
    assert include_object("None") == "None"
    with pytest.raises(BadRequest) as info:
        include_object("metadata")
    assert info.value.message == 'unrecognized includeObject value: "metadata"'


@pytest.mark.parametrize("content_type, kind", [
    (None, "json"),
    ("", "json"),
    ("application/json", "json"),
    ("application/json; charset=utf-8", "json"),
    ("Application/JSON", "json"),
    ("application/yaml", "yaml"),
    ("application/vnd.kubernetes.protobuf", "protobuf"),
    ("application/merge-patch+json", "merge-patch"),
    ("application/json-patch+json", "json-patch"),
    ("application/strategic-merge-patch+json", "strategic-merge-patch"),
    ("application/apply-patch+yaml", "apply-patch"),
    ("application/apply-patch+yaml; charset=utf-8", "apply-patch"),
])
def test_request_content_kind(content_type, kind):
    assert request_content_kind(content_type) == kind


def test_unsupported_media_types():
    with pytest.raises(UnsupportedMediaType) as info:
        request_content_kind("application/strategic-merge-patch+json", CR_PATCH_KINDS)
    assert info.value.code == 415
    assert info.value.message == ("the body of the request was in an unknown format - accepted media types include: "
                                  "application/json-patch+json, application/merge-patch+json, "
                                  "application/apply-patch+yaml")
    with pytest.raises(UnsupportedMediaType) as info:
        request_content_kind("text/plain", BODY_KINDS)
    assert info.value.message.endswith("include: application/json, application/yaml, "
                                       "application/vnd.kubernetes.protobuf")
    with pytest.raises(UnsupportedMediaType):
        request_content_kind("application/vnd.kubernetes.protobuf", CR_BODY_KINDS)
    with pytest.raises(UnsupportedMediaType):  # PATCH needs an explicit patch type
        request_content_kind(None, PATCH_KINDS)
    with pytest.raises(UnsupportedMediaType):  # and a patch type is no create body
        request_content_kind("application/merge-patch+json", BODY_KINDS)
