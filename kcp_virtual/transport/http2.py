"""Many long-running streams on one TLS connection: HTTP/2 for the shard's forwarded watches.

Why: a forwarded watch on its own HTTP/1.1 connection costs the shard a TLS client connection per
watch (~20-25 KiB of OpenSSL and Python state, measured); as HTTP/2 streams of one connection they
cost ~1 KiB each. Only streams use it: a short request pays h2's pure-Python framing for nothing, so
those stay on ``kcp_virtual.transport.http1``.

The protocol machine is the ``h2`` library (python-hyper); the I/O is ours, on gevent sockets: one
reader greenlet per connection hands frames to the streams, whose readers block on a ``Waiter`` --
or, for a stream with ``attach``ed callbacks, runs those (no greenlet waits on it at all).
Flow control is opened wide (the largest windows, acknowledged lazily) so the server never waits
for credit; instead each stream's buffer is bounded here: a stream whose reader falls behind by more
than ``MAX_BUFFERED`` bytes is reset, as a slow watch client is dropped by the apiserver.

ALPN decides: the pool offers only ``h2``; a server that does not select it (it also speaks HTTP/1.1
only to clients that offer that) makes ``Pool.request`` raise ``NotSupported`` and the caller uses
HTTP/1.1 instead.
"""

from __future__ import annotations

import ssl
from http import HTTPStatus
from typing import Callable, Iterable, Iterator

import gevent
import gevent.lock
from gevent.hub import Waiter
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from kcp_virtual.transport.http1 import Headers, ProtocolError, connect, https_address

__all__ = ["Pool", "Stream", "NotSupported", "MAX_BUFFERED"]

MAX_BUFFERED = 16 * 1024 * 1024
_WINDOW = 2 ** 31 - 1
_ACK_EVERY = 256 * 1024 * 1024  # bytes consumed before the windows are topped up again
_RECV = 64 * 1024
_STREAMS_PER_CONNECTION = 10_000


class NotSupported(ProtocolError):
    """The server did not agree to HTTP/2 (ALPN)."""


