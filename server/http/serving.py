"""HTTPS serving on gevent.pywsgi with the fixes measured in python-stack.md §1.

* ``TCP_NODELAY`` on every accepted socket: pywsgi writes headers and body in separate
  sends, and Nagle + delayed ACK otherwise stall keep-alive responses by ~40 ms. The head and
  an ordinary-sized first body part go out in one send anyway.
* The verified client certificate goes into the environ (pywsgi does not do that) as
  ``kcp.peer_certificate``; the socket as ``kcp.socket`` (a streamed response that is not parked
  watches it to notice its client leave); whether any header
  claims an identity (``kcp_virtual.external.delegated.IDENTITY_HEADERS``), so that nobody has to look.
* Client disconnects (EOF, reset, broken pipe, failed handshakes) are logged at debug level
  without tracebacks; pywsgi's access log is off (``RequestLogMiddleware`` logs requests)
  and its error log goes to structlog.
* A watch response (``WatchBody``: it has ``park``) is parked once its head is out
  (``_Handler.run_application``): its greenlet ends and the watch writes into the connection.
* An interceptor may park a streaming answer (``RawExchange.park``, ``server.http.parking``): the
  connection's greenlet ends and the stream goes on without it (an idle forwarded watch: 43 KiB
  of the shard's memory in a greenlet, 28 parked). Parked connections count against the cap
  below; ``stop()`` ends them.
* Connections are capped by a ``gevent.pool.Pool``; one past the cap is refused at once (closed with
  a TCP reset, counted in ``refused_connections``) rather than left waiting in the listen backlog.
  A per-operation socket timeout bounds idle keep-alive connections and any single blocked read or
  write (a watch client that stops reading is cut when a send has made no progress for that long;
  a parked stream at ``server.http.parking.MAX_QUEUED`` bytes), one deadline bounds the request head
  (slowloris) and another the request body (a body trickled byte by byte: a 408 Status); none touches
  an idle watch, which has no socket operation pending.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import struct
import time
import weakref
from types import MappingProxyType
from typing import Callable, Mapping

import gevent
import gevent.event
import gevent.pool
import gevent.ssl
from gevent import pywsgi
import structlog

from kcp_virtual.external.delegated import IDENTITY_HEADERS
from kcp_virtual.transport.http1 import send_all
from server.http import serving_h2
from server.http.parking import ParkedStream

#: Errors that mean "the client went away" (or never completed TLS): not worth a traceback.
DISCONNECT_ERRORS = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, BrokenPipeError,
                     ConnectionAbortedError, TimeoutError)
#: Disconnect errors that can only come from the client connection, whatever the app did.
_CLIENT_ONLY_ERRORS = (ssl.SSLEOFError, ssl.SSLZeroReturnError, BrokenPipeError)
_DISCONNECT_ERRNOS = {errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT,
                      errno.ENOTCONN, errno.EBADF}

#: Seconds of silence allowed on a connection between requests and inside a request head
#: (and, since it is a per-operation socket timeout, for a single blocked read or write).
IDLE_TIMEOUT = 120.0
#: Seconds from the first byte of a request to the end of its headers (kube-apiserver's
#: ReadHeaderTimeout), against slowloris clients.
HEADER_TIMEOUT = 32.0
#: Seconds from the end of a request head to the end of its body (kube-apiserver's default request timeout).
BODY_TIMEOUT = 60.0
#: Bytes buffered when reading a request (see ``_Handler.__init__``).
READ_BUFFER = 2048
#: Largest response body sent in one write together with the head (see ``_Handler._write_with_headers``).
COALESCE_LIMIT = 64 * 1024
#: Seconds allowed for the TLS handshake, so half-open connections do not pin a greenlet.
HANDSHAKE_TIMEOUT = 10.0


def _is_disconnect(exc: BaseException) -> bool:
    if isinstance(exc, DISCONNECT_ERRORS):
        return True
    if isinstance(exc, ssl.SSLError):
        # Handshake failures (unknown CA, plain HTTP to the TLS port, ...) are the client's problem.
        return True
    return isinstance(exc, OSError) and exc.errno in _DISCONNECT_ERRNOS


def _rdn_values(name: tuple, key: str) -> list[str]:
    return [v for rdn in name for k, v in rdn if k == key]


def _peer_certificate(sock) -> Mapping | None:
    """The verified client certificate as a read-only ``{"user", "groups", "issuer", "der"}``, or None.

    ``getpeercert()`` only returns a non-empty dict when the chain verified against the
    context's CAs; with CERT_OPTIONAL an unverifiable cert fails the handshake instead.
    """
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is None:
        return None
    try:
        cert = getpeercert()
        if not cert:
            return None
        der = getpeercert(binary_form=True)
    except (ValueError, OSError):
        return None
    cns = _rdn_values(cert.get("subject", ()), "commonName")
    issuer = _rdn_values(cert.get("issuer", ()), "commonName")
    return MappingProxyType({"user": cns[-1] if cns else "",
                             "groups": tuple(_rdn_values(cert.get("subject", ()), "organizationName")),
                             "issuer": issuer[-1] if issuer else "", "der": der})


_BAD_REQUEST = (b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/plain\r\n"
                b"Content-Length: 11\r\n\r\nBad Request")


class _ErrorLog:
    """File-like sink for pywsgi's error log (malformed requests and the like) into structlog."""

    def __init__(self, logger):
        self._log = logger

    def write(self, message: str) -> None:
        message = message.strip()
        if message:
            self._log.warning("http server error", message=message)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass


