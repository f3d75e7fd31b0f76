"""HTTPS between a shard and a virtual-workspace server, from gevent code that is not monkey-patched.

Both directions use ``kcp_virtual.transport.http1`` (a lean keep-alive HTTP/1.1 client; urllib3 cost the
shard ~280 µs of CPU per forwarded GET) on gevent's own sockets and SSL context, so every call yields
to the hub instead of blocking it -- in ``kcp start``, in ``kcp virtual-workspaces`` and in the
shard's test thread alike, none of which monkey-patch. Shared by the two forwarders (the shard's
``/services`` forwarding and the remote ShardClient's proxy ``forward``) and the remote ShardClient:

* ``https_pool``: one keep-alive pool per upstream that never blocks for a free connection, so
  long-running watches never hold up other requests;
* ``environ_request_headers`` / ``relay``: what crosses a proxy, and the response relayed chunk by
  chunk -- a watch passes through unbuffered, and the upstream connection is shut down the moment
  the client leaves (an io watcher on the client's socket, no extra greenlet per stream);
* ``interrupted_when_client_leaves``: that shutdown, for any upstream response with ``interrupt()``
  (an ``http1.Response`` or an ``http2.Stream``).
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Callable, Iterator
from urllib.parse import quote

import gevent
import gevent.ssl
import orjson
import structlog
from werkzeug.wrappers import Response

from kcp_virtual.framework import errors
from kcp_virtual.framework.negotiation import MAX_BODY_BYTES, read_limited_body# MAX_BODY_BYTES: re-exported
from kcp_virtual.framework.watchstream import WatchResponse
from kcp_virtual.transport import http1

__all__ = ["client_context", "https_pool", "environ_request_headers", "request_headers", "relay", "unavailable",
           "interrupted_when_client_leaves", "quote_path", "response_headers", "response_head_lines", "BUFFERED_RESPONSE_BYTES",
           "UPSTREAM_ERRORS", "MAX_BODY_BYTES", "read_body", "request_target", "CONNECT_TIMEOUT"]

log = structlog.get_logger("kcp.forwarding")

CONNECT_TIMEOUT = 5.0
#: Responses up to this size with a Content-Length are read whole and answered in one write.
BUFFERED_RESPONSE_BYTES = 1024 * 1024
_READ = 1  # libev/libuv READ event
_PATH_SAFE = "/:@!$&'()*+,;="

#: What a failing upstream raises: connection refused or reset, TLS failures, timeouts, truncated bodies.
UPSTREAM_ERRORS = (OSError,)  # http1.ProtocolError and ssl.SSLError are OSErrors

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
                        "te", "trailer", "trailers", "transfer-encoding", "upgrade"})
#: Request headers that carry or claim an identity (or that only the shard may assert, ``X-Kcp-*``):
#: the proxy has already authenticated the caller and sets its own.
_IDENTITY_PREFIXES = ("impersonate-", "x-remote-", "x-kcp-")
#: ``X-Request-Id`` too: the forwarders send the request's id (the caller's, when it sent one) themselves.
_DROPPED_REQUEST = frozenset({"authorization", "content-length", "expect", "host", "x-request-id"}) | HOP_BY_HOP
_DROPPED_RESPONSE = frozenset({"content-length", "server"}) | HOP_BY_HOP


def client_context(*, ca_file: str | None = None, ca_data: str | None = None, cert_file: str | None = None,
                   key_file: str | None = None, verify: bool = True, alpn: list[str] | None = None) -> ssl.SSLContext:
    """A gevent-cooperative TLS client context: trusts only ``ca_file``/``ca_data`` (the system store when
    neither is given), presents ``cert_file``/``key_file`` when given, checks the server's name."""
    ctx = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(alpn or ["http/1.1"])
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif ca_file or ca_data:
        ctx.load_verify_locations(cafile=ca_file, cadata=ca_data)
    else:
        ctx.load_default_certs()
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


def https_pool(url: str, ssl_context: ssl.SSLContext, *, maxsize: int = 256) -> http1.Pool:
    """A keep-alive pool to the ``https://host:port`` of ``url``; no redirects, never blocking for a connection."""
    return http1.Pool(url, ssl_context, maxsize=maxsize, connect_timeout=CONNECT_TIMEOUT)


def unavailable(what: str, exc: BaseException) -> errors.ServiceUnavailable:
    """The 503 for an upstream that cannot be reached, with the root cause (``connection refused``)."""
    cause: BaseException | None = exc
    reason = str(exc)
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            reason = cause.strerror.lower()
            break
        cause = cause.__cause__ or cause.__context__
    return errors.ServiceUnavailable(f"error trying to reach {what}: {reason}")


