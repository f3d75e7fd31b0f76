"""Logging configuration and the per-request access line / metrics middleware."""

from __future__ import annotations

import io
import json
import logging
import os
import time

import pytest
import structlog
from structlog.contextvars import bind_contextvars
from werkzeug.test import EnvironBuilder

from server.http import logs
from server.http.metrics import Metrics

FIELDS = {"request_id", "user", "cluster", "virtual_workspace", "verb", "resource", "method", "path", "code",
          "latency_ms", "bytes", "timestamp", "level", "event"}


@pytest.fixture
def stream():
    out = io.StringIO()
    logs.configure("json", logs.ACCESS_LOG_VERBOSITY, stream=out)
    yield out
    logs.route_to_stdlib()  # as the test harness has it


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def call(app, path: str = "/", *, method: str = "GET", headers=None, consume: bool = True):
    """Drive a WSGI app the way pywsgi does: call, iterate, close. Returns (status, body, iterable)."""
    environ = EnvironBuilder(path=path, method=method, headers=headers).get_environ()
    status = []
    result = app(environ, lambda s, h, exc_info=None: status.append(s))
    if not consume:
        return status, None, result
    try:
        body = b"".join(result)
    finally:
        result.close()
    return status[0], body, result


def api(environ, start_response):
    """Stands in for the real app: authn/requestinfo bind user, verb and resource."""
    bind_contextvars(user="alice", verb="list", resource="configmaps")
    structlog.get_logger().info("inner line")
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "2")])
    return [b"{}"]


def test_one_json_line_per_request_with_all_fields(stream):
    app = logs.RequestLogMiddleware(api, Metrics())
    call(app, "/clusters/root:org/api/v1/namespaces/default/configmaps", headers={"X-Request-Id": "abc-123"})
    inner, line = lines(stream)
    assert inner["event"] == "inner line" and inner["request_id"] == "abc-123" and inner["user"] == "alice"
    assert set(line) == FIELDS
    assert line["event"] == "request" and line["level"] == "info"
    assert (line["request_id"], line["user"], line["verb"], line["resource"]) == ("abc-123", "alice", "list",
                                                                                 "configmaps")
    assert (line["cluster"], line["virtual_workspace"]) == ("root:org", None)
    assert (line["method"], line["path"], line["code"], line["bytes"]) == (
        "GET", "/clusters/root:org/api/v1/namespaces/default/configmaps", 200, 2)
    assert line["latency_ms"] >= 0
    assert line["timestamp"].endswith("Z") and "T" in line["timestamp"]


@pytest.mark.parametrize("path,cluster,vw", [
    ("/api/v1/namespaces", None, None),
    ("/clusters/root", "root", None),
    ("/clusters/*/apis/apps/v1/deployments", "*", None),
    ("/services/apiexport/root/my-export/clusters/root:consumer/api/v1/configmaps", "root:consumer", "apiexport"),
    ("/services/initializingworkspaces/system:init/clusters/*/apis", "*", "initializingworkspaces"),
    ("/services/foo", None, "foo"),
])
def test_cluster_and_virtual_workspace_from_path(stream, path, cluster, vw):
    call(logs.RequestLogMiddleware(lambda e, s: (s("404 Not Found", []), [b""])[1]), path)
    (line,) = lines(stream)
    assert (line["cluster"], line["virtual_workspace"], line["code"]) == (cluster, vw, 404)


def test_generated_request_ids_are_unique(stream):
    app = logs.RequestLogMiddleware(api)
    for _ in range(3):
        call(app)
    ids = [line["request_id"] for line in lines(stream) if line["event"] == "request"]
    assert len(set(ids)) == 3 and all(ids)


def test_context_does_not_leak_between_requests(stream):
    def first(environ, start_response):
        bind_contextvars(user="alice", namespace="secret-ns")
        start_response("200 OK", [])
        return [b""]

    def second(environ, start_response):
        start_response("200 OK", [])
        return [b""]

    before = structlog.contextvars.get_contextvars()
    call(logs.RequestLogMiddleware(first))
    call(logs.RequestLogMiddleware(second))  # same thread, like a keep-alive connection's greenlet
    one, two = lines(stream)
    assert one["namespace"] == "secret-ns" and one["user"] == "alice"
    assert "namespace" not in two and two["user"] is None
    assert structlog.contextvars.get_contextvars() == before  # nothing left in the caller's context