_IDENTITY_PREFIXES = ("impersonate-", "x-remote-")
_MAX_HEADER_LINE = 65536  # http.client's limits, which pywsgi's own parsing applies
_MAX_HEADERS = 100


class _RequestHeaders:
    """The request's header block, as pywsgi uses it (``get``, ``del``, ``headers`` lines, ``status``).

    pywsgi parses headers with ``http.client.parse_headers``, i.e. the ``email`` package: ~20 µs of
    every request. This reads the same lines with the same limits (a line over 64 KiB or more than
    100 headers is a 400), joins folded lines, and ignores lines without a colon as email does.
    """

    __slots__ = ("_items", "status", "identity")

    def __init__(self, fp, *_):
        items: list[list[str]] = []
        self.status = ""
        self.identity = False  # an Impersonate-* or X-Remote-* header (see kcp_virtual.external.delegated.IDENTITY_HEADERS)
        for _ in range(_MAX_HEADERS + 1):
            line = fp.readline(_MAX_HEADER_LINE + 1)
            if len(line) > _MAX_HEADER_LINE:
                self.status = "Line too long"
                break
            if line in (b"\r\n", b"\n", b""):
                break
            text = line.decode("latin-1").rstrip("\r\n")
            if text[:1] in (" ", "\t"):
                if items:
                    items[-1][1] += " " + text.strip()
                continue
            name, sep, value = text.partition(":")
            if sep and name:
                items.append([name, value.strip()])
                if name[0] in "IiXx" and name.lower().startswith(_IDENTITY_PREFIXES):
                    self.identity = True
        else:
            self.status = "Too many headers"
        self._items = items

    def get(self, name: str, default=None):
        lower = name.lower()
        for key, value in self._items:
            if key.lower() == lower:
                return value
        return default

    getheader = get

    def __delitem__(self, name: str) -> None:
        lower = name.lower()
        self._items = [item for item in self._items if item[0].lower() != lower]

    @property
    def typeheader(self):
        return self.get("content-type")

    @property
    def headers(self):
        return [f"{key}: {value}\r\n" for key, value in self._items]


class _NoBody:
    """``wsgi.input`` of a request without a body."""

    def read(self, *_):
        return b""

    readline = read


_NO_BODY = _NoBody()
#: The environ key of the request's header lines as received, ``[(name, value)]`` (``_intercept_buffered``
#: only: what an interceptor forwards, without converting every environ key back).
REQUEST_HEADERS = "kcp.request_headers"
_NOT_TAKEN = object()  # _Handler._intercept_buffered: pywsgi serves this request


class _HTTPDate:
    """pywsgi's ``Date`` header value (bytes; ``format_date_time(time.time())`` per response: ~3 µs), made once a second."""

    __slots__ = ("_second", "_value")

    def __init__(self):
        self._second, self._value = -1, ""

    def __call__(self, now: float | None = None) -> str:
        second = int(time.time() if now is None else now)
        if second != self._second:
            self._second, self._value = second, _format_date_time(second)
        return self._value


_format_date_time = pywsgi.format_date_time
http_date = _HTTPDate()
pywsgi.format_date_time = http_date  # the module global pywsgi's finalize_headers calls


class BodyTimeout(BaseException):
    """The request body did not arrive within ``body_timeout``. A BaseException, so that no application
    handler takes it for its own error: it ends the request, answered with a 408 Status if nothing was sent."""

    http_status = "408 Request Timeout"


_REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%b")


class _TimedInput(pywsgi.Input):
    """pywsgi's request body, every read of which must end by ``deadline`` (monotonic seconds)."""

    __slots__ = ("deadline",)

    def _do_read(self, length=None, use_readline=False):
        with self._timeout():
            return super()._do_read(length, use_readline)

    def _chunked_read(self, length=None, use_readline=False):
        with self._timeout():
            return super()._chunked_read(length, use_readline)

    def _timeout(self) -> gevent.Timeout:
        remaining = self.deadline - time.monotonic()
        exception = BodyTimeout("the request body did not arrive in time")
        if remaining <= 0:
            raise exception
        return gevent.Timeout(remaining, exception)


