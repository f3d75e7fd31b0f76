"""Streaming responses that go on without their connection's greenlet: every watch, direct or forwarded.

Why: a greenlet waiting through an idle watch holds its saved C stack, a page of Python frames, the
request handler and its read buffer: thousands of idle watches are most of what a shard holds. Parked,
a stream is its socket, one io watcher and a few objects. Whoever produces the stream -- the store's
fan-out (``kcp_virtual.framework.watchstream.WatchBody``), the forwarder's HTTP/2 reader -- writes into
it from its own context; writes never block.

* ``Outbox``: ordered, non-blocking writes to one socket. Sent at once, or -- only while the peer is slow
  -- queued behind a short-lived writer greenlet, up to ``MAX_QUEUED`` bytes, past which the peer is
  dropped (as kube drops a watch client that falls behind). The HTTP/2 server's connections use it too.
* ``ParkedStream``: an HTTP/1.1 connection's streaming response. The client sending anything or leaving
  (EOF, reset, a TLS close_notify) makes its socket readable: the io watcher sees it at once, ``on_gone``
  runs, nothing more is written and the connection closes. ``end()`` ends the body normally (the last
  chunk); once sent, the connection's keep-alive loop resumes in a new greenlet.
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Callable, Protocol

import gevent
import structlog
from gevent.socket import wait_read, wait_write

__all__ = ["Outbox", "ParkedStream", "MAX_QUEUED", "send_now", "send_blocking", "recv_waiting"]

log = structlog.get_logger("kcp.serving")

#: Bytes queued for a slow client before it is dropped.
MAX_QUEUED = 16 * 1024 * 1024
_READ = 1  # libev/libuv READ event
_WOULD_BLOCK = (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError)


def send_now(sock, data) -> int:
    """Send what the socket takes now (its timeout is 0): the bytes sent, 0 if it would block. TLS sends whole
    records only, so after 0 the same bytes must be offered again."""
    try:
        return sock.send(data)
    except _WOULD_BLOCK:
        return 0


def send_blocking(sock, data, timeout: float | None) -> None:
    """Send all of ``data``, waiting (this greenlet) up to ``timeout`` for the socket each time it is full."""
    view = memoryview(data)
    while view:
        sent = send_now(sock, view)
        if sent:
            view = view[sent:]
        else:
            wait_write(sock.fileno(), timeout=timeout, timeout_exc=TimeoutError("timed out writing to the client"))


def recv_waiting(sock, size: int) -> bytes:
    """``recv`` on a socket whose timeout is 0, waiting for it to be readable (no timeout: TCP keepalive and
    the peer decide); TLS bytes already decrypted are read first."""
    while True:
        try:
            return sock.recv(size)
        except (ssl.SSLWantReadError, BlockingIOError):
            wait_read(sock.fileno())


class OutboxOwner(Protocol):
    def outbox_failed(self, reason: str) -> None: ...

    def outbox_drained(self) -> None: ...


class Outbox:
    """Ordered writes to ``sock`` that never block the caller; see the module docstring.

    ``owner.outbox_failed(reason)`` runs (once) when a write fails or the peer falls too far behind,
    ``owner.outbox_drained()`` when a queue that had formed is sent: methods of an owner, not callbacks, as
    an idle parked watch pays for every object it keeps. ``timeout`` bounds each blocked send of the writer. The
    socket's own timeout stays 0 (a reader of the same socket waits with ``recv_waiting``).
    ``blocking()``: while in it, writes block the calling greenlet instead (the request's own greenlet
    writing the first events of a watch: a big initial list is no slow client).
    """

    __slots__ = ("sock", "_timeout", "_owner", "_queue", "_queued", "_blocking", "failed")

    def __init__(self, sock, timeout: float, owner: "OutboxOwner"):
        self.sock = sock
        self._timeout = timeout
        self._owner = owner
        self._queue: list[bytes] | None = None  # not None while a writer greenlet drains it
        self._queued = 0
        self._blocking = False
        self.failed = False
        sock.settimeout(0.0)  # a would-block send returns 0 (TLS) or sends part (plain)

    @property
    def idle(self) -> bool:
        """Nothing waits to be sent."""
        return self._queue is None

    @contextlib.contextmanager
    def blocking(self):
        self._blocking = True
        try:
            yield
        finally:
            self._blocking = False

    def write(self, data: bytes) -> None:
        if self.failed or not data:
            return
        if self._queue is not None:
            self._enqueue(data)
            return
        sock = self.sock
        if self._blocking:
            try:
                send_blocking(sock, data, self._timeout)
            except OSError as exc:
                self._fail(f"write failed: {exc!r}")
            return
        try:
            sent = send_now(sock, data)
        except OSError as exc:
            self._fail(f"write failed: {exc!r}")
            return
        if sent < len(data):
            # TLS never sends part of a record: 0 means "would block", and the retry must repeat the
            # same bytes, which the writer does. A plain socket may send part: queue the rest.
            self._queue = []
            self._enqueue(data[sent:])
            gevent.spawn(self._drain)

    def _enqueue(self, data: bytes) -> None:
        self._queue.append(data)
        self._queued += len(data)
        if self._queued > MAX_QUEUED:
            self._fail("the client fell behind")

    def _drain(self) -> None:
        sock, queue = self.sock, self._queue
        try:
            while queue and not self.failed:
                send_blocking(sock, queue[0], self._timeout)
                self._queued -= len(queue.pop(0))
        except OSError as exc:
            self._fail(f"write failed: {exc!r}")
            return
        finally:
            self._queue = None
            self._queued = 0
        if not self.failed:
            self._owner.outbox_drained()

    def _fail(self, reason: str) -> None:
        if not self.failed:
            self.failed = True
            self._owner.outbox_failed(reason)


class ParkedStream(Outbox):
    """The rest of a streaming HTTP/1.1 response on ``sock``, owned by no greenlet (an ``Outlet``).

    ``server`` is ``server.http.serving``'s pywsgi server: its ``kcp_parked`` registry (for ``stop()`` and the
    connection cap), ``kcp_serve_connection`` (to resume keep-alive), its pool, stopping event and idle
    timeout. ``keep_alive``: whether the request allows another one on this connection afterwards.
    ``chunked``: whether ``send`` frames its data as HTTP/1.1 chunks (``write`` never frames).

    An idle watch is this object and what it points to, 10,000 times over, so it keeps little: it is its own
    ``Outbox`` (a subclass, not one more object), it watches the socket with the socket's own read watcher
    (gevent's socket has one; nobody else reads while parked) and it is that watcher's callback itself (no
    bound method kept).
    """

    __slots__ = ("_server", "_keep_alive", "_watcher", "_finishing", "chunked", "bytes", "done", "on_gone",
                 "_on_done")

    def __init__(self, server, sock, address, *, keep_alive: bool, chunked: bool = True):
        super().__init__(sock, server.kcp_idle_timeout, self)
        self._server = server
        # ``address`` is not kept (a tuple and a string per idle watch): the socket tells it when it is needed
        self._keep_alive = keep_alive
        self.chunked = chunked
        self._finishing = False
        self.bytes = 0
        self.done = False
        self.on_gone: Callable[[], None] | None = None  # the client left: stop producing
        self._on_done: Callable[[], None] | tuple | None = None  # one callback (mostly), or a tuple of them
        watcher = getattr(sock, "_read_event", None)
        if watcher is None or watcher.active or watcher.callback is not None:
            watcher = gevent.get_hub().loop.io(sock.fileno(), _READ)
        self._watcher = watcher
        watcher.start(self)  # readable: see __call__
        server.kcp_parked[sock] = self

    def when_done(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the stream has ended, however it ended (now, if it has)."""
        if self.done:
            callback()
        elif self._on_done is None:
            self._on_done = callback
        else:
            self._on_done = (self._on_done if isinstance(self._on_done, tuple) else (self._on_done,)) + (callback,)

    def write(self, data: bytes) -> None:
        """Send ``data`` as it is, without blocking the caller (queued while the client is slow)."""
        if self.done or not data:
            return
        self.bytes += len(data)
        Outbox.write(self, data)

    def send(self, data: bytes) -> None:
        """Send ``data`` as one chunk of the body (one write: the chunk's head, data and end together)."""
        if data:
            self.write(b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data)

    def end(self) -> None:
        """The body is complete: its last chunk, then the connection goes on (``finish``)."""
        if self.chunked:
            self.write(b"0\r\n\r\n")
        self.finish()

    def finish(self) -> None:
        """The stream ended (its last bytes written): resume the connection once they are sent."""
        if self.done:
            return
        self._finishing = True
        if self.idle:
            self._complete()

    def outbox_drained(self) -> None:
        if self._finishing and not self.done:
            self._complete()

    def outbox_failed(self, reason: str) -> None:
        self.abort(reason)

    def abort(self, reason: str = "the client left") -> None:
        """End the stream now and close the connection (safe from a hub callback)."""
        if self.done:
            return
        log.debug("parked stream ended", reason=reason, peer=self._peer())
        self.failed = True  # nothing more is written: the client may have sent its close_notify
        self._end()
        on_gone, self.on_gone = self.on_gone, None
        try:
            if on_gone is not None:
                on_gone()
        finally:
            self._close()

    def __call__(self) -> None:
        """The socket's read watcher fired. A streaming client sends nothing more: readable means it left (EOF,
        reset, close_notify) or broke protocol."""
        self.abort()

    def _complete(self) -> None:
        self._end()
        self.on_gone = None
        server = self._server
        peer = self._peer() if self._keep_alive and not server.kcp_stopping.is_set() and not server.pool.full() \
            else None
        if peer is not None:
            server.pool.spawn(server.kcp_serve_connection, self.sock, peer)
        else:
            self._close()  # not kept alive, or the peer is gone already

    def _end(self) -> None:
        self.done = True
        watcher = self._watcher
        watcher.stop()
        if watcher is not getattr(self.sock, "_read_event", None):
            watcher.close()  # our own; the socket's goes on with the connection
        self._server.kcp_parked.pop(self.sock, None)
        callbacks, self._on_done = self._on_done, None
        if callbacks is None:
            callbacks = ()
        elif not isinstance(callbacks, tuple):
            callbacks = (callbacks,)
        for callback in callbacks:
            try:
                callback()
            except Exception:  # noqa: BLE001 - one failing callback must not keep the others from running
                log.exception("parked stream callback failed")
        self._server.kcp_resume_accepting()

    def _peer(self):
        """The client's address, None once the connection is gone."""
        try:
            return self.sock.getpeername()
        except OSError:
            return None

    def _close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