class _Outlet:
    """A parked stream as the server offers it, enough for the access log: ``when_done`` and ``bytes``."""

    def __init__(self):
        self.bytes = 0
        self.callbacks = []

    def when_done(self, callback):
        self.callbacks.append(callback)

    def done(self):
        for callback in self.callbacks:
            callback()


def test_a_parked_streams_line_keeps_the_requests_context_but_not_the_request(stream):
    """A parked watch's line comes when it ends, with everything the request bound (the impersonator too) and
    the bytes the stream wrote, though only a ``_ParkedLine`` is kept meanwhile: no environ, no Context."""
    metrics = Metrics()
    parked = []

    class Body:
        def __iter__(self):
            return iter(())

        def park(self, outlet):
            structlog.get_logger().info("parking")  # still in the request's context
            parked.append(outlet)

    def watch(environ, start_response):
        bind_contextvars(user="bob", verb="watch", resource="configmaps", impersonator="admin")
        start_response("200 OK", [("Content-Type", "application/json")])
        return Body()

    app = logs.RequestLogMiddleware(watch, metrics)
    _, _, result = call(app, "/clusters/root:org/api/v1/configmaps", consume=False,
                        headers={"X-Request-Id": "req-7"})
    outlet = _Outlet()
    result.park(outlet)
    assert parked == [outlet] and len(outlet.callbacks) == 1
    kept = outlet.callbacks[0]
    assert type(kept).__name__ == "_ParkedLine" and not hasattr(kept, "__dict__")
    assert result.environ is None and result.result == ()  # the request lets go of its environ and its body
    inner, = lines(stream)
    assert (inner["event"], inner["user"], inner["request_id"]) == ("parking", "bob", "req-7")
    assert (metrics.open_watches, metrics.inflight_requests) == (1, 0)
    outlet.bytes = 123
    bind_contextvars(user="someone-else")  # whatever context the stream ends in
    try:
        outlet.done()
    finally:
        structlog.contextvars.unbind_contextvars("user")
    _, line = lines(stream)
    assert {k: line[k] for k in ("request_id", "user", "cluster", "verb", "resource", "impersonator", "method",
                                 "path", "code", "bytes")} == {
        "request_id": "req-7", "user": "bob", "cluster": "root:org", "verb": "watch", "resource": "configmaps",
        "impersonator": "admin", "method": "GET", "path": "/clusters/root:org/api/v1/configmaps", "code": 200,
        "bytes": 123}
    assert (metrics.open_watches, metrics.inflight_requests) == (0, 0)
    result.close()  # the server does not, but a second line must not come of it
    assert len(lines(stream)) == 2


def test_streaming_response_logged_when_closed_and_counted_as_watch(stream):
    metrics = Metrics()

    def watch(environ, start_response):
        bind_contextvars(user="bob", verb="watch", resource="configmaps")

        def gen():
            yield b"event 1\n"
            structlog.get_logger().info("in stream")  # the generator runs in the request's context
            yield b"event 22\n"
        start_response("200 OK", [("Content-Type", "application/json")])
        return gen()

    app = logs.RequestLogMiddleware(watch, metrics)
    _, _, result = call(app, "/clusters/root/api/v1/configmaps", consume=False)
    assert lines(stream) == []  # nothing logged until the stream ends
    assert (metrics.open_watches, metrics.inflight_requests) == (1, 0)
    assert b"".join(result) == b"event 1\nevent 22\n"
    result.close()
    inner, line = lines(stream)
    assert inner["request_id"] == line["request_id"] and inner["user"] == "bob"
    assert (line["verb"], line["bytes"], line["code"]) == ("watch", 17, 200)
    assert (metrics.open_watches, metrics.inflight_requests) == (0, 0)
    text = metrics.render()[0].decode()
    assert 'apiserver_request_total{code="200",resource="configmaps",verb="WATCH",virtual_workspace=""} 1.0' in text
    assert 'verb="WATCH"' not in text.split("apiserver_request_duration_seconds", 1)[1]  # no watch latencies