class RawExchange:
    """A request handed to the server's interceptor before WSGI: answer it by writing bytes.

    Interceptors are for paths where the WSGI stack is the cost (the shard's ``/services/*``
    forwarding: a WSGI request costs ~200 µs of CPU before any work, the forwarding itself far
    less). ``write`` sends response bytes as they are (status line, headers and framing are the
    interceptor's); ``status`` and ``bytes`` are what it answered, for its access log line;
    ``close_connection`` ends the keep-alive connection afterwards.
    """

    __slots__ = ("_handler", "_unread", "status", "bytes", "close_connection", "on_stream", "counted_as_watch",
                 "parked")

    def __init__(self, handler: "_Handler", *, unread: int = 0):
        self._handler = handler
        self._unread = unread  # bytes of the request head still in the handler's read buffer (peeked, not read)
        self.status = 0
        self.bytes = 0
        self.close_connection = False
        self.on_stream: Callable[[], bool] | None = None  # set by whoever accounts for streams: True for a watch
        self.counted_as_watch = False
        self.parked: ParkedStream | None = None

    def start_stream(self) -> None:
        """The answer streams (no Content-Length; a watch): ``stop()`` ends it instead of waiting for it.
        What only the request needed -- its parsed headers, the header entries of the environ -- is let
        go, as an idle watch may hold on for an hour (the interceptor has copied what it forwards)."""
        handler = self._handler
        environ = handler.environ
        environ["kcp.long_running"] = True
        for key in [key for key in environ if key.startswith("HTTP_")]:
            del environ[key]
        handler.headers = None
        if self.on_stream is not None:
            self.counted_as_watch = self.on_stream()

    @property
    def socket(self):
        return self._handler.socket

    @property
    def keep_alive(self) -> bool:
        """Whether the client's request lets the connection stay open after this response."""
        return not self._handler.close_connection

    def consume(self) -> None:
        """Take the request head out of the read buffer: the interceptor answers this request."""
        if self._unread:
            self._handler.rfile.read(self._unread)
            self._unread = 0

    def write(self, data: bytes) -> None:
        if self._unread:
            self.consume()
        send_all(self._handler.socket, data)
        self.bytes += len(data)

    def park(self) -> ParkedStream | None:
        """Hand the connection to a ``ParkedStream`` for the rest of a streaming answer (its head included):
        once the interceptor returns, the connection's greenlet ends and the stream goes on without it. None
        when the connection cannot be handed over (the client already sent more): answer in the greenlet."""
        handler = self._handler
        self.consume()
        if not handler.release_reader():
            return None
        self.parked = ParkedStream(handler.server, handler.socket, handler.client_address,
                                   keep_alive=not handler.close_connection)
        return self.parked


