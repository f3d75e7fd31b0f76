"""HTTP/2 connections of ``server.http.serving.Server``: each stream served by the same WSGI app, in its own greenlet.

For the shard's forwarded watches (``kcp_virtual.transport.http2``): many long-running streams share one TLS
connection instead of one connection each. A server enables it with ``Server(..., http2=True)``
(``kcp virtual-workspaces``); ALPN then lists ``http/1.1`` first, so clients that offer both
(kubectl, client-go, browsers) keep HTTP/1.1 and only a client offering ``h2`` alone gets this.

The protocol machine is the ``h2`` library. Each request stream gets a WSGI environ like pywsgi's
(plus ``kcp.peer_certificate`` and ``kcp.stopping``; no ``kcp.socket``: on a shared connection a
readable socket says nothing about one stream), and its
app runs in a greenlet of the connection's group; a stream reset by the client, or the connection
ending, kills that greenlet, so a watch's ``finally`` runs at once. Responses stream frame by frame
(a watch event is sent when it is yielded); the client's flow-control windows are respected.

A response that can be parked (a watch: ``WatchBody.park``) is, once its head is sent: its greenlet ends
and the stream's producer writes DATA frames through a ``_ParkedStream`` (an ``Outlet``); a reset of the
stream, or the end of the connection, is its client leaving (``on_gone``). All output of a connection goes
through one ``Outbox`` (``server.http.parking``), so writes never block the reader or a producer.
"""

from __future__ import annotations

import io
from functools import partial
from typing import Callable
from urllib.parse import unquote

import gevent
import gevent.event
import gevent.pool
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from server.http.parking import MAX_QUEUED, Outbox, recv_waiting

__all__ = ["serve_connection", "ALPN"]

#: ALPN of an HTTP/2-enabled server: HTTP/1.1 preferred, h2 only for clients that offer nothing else.
ALPN = ["http/1.1", "h2"]
_RECV = 64 * 1024
_MAX_STREAMS = 100_000
_MAX_BODY = 3 * 1024 * 1024 + 1024  # the apps refuse more than 3 MiB with a 413 Status themselves
_CONNECTION_HEADERS = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
                                 b"te", b"trailer"})
_unquote_latin1 = partial(unquote, encoding="latin-1")


class _StreamState:
    __slots__ = ("headers", "body", "greenlet", "reset", "parked")

    def __init__(self, headers):
        self.headers = headers
        self.body = io.BytesIO()
        self.greenlet = None
        self.reset = False
        self.parked: _ParkedStream | None = None