class Stream:
    """One request's response: ``status``/``reason``/``headers`` once the head arrived, then ``stream()``.
    ``close()`` gives up on it (RST_STREAM); ``interrupt()`` does the same from a hub callback."""

    __slots__ = ("id", "status", "reason", "headers", "_conn", "_pieces", "_buffered", "_ended", "_error", "_waiter",
                 "_sink")

    length = None  # never framed by a Content-Length here: always streamed

    def __init__(self, conn: "_Connection", stream_id: int):
        self.id = stream_id
        self._conn = conn
        self.status = 0
        self.reason = ""
        self.headers = Headers([])
        self._pieces: list[bytes] = []  # a watch has one piece or none waiting: a list is ~10x smaller than a deque
        self._buffered = 0
        self._ended = False
        self._error: BaseException | None = None
        self._waiter: Waiter | None = None
        self._sink: tuple[Callable[[bytes], None], Callable[[BaseException | None], None]] | None = None

    # ---------------------------------------------------------------- fed by the reader greenlet

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:  # a Waiter is switched to from the hub only: the next loop turn does it
            gevent.get_hub().loop.run_callback(waiter.switch, None)

    def _on_headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        items = []
        for name, value in headers:
            name_text = name.decode("latin-1")
            if name_text == ":status":
                self.status = int(value)
            elif not name_text.startswith(":"):
                items.append((name_text, value.decode("latin-1")))
        try:
            self.reason = HTTPStatus(self.status).phrase
        except ValueError:
            self.reason = ""
        self.headers = Headers(items)
        self._wake()

    def _on_data(self, data: bytes) -> bool:
        """False when the reader lags too far behind (the stream is then failed)."""
        if self._sink is not None:
            self._conn.consumed(len(data))
            self._sink[0](data)
            return True
        self._pieces.append(data)
        self._buffered += len(data)
        self._wake()
        return self._buffered <= MAX_BUFFERED

    def _on_end(self, error: BaseException | None = None) -> None:
        ended, self._ended = self._ended, True
        if error is not None and self._error is None:
            self._error = error
        if self._sink is not None:
            if not ended:
                self._sink[1](self._error)
            return
        self._wake()

    # ---------------------------------------------------------------- the caller's side

    def _wait(self) -> None:
        self._waiter = Waiter()
        try:
            self._waiter.get()
        finally:
            self._waiter = None

    def wait_head(self) -> None:
        while not self.status and not self._ended:
            self._wait()
        if not self.status:
            raise self._error or ProtocolError("the stream ended before its response head")

    def stream(self) -> Iterator[bytes]:
        """The body in pieces as they arrive; an error ends it (raised) after what arrived before."""
        pieces = self._pieces
        try:
            while True:
                if pieces:
                    data = pieces.pop(0)
                    self._buffered -= len(data)
                    self._conn.consumed(len(data))
                    yield data
                    continue
                if self._ended:
                    if self._error is not None:
                        raise self._error
                    return
                self._wait()
        finally:
            self.close()

    def read(self) -> bytes:
        return b"".join(self.stream())

    def attach(self, on_data: Callable[[bytes], None], on_end: Callable[[BaseException | None], None]) -> None:
        """The body to callbacks instead of ``stream()``: what arrived already now, the rest as the
        connection's reader greenlet receives it; ``on_end(error or None)`` once. Callbacks must not block.
        No greenlet waits on the stream: the point, for an idle watch (see ``server.http.parking``)."""
        pieces, self._pieces, self._buffered = self._pieces, [], 0
        self._sink = (on_data, on_end)
        for data in pieces:
            self._conn.consumed(len(data))
            on_data(data)
        if self._ended:
            on_end(self._error)

    def close(self) -> None:
        if not self._ended:
            self._ended = True
            self._conn.reset(self.id)

    def interrupt(self) -> None:
        """End the stream now (safe from a hub callback: the reset is sent by a new greenlet)."""
        if not self._ended:
            self._on_end(ProtocolError("interrupted"))
            gevent.spawn(self._conn.reset, self.id)


