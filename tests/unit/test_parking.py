"""Parked streams (``server/http/parking.py``): a streaming response that goes on without its connection's
greenlet, written by another greenlet, on a real ``Server``."""

from __future__ import annotations

import socket
import threading
import time

import gevent
import pytest

from server.http import parking
from tests.unit.test_serving import Running, pool, recv_until, shard_pki, tls_socket, whoami  # noqa: F401 - fixture

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"


class Producer:
    """An interceptor that parks every ``/park`` request and feeds it from its own greenlet: ``count`` chunks
    of ``size`` bytes every ``interval`` seconds, then the end (``count`` None: never ends)."""

    def __init__(self, *, count: int | None = 3, interval: float = 0.05, size: int = 8):
        self.count, self.interval, self.size = count, interval, size
        self.parked: list[parking.ParkedStream] = []
        self.gone = threading.Event()

    def __call__(self, environ, exchange) -> bool:
        parked = exchange.park()
        assert parked is not None
        exchange.start_stream()
        parked.on_gone = self.gone.set
        parked.write(HEAD)
        self.parked.append(parked)
        gevent.spawn(self._produce, parked)
        return True

    def _produce(self, parked) -> None:
        i = 0
        while (self.count is None or i < self.count) and not parked.done:
            gevent.sleep(self.interval)
            piece = (b"%d:" % i).ljust(self.size, b".")
            parked.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            i += 1
        parked.write(b"0\r\n\r\n")
        parked.finish()


def running(shard_pki, producer: Producer, **kwargs) -> Running:
    return Running(whoami, shard_pki, intercept=producer, intercept_prefix="/park", **kwargs)


def read_chunked(sock) -> list[bytes]:
    """The pieces of one chunked body (after its head), up to its terminating chunk."""
    data = recv_until(sock, b"\r\n\r\n")
    rest = data[data.index(b"\r\n\r\n") + 4:]
    pieces = []
    while True:
        while b"\r\n" not in rest:
            rest += sock.recv(65536)
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        while len(rest) < size + 2:
            chunk = sock.recv(65536)
            assert chunk, "the stream was cut"
            rest += chunk
        if size == 0:
            assert rest == b"\r\n"
            return pieces
        pieces.append(rest[:size])
        rest = rest[size + 2:]


def server_state(srv) -> tuple[int, int]:
    """(parked streams, connection greenlets) of the server."""
    return srv.call(lambda: (len(srv.server._server.kcp_parked), len(srv.server.pool)))


def wait_for(predicate, timeout: float = 3) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_parked_stream_holds_no_greenlet_and_its_connection_serves_on(shard_pki):
    producer = Producer(count=3, interval=0.2)
    with running(shard_pki, producer) as srv:
        sock = tls_socket(shard_pki, srv.port)
        sock.sendall(b"GET /park HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: server_state(srv) == (1, 0))  # parked, and the connection's greenlet is gone
        # it watches its socket with the socket's own read watcher, and is itself the callback: no more objects
        parked, = srv.call(lambda: list(srv.server._server.kcp_parked.items()))
        assert parked[1]._watcher is parked[0]._read_event and parked[0]._read_event.callback is parked[1]
        assert read_chunked(sock) == [b"0:......", b"1:......", b"2:......"]
        sock.sendall(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n")  # keep-alive resumed in a new greenlet
        assert b"HTTP/1.1 200 OK" in recv_until(sock, b"}")
        assert server_state(srv)[0] == 0
        sock.close()


def test_connection_close_is_honoured_after_a_parked_stream(shard_pki):
    with running(shard_pki, Producer(count=1)) as srv:
        sock = tls_socket(shard_pki, srv.port)
        sock.sendall(b"GET /park HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert read_chunked(sock) == [b"0:......"]
        assert sock.recv(1) == b""
        sock.close()


def test_a_client_leaving_ends_the_parked_stream_at_once(shard_pki):
    producer = Producer(count=None, interval=30)
    with running(shard_pki, producer) as srv:
        sock = tls_socket(shard_pki, srv.port)
        sock.sendall(b"GET /park HTTP/1.1\r\nHost: x\r\n\r\n")
        recv_until(sock, b"\r\n\r\n")
        sock.close()
        assert producer.gone.wait(2)
        wait_for(lambda: server_state(srv) == (0, 0))


def test_a_slow_client_is_queued_for_and_receives_everything_in_order(shard_pki, monkeypatch):
    drains = []
    drain = parking.Outbox._drain
    monkeypatch.setattr(parking.Outbox, "_drain", lambda self: (drains.append(1), drain(self)))
    producer = Producer(count=200, interval=0, size=64 * 1024)  # 12.5 MiB, far beyond the socket buffers
    with running(shard_pki, producer) as srv:
        sock = tls_socket(shard_pki, srv.port)
        sock.sendall(b"GET /park HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.5)  # the producer is done long before the client reads: the rest waits in the queue
        pieces = read_chunked(sock)
        assert [p.split(b":")[0] for p in pieces] == [b"%d" % i for i in range(200)]
        assert drains  # the writer greenlet did run
        assert not producer.gone.is_set()
        sock.close()


def test_a_client_too_far_behind_is_dropped(shard_pki, monkeypatch):
    monkeypatch.setattr(parking, "MAX_QUEUED", 1024 * 1024)
    producer = Producer(count=200, interval=0, size=64 * 1024)
    with running(shard_pki, producer) as srv:
        sock = tls_socket(shard_pki, srv.port)
        sock.sendall(b"GET /park HTTP/1.1\r\nHost: x\r\n\r\n")
        assert producer.gone.wait(5)
        with pytest.raises((AssertionError, OSError)):
            read_chunked(sock)  # cut short: no terminating chunk
        wait_for(lambda: server_state(srv) == (0, 0))
        sock.close()


def test_stop_ends_parked_streams(shard_pki):
    producer = Producer(count=None, interval=30)
    srv = running(shard_pki, producer)
    sock = tls_socket(shard_pki, srv.port)
    sock.sendall(b"GET /park HTTP/1.1\r\nHost: x\r\n\r\n")
    recv_until(sock, b"\r\n\r\n")
    assert srv.stop(timeout=5) < 2
    assert producer.gone.is_set()
    sock.settimeout(2)
    try:
        assert sock.recv(1) == b""
    except (ConnectionError, OSError):
        pass
    sock.close()


def test_parked_streams_count_against_max_connections(shard_pki):
    producer = Producer(count=None, interval=30)
    with running(shard_pki, producer, tls=False, max_connections=1) as srv:
        first = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        first.sendall(b"GET /park HTTP/1.1\r\nHost: x\r\n\r\n")
        recv_until(first, b"\r\n\r\n")
        wait_for(lambda: server_state(srv) == (1, 0))
        with pytest.raises((ConnectionResetError, BrokenPipeError)):  # refused: the parked stream holds the only slot
            with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as second:
                second.sendall(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n")
                assert second.recv(4096) == b""
                raise ConnectionResetError
        first.close()  # the parked stream ends: its slot is free again
        wait_for(lambda: server_state(srv)[0] == 0)
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as third:
            third.sendall(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b"200 OK" in recv_until(third, b"}")