class _ParkedStream:
    """The rest of one stream's response, written by its producer (an ``Outlet``, see the module docstring):
    DATA frames as the client's windows allow, the rest kept here (up to ``MAX_QUEUED``, then the stream is
    reset: a client too far behind is dropped)."""

    __slots__ = ("conn", "stream_id", "pending", "ending", "done", "bytes", "on_gone", "_on_done")

    def __init__(self, conn: "_H2Connection", stream_id: int):
        self.conn = conn
        self.stream_id = stream_id
        self.pending = b""
        self.ending = False
        self.done = False
        self.bytes = 0
        self.on_gone: Callable[[], None] | None = None
        self._on_done: list[Callable[[], None]] = []

    def when_done(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the stream has ended, however it ended (now, if it has)."""
        if self.done:
            callback()
        else:
            self._on_done.append(callback)

    def _finish(self) -> None:
        self.done = True
        self.conn.forget(self.stream_id)
        callbacks, self._on_done = self._on_done, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # noqa: BLE001 - one failing callback must not keep the others from running
                self.conn.server.kcp_log.exception("parked stream callback failed")

    def send(self, data: bytes) -> None:
        if self.done or not data:
            return
        self.bytes += len(data)
        self.pending += data
        if len(self.pending) > MAX_QUEUED:
            self.conn.server.kcp_log.info("HTTP/2 stream too slow, resetting it", peer=self.conn.address)
            self.conn.reset(self.stream_id, h2.errors.ErrorCodes.CANCEL)
            self.gone()
            return
        self.flush()

    def end(self) -> None:
        if not self.done:
            self.ending = True
            self.flush()

    def flush(self) -> None:
        """Frame what the windows allow (again when the client opens them: ``_H2Connection``)."""
        conn, stream_id = self.conn, self.stream_id
        h2conn = conn.h2
        try:
            while self.pending:
                size = min(len(self.pending), h2conn.local_flow_control_window(stream_id),
                           h2conn.max_outbound_frame_size)
                if size <= 0:
                    break
                piece, self.pending = self.pending[:size], self.pending[size:]
                h2conn.send_data(stream_id, piece)
            if self.ending and not self.pending:
                h2conn.end_stream(stream_id)
                self._finish()
        except h2.exceptions.H2Error:  # the stream is gone on the client's side
            self.gone()
            return
        conn.flush()

    def gone(self) -> None:
        """The client left (a reset, the connection's end): stop the producer."""
        if self.done:
            return
        self.pending = b""
        on_gone, self.on_gone = self.on_gone, None
        self._finish()
        if on_gone is not None:
            on_gone()


class _H2Connection:
    def __init__(self, sock, address, server, peer):
        self.sock = sock
        self.address = address
        self.server = server
        self.peer = peer
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.window_opened = gevent.event.Event()
        self.streams: dict[int, _StreamState] = {}
        self.parked: dict[int, _ParkedStream] = {}
        self.group = gevent.pool.Group()
        self.out = Outbox(sock, server.kcp_idle_timeout, self)
        self.drained = gevent.event.Event()
        self.drained.set()

    def outbox_failed(self, reason: str) -> None:
        self.server.kcp_log.debug("HTTP/2 connection ended", peer=self.address, error=reason)
        try:
            self.sock.shutdown(2)  # the reader sees the end and cleans up
        except OSError:
            pass

    def outbox_drained(self) -> None:
        self.drained.set()

    def flush(self) -> None:
        """Everything h2 has to send, written in order without blocking (``Outbox``)."""
        data = self.h2.data_to_send()
        if data:
            self.out.write(data)
            if not self.out.idle:
                self.drained.clear()

    def send(self, action: Callable[[h2.connection.H2Connection], None]) -> None:
        """``action`` on the protocol machine, then its output written; a greenlet writing a large response
        waits while the client is slow (a parked producer never does: it calls ``flush``)."""
        action(self.h2)
        self.flush()
        if not self.out.idle and gevent.getcurrent() is not gevent.get_hub():
            self.drained.wait()

    def forget(self, stream_id: int) -> None:
        self.parked.pop(stream_id, None)
        self.streams.pop(stream_id, None)

    def reset(self, stream_id: int, code) -> None:
        try:
            self.h2.reset_stream(stream_id, code)
        except h2.exceptions.H2Error:
            return
        self.flush()

    def serve(self) -> None:
        self.h2.initiate_connection()
        self.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: _MAX_STREAMS,
                                 h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _MAX_BODY})
        self.send(lambda c: None)
        try:
            while not self.server.kcp_stopping.is_set():
                data = recv_waiting(self.sock, _RECV)
                if not data:
                    return
                events = self.h2.receive_data(data)
                for event in events:
                    self._dispatch(event)
                self.flush()
        except (OSError, h2.exceptions.H2Error) as exc:
            self.server.kcp_log.debug("HTTP/2 connection ended", peer=self.address, error=repr(exc))
        finally:
            self.group.kill(block=False)
            parked, self.parked = self.parked, {}
            for stream in parked.values():
                stream.gone()

    def _dispatch(self, event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self.streams[event.stream_id] = _StreamState(event.headers)
            if event.stream_ended is not None:
                self._start(event.stream_id)
        elif isinstance(event, h2.events.DataReceived):
            state = self.streams.get(event.stream_id)
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if state is not None and state.greenlet is None:
                if state.body.tell() + len(event.data) > _MAX_BODY:
                    self._refuse(event.stream_id)
                else:
                    state.body.write(event.data)
        elif isinstance(event, h2.events.StreamEnded):
            state = self.streams.get(event.stream_id)
            if state is not None and state.greenlet is None:
                self._start(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            state = self.streams.pop(event.stream_id, None)
            if state is not None:
                state.reset = True
                if state.greenlet is not None:
                    state.greenlet.kill(block=False)
            parked = self.parked.get(event.stream_id)
            if parked is not None:
                parked.gone()
        elif isinstance(event, h2.events.WindowUpdated):
            self.window_opened.set()
            for parked in [p for p in self.parked.values() if p.pending]:
                if event.stream_id in (0, parked.stream_id):
                    parked.flush()
        elif isinstance(event, h2.events.ConnectionTerminated):
            raise OSError(f"the client ended the connection ({event.error_code!r})")

    def _refuse(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)
        self.reset(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)

    def _start(self, stream_id: int) -> None:
        state = self.streams[stream_id]
        state.greenlet = self.group.spawn(self._run, stream_id, state)

    # ------------------------------------------------------------------ one stream

    def _environ(self, state: _StreamState) -> dict:
        env = self.server.get_environ()
        pseudo = {}
        for name, value in state.headers:
            if name.startswith(b":"):
                pseudo[name] = value.decode("latin-1")
                continue
            key = name.decode("latin-1")
            if "_" in key:
                continue  # as pywsgi: such headers could pass for others once underscored
            value_text = value.decode("latin-1")
            if key == "content-type":
                env["CONTENT_TYPE"] = value_text
            elif key == "content-length":
                env["CONTENT_LENGTH"] = value_text
            else:
                wsgi_key = "HTTP_" + key.replace("-", "_").upper()
                env[wsgi_key] = f"{env[wsgi_key]},{value_text}" if wsgi_key in env else value_text
        target = pseudo.get(b":path", "/")
        path, _, query = target.partition("?")
        body = state.body.getvalue()
        env.update({"REQUEST_METHOD": pseudo.get(b":method", "GET"), "SCRIPT_NAME": "",
                    "PATH_INFO": _unquote_latin1(path), "QUERY_STRING": query, "SERVER_PROTOCOL": "HTTP/2",
                    "REMOTE_ADDR": str(self.address[0]), "REMOTE_PORT": str(self.address[1]),
                    "wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True,
                    "kcp.stopping": self.server.kcp_stopping})
        if body and "CONTENT_LENGTH" not in env:
            env["CONTENT_LENGTH"] = str(len(body))
        if b":authority" in pseudo and "HTTP_HOST" not in env:
            env["HTTP_HOST"] = pseudo[b":authority"]
        if self.peer is not None:
            env["kcp.peer_certificate"] = self.peer
        return env

    def _run(self, stream_id: int, state: _StreamState) -> None:
        response: dict = {}

        def start_response(status, headers, exc_info=None):
            if exc_info and response.get("sent"):
                raise exc_info[1].with_traceback(exc_info[2])
            response["status"], response["headers"] = status, headers
            return lambda data: self._data(stream_id, response, data)

        result = None
        try:
            result = self.server.application(self._environ(state), start_response)
            park = getattr(result, "park", None)
            if park is not None and response.get("sent") and not state.reset:
                parked = state.parked = self.parked[stream_id] = _ParkedStream(self, stream_id)
                result = None  # closed by the parked stream's end (the access log's wrapper: ``when_done``)
                park(parked)
                return
            for chunk in result:
                self._data(stream_id, response, chunk)
            self._data(stream_id, response, b"", end=True)
        except gevent.GreenletExit:
            raise
        except (OSError, h2.exceptions.StreamClosedError) as exc:  # the connection or the stream went away
            self.server.kcp_log.debug("HTTP/2 stream ended", peer=self.address, error=repr(exc))
        except Exception:  # noqa: BLE001 - one stream's failure must not end the connection
            self.server.kcp_log.exception("unhandled error in an HTTP/2 stream", peer=self.address)
            self._reset(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
        finally:
            self.streams.pop(stream_id, None)  # a parked stream is in ``parked``: its request is let go
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def _data(self, stream_id: int, response: dict, data: bytes, end: bool = False) -> None:
        if not response.get("sent"):
            if "status" not in response:
                raise RuntimeError("the application wrote before start_response")
            fields = [(b":status", response["status"][:3].encode("latin-1"))]
            fields.extend((name.lower().encode("latin-1"), str(value).encode("latin-1"))
                          for name, value in response["headers"]
                          if name.lower().encode("latin-1") not in _CONNECTION_HEADERS)
            response["sent"] = True
            self.send(lambda c: c.send_headers(stream_id, fields, end_stream=end and not data))
            if end and not data:
                return
        view = memoryview(data)
        while view:
            size = min(len(view), self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size)
            if size <= 0:
                self.window_opened.clear()
                self.window_opened.wait()
                continue
            piece, view = view[:size], view[size:]
            self.send(lambda c: c.send_data(stream_id, piece.tobytes(), end_stream=end and not view))
        if end and not data:
            self.send(lambda c: c.end_stream(stream_id))

    def _reset(self, stream_id: int, code) -> None:
        self.reset(stream_id, code)


def serve_connection(sock, address, server, peer) -> None:
    """Serve an HTTP/2 connection (ALPN chose h2) until it ends; ``server`` is the pywsgi server."""
    _H2Connection(sock, address, server, peer).serve()
