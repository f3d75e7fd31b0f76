"""The TLS WSGI server: peer certificates, streaming, disconnects, timeouts and stop().

The server runs in a background thread with its own gevent hub (no monkey-patching), so the
test thread can use blocking clients: urllib3, the kubernetes client, raw ssl sockets.
"""

from __future__ import annotations

import io
import json
import queue
import socket
import ssl
import threading
import time
from pathlib import Path

import gevent
import pytest
import urllib3

from server import pki
from server.http import logs
from server.http.serving import REQUEST_HEADERS, Server


@pytest.fixture(scope="module")
def shard_pki(tmp_path_factory) -> pki.ShardPKI:
    return pki.ensure_shard_pki(tmp_path_factory.mktemp("pki"), "127.0.0.1")


@pytest.fixture
def log_stream():
    """JSON logs of the server and middleware, captured."""
    stream = io.StringIO()
    logs.configure("json", 4, stream=stream)
    yield stream
    logs.configure("text", 0)


class Running:
    """A ``Server`` serving ``app`` on a free port in its own thread and hub."""

    def __init__(self, app, shard_pki, *, tls: bool = True, **kwargs):
        ready = threading.Event()
        box: dict = {}

        def run():
            try:
                box["server"] = Server(app, host="127.0.0.1", port=0,
                                       certfile=str(shard_pki.serving_cert_path) if tls else None,
                                       keyfile=str(shard_pki.serving_key_path) if tls else None,
                                       client_ca_files=shard_pki.client_ca_files, **kwargs)
                box["server"].start()
                box["hub"] = gevent.get_hub()
            finally:
                ready.set()
            box["server"].serve_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(10)
        self.server: Server = box["server"]
        self.hub = box["hub"]
        self.port = self.server.port
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"

    def call(self, fn, *args, timeout: float = 10):
        """Run ``fn`` in a greenlet on the server's hub and return its result."""
        out: queue.Queue = queue.Queue()

        def run():
            try:
                out.put((True, fn(*args)))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
                out.put((False, exc))

        self.hub.loop.run_callback_threadsafe(gevent.spawn, run)
        ok, value = out.get(timeout=timeout)
        if not ok:
            raise value
        return value

    def stop(self, timeout: float = 5) -> float:
        start = time.monotonic()
        if self.thread.is_alive():
            self.call(self.server.stop, timeout, timeout=timeout + 5)
            self.thread.join(timeout + 5)
        return time.monotonic() - start

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def whoami(environ, start_response):
    peer = environ.get("kcp.peer_certificate")
    if peer is not None:
        assert isinstance(peer["der"], bytes)
        peer = {k: v for k, v in peer.items() if k != "der"}
    sock = environ["kcp.socket"]
    body = json.dumps({"peer": peer, "nodelay": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def pool(shard_pki, cert: tuple[Path, Path] | None = None, **kw) -> urllib3.PoolManager:
    kwargs = {"ca_certs": str(shard_pki.ca_cert_path), "retries": False, "timeout": urllib3.Timeout(5, 5)}
    if cert:
        kwargs.update(cert_file=str(cert[0]), key_file=str(cert[1]))
    return urllib3.PoolManager(**kwargs, **kw)


def tls_socket(shard_pki, port: int, cert: tuple[Path, Path] | None = None, raw=None) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(shard_pki.ca_cert_path))
    if cert:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    sock = raw or socket.create_connection(("127.0.0.1", port), timeout=5)
    return ctx.wrap_socket(sock, server_hostname="127.0.0.1")


def recv_until(sock, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    return data


def admin(shard_pki):
    return shard_pki.admin_cert_path, shard_pki.admin_key_path


def test_admin_cert_seen_through_kubernetes_client(shard_pki, tmp_path):
    from kubernetes import client, config

    with Running(whoami, shard_pki) as srv:
        kubeconfig = pki.write_admin_kubeconfig(tmp_path, shard_pki, port=srv.port)
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), context="base", client_configuration=cfg)
        api = client.ApiClient(cfg)
        response = api.call_api("GET", cfg.host + "/whoami")
        response.read()
        doc = json.loads(response.data)
    assert doc["peer"] == {"user": "kcp-admin", "groups": ["system:masters"], "issuer": "kcp-shard-ca"}
    assert doc["nodelay"] != 0


