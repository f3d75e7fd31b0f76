"""Misbehaving clients, and the well-behaved one whose latency is measured while they run.

Every attack is a context manager that starts its connections in threads, keeps them misbehaving until
it exits, and reports what the server did to them (``cut``: connections the server closed, and after
how long). They only ever talk to the loopback port they are given, for a bounded time.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field

from tests.reliability.conditions import percentile


def tls_context(ca_file: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_file)


def _tls_socket(port: int, context: ssl.SSLContext, *, rcvbuf: int | None = None) -> ssl.SSLSocket:
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.settimeout(10)
    raw.connect(("127.0.0.1", port))
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def _closed_by_peer(sock, wait: float) -> bool:
    """Whether the server closed ``sock`` within ``wait`` seconds (EOF or reset on a read)."""
    sock.settimeout(wait)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (socket.timeout, ssl.SSLWantReadError):
        return False
    except (OSError, ssl.SSLError):
        return True


@dataclass
class Report:
    """What happened to an attack's connections."""

    opened: int = 0
    refused: int = 0                  # connect or handshake failed: the server would not take it
    cut: list[float] = field(default_factory=list)   # seconds from the start of misbehaving to the server's close
    not_cut: int = 0                  # still open when the attack ended
    answers: dict[int, int] = field(default_factory=dict)

    def figures(self) -> dict:
        return {"opened": self.opened, "refused": self.refused, "cut": len(self.cut), "not_cut": self.not_cut,
                "cut_after_s_max": round(max(self.cut), 2) if self.cut else None,
                "answers": {str(k): v for k, v in sorted(self.answers.items())}}


