"""Metadata-only reads (``as=PartialObjectMetadata[List]``), as client-go's metadata client sends them.

The metadata client (the garbage collector, controller-runtime's metadata-only watches) asks with the Accept
headers below and decodes only ``meta.k8s.io`` kinds: a full object in a watch event ends its watch. The same
requests go to the shard and through a virtual workspace (the framework's resource handler), in every topology.
"""

from __future__ import annotations

import http.client
import ssl
import uuid
from urllib.parse import urlsplit

import orjson
import pytest

from server.shard import ShardConfig
from tests.topologies import TOPOLOGIES, running_topology
from tests.vw_demo import DEMO_VIRTUAL_WORKSPACES

# k8s.io/client-go/metadata: Get/Watch/Patch ask for one object, List for a list; protobuf first.
ONE = ("application/vnd.kubernetes.protobuf;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,"
       "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json")
LIST = ("application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,"
        "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json")
ONLY_ONE = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
ONLY_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
META = "meta.k8s.io/v1"


@pytest.fixture(scope="module", params=TOPOLOGIES)
def topology(request):
    config = ShardConfig(virtual_workspaces=DEMO_VIRTUAL_WORKSPACES, bookmark_interval=1.0)
    with running_topology(request.param, config) as (vw, shard, _):
        yield vw, shard


@pytest.fixture(params=["shard", "virtual workspace"])
def endpoint(request, topology):
    """(base URL, path prefix of root's configmaps in default, a wildcard list path or None), as the admin."""
    vw, shard = topology
    if request.param == "shard":
        return Client(shard.url, shard), "/clusters/root/api/v1/namespaces/default/configmaps", None
    return (Client(vw.base_url, shard), "/services/demo/clusters/root/api/v1/namespaces/default/configmaps",
            "/services/demo/clusters/*/api/v1/configmaps")


class Client:
    """Raw HTTPS requests with the admin's client certificate (the path reaches the server as written)."""

    def __init__(self, base_url: str, shard):
        url = urlsplit(base_url)
        self.host, self.port = url.hostname, url.port
        self.context = ssl.create_default_context(cafile=shard.ca_file)
        pki = shard.shard.pki
        self.context.load_cert_chain(str(pki.admin_cert_path), str(pki.admin_key_path))

    def connect(self, timeout: float = 10) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=timeout)

    def __call__(self, method: str, path: str, body=None, accept: str = "application/json",
                 content_type: str = "application/json"):
        connection = self.connect()
        try:
            connection.request(method, path, body=None if body is None else orjson.dumps(body),
                               headers={"Accept": accept, "Content-Type": content_type})
            response = connection.getresponse()
            return response.status, response.headers.get("Content-Type"), orjson.loads(response.read())
        finally:
            connection.close()


def new_configmap(client, prefix: str) -> str:
    name = f"meta-{uuid.uuid4().hex[:8]}"
    status, _, body = client("POST", prefix, {"metadata": {"name": name, "labels": {"demo": "true"}},
                                              "data": {"secret-ish": "payload"}})
    assert status == 201, body
    return name


def test_list_and_get_carry_only_metadata(endpoint):
    client, prefix, wildcard = endpoint
    name = new_configmap(client, prefix)
    for path in filter(None, (prefix, wildcard)):
        status, content_type, body = client("GET", f"{path}?labelSelector=demo%3Dtrue", accept=LIST)
        assert status == 200, body
        assert content_type == "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"
        assert (body["kind"], body["apiVersion"]) == ("PartialObjectMetadataList", META)
        assert int(body["metadata"]["resourceVersion"]) > 0
        mine = [item for item in body["items"] if item["metadata"]["name"] == name]
        assert len(mine) == 1
        assert set(mine[0]) == {"kind", "apiVersion", "metadata"}
        assert (mine[0]["kind"], mine[0]["apiVersion"]) == ("PartialObjectMetadata", META)
        assert mine[0]["metadata"]["labels"] == {"demo": "true"} and mine[0]["metadata"]["uid"]

    status, content_type, body = client("GET", f"{prefix}/{name}", accept=ONE)
    assert status == 200, body
    assert content_type == "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io"
    assert (body["kind"], body["apiVersion"], set(body)) == ("PartialObjectMetadata", META,
                                                              {"kind", "apiVersion", "metadata"})
    assert body["metadata"]["name"] == name and body["metadata"]["managedFields"]  # the whole ObjectMeta

    status, _, body = client("GET", f"{prefix}/{name}",
                             accept="application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1beta1")
    assert status == 200 and body["apiVersion"] == "meta.k8s.io/v1beta1", body


