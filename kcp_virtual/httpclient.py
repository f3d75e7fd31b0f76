"""HTTPS between a shard and a virtual-workspace server, from gevent code that is not monkey-patched.

Both directions use urllib3 (python-stack.md section 2.1: the client that measured best for proxying
under gevent), but on gevent's own sockets and SSL context, so every call yields to the hub instead
of blocking it -- in ``kcp start``, in ``kcp virtual-workspaces`` and in the shard's test thread alike,
none of which monkey-patch. Shared by the two forwarders (the shard's ``/services`` forwarding and the
remote ShardClient's proxy ``forward``):

* ``https_pool``: one keep-alive pool per upstream; non-blocking (``block=False``), so long-running
  watches never hold up other requests waiting for a pooled connection;
* ``proxy_request_headers`` / ``relay``: what crosses a proxy, and the response relayed chunk by
  chunk -- a watch passes through unbuffered, and the upstream connection is shut down the moment
  the client leaves (an io watcher on the client's socket, no extra greenlet per stream);
* ``interrupt``: end a read blocked on an upstream response, from anywhere (a timer, another greenlet).
"""

from __future__ import annotations

import os
import socket
import ssl
from typing import Callable, Iterable, Iterator
from urllib.parse import quote, urlsplit

import gevent
import gevent.socket
import gevent.ssl
import structlog
import urllib3
from urllib3.connection import HTTPSConnection
from werkzeug.datastructures import Headers
from werkzeug.wrappers import Response

from kcp_virtual.framework import errors
from kcp_virtual.framework.negotiation import MAX_BODY_BYTES, read_limited_body  # MAX_BODY_BYTES: re-exported
from kcp_virtual.framework.watchstream import WatchResponse

__all__ = ["client_context", "https_pool", "proxy_request_headers", "relay", "interrupt", "unavailable",
           "UPSTREAM_ERRORS", "MAX_BODY_BYTES", "read_body", "request_target", "CONNECT_TIMEOUT"]

log = structlog.get_logger("kcp.forwarding")

CONNECT_TIMEOUT = 5.0
#: Responses up to this size with a Content-Length are read whole and answered in one write.
BUFFERED_RESPONSE_BYTES = 1024 * 1024
_CHUNK = 64 * 1024
_READ = 1  # libev/libuv READ event
_PATH_SAFE = "/:@!$&'()*+,;="

#: What a failing upstream raises: connection refused or reset, TLS failures, timeouts, truncated bodies.
UPSTREAM_ERRORS = (urllib3.exceptions.HTTPError, OSError)

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
                        "te", "trailer", "trailers", "transfer-encoding", "upgrade"})
#: Request headers that carry or claim an identity: the proxy has already authenticated the caller.
_IDENTITY_PREFIXES = ("impersonate-", "x-remote-")
_DROPPED_REQUEST = frozenset({"authorization", "content-length", "expect"}) | HOP_BY_HOP
_DROPPED_RESPONSE = frozenset({"content-length", "server"}) | HOP_BY_HOP


def client_context(*, ca_file: str | None = None, ca_data: str | None = None, cert_file: str | None = None,
                   key_file: str | None = None, verify: bool = True) -> ssl.SSLContext:
    """A gevent-cooperative TLS client context: trusts only ``ca_file``/``ca_data`` (the system store when
    neither is given), presents ``cert_file``/``key_file`` when given, checks the server's name."""
    ctx = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
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


