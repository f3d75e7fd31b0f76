"""A lean keep-alive HTTP/1.1 client for the hops between our own processes, on gevent sockets.

Why not urllib3 (which this replaced on these paths): forwarding one small GET through urllib3 and
http.client cost the shard ~280 µs of CPU -- headers parsed by ``email.parser``, Retry and Timeout
objects per call, the request written in several sends. A hop between two of our servers needs much
less: the request written in one ``sendall``, the status line and headers split by hand, the body
framed by Content-Length or chunked encoding, and the connection back in the pool once its body was
read to the end (or dropped when it was not).

Deliberately small: no redirects, no compression, no proxies, no 100-continue (forwarders drop
``Expect``). The one retry is the one every keep-alive client needs: a pooled connection that the
server closed while it sat idle fails before any byte of the answer; an idempotent request is then
sent again once on a fresh connection.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
from typing import Iterable, Iterator
from urllib.parse import urlsplit

import gevent.socket
from gevent.monkey import get_original

__all__ = ["Pool", "Response", "Headers", "ProtocolError", "CONNECT_TIMEOUT", "send_all", "connect",
           "https_address", "address"]

CONNECT_TIMEOUT = 5.0
_RECV = 64 * 1024
_MAX_HEAD = 64 * 1024
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_NO_BODY_STATUS = (204, 304)
_READ = 1  # libev/libuv READ event
#: The stdlib's ``select.poll``, even when gevent has patched it: gevent's poll with a zero timeout runs a turn
#: of the hub (watchers, a timer, a switch) for what one ``poll(2)`` call answers without blocking.
_poll = get_original("select", "poll")


def send_all(sock, data: bytes) -> None:
    """``sock.sendall(data)`` without gevent's per-call cost (a getsockopt syscall and a chunking loop): one
    ``send`` takes a whole message of ordinary size (TLS writes it all or waits); sendall only for the rest."""
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


def address(url: str, schemes: tuple[str, ...] = ("https",)) -> tuple[str, str, int, str]:
    """``(scheme, host, port, authority)`` of a URL of one of ``schemes`` (the authority as the Host header
    carries it)."""
    parts = urlsplit(url)
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(f"{url!r}: expected an {' or '.join(s + '://' for s in schemes)} URL")
    return parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), \
        parts.netloc.rpartition("@")[2]


def https_address(url: str) -> tuple[str, int, str]:
    """``(host, port, authority)`` of an ``https://`` URL (the authority as the Host header carries it)."""
    _, host, port, authority = address(url)
    return host, port, authority


