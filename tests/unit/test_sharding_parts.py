"""The pieces of sharding without servers: the front-proxy's path resolution, the scheduler's choice, the header
policy of a proxy that passes credentials on, etcd prefixes, and the plain-HTTP client etcd is reached with."""

from __future__ import annotations

import gevent
import gevent.server
import pytest

from kcp_virtual.transport import http1, httpclient
from server.apis import builtin_types
from server.controllers.workspaces import Unschedulable, WorkspaceController
from server.frontproxy import WorkspaceIndex
from server.registry.generic import Registry
from server.registry.resourcetype import Catalog
from server.storage import SQLiteBackend, Store
from server.storage.etcd import _overlap, _prefix_end, normalize_prefix


class _Informer:
    def __init__(self, objects: dict):
        self.objects = objects  # (cluster, name) -> object

    def peek(self, cluster, namespace, name):
        return self.objects.get((cluster, name))


def _workspace(shard: str) -> dict:
    return {"metadata": {"name": "x"}, "status": {"location": {"current": shard}}}


def test_a_path_resolves_from_the_root_down():
    index = WorkspaceIndex.__new__(WorkspaceIndex)
    index.root_name = "root"
    index._urls = {"root": "https://a", "two": "https://b"}
    index.workspaces = {
        "root": _Informer({("root", "org"): _workspace("two"), ("root", "pending"): {"metadata": {}}}),
        "two": _Informer({("root:org", "team"): _workspace("root"), ("root:org", "gone"): _workspace("three")}),
    }
    assert index.resolve("root") == "root"
    assert index.resolve("root:org") == "two"
    assert index.resolve("root:org:team") == "root"      # its ClusterWorkspace is on two, the cluster on root
    assert index.resolve("root:org:nope") is None        # no such workspace
    assert index.resolve("root:pending") is None         # not scheduled yet
    assert index.resolve("root:org:gone") is None        # on a shard no longer registered
    assert index.resolve("other") is None


class _Directory:
    is_root = True

    def __init__(self, shards: list[dict]):
        self._shards = shards

    def shards(self):
        return self._shards


def _shard(name: str, load: int, **labels) -> dict:
    return {"metadata": {"name": name, "labels": labels}, "spec": {"baseURL": f"https://{name}"},
            "status": {"logicalClusters": load}}


@pytest.fixture
def controller(tmp_path):
    store = Store(SQLiteBackend(str(tmp_path / "kcp.db")))
    ctrl = WorkspaceController(Registry(store, Catalog(builtin_types())), base_url="https://root",
                               shard_name="root")
    yield ctrl
    store.close()


def test_the_scheduler_prefers_the_least_loaded_but_keeps_children_near_their_parent(controller):
    controller.directory = _Directory([_shard("root", 20), _shard("two", 7)])
    assert controller._schedule({}) == "root"                  # within 50% (+10): stays here
    controller.directory = _Directory([_shard("root", 30), _shard("two", 10)])
    placed = [controller._schedule({}) for _ in range(6)]
    assert placed == ["two"] * 6                               # and counts what it placed since the last report


def test_the_scheduler_follows_name_and_selector(controller):
    controller.directory = _Directory([_shard("root", 0), _shard("two", 50, zone="b")])
    assert controller._schedule({"spec": {"shard": {"name": "two"}}}) == "two"
    assert controller._schedule({"spec": {"shard": {"selector": {"matchLabels": {"zone": "b"}}}}}) == "two"
    with pytest.raises(Unschedulable, match='no shard named "three"'):
        controller._schedule({"spec": {"shard": {"name": "three"}}})
    with pytest.raises(Unschedulable, match="no shard matches"):
        controller._schedule({"spec": {"shard": {"selector": {"matchLabels": {"zone": "c"}}}}})


def test_a_proxy_passing_credentials_keeps_tokens_and_impersonation_but_never_identity_claims():
    environ = {"HTTP_AUTHORIZATION": "Bearer t", "HTTP_IMPERSONATE_USER": "bob", "HTTP_X_REMOTE_USER": "admin",
               "HTTP_X_KCP_SHARD_RESOURCE_VERSION": "9", "HTTP_ACCEPT": "application/json", "HTTP_HOST": "h"}
    names = lambda keep: sorted(n for n, _ in httpclient.environ_request_headers(environ, keep=keep))  # noqa: E731
    assert names(()) == ["Accept"]
    assert names(httpclient.CALLER_CREDENTIALS) == ["Accept", "Authorization", "Impersonate-User"]
    assert names(httpclient.IMPERSONATION) == ["Accept", "Impersonate-User"]


def test_etcd_prefixes_are_directories():
    assert normalize_prefix("/registry") == normalize_prefix("/registry/") == "/registry/"
    for bad in ("registry", "", None):
        with pytest.raises(ValueError):
            normalize_prefix(bad)
    assert _overlap("/a/", "/a/b/") and _overlap("/", "/a/") and not _overlap("/a/", "/ab/")
    assert _prefix_end(b"/a/") == b"/a0" and _prefix_end(b"a\xff") == b"b" and _prefix_end(b"\xff") == b"\x00"


def test_http1_speaks_plain_http_too():
    def answer(sock, address):
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    server = gevent.server.StreamServer(("127.0.0.1", 0), answer)
    server.start()
    try:
        pool = http1.Pool(f"http://127.0.0.1:{server.server_port}", None)
        assert pool.request("GET", "/").read() == b"ok"
        with pytest.raises(ValueError, match="needs an SSL context"):
            http1.Pool("https://127.0.0.1:1", None)
        with pytest.raises(ValueError, match="expected an https:// or http:// URL"):
            http1.Pool("ftp://127.0.0.1:1", None)
    finally:
        server.stop()