class _Handler(pywsgi.WSGIHandler):
    """pywsgi handler adding the peer cert and socket to the environ, fast header parsing and quiet
    disconnects."""

    _idle = False
    _declined = False  # the interceptor declined this request on the buffered path
    _peer = False  # False: not looked up yet; None: no verified cert
    parked = False  # the connection went to a ParkedStream
    MessageClass = _RequestHeaders

    def __init__(self, sock, address, server):
        # pywsgi's, with a smaller read buffer: its default 8 KiB stays allocated for as long as the
        # connection lives -- most of an idle watch's memory -- while request heads are well under 2 KiB
        # (longer ones take a few more reads; bodies are read past the buffer).
        self.socket = sock
        self.client_address = address
        self.server = server
        self.rfile = sock.makefile("rb", READ_BUFFER)

    def handle(self):
        server = self.server
        server.kcp_handlers.add(self)
        self.greenlet = gevent.getcurrent()
        try:
            super().handle()
        except BaseException as exc:  # noqa: BLE001 - classify, re-raise what is not a disconnect
            if not _is_disconnect(exc):
                raise
            server.kcp_log.debug("client disconnected", peer=self.client_address, error=repr(exc))
        finally:
            server.kcp_handlers.discard(self)

    _head_timer = None

    def read_requestline(self):
        # Waiting for the first byte is the keep-alive idle time (the socket timeout); stop()
        # closes connections parked there. From the first byte on, the whole head must arrive
        # within header_timeout, so a client trickling bytes cannot hold the greenlet forever.
        self._idle = True
        try:
            if self.server.kcp_stopping.is_set():
                return ""
            buffered = self.rfile.peek(1)
        finally:
            self._idle = False
        if b"\r\n\r\n" not in buffered:  # the whole head already here (the common case): nothing to time
            self._head_timer = gevent.Timeout.start_new(
                self.server.kcp_header_timeout, TimeoutError("timed out reading the request head"))
        return super().read_requestline()

    def read_request(self, raw_requestline):
        try:
            return super().read_request(raw_requestline)
        finally:
            self._cancel_head_timer()

    def release_reader(self) -> bool:
        """Drop the read buffer if nothing is in it (True); False if the client sent more already, which
        only this reader holds. Never blocks: the check is a non-blocking read."""
        sock, rfile = self.socket, self.rfile
        timeout = sock.gettimeout()
        sock.settimeout(0.0)
        try:
            buffered = rfile.peek(1)
            if not buffered and not isinstance(sock, gevent.ssl.SSLSocket):
                buffered = sock.recv(1, socket.MSG_PEEK)  # a plain reader's b"" may also mean "nothing yet"
        except (ssl.SSLWantReadError, BlockingIOError):
            buffered = None  # nothing buffered and nothing to read
        except OSError:
            buffered = b""
        finally:
            sock.settimeout(timeout)
        if buffered is not None:
            return False  # bytes (a pipelined request) or EOF: the greenlet's loop deals with it
        rfile.close()  # the SocketIO only: the socket stays open
        return True

    def _cancel_head_timer(self):
        timer = self._head_timer
        if timer is not None:
            self._head_timer = None
            timer.close()

    def handle_one_request(self):
        try:
            result = self._intercept_buffered() if self.server.kcp_intercept is not None else _NOT_TAKEN
            if result is _NOT_TAKEN:
                result = super().handle_one_request()
        finally:
            self._cancel_head_timer()  # paths that return before read_request (EOF, 414)
        if result is True and self.server.kcp_stopping.is_set():
            return None  # draining: finish this response, then close instead of keep-alive
        # Fairness: a keep-alive client on loopback has its next request in the socket buffer before
        # we are done logging this one, so reading it never blocks and this greenlet would serve the
        # same connection again and again while the others wait (p50 0.4 ms, p99 ~1 s at 50 clients).
        # Yield once per request so every ready connection gets its turn.
        gevent.sleep(0)
        return result

    def _intercept_buffered(self):
        """The interceptor's common case without pywsgi's request machinery: a bodiless HTTP/1.1 request under
        the intercepted prefix whose whole head is already buffered. pywsgi's request parsing, environ and
        input stream cost a fifth of a forwarded request's CPU on the shard; this builds the same environ
        for the interceptor directly. ``_NOT_TAKEN``: not such a request, or the interceptor declined it (pywsgi
        then reads the head, still buffered, as usual); otherwise what ``handle_one_request`` returns."""
        self._idle = True
        try:
            if self.server.kcp_stopping.is_set():
                return _NOT_TAKEN
            buffered = self.rfile.peek(1)
        finally:
            self._idle = False
        end = buffered.find(b"\r\n\r\n")
        if end < 0:
            return _NOT_TAKEN
        head = buffered[:end].decode("latin-1")
        request_line, _, header_block = head.partition("\r\n")
        method, _, rest = request_line.partition(" ")
        target, _, version = rest.partition(" ")
        if version != "HTTP/1.1" or method == "HEAD" or not target.startswith(self.server.kcp_intercept_prefix):
            return _NOT_TAKEN
        environ = self.server.get_environ()
        identity = False
        received = []
        for line in header_block.split("\r\n"):
            name, sep, value = line.partition(":")
            if not sep or not name or name[0] in " \t" or "_" in name:
                return _NOT_TAKEN  # folded, malformed or underscored headers: pywsgi's rules, on its path
            key = name.upper().replace("-", "_")
            if key in ("CONTENT_LENGTH", "TRANSFER_ENCODING", "EXPECT", "UPGRADE"):
                return _NOT_TAKEN  # a body (or no request at all): the general path
            if key != "CONTENT_TYPE":
                key = "HTTP_" + key
            value = value.strip()
            received.append((name, value))
            previous = environ.get(key)
            environ[key] = value if previous is None else f"{previous}{'; ' if 'COOKIE' in key else ','}{value}"
            if name[0] in "IiXx" and name.lower().startswith(_IDENTITY_PREFIXES):
                identity = True
        path, _, query = target.partition("?")
        environ["REQUEST_METHOD"] = method
        environ["SCRIPT_NAME"] = ""
        environ["PATH_INFO"] = pywsgi.unquote_latin1(path)
        environ["QUERY_STRING"] = query
        environ["SERVER_PROTOCOL"] = version
        address = self.client_address
        if isinstance(address, tuple):
            environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = str(address[0]), str(address[1])
        environ["wsgi.input"] = _NO_BODY
        environ[REQUEST_HEADERS] = received
        self._add_connection_keys(environ, identity)
        self.environ = environ
        self.close_connection = "close" in environ.get("HTTP_CONNECTION", "").lower()
        exchange = RawExchange(self, unread=end + 4)
        if not self.server.kcp_intercept(environ, exchange):
            self._declined = True  # pywsgi's path must not ask the interceptor again
            return _NOT_TAKEN
        exchange.consume()  # an interceptor that wrote nothing still answered this request
        if exchange.parked is not None:  # the connection is the ParkedStream's now: let go of it
            self.parked = self.close_connection = True
            self.socket = self.rfile = self.wsgi_input = self.environ = None
            return None
        if exchange.close_connection or self.close_connection or self.rfile.closed:
            self.close_connection = True
            return None
        return True

    def handle_one_response(self):
        intercept = self.server.kcp_intercept
        declined, self._declined = self._declined, False
        if (intercept is not None and not declined
                and self.environ["PATH_INFO"].startswith(self.server.kcp_intercept_prefix)):
            exchange = RawExchange(self)
            self.time_start = time.time()
            if intercept(self.environ, exchange):
                self.time_finish = time.time()
                self.response_length = exchange.bytes
                if exchange.parked is not None:  # the connection is the ParkedStream's now: let go of it
                    self.parked = True
                    self.close_connection = True
                    self.socket = self.rfile = self.wsgi_input = self.environ = None
                    return
                try:
                    self.wsgi_input._discard()  # an unread body must not be taken for the next request
                except (OSError, ValueError):
                    exchange.close_connection = True
                if exchange.close_connection:
                    self.close_connection = True
                return
        super().handle_one_response()
        if self.parked:  # the connection is the ParkedStream's now: let go of it
            self.close_connection = True
            self.socket = self.rfile = self.wsgi_input = self.environ = None

    def run_application(self):
        # pywsgi's, except that a response that can be parked (a watch: ``WatchBody.park``, through the access
        # log's wrapper) is, once its head is out: the connection goes to a ``ParkedStream`` and this greenlet
        # ends; the stream's producer writes the rest.
        self.result = self.application(self.environ, self.start_response)
        park = getattr(self.result, "park", None)
        if park is not None and self.headers_sent and self.response_use_chunked and self._park(park):
            return
        try:
            self.process_result()
        finally:
            close = getattr(self.result, "close", None)
            try:
                if close is not None:
                    close()
            finally:
                self.result = None

    def _park(self, park) -> bool:
        """Hand the connection and the rest of the response to a ``ParkedStream``; False: serve it here."""
        if self.environ.get("CONTENT_LENGTH") not in (None, "", "0") or "HTTP_TRANSFER_ENCODING" in self.environ:
            return False  # a body we would have to discard first
        if not self.release_reader():
            # the client sent more after a watch request, or left: a parked stream would end at once
            self.close_connection = True
            return False
        parked = ParkedStream(self.server, self.socket, self.client_address, keep_alive=not self.close_connection)
        self.parked = True
        self.result = None
        with parked.blocking():  # the initial events from this greenlet: they may be many
            park(parked)
        return True

    def finalize_headers(self):
        super().finalize_headers()
        if self.command == "HEAD":  # no body, so no chunk framing either: a stray "0\r\n\r\n" would be taken for
            self.response_use_chunked = False  # the next response's status line on a keep-alive connection

    def _write(self, data, *args):
        if self.command != "HEAD":  # pywsgi would send an app's body after a HEAD's head
            super()._write(data, *args)

    def _write_with_headers(self, data):
        # pywsgi's sends the head and the first body bytes separately: two TLS records, two
        # syscalls, and a reader on the same host woken twice per response (the shard forwarding
        # to the external process is such a reader). One send for both when the body is of
        # ordinary size; a large body is not copied.
        self.headers_sent = True
        self.finalize_headers()
        if self.command == "HEAD":
            data = b""
        towrite = bytearray(b"HTTP/1.1 ")
        towrite += self.status
        towrite += b"\r\n"
        for header, value in self.response_headers:
            towrite += header
            towrite += b": "
            towrite += value
            towrite += b"\r\n"
        towrite += b"\r\n"
        if not data or len(data) > COALESCE_LIMIT:
            self._sendall(towrite)
            self._write(data)
        elif self.response_use_chunked:
            towrite += b"%x\r\n" % len(data)
            towrite += data
            towrite += b"\r\n"
            self._sendall(towrite)
        else:
            towrite += data
            self._sendall(towrite)

    def _sendall(self, data):
        # pywsgi's, minus gevent's sendall (a getsockopt syscall and a chunking loop per call): one
        # send takes a whole response of ordinary size; sendall only for what is left.
        try:
            send_all(self.socket, data)
        except OSError as ex:
            self.status = f"socket error: {ex}"
            if self.code > 0:
                self.code = -self.code
            raise
        self.response_length += len(data)

    def get_environ(self):
        env = super().get_environ()
        body = self.wsgi_input
        if body.chunked_input or body.content_length:  # the same body, its reads under the body deadline
            timed = self.wsgi_input = _TimedInput(body.rfile, body.content_length, socket=body.socket,
                                                  chunked_input=body.chunked_input)
            timed.deadline = time.monotonic() + self.server.kcp_body_timeout
            env["wsgi.input"] = timed
        self._add_connection_keys(env, self.headers.identity)
        return env

    def _add_connection_keys(self, env: dict, identity: bool) -> None:
        peer = self._peer
        if peer is False:
            peer = self._peer = _peer_certificate(self.socket)
        if peer is not None:
            env["kcp.peer_certificate"] = peer  # read-only, so one per connection serves all its requests
        env["kcp.socket"] = self.socket
        env["kcp.stopping"] = self.server.kcp_stopping
        env[IDENTITY_HEADERS] = identity

    def _handle_client_error(self, ex):
        if isinstance(ex, OSError):
            # Timeout or disconnect while reading the request head: nobody to answer.
            self.server.kcp_log.debug("client error reading request", peer=self.client_address, error=repr(ex))
            self.close_connection = True
            return None
        self.server.kcp_log.info("bad request", peer=self.client_address, error=str(ex) or repr(ex))
        return ("400", _BAD_REQUEST)

    def handle_error(self, t, v, tb):
        if issubclass(t, BodyTimeout):
            self.close_connection = True
            self.server.kcp_log.info("request body timed out", peer=self.client_address, method=self.command,
                                     path=self.path, timeout=self.server.kcp_body_timeout)
            if not self.headers_sent:
                body = (b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":'
                        b'"the request body did not arrive within %d s","reason":"Timeout","code":408}'
                        % self.server.kcp_body_timeout)
                try:
                    send_all(self.socket, _REQUEST_TIMEOUT % (len(body), body))
                except OSError:
                    pass
            return
        # Killed by stop(), or the client is gone: nothing to answer, nothing to report. A reset
        # or timeout before the response started may be the app's own backend connection
        # failing, so that still gets the full treatment (logged with traceback, 500).
        if (issubclass(t, gevent.GreenletExit) or isinstance(v, _CLIENT_ONLY_ERRORS)
                or (self.headers_sent and _is_disconnect(v))):
            self.close_connection = True
            self.server.kcp_log.debug("client disconnected", peer=self.client_address, error=repr(v))
            return
        super().handle_error(t, v, tb)

    def _log_error(self, t, v, tb):
        if issubclass(t, gevent.GreenletExit):
            return
        self.server.kcp_log.error("unhandled error in WSGI application", method=self.command,
                                  path=self.path, exc_info=(t, v, tb))

    def log_request(self):
        pass  # RequestLogMiddleware logs each request; pywsgi's format lacks the context


