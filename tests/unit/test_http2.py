"""HTTP/2 between our processes: ``server.http.serving_h2`` (a ``Server(http2=True)``) and ``kcp_virtual.transport.http2``.

The server runs in its own thread and hub (``tests.unit.test_serving.Running``); the HTTP/2 client
runs on the test thread's hub.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading

import gevent
import pytest

from kcp_virtual.transport import http2, httpclient
from server import pki
from tests.unit.test_serving import Running


@pytest.fixture(scope="module")
def shard_pki(tmp_path_factory) -> pki.ShardPKI:
    return pki.ensure_shard_pki(tmp_path_factory.mktemp("pki"), "127.0.0.1")


def h2_pool(url: str, shard_pki: pki.ShardPKI) -> http2.Pool:
    context = httpclient.client_context(ca_file=str(shard_pki.ca_cert_path), cert_file=str(shard_pki.admin_cert_path),
                                        key_file=str(shard_pki.admin_key_path), alpn=["h2"])
    return http2.Pool(url, context)


def pieces_app(environ, start_response):
    """Three pieces with pauses between them, as a watch sends its events."""
    start_response("200 OK", [("Content-Type", "application/json"), ("Connection", "keep-alive")])

    def body():
        for i in range(3):
            gevent.sleep(0.01)
            yield b'{"n":%d}\n' % i
    return body()


def environ_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/json")])
    peer = environ.get("kcp.peer_certificate") or {}
    return [json.dumps({"method": environ["REQUEST_METHOD"], "path": environ["PATH_INFO"],
                        "query": environ["QUERY_STRING"], "x_multi": environ.get("HTTP_X_MULTI"),
                        "host": environ.get("HTTP_HOST"), "protocol": environ["SERVER_PROTOCOL"],
                        "user": peer.get("user"), "has_socket": "kcp.socket" in environ}).encode()]


def test_many_streams_share_one_connection_and_pieces_arrive_as_yielded(shard_pki):
    with Running(pieces_app, shard_pki, http2=True) as srv:
        pool = h2_pool(srv.url, shard_pki)
        streams = [pool.request("GET", f"/watch/{i}?watch=true") for i in range(20)]
        assert len(pool._connections) == 1
        for stream in streams:
            assert stream.status == 200 and stream.headers.get("content-type") == "application/json"
            assert stream.headers.get("connection") is None  # connection-specific headers do not exist in h2
            assert list(stream.stream()) == [b'{"n":0}\n', b'{"n":1}\n', b'{"n":2}\n']
        pool.close()


def test_a_stream_carries_the_request_as_pywsgi_would_give_it(shard_pki):
    with Running(environ_app, shard_pki, http2=True) as srv:
        pool = h2_pool(srv.url, shard_pki)
        stream = pool.request("GET", "/a%20b/c%2Fd?x=1&y=%20", [("X-Multi", "1"), ("X-Multi", "2")])
        got = json.loads(stream.read())
        assert got == {"method": "GET", "path": "/a b/c/d", "query": "x=1&y=%20", "x_multi": "1,2",
                       "host": f"127.0.0.1:{srv.port}", "protocol": "HTTP/2", "user": "kcp-admin",
                       "has_socket": False}
        pool.close()


def test_a_reset_stream_ends_its_application_at_once(shard_pki):
    ended = threading.Event()

    def endless(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/json")])

        def body():
            try:
                yield b""
                while True:
                    gevent.sleep(0.05)
                    yield b"{}\n"
            finally:
                ended.set()
        return body()

    with Running(endless, shard_pki, http2=True) as srv:
        pool = h2_pool(srv.url, shard_pki)
        stream = pool.request("GET", "/endless")
        pieces = stream.stream()
        assert next(pieces) == b"{}\n"
        other = pool.request("GET", "/endless")  # the connection stays up for the others
        pieces.close()  # RST_STREAM
        assert ended.wait(2)
        assert next(other.stream()) == b"{}\n"
        pool.close()


def test_an_interrupted_stream_ends_its_reader(shard_pki):
    def silent(environ, start_response):
        start_response("200 OK", [])

        def body():
            yield b""
            gevent.sleep(30)
        return body()

    with Running(silent, shard_pki, http2=True) as srv:
        pool = h2_pool(srv.url, shard_pki)
        stream = pool.request("GET", "/silent")
        gevent.spawn_later(0.1, stream.interrupt)
        with pytest.raises(http2.ProtocolError):
            list(stream.stream())
        pool.close()


def test_a_reader_that_falls_too_far_behind_loses_its_stream(shard_pki, monkeypatch):
    monkeypatch.setattr(http2, "MAX_BUFFERED", 64 * 1024)

    def big(environ, start_response):
        start_response("200 OK", [])
        count = 1 if environ["PATH_INFO"] == "/small" else 10
        return [b"x" * (40 * 1024) for _ in range(count)]

    with Running(big, shard_pki, http2=True) as srv:
        pool = h2_pool(srv.url, shard_pki)
        stream = pool.request("GET", "/big")
        gevent.sleep(0.5)  # nobody reads: the buffer passes 64 KiB
        with pytest.raises(http2.ProtocolError, match="fell behind"):
            list(stream.stream())
        assert len(pool.request("GET", "/small").read()) == 40 * 1024  # the connection serves on
        pool.close()


def test_clients_that_offer_http11_keep_it_and_servers_without_http2_refuse(shard_pki):
    with Running(environ_app, shard_pki, http2=True) as srv:
        context = ssl.create_default_context(cafile=str(shard_pki.ca_cert_path))
        context.check_hostname = False
        context.set_alpn_protocols(["h2", "http/1.1"])  # what kubectl and client-go offer
        with context.wrap_socket(socket.create_connection(("127.0.0.1", srv.port))) as tls:
            assert tls.selected_alpn_protocol() == "http/1.1"
    with Running(environ_app, shard_pki) as srv:
        with pytest.raises(http2.NotSupported):
            h2_pool(srv.url, shard_pki).request("GET", "/")