def connect(host: str, port: int, context: ssl.SSLContext | None, timeout: float):
    """A TLS connection, or a plain one without ``context`` (gevent socket, TCP_NODELAY: requests are small
    and answered at once)."""
    sock = gevent.socket.create_connection((host, port), timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return context.wrap_socket(sock, server_hostname=host) if context is not None else sock
    except BaseException:
        sock.close()
        raise


class ProtocolError(OSError):
    """The server broke HTTP/1.1 framing (or closed mid-answer): the connection is not reusable."""


class Headers:
    """Response headers in arrival order, with a case-insensitive ``get`` (``index``: the lower-case names'
    values, when the parser has built it already)."""

    __slots__ = ("_items", "_index")

    def __init__(self, items: list[tuple[str, str]], index: dict[str, str] | None = None):
        self._items = items
        self._index = index

    def get(self, name: str, default: str | None = None) -> str | None:
        index = self._index
        if index is None:
            index = self._index = {}
            for key, value in self._items:
                _add(index, key.lower(), value)
        return index.get(name.lower(), default)

    def items(self) -> list[tuple[str, str]]:
        return self._items

    def __iter__(self):
        return iter(self._items)


def _add(index: dict[str, str], lower: str, value: str) -> None:
    """A header into a lower-case index: repeated ones comma-joined, as RFC 9110 allows."""
    index[lower] = f"{index[lower]}, {value}" if lower in index else value


class _Connection:
    __slots__ = ("sock", "buf", "_readable", "_timer", "_timer_seconds", "_timeout")

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self._readable = None  # an io watcher on the socket, and a timer: made by the first await_answer
        self._timer = None
        self._timer_seconds: float | None = None
        self._timeout: TimeoutError | None = None  # what the timer raises

    def fill(self) -> None:
        """Read what is there (at least one byte), or raise ProtocolError at end of stream."""
        data = self.sock.recv(_RECV)
        if not data:
            raise ProtocolError("the server closed the connection")
        self.buf += data

    def await_answer(self, timeout: float | None) -> None:
        """Wait until the socket has something to read, at most ``timeout`` seconds (then TimeoutError).

        For the first bytes of an answer to a request just sent: reading at once would only fail (a TLS
        read, a syscall and an exception) and then wait, with a new timer for each wait -- both gevent's.
        This connection's own watcher and timer are made once and reused for every request it carries."""
        sock = self.sock
        pending = getattr(sock, "pending", None)
        if pending is not None and pending():
            return  # decrypted bytes already wait in the TLS layer: no event would tell
        hub = gevent.get_hub()
        readable = self._readable
        if readable is None:
            readable = self._readable = hub.loop.io(sock.fileno(), _READ)
        if timeout is None:
            hub.wait(readable)
            return
        timer = self._timer
        if timer is None or self._timer_seconds != timeout:
            if timer is not None:
                timer.close()
            timer = self._timer = hub.loop.timer(timeout)
            self._timer_seconds = timeout
            # raised once at most: a connection that timed out is closed
            self._timeout = TimeoutError(f"no answer within {timeout:g} s")
        error = self._timeout
        timer.start(gevent.getcurrent().throw, error, update=True)
        try:
            hub.wait(readable)
        finally:
            timer.stop()

    def stale(self) -> bool:
        """A pooled connection the server closed (or that holds unread bytes) is readable while idle."""
        try:
            poller = _poll()  # not select(): descriptors may be above FD_SETSIZE
            poller.register(self.sock.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True

    def close(self) -> None:
        for watcher in (self._readable, self._timer):
            if watcher is not None:
                watcher.close()
        self._readable = self._timer = None
        try:
            self.sock.close()
        except OSError:
            pass


class Response:
    """One response. Read its body with ``read()`` (whole) or ``stream()`` (pieces as they arrive);
    ``close()`` gives up on it; ``interrupt()`` ends a read blocked on it, from anywhere."""

    __slots__ = ("status", "reason", "headers", "chunked", "_conn", "_pool", "_length", "_done", "_reusable")

    def __init__(self, pool: "Pool", conn: _Connection, status: int, reason: str, headers: Headers,
                 method: str, keep_alive: bool):
        self.status, self.reason, self.headers = status, reason, headers
        self._pool, self._conn = pool, conn
        encoding = headers.get("transfer-encoding")
        self.chunked = encoding is not None and "chunked" in encoding.lower()
        length = headers.get("content-length")
        if method == "HEAD" or status in _NO_BODY_STATUS or 100 <= status < 200:
            self._length: int | None = 0
        elif self.chunked:
            self._length = None
        elif length is not None:
            try:
                self._length = int(length)
                if self._length < 0:
                    raise ValueError
            except ValueError:
                conn.close()
                raise ProtocolError(f"invalid Content-Length {length!r}") from None
        else:
            self._length = -1  # until the server closes
            keep_alive = False
        self._reusable = keep_alive
        self._done = False
        if self._length == 0:
            self._finish()

    @property
    def sock(self):
        conn = self._conn
        return conn.sock if conn is not None else None

    def interrupt(self) -> None:
        """Shut the connection down so that a read blocked on it returns now.

        Safe from a hub callback (no blocking call, no switch). The TCP shutdown goes through a duplicate
        of the descriptor, leaving the TLS object to its reader (gevent's ``SSLSocket.shutdown`` would drop
        it under the reader's feet); it also tells the server at once that nobody listens any more.
        """
        sock = self.sock
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

    @property
    def length(self) -> int | None:
        """The Content-Length (None when chunked or framed by the end of the connection)."""
        return self._length if self._length is not None and self._length >= 0 else None

    def read(self) -> bytes:
        """The whole body; the connection goes back to the pool."""
        if self._done:
            return b""
        conn = self._conn
        length = self._length
        if length is not None and length >= 0:
            try:
                while len(conn.buf) < length:
                    conn.fill()
            except BaseException:
                self.close()
                raise
            data = bytes(conn.buf[:length])
            del conn.buf[:length]
            self._finish()
            return data
        return b"".join(self.stream())

    def stream(self) -> Iterator[bytes]:
        """The body in pieces as they arrive (a chunk of a chunked body at most per piece, so every
        watch event is passed on as soon as it is complete). Closing the iterator early drops the
        connection."""
        if self._done:
            return
        conn = self._conn
        try:
            if self._length is None:
                yield from self._chunks(conn)
            elif self._length < 0:
                while True:
                    if conn.buf:
                        data = bytes(conn.buf)
                        conn.buf.clear()
                        yield data
                    data = conn.sock.recv(_RECV)
                    if not data:
                        break
                    conn.buf += data
            else:
                remaining = self._length
                while remaining:
                    if not conn.buf:
                        conn.fill()
                    piece = bytes(conn.buf[:remaining])
                    del conn.buf[:len(piece)]
                    remaining -= len(piece)
                    yield piece
            self._finish()
        finally:
            if not self._done:
                self.close()

    def _chunks(self, conn: _Connection) -> Iterator[bytes]:
        buf = conn.buf
        while True:
            end = buf.find(b"\r\n")
            while end < 0:
                if len(buf) > 4096:
                    raise ProtocolError("chunk size line too long")
                conn.fill()
                end = buf.find(b"\r\n")
            size_text = bytes(buf[:end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProtocolError(f"invalid chunk size {size_text[:20]!r}") from None
            del buf[:end + 2]
            if size == 0:
                while True:  # trailers, up to the empty line
                    end = buf.find(b"\r\n")
                    while end < 0:
                        conn.fill()
                        end = buf.find(b"\r\n")
                    del buf[:end + 2]
                    if end == 0:
                        return
            while len(buf) < size + 2:
                conn.fill()
            if buf[size:size + 2] != b"\r\n":
                raise ProtocolError("chunk not terminated by CRLF")
            data = bytes(buf[:size])
            del buf[:size + 2]
            yield data

    def _finish(self) -> None:
        self._done = True
        conn, self._conn = self._conn, None
        if conn is not None:
            if self._reusable and not conn.buf:
                self._pool._release(conn)
            else:
                conn.close()

    def close(self) -> None:
        """Give up on the rest of the body: the connection is closed, never pooled."""
        self._done = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class Pool:
    """Keep-alive connections to the ``https://host:port`` of ``url``; never blocks for a free one
    (a watch holds its connection for as long as it runs; a new one is opened instead). An ``http://`` URL
    (plain TCP) needs ``ssl_context=None``."""

    def __init__(self, url: str, ssl_context: ssl.SSLContext | None, *, maxsize: int = 256,
                 connect_timeout: float = CONNECT_TIMEOUT):
        scheme, self.host, self.port, authority = address(url, ("https", "http"))
        if (scheme == "https") != (ssl_context is not None):
            raise ValueError(f"{url!r}: an https:// URL needs an SSL context, an http:// one none")
        authority.encode("ascii")  # a Host header is ASCII
        self._host_header = authority
        self.context = ssl_context
        self.maxsize = maxsize
        self.connect_timeout = connect_timeout
        self._idle: list[_Connection] = []

    def request(self, method: str, target: str, headers: Iterable[tuple[str, str]] = (), body: bytes | None = None,
                *, timeout: float | None = None) -> Response:
        """Send the request and read the status line and headers; the body is the caller's to read.
        ``timeout`` bounds each wait for data (None: wait as long as it takes, as a watch does)."""
        lines = [f"{method} {target} HTTP/1.1\r\nHost: {self._host_header}\r\n"]
        lines.extend([f"{name}: {value}\r\n" for name, value in headers])
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body or b'')}\r\n")
        lines.append("\r\n")
        data = "".join(lines).encode("latin-1")
        if body:
            data += body
        while True:
            conn, reused = self._acquire()
            try:
                conn.sock.settimeout(timeout)
                send_all(conn.sock, data)
                return self._response(conn, method, timeout)
            except BaseException as exc:
                conn.close()
                if reused and isinstance(exc, OSError) and not isinstance(exc, socket.timeout) \
                        and method in _IDEMPOTENT and not conn.buf:
                    continue  # closed by the server while idle: once more on a fresh connection
                raise

    def _acquire(self) -> tuple[_Connection, bool]:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.stale():
                return conn, True
            conn.close()
        return _Connection(connect(self.host, self.port, self.context, self.connect_timeout)), False

    def _release(self, conn: _Connection) -> None:
        if len(self._idle) < self.maxsize:
            self._idle.append(conn)
        else:
            conn.close()

    def _response(self, conn: _Connection, method: str, timeout: float | None = None) -> Response:
        buf = conn.buf
        if not buf:
            conn.await_answer(timeout)
        while True:
            end = buf.find(b"\r\n\r\n")
            while end < 0:
                if len(buf) > _MAX_HEAD:
                    raise ProtocolError("response header block too large")
                conn.fill()
                end = buf.find(b"\r\n\r\n")
            head = bytes(buf[:end]).decode("latin-1")
            del buf[:end + 4]
            status_line, *lines = head.split("\r\n")
            version, _, rest = status_line.partition(" ")
            if not version.startswith("HTTP/1.") or len(rest) < 3 or not rest[:3].isdigit():
                raise ProtocolError(f"malformed status line {status_line[:80]!r}")
            status = int(rest[:3])
            if 100 <= status < 200 and status != 101:
                continue  # an interim answer: the real one follows
            items, index = [], {}
            for line in lines:
                name, sep, value = line.partition(":")
                if not sep or not name or name[0] in " \t":
                    raise ProtocolError(f"malformed header line {line[:80]!r}")
                value = value.strip()
                items.append((name, value))
                lower = name.lower()
                index[lower] = value if lower not in index else f"{index[lower]}, {value}"  # as _add
            headers = Headers(items, index)
            connection = index.get("connection")
            keep_alive = version == "HTTP/1.1" and (connection is None or "close" not in connection.lower())
            return Response(self, conn, status, rest[4:], headers, method, keep_alive)

    def close(self) -> None:
        """Close the idle connections (those in use close when their responses end)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