class _WSGIServer(pywsgi.WSGIServer):
    """WSGIServer that tunes accepted sockets and swallows handshake failures quietly."""

    kcp_idle_timeout = IDLE_TIMEOUT
    kcp_header_timeout = HEADER_TIMEOUT
    kcp_body_timeout = BODY_TIMEOUT
    kcp_handshake_timeout = HANDSHAKE_TIMEOUT
    kcp_refused = 0

    def do_read(self):
        args = super().do_read()
        if args:
            sock = args[0]
            if self.pool.free_count() <= len(self.kcp_parked):  # parked streams are connections too
                self.kcp_refused += 1
                try:  # a reset, not a FIN: the client knows at once, and no TIME_WAIT piles up here
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
                sock.close()
                return None
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # Kernel keepalive finds peers that vanished without FIN/RST (idle watches).
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                if hasattr(socket, "TCP_KEEPIDLE"):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 15)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4)
            except OSError:
                pass  # already reset by the peer; the handler will find out
        return args

    def handle(self, sock, address) -> bool:
        """Serve the connection's requests; True if it went to a ``ParkedStream`` (then it stays open)."""
        sock.settimeout(self.kcp_idle_timeout)
        handler = self.handler_class(sock, address, self)
        handler.handle()
        return handler.parked

    def kcp_serve_connection(self, sock, address) -> None:
        """Serve a connection (TLS already set up) until it ends, then close it, unless it was parked."""
        parked = False
        try:
            if self.kcp_http2 and getattr(sock, "selected_alpn_protocol", lambda: None)() == "h2":
                self._handle_h2(sock, address)
            else:
                parked = self.handle(sock, address)
        finally:
            if not parked:
                try:
                    sock.close()
                except OSError:
                    pass

    def do_close(self, sock, *args):
        if sock not in self.kcp_parked:
            super().do_close(sock, *args)

    def kcp_resume_accepting(self) -> None:
        """A parked connection ended: accepting may resume (``Server`` counts parked ones as connections)."""
        if not self.kcp_stopping.is_set():
            self._start_accepting_if_started()

    def wrap_socket_and_handle(self, client_socket, address):
        client_socket.settimeout(self.kcp_handshake_timeout)
        # The fd, not the socket: wrapping detaches client_socket. Lets stop() cut handshakes short.
        fd = client_socket.fileno()
        self.kcp_handshaking.add(fd)
        try:
            if _plain_http(client_socket):
                self.kcp_log.debug("plain HTTP on the TLS port", peer=address)
                return None
            ssl_socket = self.wrap_socket(client_socket, **self.ssl_args)
        except (OSError, ValueError) as exc:
            self.kcp_log.debug("TLS handshake failed", peer=address, error=repr(exc))
            return None
        finally:
            self.kcp_handshaking.discard(fd)
        self.kcp_serve_connection(ssl_socket, address)


    kcp_http2 = False

    def _handle_h2(self, ssl_socket, address):
        ssl_socket.settimeout(None)  # idle watches keep a stream open for long; TCP keepalive finds dead peers
        greenlet = gevent.getcurrent()
        self.kcp_h2_greenlets.add(greenlet)
        try:
            serving_h2.serve_connection(ssl_socket, address, self, _peer_certificate(ssl_socket))
        finally:
            self.kcp_h2_greenlets.discard(greenlet)


