"""Streaming responses that go on without their connection's greenlet (``RawExchange.park``).

Why: a greenlet waiting through an idle watch holds its saved C stack, a page of Python frames, the
request handler and its read buffer: an idle forwarded watch cost the shard 43 KiB, parked 28
(``hack/bench``, 1,000 watches), and thousands of idle watches are most of what a shard holds.
Parked, a stream is its socket, one io watcher and this object. Whoever produces the stream
(callbacks run by another greenlet, e.g. the forwarder's HTTP/2 reader) calls ``write``, which never
blocks: it sends at once, or -- only while the client is slow -- queues behind a short-lived writer
greenlet, up to ``MAX_QUEUED`` bytes, past which the client is dropped (as kube drops a watch client
that falls behind).

The client sending anything or leaving ends the stream (as ``interrupted_when_client_leaves`` does
for a stream served in a greenlet): ``on_gone`` runs and the connection closes. ``finish()`` ends it
normally: once the queue is sent, the connection's keep-alive loop resumes in a new greenlet.
"""

from __future__ import annotations

from typing import Callable

import gevent
import structlog

from kcp_virtual.transport.http1 import send_all

__all__ = ["ParkedStream", "MAX_QUEUED"]

log = structlog.get_logger("kcp.serving")

#: Bytes queued for a slow client before it is dropped.
MAX_QUEUED = 16 * 1024 * 1024
_READ = 1  # libev/libuv READ event


class ParkedStream:
    """The rest of a streaming response on ``sock``, owned by no greenlet.

    ``server`` is ``server.http.serving``'s pywsgi server: its ``kcp_parked`` registry (for ``stop()`` and the
    connection cap), ``kcp_serve_connection`` (to resume keep-alive), its pool, stopping event and idle
    timeout. ``keep_alive``: whether the request allows another one on this connection afterwards.
    """

    __slots__ = ("_server", "sock", "_address", "_keep_alive", "_watcher", "_queue", "_queued", "_finishing",
                 "bytes", "done", "on_gone", "_on_done")

    def __init__(self, server, sock, address, *, keep_alive: bool):
        self._server = server
        self.sock = sock
        self._address = address
        self._keep_alive = keep_alive
        self._queue: list[bytes] | None = None  # not None while a writer greenlet drains it
        self._queued = 0
        self._finishing = False
        self.bytes = 0
        self.done = False
        self.on_gone: Callable[[], None] | None = None  # the client left: stop producing
        self._on_done: list[Callable[[], None]] = []
        sock.settimeout(0.0)  # sends never block the producer; a would-block send returns 0
        self._watcher = gevent.get_hub().loop.io(sock.fileno(), _READ)
        self._watcher.start(self._client_spoke)
        server.kcp_parked[sock] = self

    def when_done(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the stream has ended, however it ended (now, if it has)."""
        if self.done:
            callback()
        else:
            self._on_done.append(callback)

    def write(self, data: bytes) -> None:
        """Send ``data`` without blocking the caller (queued while the client is slow)."""
        if self.done or not data:
            return
        self.bytes += len(data)
        if self._queue is not None:
            self._enqueue(data)
            return
        try:
            sent = self.sock.send(data)
        except OSError as exc:
            self.abort(f"write failed: {exc!r}")
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
            self.abort("the client fell behind")

    def _drain(self) -> None:
        sock, queue = self.sock, self._queue
        try:
            sock.settimeout(self._server.kcp_idle_timeout)
            while queue and not self.done:
                send_all(sock, queue[0])
                self._queued -= len(queue.pop(0))
            if not self.done:
                sock.settimeout(0.0)
        except OSError as exc:
            self.abort(f"write failed: {exc!r}")
            return
        finally:
            self._queue = None
        if self._finishing:
            self._complete()

    def finish(self) -> None:
        """The stream ended (its last bytes written): resume the connection once they are sent."""
        if self.done:
            return
        self._finishing = True
        if self._queue is None:
            self._complete()

    def abort(self, reason: str = "the client left") -> None:
        """End the stream now and close the connection (safe from a hub callback)."""
        if self.done:
            return
        log.debug("parked stream ended", reason=reason, peer=self._address)
        self._end()
        on_gone, self.on_gone = self.on_gone, None
        try:
            if on_gone is not None:
                on_gone()
        finally:
            self._close()

    def _client_spoke(self) -> None:
        # A streaming client sends nothing more: readable means it left (EOF, reset) or broke protocol.
        self.abort()

    def _complete(self) -> None:
        self._end()
        server = self._server
        if self._keep_alive and not server.kcp_stopping.is_set() and not server.pool.full():
            server.pool.spawn(server.kcp_serve_connection, self.sock, self._address)
        else:
            self._close()

    def _end(self) -> None:
        self.done = True
        self._watcher.stop()
        self._watcher.close()
        self._server.kcp_parked.pop(self.sock, None)
        callbacks, self._on_done = self._on_done, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # noqa: BLE001 - one failing callback must not keep the others from running
                log.exception("parked stream callback failed")
        self._server.kcp_resume_accepting()

    def _close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