def test_shard_proxy_cert_reports_requestheader_issuer(shard_pki):
    with Running(whoami, shard_pki) as srv:
        r = pool(shard_pki, (shard_pki.shard_proxy_cert_path, shard_pki.shard_proxy_key_path)).request(
            "GET", srv.url + "/")
    assert json.loads(r.data)["peer"] == {"user": "kcp-shard-proxy", "groups": [], "issuer": "kcp-requestheader-ca"}


def test_no_client_cert_means_no_peer(shard_pki):
    with Running(whoami, shard_pki) as srv:
        http = pool(shard_pki)
        docs = [json.loads(http.request("GET", srv.url + "/").data) for _ in range(2)]  # keep-alive reuse
    assert [d["peer"] for d in docs] == [None, None]


def test_cert_from_unknown_ca_is_rejected(shard_pki, tmp_path, log_stream, capfd):
    rogue = pki.CA.create("kcp-shard-ca")  # same name, different key
    cert, key = rogue.issue("mallory", ["system:masters"])
    pki.write_pem_pair(tmp_path / "m.crt", tmp_path / "m.key", cert, key)
    with Running(whoami, shard_pki) as srv:
        try:
            r = pool(shard_pki, (tmp_path / "m.crt", tmp_path / "m.key")).request("GET", srv.url + "/")
        except (urllib3.exceptions.HTTPError, ssl.SSLError, OSError):
            pass  # rejected during the handshake (TLS 1.3 reports it on the first read)
        else:
            assert json.loads(r.data)["peer"] is None
    assert "Traceback" not in log_stream.getvalue() + capfd.readouterr().err


def test_alpn_offers_http11_only(shard_pki):
    with Running(whoami, shard_pki) as srv:
        ctx = ssl.create_default_context(cafile=str(shard_pki.ca_cert_path))
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", srv.port), timeout=5),
                             server_hostname="localhost") as s:
            assert s.selected_alpn_protocol() == "http/1.1"
            assert s.version() in ("TLSv1.2", "TLSv1.3")


def streaming_app(interval: float, count: int | None, finished: threading.Event):
    def app(environ, start_response):
        def gen():
            try:
                i = 0
                while count is None or i < count:
                    yield b"event %d\n" % i
                    i += 1
                    gevent.sleep(interval)
            finally:
                finished.set()
        start_response("200 OK", [("Content-Type", "application/json")])
        return gen()
    return app


def test_each_chunk_is_flushed(shard_pki):
    finished = threading.Event()
    with Running(streaming_app(0.15, 3, finished), shard_pki) as srv:
        r = pool(shard_pki, admin(shard_pki)).request("GET", srv.url + "/watch", preload_content=False)
        assert r.headers["Transfer-Encoding"] == "chunked"
        start, arrivals = time.monotonic(), []
        for chunk in r.read_chunked():
            arrivals.append((round(time.monotonic() - start, 3), chunk))
    assert [c for _, c in arrivals] == [b"event 0\n", b"event 1\n", b"event 2\n"]
    times = [t for t, _ in arrivals]
    assert times[0] < 0.1, times  # not held back until the stream ends
    assert 0.1 < times[1] - times[0] < 0.5 and 0.1 < times[2] - times[1] < 0.5, times
    assert finished.wait(2)