#: ``keep`` -> (environ key -> the request header a proxy passes on under it; None: not a request header, or
#: a dropped one), each remembered up to ``_NAMES_KEPT`` keys (names are the client's: a memo must not grow
#: without bound).
_FORWARDED_NAMES: dict[tuple[str, ...], dict[str, str | None]] = {(): {}}
_NAMES_KEPT = 1024
#: What a proxy that leaves authentication to the upstream passes on (``keep``): bearer tokens and impersonation
#: requests -- never ``X-Remote-*`` or ``X-Kcp-*``, which only the proxy itself asserts.
CALLER_CREDENTIALS = ("authorization", "impersonate-")
IMPERSONATION = ("impersonate-",)


def _forwarded_name(key: str, keep: tuple[str, ...] = ()) -> str | None:
    if key.startswith("HTTP_"):
        if key in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):  # WSGI's CONTENT_* carry those
            return None
        name = key[5:].replace("_", "-").title()
    elif key == "CONTENT_TYPE":
        name = "Content-Type"
    else:
        return None  # CONTENT_LENGTH (the proxy frames the body itself) and the server's own keys
    return name if _passed(name.lower(), keep) else None


def _passed(lower: str, keep: tuple[str, ...]) -> bool:
    """Whether a proxy passes on the request header named ``lower`` (see ``environ_request_headers``)."""
    if keep and lower.startswith(keep):
        return True
    return lower not in _DROPPED_REQUEST and not lower.startswith(_IDENTITY_PREFIXES)