_PLAIN_HTTP_ANSWER = b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"


def _plain_http(sock) -> bool:
    """A client speaking plain HTTP to the TLS port gets Go's (kube's) answer instead of a silent close:
    a TLS record starts with its content type (20-24), an HTTP request with a method's capital letter."""
    first = sock.recv(1, socket.MSG_PEEK)
    if not first or not (b"A" <= first <= b"Z"):
        return False
    try:
        sock.recv(65536)  # what the request sent so far: closing with it unread would reset the connection
        sock.sendall(_PLAIN_HTTP_ANSWER)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sock.close()
    return True


def client_url(bind_address: str, port: int) -> str:
    """The ``https://`` base URL clients use for a server bound there (loopback when bound to every interface)."""
    host = bind_address if bind_address not in ("0.0.0.0", "::", "") else "127.0.0.1"
    host = host.strip("[]")
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def make_ssl_context(certfile: str, keyfile: str, client_ca_files: list[str],
                     alpn: list[str] | None = None) -> ssl.SSLContext:
    """Server context: ``create_default_context(Purpose.CLIENT_AUTH)`` settings, gevent-cooperative.

    ``gevent.ssl.create_default_context`` would return the blocking stdlib class, so this
    builds gevent's ``SSLContext(PROTOCOL_TLS_SERVER)`` (which is all create_default_context
    does for CLIENT_AUTH, bar loading CAs). Client certs are requested, not required, so
    token clients still work (like kube-apiserver); only ``client_ca_files`` are trusted, never
    the system store. TLS 1.2+, ALPN ``alpn`` (default http/1.1 only: pywsgi has no HTTP/2), no renegotiation.
    """
    ctx = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    ctx.load_cert_chain(certfile, keyfile)
    if client_ca_files:
        for cafile in client_ca_files:
            ctx.load_verify_locations(cafile=cafile)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.set_alpn_protocols(alpn or ["http/1.1"])
    keylog = os.environ.get("SSLKEYLOGFILE")
    if keylog:
        ctx.keylog_filename = keylog
    return ctx