def test_client_disconnect_mid_stream_runs_finally_quietly(shard_pki, log_stream, capfd):
    finished = threading.Event()
    app = logs.RequestLogMiddleware(streaming_app(0.02, None, finished))
    with Running(app, shard_pki) as srv:
        s = tls_socket(shard_pki, srv.port, admin(shard_pki))
        s.sendall(b"GET /watch HTTP/1.1\r\nHost: x\r\n\r\n")
        recv_until(s, b"event 0")
        s.close()  # close_notify + FIN; the next write fails
        assert finished.wait(3)
        deadline = time.monotonic() + 2
        while '"path":"/watch"' not in log_stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.02)
    out = log_stream.getvalue()
    assert '"path":"/watch"' in out  # the access line is written when the stream ends
    assert "Traceback" not in out + capfd.readouterr().err


def test_stop_ends_open_streams_and_idle_connections(shard_pki, log_stream):
    finished = threading.Event()
    stream = streaming_app(30, None, finished)  # one event, then silence

    def inner(environ, start_response):
        return (whoami if environ["PATH_INFO"] == "/idle" else stream)(environ, start_response)

    with Running(logs.RequestLogMiddleware(inner), shard_pki) as srv:
        idle = pool(shard_pki)
        assert idle.request("GET", srv.url + "/idle").status == 200  # leaves a keep-alive connection
        r = pool(shard_pki, admin(shard_pki)).request("GET", srv.url + "/watch", preload_content=False)
        chunks = r.read_chunked()
        assert next(chunks) == b"event 0\n"
        took = srv.stop(timeout=5)
        assert finished.is_set()
        with pytest.raises(Exception):
            next(chunks)  # the stream was cut (no terminating chunk)
        assert not srv.thread.is_alive()
    assert took < 2, took
    out = log_stream.getvalue()
    assert '"path":"/watch"' in out and '"path":"/idle"' in out  # the cut stream was logged too
    assert "Traceback" not in out


def test_stop_lets_a_normal_request_finish(shard_pki):
    started = threading.Event()

    def slow(environ, start_response):
        started.set()
        gevent.sleep(0.3)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    with Running(slow, shard_pki) as srv:
        result: list = []
        client = threading.Thread(target=lambda: result.append(pool(shard_pki).request("GET", srv.url + "/")))
        client.start()
        assert started.wait(5)
        srv.stop(timeout=5)
        client.join(5)
    assert result and result[0].status == 200 and result[0].data == b"ok"


def test_idle_and_handshake_timeouts_close_connections(shard_pki):
    with Running(whoami, shard_pki, idle_timeout=0.3, handshake_timeout=0.3) as srv:
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=5)  # never starts TLS
        t0 = time.monotonic()
        assert raw.recv(1) == b""
        assert time.monotonic() - t0 < 2
        s = tls_socket(shard_pki, srv.port)  # handshake done, no request line
        t0 = time.monotonic()
        try:
            assert s.recv(1) == b""
        except (ssl.SSLError, ConnectionError):
            pass
        assert time.monotonic() - t0 < 2
        # a request still works afterwards
        assert pool(shard_pki).request("GET", srv.url + "/").status == 200


def test_connections_past_max_connections_are_refused_at_once(shard_pki):
    with Running(whoami, shard_pki, tls=False, max_connections=1) as srv:
        first = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        first.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"200 OK" in first.recv(4096)  # keep-alive: holds the only slot
        t0 = time.monotonic()
        for _ in range(3):  # refused with a reset, not queued in the backlog
            with pytest.raises((ConnectionResetError, BrokenPipeError)):
                with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as second:
                    second.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    assert second.recv(4096) == b""  # (a reset may also show as EOF)
                    raise ConnectionResetError
        assert time.monotonic() - t0 < 2
        assert srv.server.refused_connections == 3
        first.close()
        deadline = time.monotonic() + 5
        while True:  # the slot frees once the server has seen the close
            try:
                with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as third:
                    third.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    if b"200 OK" in third.recv(4096):
                        break
            except ConnectionResetError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.05)