class _GeventHTTPSConnection(HTTPSConnection):
    """urllib3's connection on a gevent socket (TLS comes from the gevent context); TCP_NODELAY because
    requests are written in more than one send (python-stack.md section 1.4)."""

    def _new_conn(self) -> socket.socket:
        try:
            sock = gevent.socket.create_connection((self._dns_host, self.port), self.timeout,
                                                   source_address=self.source_address)
        except socket.gaierror as exc:
            raise urllib3.exceptions.NameResolutionError(self.host, self, exc) from exc
        except TimeoutError as exc:
            raise urllib3.exceptions.ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})") from exc
        except OSError as exc:
            raise urllib3.exceptions.NewConnectionError(self, f"Failed to establish a new connection: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


class _GeventHTTPSConnectionPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _GeventHTTPSConnection


def https_pool(url: str, ssl_context: ssl.SSLContext, *, maxsize: int = 256) -> urllib3.HTTPSConnectionPool:
    """A keep-alive pool to the ``https://host:port`` of ``url``; no retries, no redirects, no blocking."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"{url!r}: expected an https:// URL")
    return _GeventHTTPSConnectionPool(parts.hostname, parts.port or 443, ssl_context=ssl_context, maxsize=maxsize,
                                      block=False, retries=False,
                                      timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=None))


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


def proxy_request_headers(headers: Headers) -> urllib3.HTTPHeaderDict:
    """End-to-end request headers, without credentials or identity claims (the proxy sets its own)."""
    listed = {name.strip().lower() for name in headers.get("Connection", "").split(",")}
    out = urllib3.HTTPHeaderDict()
    for name, value in headers.items():
        lower = name.lower()
        if lower in _DROPPED_REQUEST or lower in listed or lower.startswith(_IDENTITY_PREFIXES):
            continue
        out.add(name, value)
    return out


def request_target(request) -> str:
    """The path and query to send upstream: the decoded path re-encoded, the query as received."""
    target = quote(request.path, safe=_PATH_SAFE)
    query = request.environ.get("QUERY_STRING", "")
    return f"{target}?{query}" if query else target


def read_body(stream, content_length: int | None) -> bytes | None:
    """The request body (None when there is none), at most ``MAX_BODY_BYTES`` or a 413."""
    return read_limited_body(stream, content_length) or None


def interrupt(response: urllib3.BaseHTTPResponse) -> None:
    """Shut down the connection under ``response`` so that a read blocked on it returns now.

    Safe from a hub callback (no blocking call, no switch). The TCP shutdown goes through a duplicate
    of the descriptor, leaving the TLS object to its reader (gevent's ``SSLSocket.shutdown`` would drop
    it under the reader's feet); it also tells the upstream at once that nobody listens any more.
    """
    connection = getattr(response, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is None:
        return
    try:
        fd = sock.fileno()
        if fd < 0:
            return
        with socket.socket(fileno=os.dup(fd)) as dup:
            dup.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed or reset: the reader finds out by itself


def _response_headers(upstream: urllib3.BaseHTTPResponse) -> list[tuple[str, str]]:
    listed = {name.strip().lower() for name in upstream.headers.get("Connection", "").split(",")}
    return [(name, value) for name, value in upstream.headers.items()
            if name.lower() not in _DROPPED_RESPONSE and name.lower() not in listed]


def _chunks(upstream: urllib3.BaseHTTPResponse) -> Iterable[bytes]:
    if upstream.chunked:
        return upstream.read_chunked(decode_content=False)
    return iter(lambda: upstream.read1(_CHUNK, decode_content=False), b"")


def _stream(upstream: urllib3.BaseHTTPResponse, environ: dict, what: str) -> Iterator[bytes]:
    """One upstream chunk, one downstream chunk. When the client leaves (its socket turns readable: a
    watch client sends nothing more) the upstream is shut down at once; closing the generator (the
    server noticed a failed write, or is stopping) does the same."""
    watcher = None
    sock = environ.get("kcp.socket")
    if sock is not None:
        try:
            watcher = gevent.get_hub().loop.io(sock.fileno(), _READ)
        except (OSError, ValueError):
            watcher = None
        else:
            def client_left():
                watcher.stop()
                interrupt(upstream)

            watcher.start(client_left)
    complete = False
    try:
        for chunk in _chunks(upstream):
            if chunk:
                yield chunk
        complete = True
    except UPSTREAM_ERRORS as exc:
        log.debug("stream from upstream ended early", upstream=what, error=repr(exc))
    finally:
        if watcher is not None:
            watcher.stop()
            watcher.close()
        if not complete:
            upstream.close()  # half-read: never back into the pool
        upstream.release_conn()


def relay(upstream: urllib3.BaseHTTPResponse, environ: dict, what: str,
          rewrite: Callable[[bytes], bytes] | None = None) -> Response:
    """The upstream response as a WSGI response: small bodies whole, everything else streamed (headers
    flushed at once, so a watch counts as established before its first event). ``rewrite`` may change
    a whole body (only applied to those read whole)."""
    headers = _response_headers(upstream)
    length = upstream.headers.get("Content-Length")
    if not upstream.chunked and length is not None and length.isdigit() and int(length) <= BUFFERED_RESPONSE_BYTES:
        try:
            data = upstream.read(decode_content=False)
        except UPSTREAM_ERRORS as exc:
            upstream.close()
            raise unavailable(what, exc) from None
        finally:
            upstream.release_conn()
        if rewrite is not None:
            data = rewrite(data)
        return Response(data, status=upstream.status, headers=headers)
    return WatchResponse(_stream(upstream, environ, what), status=upstream.status, headers=headers,
                         direct_passthrough=True)