class Server:
    """An HTTPS (or, without ``certfile``, plain HTTP) WSGI server for the API.

    ``start()`` binds (``port=0`` picks a free port, see ``.port``), ``serve_forever()`` blocks
    until ``stop()``. The environ carries ``kcp.peer_certificate`` (only for a verified client
    cert), ``kcp.socket`` and ``kcp.stopping`` (a gevent Event set when ``stop()`` begins, so
    long-running handlers can end cleanly).

    ``intercept(environ, exchange)`` (optional) sees the requests whose path starts with
    ``intercept_prefix`` before the WSGI app and may answer
    it by writing to the ``RawExchange`` (then it returns True) or leave it to the app (False, having
    written nothing). A streaming answer calls ``start_stream()`` (for ``stop()``), and may ``park()``.

    ``http2`` serves HTTP/2 (``server.http.serving_h2``) to TLS clients that offer only ``h2`` in ALPN.
    """

    def __init__(self, app: Callable, *, host: str, port: int, certfile: str | None, keyfile: str | None,
                 client_ca_files: list[str], max_connections: int = 4096, logger=None,
                 idle_timeout: float = IDLE_TIMEOUT, header_timeout: float = HEADER_TIMEOUT,
                 body_timeout: float = BODY_TIMEOUT, handshake_timeout: float = HANDSHAKE_TIMEOUT,
                 backlog: int = 2048,
                 intercept: Callable[[dict, RawExchange], bool] | None = None, intercept_prefix: str = "/",
                 http2: bool = False):
        self.app = app
        self.host = host.strip("[]")
        self._requested_port = port
        self.log = logger if logger is not None else structlog.get_logger().bind(logger="kcp.serving")
        self.pool = gevent.pool.Pool(max_connections)
        ssl_args = {}
        if certfile:
            ssl_args["ssl_context"] = make_ssl_context(certfile, keyfile, client_ca_files,
                                                       serving_h2.ALPN if http2 else None)
        self._server = _WSGIServer(
            (self.host, port), app, backlog=backlog, spawn=self.pool, log=None,
            error_log=_ErrorLog(self.log), handler_class=_Handler,
            # An explicit SERVER_NAME avoids pywsgi's reverse DNS lookup of the bind address.
            environ={"SERVER_NAME": self.host or "localhost"}, **ssl_args)
        self._server.kcp_log = self.log
        self._server.kcp_intercept = intercept
        self._server.kcp_intercept_prefix = intercept_prefix
        self._server.kcp_http2 = http2 and bool(certfile)
        self._server.kcp_h2_greenlets = set()
        self._server.kcp_stopping = gevent.event.Event()
        self._server.kcp_handlers = weakref.WeakSet()
        self._server.kcp_handshaking = set()
        self._server.kcp_parked = {}  # socket -> ParkedStream
        # Never full (gevent would stop accepting and leave connections in the backlog): do_read refuses
        # what is past the cap, parked streams included.
        self._server.full = lambda: False
        self._server.kcp_idle_timeout = idle_timeout
        self._server.kcp_body_timeout = body_timeout
        self._server.kcp_handshake_timeout = handshake_timeout
        self._server.kcp_header_timeout = header_timeout
        self._stopped = gevent.event.Event()

    @property
    def port(self) -> int:
        """The bound port (the real one after ``start()`` with ``port=0``)."""
        address = self._server.address
        return address[1] if isinstance(address, tuple) else self._requested_port

    @property
    def refused_connections(self) -> int:
        """Connections refused so far because ``max_connections`` were open."""
        return self._server.kcp_refused

    @property
    def stopping(self) -> gevent.event.Event:
        return self._server.kcp_stopping

    def start(self) -> None:
        """Bind and start accepting in the background (in the current hub)."""
        self._server.start()
        self._stopped.clear()
        self.log.info("serving", host=self.host, port=self.port, tls=self._server.ssl_enabled)

    def serve_forever(self) -> None:
        """Start if needed, then block until ``stop()``."""
        if self.stopping.is_set():
            return
        if not self._server.started:
            self.start()
        try:
            self._stopped.wait()
        except (KeyboardInterrupt, SystemExit):
            self.stop()
            raise

    def stop(self, timeout: float = 5) -> None:
        """Stop accepting and close every connection within ``timeout`` (+1 s to kill stragglers).

        Idle keep-alive connections and unfinished TLS handshakes are closed at once, and so are
        streaming responses (no Content-Length, e.g. watches) and requests that set
        ``environ["kcp.long_running"] = True``: their greenlets are killed, which runs the
        response generator's ``finally``. Other requests in flight get up to ``timeout`` seconds
        to finish (their connections then close instead of staying alive) and then are killed.
        Must run in a greenlet of the hub the server runs in.
        """
        server = self._server
        if server.kcp_stopping.is_set():
            self._stopped.wait()
            return
        server.kcp_stopping.set()
        server.close()
        for fd in list(server.kcp_handshaking):
            _shutdown_read(fd)
        for greenlet in list(server.kcp_h2_greenlets):  # their streams are watches: end them now
            greenlet.kill(block=False)
        for parked in list(server.kcp_parked.values()):
            parked.abort("the server is stopping")
        for handler in list(server.kcp_handlers):
            if handler._idle:
                _shutdown_read(handler.socket)
            elif _long_running(handler):
                handler.greenlet.kill(block=False)
        self.pool.join(timeout=timeout)
        self.pool.kill(block=True, timeout=1)
        self._stopped.set()
        self.log.info("stopped serving", port=self.port)


def _long_running(handler: _Handler) -> bool:
    """A request in flight that will not end by itself soon: a watch or other stream.

    Streams are recognised by the explicit ``kcp.long_running`` flag, or by a response
    started without Content-Length (werkzeug calls start_response before the first yield,
    so a watch still waiting for its first event counts).
    """
    if getattr(handler, "response_use_chunked", False):
        return True
    env = getattr(handler, "environ", None) or {}
    if env.get("kcp.long_running"):
        return True
    return (getattr(handler, "status", None) is not None
            and getattr(handler, "provided_content_length", 0) is None
            and getattr(handler, "code", 200) not in (204, 304))


def _shutdown_read(sock) -> None:
    """Wake a greenlet blocked reading ``sock`` (a socket or fd) with EOF, keeping its TLS state.

    ``SSLSocket.shutdown`` would drop the SSL object under the reader; shutting down the
    underlying TCP connection through a duplicate fd just makes the pending read see EOF.
    """
    if sock is None:
        return
    try:
        fd = sock if isinstance(sock, int) else sock.fileno()
        if fd < 0:
            return
        dup = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        dup.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    finally:
        dup.close()