def _echo_body(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_trickled_body_is_cut_at_the_body_timeout(shard_pki, framing, log_stream):
    with Running(_echo_body, shard_pki, tls=False, idle_timeout=5, body_timeout=0.6) as srv:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        framing_header = b"Content-Length: 100" if framing == "length" else b"Transfer-Encoding: chunked"
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n" + framing_header + b"\r\n\r\n")
        t0 = time.monotonic()
        answer = b""
        for _ in range(40):  # a byte every 0.1 s: each read is quick, the body is not
            try:
                s.sendall(b"x" if framing == "length" else b"1\r\nx\r\n")
            except OSError:
                break
            time.sleep(0.1)
            try:
                answer += s.recv(4096, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError:
                break
            if answer:
                break
        assert answer.startswith(b"HTTP/1.1 408"), answer
        status = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert (status["kind"], status["code"], status["reason"]) == ("Status", 408, "Timeout")
        assert time.monotonic() - t0 < 2
        # a body sent at once on a fresh connection is unaffected
        r = urllib3.PoolManager(retries=False).request("POST", srv.url + "/", body=b"hello")
        assert (r.status, r.data) == (200, b"hello")
    assert "request body timed out" in log_stream.getvalue()


def test_plain_http_and_bad_request(shard_pki, log_stream, capfd):
    with Running(whoami, shard_pki, tls=False) as srv:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        s.sendall(b"BROKEN\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 400")
        r = urllib3.PoolManager(retries=False).request("GET", srv.url + "/")
        assert json.loads(r.data)["peer"] is None
    assert "Traceback" not in log_stream.getvalue() + capfd.readouterr().err


def test_stop_cuts_a_stalled_handshake(shard_pki):
    with Running(whoami, shard_pki) as srv:
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=5)  # TCP only, no ClientHello
        time.sleep(0.1)
        took = srv.stop(timeout=5)
        while raw.recv(1024):  # maybe a TLS alert, then EOF
            pass
    assert took < 2, took


def test_slow_request_head_is_cut_off(shard_pki):
    with Running(whoami, shard_pki, tls=False, idle_timeout=5, header_timeout=0.5) as srv:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        t0 = time.monotonic()
        s.sendall(b"GET / HTTP/1.1\r\n")
        closed = False
        for _ in range(40):  # one header byte every 0.1 s: each read is quick, the head is not
            try:
                s.sendall(b"X")
                time.sleep(0.1)
                closed = s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
            except BlockingIOError:
                continue
            except OSError:
                closed = True
            if closed:
                break
        assert closed and time.monotonic() - t0 < 2
        # a normal request on a fresh connection is unaffected, and keep-alive survives idle < 5 s
        http = urllib3.PoolManager(retries=False)
        assert http.request("GET", srv.url + "/").status == 200
        time.sleep(0.7)
        assert http.request("GET", srv.url + "/").status == 200


def _headers_env(environ, start_response):
    body = json.dumps({k: v for k, v in environ.items() if k.startswith(("HTTP_", "CONTENT_"))}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _raw_exchange(port: int, head: bytes) -> bytes:
    """The answer to ``head``: read until its JSON body ends, a 400 shows, or the connection closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head)
        data = b""
        while not data.endswith(b"}") and b"400" not in data[:12]:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def test_request_headers_reach_the_environ_as_pywsgi_would_put_them(shard_pki):
    with Running(_headers_env, shard_pki, tls=False) as srv:
        r = urllib3.PoolManager(retries=False).request(
            "POST", srv.url + "/", body=b"{}", headers=urllib3.HTTPHeaderDict(
                [("Content-Type", "application/json"), ("X-Multi", "a"), ("X-Multi", "b"), ("x-lower", " v ")]))
        env = json.loads(r.data)
        assert env["CONTENT_TYPE"] == "application/json" and env["CONTENT_LENGTH"] == "2"
        assert env["HTTP_X_MULTI"] == "a,b" and env["HTTP_X_LOWER"] == "v"
        folded = _raw_exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Fold: one\r\n two\r\nConnection: close\r\n\r\n")
        assert folded.startswith(b"HTTP/1.1 200") and b'"HTTP_X_FOLD": "one two"' in folded


@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(101)) + b"\r\n",
], ids=["line over 64 KiB", "over 100 headers"])
def test_an_oversized_request_head_is_a_400(shard_pki, head):
    with Running(_headers_env, shard_pki, tls=False) as srv:
        assert _raw_exchange(srv.port, head).startswith(b"HTTP/1.1 400")
        assert urllib3.PoolManager(retries=False).request("GET", srv.url + "/").status == 200


def _identity_flag(environ, start_response):
    body = json.dumps(environ["kcp.identity_headers"]).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


@pytest.mark.parametrize("header, claims", [
    (b"", False), (b"X-Request-Id: 1\r\nXYZ: 2\r\n", False), (b"X-Remote-User: a\r\n", True),
    (b"impersonate-user: a\r\n", True), (b"X-REMOTE-EXTRA-foo: b\r\n", True), (b"Impersonate-Extra-X: c\r\n", True),
], ids=["none", "look-alikes", "x-remote", "impersonate", "upper case", "extra"])
def test_the_environ_says_whether_any_header_claims_an_identity(shard_pki, header, claims):
    """Authenticators skip scanning the environ for Impersonate-*/X-Remote-* only on the server's word."""
    with Running(_identity_flag, shard_pki, tls=False) as srv:
        answer = _raw_exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\n" + header + b"Connection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(json.dumps(claims).encode())


@pytest.mark.parametrize("head", [
    b"GET /services/x/a%20b/c?watch=true&q=%2F HTTP/1.1\r\nHost: h\r\nX-Multi: a\r\nX-Multi: b\r\n"
    b"Cookie: c=1\r\nCookie: d=2\r\nAccept: application/json;as=Table;g=meta.k8s.io\r\nContent-Type: text/x\r\n"
    b"X-Remote-User: spoof\r\nAuthorization: Bearer t\r\n\r\n",
    b"DELETE /services/y HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
], ids=["get", "delete"])
def test_a_buffered_intercepted_request_sees_the_environ_pywsgi_would_build(shard_pki, head):
    """The interceptor's fast path (``_Handler._intercept_buffered``) builds the environ without pywsgi: the same
    keys and values as pywsgi's (what pywsgi adds for its own input stream aside), and one interceptor call."""
    seen = []

    def decline(environ, exchange):
        seen.append(dict(environ))
        return False

    def app(environ, start_response):
        seen.append(dict(environ))
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    with Running(app, shard_pki, tls=False, intercept=decline, intercept_prefix="/services/") as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
            s.sendall(head)
            assert recv_until(s, b"ok").startswith(b"HTTP/1.1 200")
    fast, pywsgi_env = seen  # declined once, then served by the app
    assert fast["wsgi.input"].read() == b"" and not hasattr(fast["wsgi.input"], "content_length")  # the fast path
    own = {"wsgi.input", "wsgi.input_terminated", REQUEST_HEADERS}
    assert {k: v for k, v in fast.items() if k not in own} == {k: v for k, v in pywsgi_env.items() if k not in own}
    lines = head.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")[1:]  # and the header lines as received
    assert fast[REQUEST_HEADERS] == [tuple(part.strip() for part in line.split(":", 1)) for line in lines]


def _stream(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/json")])  # no Content-Length: a stream
    return iter([b'{"a":1}\n'])


def test_a_head_of_a_stream_sends_no_chunk_framing_and_keeps_the_connection_usable(shard_pki):
    with Running(_stream, shard_pki, tls=False) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
            s.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                head += s.recv(1)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b"0\r\n\r\n"):
                answer += s.recv(4096)
        assert head.startswith(b"HTTP/1.1 200")
        assert answer.startswith(b"HTTP/1.1 200") and b'{"a":1}' in answer  # not a stray "0\r\n\r\n" first
