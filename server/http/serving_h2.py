"""HTTP/2 connections of ``server.http.serving.Server``: each stream served by the same WSGI app, in its own greenlet.

For the shard's forwarded watches (``kcp_virtual.transport.http2``): many long-running streams share one TLS
connection instead of one connection each. A server enables it with ``Server(..., http2=True)``
(``kcp virtual-workspaces``); ALPN then lists ``http/1.1`` first, so clients that offer both
(kubectl, client-go, browsers) keep HTTP/1.1 and only a client offering ``h2`` alone gets this.

The protocol machine is the ``h2`` library. Each request stream gets a WSGI environ like pywsgi's
(plus ``kcp.peer_certificate``, ``kcp.stopping``, and ``kcp.client_gone`` in place of
``kcp.socket``: on a shared connection a readable socket says nothing about one stream), and its
app runs in a greenlet of the connection's group; a stream reset by the client, or the connection
ending, kills that greenlet, so a watch's ``finally`` runs at once. Responses stream frame by frame
(a watch event is sent when it is yielded); the client's flow-control windows are respected.
"""

from __future__ import annotations

import io
from functools import partial
from typing import Callable
from urllib.parse import unquote

import gevent
import gevent.event
import gevent.lock
import gevent.pool
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

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
    __slots__ = ("headers", "body", "greenlet", "reset")

    def __init__(self, headers):
        self.headers = headers
        self.body = io.BytesIO()
        self.greenlet = None
        self.reset = False


class _H2Connection:
    def __init__(self, sock, address, server, peer):
        self.sock = sock
        self.address = address
        self.server = server
        self.peer = peer
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.lock = gevent.lock.Semaphore()
        self.window_opened = gevent.event.Event()
        self.streams: dict[int, _StreamState] = {}
        self.group = gevent.pool.Group()

    def send(self, action: Callable[[h2.connection.H2Connection], None]) -> None:
        with self.lock:
            action(self.h2)
            data = self.h2.data_to_send()
            if data:
                self.sock.sendall(data)

    def serve(self) -> None:
        self.h2.initiate_connection()
        self.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: _MAX_STREAMS,
                                 h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _MAX_BODY})
        self.send(lambda c: None)
        try:
            while not self.server.kcp_stopping.is_set():
                data = self.sock.recv(_RECV)
                if not data:
                    return
                with self.lock:
                    events = self.h2.receive_data(data)
                for event in events:
                    self._dispatch(event)
                self.send(lambda c: None)
        except (OSError, h2.exceptions.H2Error) as exc:
            self.server.kcp_log.debug("HTTP/2 connection ended", peer=self.address, error=repr(exc))
        finally:
            self.group.kill(block=False)

    def _dispatch(self, event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self.streams[event.stream_id] = _StreamState(event.headers)
            if event.stream_ended is not None:
                self._start(event.stream_id)
        elif isinstance(event, h2.events.DataReceived):
            state = self.streams.get(event.stream_id)
            with self.lock:
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
        elif isinstance(event, h2.events.WindowUpdated):
            self.window_opened.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            raise OSError(f"the client ended the connection ({event.error_code!r})")

    def _refuse(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)
        with self.lock:
            try:
                self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            except h2.exceptions.H2Error:
                pass

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
                    "kcp.stopping": self.server.kcp_stopping, "kcp.client_gone": lambda: state.reset})
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
            self.streams.pop(stream_id, None)
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
            with self.lock:
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
        try:
            self.send(lambda c: c.reset_stream(stream_id, code))
        except (OSError, h2.exceptions.H2Error):
            pass


def serve_connection(sock, address, server, peer) -> None:
    """Serve an HTTP/2 connection (ALPN chose h2) until it ends; ``server`` is the pywsgi server."""
    _H2Connection(sock, address, server, peer).serve()