def test_stream_closed_early_still_logs_once(stream):
    closed = []

    def app(environ, start_response):
        def gen():
            try:
                while True:
                    yield b"x"
            finally:
                closed.append(True)
        start_response("200 OK", [])
        return gen()

    _, _, result = call(logs.RequestLogMiddleware(app), consume=False)
    iterator = iter(result)
    next(iterator), next(iterator)
    result.close()  # what pywsgi does after a failed write
    result.close()
    assert closed == [True]
    (line,) = lines(stream)
    assert line["bytes"] == 2


def test_app_exception_logged_as_500_and_reraised(stream):
    metrics = Metrics()

    def broken(environ, start_response):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        call(logs.RequestLogMiddleware(broken, metrics))
    (line,) = lines(stream)
    assert line["code"] == 500
    assert metrics.inflight_requests == 0


def test_metrics_render_and_separate_registries(stream):
    a, b = Metrics(), Metrics()  # two servers in one process: no duplicate-registration error
    app = logs.RequestLogMiddleware(api, a)
    for _ in range(2):
        call(app, "/services/vw1/clusters/root/api/v1/configmaps")
    text = a.render()[0].decode()
    assert 'apiserver_request_total{code="200",resource="configmaps",verb="LIST",virtual_workspace="vw1"} 2.0' in text
    assert 'apiserver_request_duration_seconds_count{resource="configmaps",verb="LIST"} 2.0' in text
    assert "apiserver_current_inflight_requests 0.0" in text and "apiserver_open_watches 0.0" in text
    assert "apiserver_request_total{" not in b.render()[0].decode()

    response = a.wsgi_response({"HTTP_ACCEPT": "application/openmetrics-text; version=1.0.0"})
    assert response.status_code == 200 and response.mimetype == "application/openmetrics-text"
    assert a.wsgi_response({}).mimetype == "text/plain"


def test_stdlib_loggers_share_the_format_and_context(stream):
    logs.configure("json", logs.ACCESS_LOG_VERBOSITY, stream=stream)
    seen = []

    def app(environ, start_response):
        logging.getLogger("kubernetes.client").warning("from %s", "stdlib")
        logging.getLogger("urllib3.connectionpool").info("chatter")  # below -v=6
        seen.append(True)
        start_response("200 OK", [])
        return [b""]

    call(logs.RequestLogMiddleware(app), headers={"X-Request-Id": "rid-1"})
    stdlib, access = lines(stream)
    assert seen
    assert stdlib["event"] == "from stdlib" and stdlib["level"] == "warning"
    assert stdlib["logger"] == "kubernetes.client" and stdlib["request_id"] == "rid-1"
    assert access["event"] == "request"


def test_verbosity_levels(stream):
    logs.configure("json", 0, stream=stream)
    structlog.get_logger().debug("hidden")
    logs.configure("json", 4, stream=stream)
    structlog.get_logger().debug("shown")
    logs.configure("json", -1, stream=stream)
    structlog.get_logger().info("hidden too")
    assert [line["event"] for line in lines(stream)] == ["shown"]
    with pytest.raises(ValueError):
        logs.configure("xml", 0)


def test_text_format_without_colours_off_a_tty():
    out = io.StringIO()
    logs.configure("text", logs.ACCESS_LOG_VERBOSITY, stream=out)
    try:
        call(logs.RequestLogMiddleware(api), "/clusters/root/api")
    finally:
        logs.route_to_stdlib()
    text = out.getvalue()
    assert "\x1b[" not in text
    request_line = text.splitlines()[-1]
    assert "request" in request_line and "cluster=root" in request_line and "code=200" in request_line


def test_by_default_only_server_errors_get_an_access_line(stream):
    logs.configure("json", 0, stream=stream)

    def app(environ, start_response):
        code = environ["PATH_INFO"].rsplit("/", 1)[1]
        start_response(f"{code} X", [])
        return [b""]

    for code in (200, 404, 500, 503):
        call(logs.RequestLogMiddleware(app), f"/clusters/root/{code}")
    assert [line["code"] for line in lines(stream)] == [500, 503]
    logs.configure("json", logs.ACCESS_LOG_VERBOSITY, stream=stream)  # kcp start -v 2: one line per request
    call(logs.RequestLogMiddleware(app), "/clusters/root/200")
    assert lines(stream)[-1]["code"] == 200


