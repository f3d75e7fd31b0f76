"""Requests forwarded as the authenticated caller: ``/services/*`` to an external virtual-workspace server
(``kcp start --run-virtual-workspaces=false``), and ``/clusters/*`` from ``kcp front-proxy`` to the shards.

The forwarder has authenticated the caller (the shard has also resolved any impersonation); the upstream
must believe that identity without re-authenticating it, so the request goes out over mTLS with a proxy
certificate issued by the requestheader CA (``<root>/shard-proxy.crt``) and the identity in
``X-Remote-User``/``-Uid``/``-Group``/``-Extra-<key>`` -- the same contract kube's aggregator uses. Whatever
identity headers the caller sent are dropped first, and so are its credentials -- unless the upstream is to
authenticate them itself (``pass_credentials``: the front-proxy passes bearer tokens and impersonation on, as
kcp's does, and asserts an identity only for a client certificate it verified). A shard's request also says how
fresh "now" is there (``X-Kcp-Shard-Resource-Version``: every write acknowledged before it was forwarded has a
resourceVersion up to that), so the external process may answer from its watch-fed cache once that has caught up.

Two ways through, one contract:

* ``forward_raw`` (the common case, a server interceptor): the request line, headers and body are
  relayed as bytes and the answer written straight to the client socket, without the WSGI stack,
  which costs more than the forwarding itself (~200 µs of CPU per request on the test machine);
* ``__call__`` (WSGI): what the raw path leaves alone -- impersonation, failed authentication (the
  app answers those), chunked request bodies, HEAD, HTTP/1.0.

Responses stream through: a watch passes unbuffered and its upstream closes as soon as the client
leaves. A watch on an HTTP/2 stream is parked (``server.http.parking``): the HTTP/2 reader's callbacks
write its events, and no greenlet waits through it. While the external process is down every
request is answered at once with a 503 Status, and while it hangs within ``REQUEST_TIMEOUT`` with a 504;
nothing is cached about the failure, so the first request after it returns goes through.
"""

from __future__ import annotations

import contextvars
from http import HTTPStatus
from typing import Callable
from urllib.parse import quote

import orjson
import structlog
from werkzeug.wrappers import Request, Response

from kcp_virtual.framework import errors
from kcp_virtual.transport import http2, httpclient
from server.auth.user import PerUser, UserInfo
from server.http.logs import current_request_id
from server.http.serving import REQUEST_HEADERS, RawExchange, http_date

__all__ = ["Forwarder", "identity_headers", "FRESHNESS_HEADER"]

log = structlog.get_logger("kcp.forwarding")

#: Seconds a forwarded request may wait for each piece of its answer (kube's --request-timeout), watches for
#: their response head: a hung virtual-workspace server costs a 504 Status, not a client waiting forever.
REQUEST_TIMEOUT = 60.0
#: The shard's resourceVersion when it forwarded the request (believed only from the proxy certificate).
FRESHNESS_HEADER = "X-Kcp-Shard-Resource-Version"


def _header_key(key: str) -> str:
    """An extra key as a header-name suffix: percent-encoded (``/``), ``_`` too (WSGI servers drop such headers)."""
    return quote(key, safe="").replace("_", "%5F")


def identity_headers(user: UserInfo) -> list[tuple[str, str]]:
    """The requestheaders asserting ``user`` (groups and extra values one header line each)."""
    headers = [("X-Remote-User", user.name)]
    if user.uid:
        headers.append(("X-Remote-Uid", user.uid))
    headers.extend(("X-Remote-Group", group) for group in user.groups)
    for key, values in (user.extra or {}).items():
        headers.extend((f"X-Remote-Extra-{_header_key(key)}", value) for value in values)
    return headers


def _head(status: int, reason: str, lines: str, framing: str) -> bytes:
    """A response head: ``lines`` are its ``Name: value\r\n`` header lines, ``framing`` the last one."""
    return f"HTTP/1.1 {status} {reason or 'Unknown'}\r\n{lines}{framing}\r\n\r\n".encode("latin-1")