class _Connection:
    """One HTTP/2 connection and its reader greenlet."""

    def __init__(self, sock):
        self.sock = sock
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.streams: dict[int, Stream] = {}
        self.dead: BaseException | None = None
        self._lock = gevent.lock.Semaphore()
        self._unacknowledged = 0
        self.h2.initiate_connection()
        self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _WINDOW,
                                 h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self.h2.increment_flow_control_window(_WINDOW - 65535)
        self._flush()
        self.reader = gevent.spawn(self._read)

    @property
    def usable(self) -> bool:
        return self.dead is None and len(self.streams) < _STREAMS_PER_CONNECTION

    def _flush(self) -> None:
        with self._lock:
            data = self.h2.data_to_send()
            if data:
                self.sock.sendall(data)

    def open(self, headers: list[tuple[str, str]]) -> Stream:
        with self._lock:
            try:
                stream_id = self.h2.get_next_available_stream_id()
                stream = self.streams[stream_id] = Stream(self, stream_id)
                self.h2.send_headers(stream_id, headers, end_stream=True)
            except h2.exceptions.H2Error as exc:  # e.g. stream ids used up: this connection is done
                self.dead = ProtocolError(f"HTTP/2: {exc}")
                raise self.dead from None
            data = self.h2.data_to_send()
            if data:
                self.sock.sendall(data)
        return stream

    def reset(self, stream_id: int) -> None:
        if self.streams.pop(stream_id, None) is None or self.dead is not None:
            return
        try:
            with self._lock:
                self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                self.sock.sendall(self.h2.data_to_send())
        except (h2.exceptions.H2Error, OSError):
            pass  # already closed on the other side, or the connection is going away

    def consumed(self, n: int) -> None:
        """Top the windows up once a large amount has been read (so the server never runs dry)."""
        self._unacknowledged += n
        if self._unacknowledged >= _ACK_EVERY and self.dead is None:
            amount, self._unacknowledged = self._unacknowledged, 0
            try:
                with self._lock:
                    self.h2.increment_flow_control_window(amount)
                    for stream_id in list(self.streams):
                        try:
                            self.h2.increment_flow_control_window(amount, stream_id=stream_id)
                        except h2.exceptions.H2Error:
                            pass
                    self.sock.sendall(self.h2.data_to_send())
            except OSError:
                pass

    def _read(self) -> None:
        error: BaseException = ProtocolError("the server closed the connection")
        try:
            while True:
                data = self.sock.recv(_RECV)
                if not data:
                    break
                events = self.h2.receive_data(data)
                for event in events:
                    self._dispatch(event)
                self._flush()
                if isinstance(self.dead, ProtocolError):
                    break
        except (OSError, h2.exceptions.H2Error) as exc:
            error = exc if isinstance(exc, OSError) else ProtocolError(f"HTTP/2: {exc}")
        finally:
            self.dead = self.dead or error
            streams, self.streams = self.streams, {}
            for stream in streams.values():
                stream._on_end(self.dead)
            try:
                self.sock.close()
            except OSError:
                pass

    def _dispatch(self, event) -> None:
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.ResponseReceived):
            if stream is not None:
                stream._on_headers(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            if stream is not None and event.data and not stream._on_data(event.data):
                stream._on_end(ProtocolError("the stream's reader fell behind; stream reset"))
                self.streams.pop(event.stream_id, None)
                self.h2.reset_stream(event.stream_id, h2.errors.ErrorCodes.CANCEL)
        elif isinstance(event, h2.events.StreamEnded):
            if stream is not None:
                self.streams.pop(event.stream_id, None)
                stream._on_end()
        elif isinstance(event, h2.events.StreamReset):
            if stream is not None:
                self.streams.pop(event.stream_id, None)
                stream._on_end(ProtocolError(f"the server reset the stream ({event.error_code!r})"))
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.dead = ProtocolError(f"the server ended the connection ({event.error_code!r})")


class Pool:
    """HTTP/2 connections to the ``https://host:port`` of ``url`` (``ssl_context`` must offer ALPN ``h2``)."""

    def __init__(self, url: str, ssl_context: ssl.SSLContext, *, connect_timeout: float = 5.0):
        self.host, self.port, self.authority = https_address(url)
        self.context = ssl_context
        self.connect_timeout = connect_timeout
        self._connections: list[_Connection] = []
        self._connecting = gevent.lock.Semaphore()

    def _connection(self) -> _Connection:
        self._connections = [conn for conn in self._connections if conn.dead is None]
        for conn in self._connections:
            if conn.usable:
                return conn
        with self._connecting:  # one handshake at a time: concurrent callers share its connection
            for conn in self._connections:
                if conn.usable:
                    return conn
            tls = connect(self.host, self.port, self.context, self.connect_timeout)
            if tls.selected_alpn_protocol() != "h2":
                tls.close()
                raise NotSupported(f"{self.authority} does not speak HTTP/2")
            tls.settimeout(None)
            conn = _Connection(tls)
            self._connections.append(conn)
            return conn

    def request(self, method: str, target: str, headers: Iterable[tuple[str, str]] = (), *,
                head_timeout: float | None = None) -> Stream:
        """Open a stream for a request without body and wait for the response head (at most ``head_timeout``
        seconds: then ``TimeoutError``)."""
        conn = self._connection()
        fields = [(":method", method), (":scheme", "https"), (":authority", self.authority), (":path", target)]
        fields.extend((name.lower(), value) for name, value in headers if name.lower() != "host")
        stream = conn.open(fields)
        try:
            with gevent.Timeout(head_timeout, TimeoutError("timed out waiting for the response head")):
                stream.wait_head()
        except BaseException:
            stream.close()
            raise
        return stream

    def close(self) -> None:
        for conn in self._connections:
            conn.reader.kill(block=False)
        self._connections = []