def test_the_test_harness_routes_lines_through_logging(caplog):
    logs.route_to_stdlib()
    with caplog.at_level(logging.INFO):
        structlog.get_logger("kcp.test").info("hello", a=1)
    assert any("hello" in record.getMessage() and "a=1" in record.getMessage() for record in caplog.records)


def test_exceptions_are_rendered_in_json(stream):
    try:
        raise ValueError("bad")
    except ValueError:
        structlog.get_logger().exception("failed")
    (line,) = lines(stream)
    assert line["level"] == "error" and "ValueError: bad" in line["exception"]


def test_middleware_overhead_is_small():
    """Overhead per request of logging + metrics (target < 15 µs; asserted loosely, machines are noisy)."""
    with open(os.devnull, "w") as devnull:
        logs.configure("json", logs.ACCESS_LOG_VERBOSITY, stream=devnull)
        try:
            body = [b"{}"]

            def bare(environ, start_response):
                bind_contextvars(user="u", verb="get", resource="namespaces")
                start_response("200 OK", [("Content-Length", "2")])
                return body

            environ = EnvironBuilder(path="/clusters/root/api/v1/namespaces/default").get_environ()

            def per_request(app, n=3000):
                best = float("inf")
                for _ in range(5):
                    t0 = time.perf_counter()
                    for _ in range(n):
                        result = app(dict(environ), lambda s, h, e=None: None)
                        for _ in result:
                            pass
                        getattr(result, "close", lambda: None)()
                    best = min(best, (time.perf_counter() - t0) / n)
                return best

            overhead = per_request(logs.RequestLogMiddleware(bare, Metrics())) - per_request(bare)
        finally:
            logs.route_to_stdlib()
    print(f"RequestLogMiddleware overhead: {overhead * 1e6:.1f} µs/request")
    assert overhead < 100e-6


@pytest.mark.parametrize("event_dict", [
    {"timestamp": "2026-11-25T23:20:22.123456Z", "level": "info", "event": "request", "logger": "kcp.x", "b": 1,
     "a": "x y", "c": None, "d": 0.5, "e": {"k": 1}},
    {"timestamp": "t", "level": "warning", "event": "an event message longer than thirty characters", "z": "q"},
    {"event": "alone"}, {"event": "x", "level": "debug"}, {"event": "x", "logger": "l"},
    {"event": "quoted", "k": "a=b", "j": "it's", "m": [1, "2"], "n": "tab\there", "o": 'say "hi"'},
])
def test_the_plain_console_renderer_writes_console_renderer_s_exact_line(event_dict):
    from server.http.logs import _PlainConsoleRenderer

    expected = structlog.dev.ConsoleRenderer(colors=False)(None, "info", dict(event_dict))
    assert _PlainConsoleRenderer()(None, "info", dict(event_dict)) == expected


class _CountingStream(io.StringIO):
    def __init__(self):
        super().__init__()
        self.writes = 0

    def write(self, text):
        self.writes += 1
        return super().write(text)


def test_lines_of_greenlets_are_written_once_per_loop_turn_and_the_main_greenlets_at_once():
    import gevent

    out = _CountingStream()
    logs.configure("text", 0, stream=out)
    try:
        log = structlog.get_logger("kcp.test")
        log.info("from the main greenlet")
        assert out.writes == 1 and "from the main greenlet" in out.getvalue()
        seen_before_the_turn_ended = []

        def request(i):
            log.info("request", n=i)
            seen_before_the_turn_ended.append(out.getvalue().count("request "))

        gevent.joinall([gevent.spawn(request, i) for i in range(50)])
        gevent.sleep(0)  # the loop runs its callbacks
        assert seen_before_the_turn_ended == [0] * 50  # nothing written while the turn went on
        assert out.getvalue().count("request ") == 50 and out.writes == 2  # then all of them in one write
        gevent.spawn(lambda: log.info("x" * 70_000)).join()
        assert out.writes == 3  # past 64 KiB pending: written at once
    finally:
        logs.configure("text", 0)