def environ_request_headers(environ: dict, *, keep: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """The request's end-to-end headers, without credentials or identity claims (the proxy sets its own),
    hop-by-hop ones or those its ``Connection`` header lists -- except those starting with one of ``keep``
    (lower case: ``CALLER_CREDENTIALS`` for an upstream that authenticates the caller itself). One pass over the
    environ with the names' verdicts remembered: ~1 µs, where filtering werkzeug's ``EnvironHeaders`` took
    ~6-20 (measured)."""
    names = _FORWARDED_NAMES.get(keep)
    if names is None:
        names = _FORWARDED_NAMES[keep] = {}
    connection = environ.get("HTTP_CONNECTION")
    listed = {token.strip().lower() for token in connection.split(",")} if connection else None
    headers = []
    for key, value in environ.items():
        try:
            name = names[key]
        except KeyError:
            name = _forwarded_name(key, keep)
            if len(names) < _NAMES_KEPT:
                names[key] = name
        if name is not None and (value or key != "CONTENT_TYPE") and (listed is None or name.lower() not in listed):
            headers.append((name, value))
    return headers


#: ``keep`` -> (header name as received -> passed on), remembered like ``_FORWARDED_NAMES``.
_PASSED_NAMES: dict[tuple[str, ...], dict[str, bool]] = {(): {}}


def request_headers(received: list[tuple[str, str]], *, keep: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """``environ_request_headers`` for a request's header lines as received (name, value), which a server that
    keeps them hands over (``server.http.serving``: ``kcp.request_headers``): a handful of lines to look at
    rather than every key of the environ. Repeated headers stay separate lines."""
    verdicts = _PASSED_NAMES.get(keep)
    if verdicts is None:
        verdicts = _PASSED_NAMES[keep] = {}
    headers, listed = [], None
    for name, value in received:
        try:
            passed = verdicts[name]
        except KeyError:
            passed = _passed(name.lower(), keep)
            if len(verdicts) < _NAMES_KEPT:
                verdicts[name] = passed
        if passed:
            headers.append((name, value))
        elif name.lower() == "connection":
            listed = {token.strip().lower() for token in value.split(",")}
    if listed:
        headers = [(name, value) for name, value in headers if name.lower() not in listed]
    return headers


_QUOTED: dict[str, str] = {}  # paths repeat (a controller's lists and watches, a hot object): quote once
_QUOTED_MAX = 4096


def quote_path(path: str) -> str:
    """A decoded path (``PATH_INFO``) encoded again for a request line."""
    quoted = _QUOTED.get(path)
    if quoted is None:
        if len(_QUOTED) >= _QUOTED_MAX:
            _QUOTED.clear()
        quoted = _QUOTED[path] = quote(path, safe=_PATH_SAFE)
    return quoted


def request_target(request) -> str:
    """The path and query to send upstream: the decoded path re-encoded, the query as received."""
    target = quote_path(request.path)
    query = request.environ.get("QUERY_STRING", "")
    return f"{target}?{query}" if query else target


def read_body(stream, content_length: int | None) -> bytes | None:
    """The request body (None when there is none), at most ``MAX_BODY_BYTES`` or a 413."""
    return read_limited_body(stream, content_length) or None


def response_headers(upstream) -> list[tuple[str, str]]:
    """The upstream's end-to-end response headers (framing and hop-by-hop ones are the relay's own)."""
    connection = upstream.headers.get("Connection")
    listed = {name.strip().lower() for name in connection.split(",")} if connection else ()
    return [(name, value) for name, value in upstream.headers.items()
            if (lower := name.lower()) not in _DROPPED_RESPONSE and lower not in listed]


def response_head_lines(upstream) -> str:
    """``response_headers`` as the ``Name: value\r\n`` lines of a response head."""
    return "".join([f"{name}: {value}\r\n" for name, value in response_headers(upstream)])


@contextlib.contextmanager
def interrupted_when_client_leaves(client_sock, upstream) -> Iterator[None]:
    """While streaming ``upstream`` to ``client_sock``: the client leaving (its socket turns readable --
    a streaming client sends nothing more) shuts the upstream down at once. An io watcher, no greenlet."""
    watcher = None
    if client_sock is not None:
        try:
            watcher = gevent.get_hub().loop.io(client_sock.fileno(), _READ)
        except (OSError, ValueError):
            watcher = None
        else:
            def client_left():
                watcher.stop()
                upstream.interrupt()

            watcher.start(client_left)
    try:
        yield
    finally:
        if watcher is not None:
            watcher.stop()
            watcher.close()


def is_watch_query(query: str) -> bool:
    """Whether a query string asks for a watch (``watch=true`` or ``watch=1``)."""
    return "watch=" in query and any(p in ("watch=true", "watch=1") for p in query.split("&"))


def broken_stream_end(watch: bool, tail: bytes, what: str, exc: BaseException) -> bytes | None:
    """What a client gets when its upstream stream breaks (the virtual-workspace server died): a watch
    whose last event is complete ends with an ERROR event carrying a 503 Status, as kube ends a watch on a
    server error, so clients (``kubectl get -w``, informers) report it and relist; anything else, None:
    the stream is cut short (no last chunk), which a client sees as an error too, not as the end."""
    if not watch or (tail and not tail.endswith(b"\n")):
        return None
    status = unavailable(what, exc).status()
    status["message"] = f"the watch ended early: {status['message']}"
    return orjson.dumps({"type": "ERROR", "object": status}) + b"\n"


class StreamCut(ConnectionAbortedError):
    """Raised into the WSGI server to close a response without its last chunk (``broken_stream_end``)."""


def _stream(upstream: http1.Response, environ: dict, what: str, watch: bool) -> Iterator[bytes]:
    """One upstream piece, one downstream chunk; see ``interrupted_when_client_leaves``. Closing the
    generator (the server noticed a failed write, or is stopping) drops the upstream too."""
    tail = b""
    try:
        with interrupted_when_client_leaves(environ.get("kcp.socket"), upstream):
            for chunk in upstream.stream():
                if chunk:
                    tail = chunk
                    yield chunk
    except UPSTREAM_ERRORS as exc:
        log.debug("stream from upstream ended early", upstream=what, error=repr(exc))
        end = broken_stream_end(watch, tail, what, exc)
        if end is None:
            raise StreamCut(f"stream from {what} ended early") from None
        yield end
    finally:
        upstream.close()  # a no-op once the body was read to its end (the connection is back in the pool)


def relay(upstream: http1.Response, environ: dict, what: str,
          rewrite: Callable[[bytes], bytes] | None = None) -> Response:
    """The upstream response as a WSGI response: small bodies whole, everything else streamed (headers
    flushed at once, so a watch counts as established before its first event). ``rewrite`` may change
    a whole body (only applied to those read whole)."""
    headers = response_headers(upstream)
    length = upstream.length
    if length is not None and length <= BUFFERED_RESPONSE_BYTES:
        try:
            data = upstream.read()
        except UPSTREAM_ERRORS as exc:
            raise unavailable(what, exc) from None
        if rewrite is not None:
            data = rewrite(data)
        return Response(data, status=upstream.status, headers=headers)
    watch = is_watch_query(environ.get("QUERY_STRING", ""))
    return WatchResponse(_stream(upstream, environ, what, watch and upstream.status == 200), status=upstream.status,
                         headers=headers, direct_passthrough=True)