def test_one_object_as_a_list_and_a_list_as_one_object_are_406(endpoint):
    client, prefix, _ = endpoint
    name = new_configmap(client, prefix)
    status, _, body = client("GET", f"{prefix}/{name}", accept=ONLY_LIST)
    assert (status, body["reason"]) == (406, "NotAcceptable"), body
    assert body["message"] == ("you requested PartialObjectMetadataList, but the requested object is not a list "
                               "(*v1.ConfigMap)")
    status, _, body = client("GET", prefix, accept=ONLY_ONE)
    assert (status, body["reason"]) == (406, "NotAcceptable"), body
    assert body["message"] == ("you requested PartialObjectMetadata, but the requested object is a list "
                               "(*v1.ConfigMapList)")
    status, _, body = client("GET", f"{prefix}?watch=true", accept=ONLY_LIST)
    assert (status, body["reason"]) == (406, "NotAcceptable"), body
    # a group other than meta.k8s.io is no conversion anyone serves
    status, _, body = client("GET", prefix, accept="application/json;as=PartialObjectMetadataList;g=apps;v=v1")
    assert status == 406, body


def test_a_write_answers_with_the_metadata_and_is_applied(endpoint):
    client, prefix, _ = endpoint
    name = new_configmap(client, prefix)
    status, _, body = client("PATCH", f"{prefix}/{name}", {"metadata": {"annotations": {"seen": "yes"}}},
                             accept=ONE, content_type="application/merge-patch+json")
    assert status == 200, body
    assert body["kind"] == "PartialObjectMetadata" and body["metadata"]["annotations"]["seen"] == "yes"
    status, _, body = client("GET", f"{prefix}/{name}")
    assert status == 200 and body["data"] == {"secret-ish": "payload"}
    assert body["metadata"]["annotations"]["seen"] == "yes"


def test_watch_events_carry_only_metadata_bookmarks_too(endpoint):
    client, prefix, wildcard = endpoint
    status, _, listed = client("GET", prefix, accept=LIST)
    assert status == 200
    connection = client.connect(timeout=15)
    path = wildcard or prefix
    connection.request("GET", f"{path}?watch=true&allowWatchBookmarks=true&timeoutSeconds=10&labelSelector=demo"
                              f"%3Dtrue&resourceVersion={listed['metadata']['resourceVersion']}",
                       headers={"Accept": ONE})
    response = connection.getresponse()
    assert response.status == 200
    name = new_configmap(client, prefix)
    seen = {}
    try:
        while "ADDED" not in seen or "BOOKMARK" not in seen:
            line = response.readline()
            assert line, f"the watch ended before an ADDED and a BOOKMARK: {seen}"
            event = orjson.loads(line)
            if event["type"] == "ADDED" and event["object"]["metadata"]["name"] != name:
                continue
            seen[event["type"]] = event["object"]
    finally:
        connection.close()
    for kind, obj in seen.items():
        assert (obj["kind"], obj["apiVersion"], set(obj)) == ("PartialObjectMetadata", META,
                                                             {"kind", "apiVersion", "metadata"}), (kind, obj)
    assert seen["ADDED"]["metadata"]["labels"] == {"demo": "true"}
    assert int(seen["BOOKMARK"]["metadata"]["resourceVersion"]) > 0