class _Attack:
    """Threads doing ``one(i)`` until ``stop`` is set; ``report`` gathers their outcome."""

    def __init__(self, port: int, ca_file: str, connections: int):
        self.port = port
        self.context = tls_context(ca_file)
        self.connections = connections
        self.stop = threading.Event()
        self.report = Report()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def one(self, i: int) -> None:
        raise NotImplementedError

    def _run(self, i: int) -> None:
        try:
            self.one(i)
        except (OSError, ssl.SSLError):
            with self._lock:
                self.report.refused += 1

    def count(self, what: str, value=None) -> None:
        with self._lock:
            if what == "opened":
                self.report.opened += 1
            elif what == "cut":
                self.report.cut.append(value)
            elif what == "not_cut":
                self.report.not_cut += 1
            elif what == "answer":
                self.report.answers[value] = self.report.answers.get(value, 0) + 1

    def __enter__(self) -> "_Attack":
        for i in range(self.connections):
            thread = threading.Thread(target=self._run, args=(i,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(30)

    def _wait_for_cut(self, sock, started: float, step: float = 0.2) -> None:
        """Misbehave by doing nothing until the server closes ``sock`` or the attack ends."""
        while not self.stop.is_set():
            if _closed_by_peer(sock, step):
                self.count("cut", time.monotonic() - started)
                return
        self.count("not_cut")


class Slowloris(_Attack):
    """Request heads sent one header byte a second, never finished (cut at the header timeout)."""

    interval = 1.0

    def one(self, i: int) -> None:
        with _tls_socket(self.port, self.context) as sock:
            self.count("opened")
            started = time.monotonic()
            sock.sendall(b"GET /clusters/root/api/v1/namespaces HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            while not self.stop.is_set():
                try:
                    sock.sendall(b"a")
                except (OSError, ssl.SSLError):
                    self.count("cut", time.monotonic() - started)
                    return
                if _closed_by_peer(sock, self.interval):
                    self.count("cut", time.monotonic() - started)
                    return
            self.count("not_cut")


class TrickledBody(_Attack):
    """Authenticated POSTs whose body comes at one byte a second (cut at the body timeout with a 408 Status)."""

    interval = 1.0

    def __init__(self, port: int, ca_file: str, connections: int, token: str, path: str):
        super().__init__(port, ca_file, connections)
        self.token, self.path = token, path

    def one(self, i: int) -> None:
        with _tls_socket(self.port, self.context) as sock:
            self.count("opened")
            sock.sendall(f"POST {self.path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {self.token}\r\n"
                         "Content-Type: application/json\r\nContent-Length: 4096\r\n\r\n".encode())
            started = time.monotonic()
            answer = b""
            sock.settimeout(self.interval)
            while not self.stop.is_set():
                try:
                    sock.sendall(b" ")
                    answer += sock.recv(65536)
                except socket.timeout:
                    continue
                except (OSError, ssl.SSLError):
                    break
                if answer.endswith(b"}") or not answer:
                    break
            if self.stop.is_set() and not answer:
                self.count("not_cut")
                return
            self.count("cut", time.monotonic() - started)
            if answer.startswith(b"HTTP/1.1 "):
                self.count("answer", int(answer[9:12]))


class StalledWatch(_Attack):
    """Watches whose client never reads, with a tiny receive buffer (cut when a send has blocked for the
    idle-connection timeout). Something else must write events for them to fall behind."""

    def __init__(self, port: int, ca_file: str, connections: int, token: str, path: str):
        super().__init__(port, ca_file, connections)
        self.token, self.path = token, path

    def one(self, i: int) -> None:
        with _tls_socket(self.port, self.context, rcvbuf=4096) as sock:
            self.count("opened")
            sock.sendall(f"GET {self.path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {self.token}\r\n\r\n".encode())
            started = time.monotonic()
            while not self.stop.is_set():  # not reading: the check below only peeks for a close when idle
                time.sleep(0.2)
            # Once the attack ends, drain what was buffered: a server that cut the watch shows EOF after it.
            if _closed_by_peer(sock, 2.0):
                self.count("cut", time.monotonic() - started)
            else:
                self.count("not_cut")


class ConnectionFlood(_Attack):
    """Plain TCP connections opened as fast as possible and held (no TLS): past ``--max-connections`` they must be
    refused at once, not queued (``refused_after``: seconds from connecting to the refusal)."""

    def __init__(self, port: int, ca_file: str, connections: int):
        super().__init__(port, ca_file, connections)
        self.refused_after: list[float] = []

    def _refused(self, started: float) -> None:
        with self._lock:
            self.report.refused += 1
            self.refused_after.append(time.monotonic() - started)

    def one(self, i: int) -> None:
        sock = socket.socket()
        sock.settimeout(5)
        started = time.monotonic()
        try:
            sock.connect(("127.0.0.1", self.port))
            sock.send(b"\x16")  # the first byte of a TLS record: the server's handshake timer runs
            sock.settimeout(0.5)
            try:
                data = sock.recv(1)
            except socket.timeout:
                data = None  # held open by the server: accepted
            if data == b"":
                self._refused(started)
                return
            self.count("opened")
            self._wait_for_cut(sock, started)  # accepted: the server's handshake timeout cuts it
        except ConnectionResetError:
            self._refused(started)
        finally:
            sock.close()


class Burst(_Attack):
    """Many concurrent requests of a non-privileged user, each as soon as the last answered (some get 429).
    Under gevent a request is in flight only while it waits, so these make it wait: small receive buffers
    (the server's sends of answers bigger than its socket buffer wait for the reader) and bodies sent in
    two halves ``pause`` seconds apart."""

    def __init__(self, port: int, ca_file: str, connections: int, token: str, method: str, path: str,
                 body: callable = None, pause: float = 0.05):
        super().__init__(port, ca_file, connections)
        self.token, self.method, self.path, self.body, self.pause = token, method, path, body, pause
        self.retry_after: set[str] = set()
        self.bad_429: list[str] = []

    def one(self, i: int) -> None:
        connection = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context, timeout=30)
        connection.sock = _tls_socket(self.port, self.context, rcvbuf=8192)
        connection.sock.settimeout(30)
        self.count("opened")
        n = 0
        while not self.stop.is_set():
            n += 1
            body = self.body(i, n) if self.body else None
            headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
            if body is not None:
                headers["Content-Length"] = str(len(body))
                body = self._halves(body)
            connection.request(self.method, self.path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            self.count("answer", response.status)
            if response.status == 429:
                self.retry_after.add(response.getheader("Retry-After"))
                status = json.loads(data)
                if status.get("kind") != "Status" or status.get("code") != 429:
                    self.bad_429.append(data.decode(errors="replace"))
        connection.close()


    def _halves(self, body: bytes):
        yield body[:len(body) // 2]
        time.sleep(self.pause)
        yield body[len(body) // 2:]


class Prober:
    """The well-behaved client: one keep-alive connection, a GET every ``interval`` seconds, each timed."""

    def __init__(self, port: int, ca_file: str, token: str, path: str, interval: float = 0.02):
        self.port, self.context, self.token, self.path, self.interval = port, tls_context(ca_file), token, path, interval
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        connection = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context, timeout=10)
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                connection.request("GET", self.path, headers={"Authorization": f"Bearer {self.token}"})
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.errors.append(repr(exc))
                connection.close()
                connection = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context, timeout=10)
                continue
            self.latencies.append(time.perf_counter() - started)
            self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
            self._stop.wait(self.interval)
        connection.close()

    @contextlib.contextmanager
    def running(self):
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(30)

    def figures(self) -> dict:
        ms = [x * 1000 for x in self.latencies]
        return {"requests": len(ms), "p50_ms": round(percentile(ms, 50), 1), "p99_ms": round(percentile(ms, 99), 1),
                "max_ms": round(max(ms), 1) if ms else None, "errors": len(self.errors),
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())}}