class Forwarder:
    """Requests to the server at ``url`` (``what`` names it in errors), as the authenticated user (``None``: as
    nobody in particular, the caller's own credentials passed on -- ``pass_credentials`` only).

    ``current_resource_version`` is the shard store's resourceVersion now (sent as ``FRESHNESS_HEADER``).
    """

    def __init__(self, url: str, *, ca_file: str, cert_file: str, key_file: str, maxsize: int = 256,
                 current_resource_version: Callable[[], int] | None = None, timeout: float = REQUEST_TIMEOUT,
                 what: str = "the virtual workspace server", pass_credentials: bool = False):
        self.url = url.rstrip("/")
        self.timeout = timeout
        context = httpclient.client_context(ca_file=ca_file, cert_file=cert_file, key_file=key_file)
        self.pool = httpclient.https_pool(self.url, context, maxsize=maxsize)
        h2_context = httpclient.client_context(ca_file=ca_file, cert_file=cert_file, key_file=key_file,
                                               alpn=["h2"])
        self.streams: http2.Pool | None = http2.Pool(self.url, h2_context)  # None once the server refused h2
        self.current_resource_version = current_resource_version
        # the caller's token and impersonation for an anonymous forward, its impersonation for an asserted one
        self._keep = (httpclient.CALLER_CREDENTIALS, httpclient.IMPERSONATION) if pass_credentials else ((), ())
        self._what = f"{what} at {self.url}"
        self._identity_headers = PerUser(identity_headers)

    def _upstream_headers(self, headers: list[tuple[str, str]], user: UserInfo | None) -> list[tuple[str, str]]:
        if user is not None:
            headers.extend(self._identity_headers(user))
        request_id = current_request_id()
        if request_id:
            headers.append(("X-Request-Id", request_id))
        if self.current_resource_version is not None:
            headers.append((FRESHNESS_HEADER, str(self.current_resource_version())))
        return headers

    def _open(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes | None,
              long_running: bool = False):
        """The upstream response (head read): a long-running one as an HTTP/2 stream when the server
        speaks it (one connection for all of them), everything else on a keep-alive HTTP/1.1 connection."""
        try:
            if long_running and body is None and self.streams is not None:
                try:
                    return self.streams.request(method, target, headers, head_timeout=self.timeout)
                except http2.NotSupported:
                    log.info("the upstream does not speak HTTP/2: one connection per watch", upstream=self._what)
                    self.streams = None
            return self.pool.request(method, target, headers, body, timeout=None if long_running else self.timeout)
        except TimeoutError:
            log.info("virtual workspace server timed out", url=self.url, timeout=self.timeout)
            raise errors.Timeout(f"{self._what} did not answer within {self.timeout:g} s") from None
        except httpclient.UPSTREAM_ERRORS as exc:
            log.info("upstream unavailable", upstream=self._what, error=str(exc))
            raise httpclient.unavailable(self._what, exc) from None

    # ------------------------------------------------------------------ WSGI

    def __call__(self, request: Request, user: UserInfo | None) -> Response:
        if request.args.get("watch") in ("true", "1"):  # counted as an open watch, not an in-flight request
            structlog.contextvars.bind_contextvars(verb="watch")
        headers = self._upstream_headers(httpclient.environ_request_headers(
            request.environ, keep=self._keep[user is not None]), user)
        body = httpclient.read_body(request.stream, request.content_length)
        upstream = self._open(request.method, httpclient.request_target(request), headers, body)
        return httpclient.relay(upstream, request.environ, self._what)

    # ------------------------------------------------------------------ raw

    def forward_raw(self, environ: dict, exchange: RawExchange, user: UserInfo | None) -> bool:
        """Forward the request and write the answer to ``exchange``; False (nothing done) for what only
        the WSGI path handles. The access line is the caller's (``RequestLogMiddleware.intercepting``)."""
        method = environ["REQUEST_METHOD"]
        if (method == "HEAD" or environ.get("SERVER_PROTOCOL") != "HTTP/1.1" or "HTTP_TRANSFER_ENCODING" in environ
                or "HTTP_EXPECT" in environ):
            return False
        length = environ.get("CONTENT_LENGTH")
        body = None
        if length:
            if not length.isdigit() or int(length) > httpclient.MAX_BODY_BYTES:
                return False  # the WSGI path answers 400/413
            body = environ["wsgi.input"].read(int(length))
        query = environ.get("QUERY_STRING", "")
        watch = httpclient.is_watch_query(query)
        if watch:
            structlog.contextvars.bind_contextvars(verb="watch")
        target = httpclient.quote_path(environ["PATH_INFO"])
        keep = self._keep[user is not None]
        received = environ.get(REQUEST_HEADERS)
        headers = self._upstream_headers(httpclient.environ_request_headers(environ, keep=keep) if received is None
                                         else httpclient.request_headers(received, keep=keep), user)
        try:
            upstream = self._open(method, f"{target}?{query}" if query else target, headers, body,
                                  long_running=watch and method == "GET")
        except errors.StatusError as exc:
            self._write_status(exchange, exc)
            return True
        del headers, body  # a watch keeps this frame for as long as it runs
        watch = watch and upstream.status == 200
        if isinstance(upstream, http2.Stream) and self._park(exchange, upstream, watch):
            return True
        try:
            self._relay(environ, exchange, upstream, watch)
        except OSError as exc:  # the client is gone (a failed write): nobody to answer
            log.debug("client left during a forwarded response", error=repr(exc))
            exchange.close_connection = True
        finally:
            upstream.close()  # a no-op when the body was read to its end
        if not exchange.keep_alive:
            exchange.close_connection = True
        return True

    def _relay(self, environ: dict, exchange: RawExchange, upstream, watch: bool) -> None:
        headers = httpclient.response_head_lines(upstream)
        length = upstream.length
        if length is not None and length <= httpclient.BUFFERED_RESPONSE_BYTES:
            try:
                data = upstream.read()
            except httpclient.UPSTREAM_ERRORS as exc:
                self._write_status(exchange, httpclient.unavailable(self._what, exc))
                return
            exchange.status = upstream.status
            exchange.write(_head(upstream.status, upstream.reason, headers, f"Content-Length: {len(data)}") + data)
            return
        exchange.status = upstream.status
        exchange.start_stream()
        exchange.write(_head(upstream.status, upstream.reason, headers, "Transfer-Encoding: chunked"))
        pieces = upstream.stream()
        tail = b""
        with httpclient.interrupted_when_client_leaves(exchange.socket, upstream):
            while True:
                try:
                    piece = next(pieces, None)
                except httpclient.UPSTREAM_ERRORS as exc:  # also how a client leaving shows (interrupted)
                    log.debug("stream from upstream ended early", upstream=self._what, error=repr(exc))
                    piece = httpclient.broken_stream_end(watch, tail, self._what, exc)
                    if piece is None:  # cut short: no last chunk, and the connection closes
                        exchange.close_connection = True
                        return
                    exchange.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                    break
                if piece is None:
                    break
                if piece:  # a failed write (the client is gone) raises to forward_raw
                    tail = piece
                    exchange.write(b"%x\r\n%b\r\n" % (len(piece), piece))
        exchange.write(b"0\r\n\r\n")

    def _park(self, exchange: RawExchange, upstream: http2.Stream, watch: bool) -> bool:
        """Relay a stream from callbacks of the HTTP/2 reader into the parked client connection, so that
        no greenlet waits through an idle watch (``server.http.parking``); False: the caller relays it."""
        parked = exchange.park()
        if parked is None:
            return False
        exchange.status = upstream.status
        exchange.start_stream()
        parked.write(_head(upstream.status, upstream.reason, httpclient.response_head_lines(upstream),
                           "Transfer-Encoding: chunked"))
        parked.on_gone = upstream.interrupt
        context = contextvars.copy_context()  # the request's log context, for the end

        tail = [b""]

        def on_data(piece: bytes) -> None:
            tail[0] = piece
            parked.send(piece)

        def on_end(error: BaseException | None) -> None:
            if error is not None and not parked.done:
                context.run(log.debug, "stream from upstream ended early", upstream=self._what, error=repr(error))
                end = httpclient.broken_stream_end(watch, tail[0], self._what, error)
                if end is None:
                    parked.abort("the upstream stream broke")  # no last chunk: the client sees it cut short
                    return
                parked.send(end)
            parked.end()

        upstream.attach(on_data, on_end)
        return True

    @staticmethod
    def _write_status(exchange: RawExchange, exc: errors.StatusError) -> None:
        body = orjson.dumps(exc.status())
        headers = f"Content-Type: application/json\r\nCache-Control: no-cache, private\r\nDate: {http_date().decode('latin-1')}\r\n"
        exchange.status = exc.code
        exchange.write(_head(exc.code, HTTPStatus(exc.code).phrase, headers, f"Content-Length: {len(body)}") + body)
