"""The load/watch client: one gevent process pinned to the client core, driven over stdin.

The bench driver (not monkey-patched) writes one JSON command per line to stdin and reads one
JSON reply per line from stdout. Commands:

  {"cmd": "create", "path", "n", "concurrency", "prefix", "template"}   -> POST n objects (keep-alive, by hand)
  {"cmd": "list", "path", "n", "accept"}                                -> n sequential GETs
  {"cmd": "watch_open", "path", "n", "concurrency"}                     -> grow the watch pool to n
  {"cmd": "watch_close", "keep"}                                        -> shrink the pool to keep
  {"cmd": "fanout", "write": {...}, "writes", "warmup", "timeout"}      -> write; time delivery
                                              (the write as ``write["token"]`` if given, else as the watches;
                                               ``samples``: every latency too)
  {"cmd": "quit"}

Watches are raw TLS sockets (ssl module via gevent): the request is written by hand with the
bearer token, the 200 response headers are read, then one reader greenlet per socket does
``recv`` and only searches the bytes for the write's unique marker -- no HTTP chunk or JSON
parsing -- so the client's per-event cost stays a few microseconds. See ``fanout`` for how the
client's own share of the delivery time is reported.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import ssl  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.pool  # noqa: E402
import urllib3  # noqa: E402
from gevent.fileobject import FileObject  # noqa: E402

from benchlib.util import percentile, raise_nofile  # noqa: E402

perf = time.perf_counter


def cpu_ticks() -> dict[str, tuple[int, int]]:
    """Per-CPU (busy, total) jiffies from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                v = [int(x) for x in vals[:8]]
                total = sum(v)
                out[name[3:]] = (total - v[3] - v[4], total)  # minus idle, iowait
    return out


def stats_ms(values: list[float]) -> dict:
    ms = [v * 1000 for v in values]
    return {"n": len(ms), "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99),
            "max_ms": max(ms) if ms else None}


class Watcher:
    __slots__ = ("sock", "tail", "marker", "got", "alive", "reader")

    def __init__(self, sock):
        self.sock = sock
        self.tail = b""
        self.marker = None
        self.got = None
        self.alive = True
        self.reader = None


class _Connection:
    """One keep-alive HTTP/1.1 connection's reading side: a response with Content-Length or chunked."""

    __slots__ = ("sock", "buf")

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(262144)
        if not chunk:
            raise ConnectionError("closed by the server")
        self.buf += chunk

    def _take(self, size: int) -> bytes:
        while len(self.buf) < size:
            self._fill()
        data, self.buf = self.buf[:size], self.buf[size:]
        return data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def response(self) -> tuple[int, bytes, bool]:
        """(status, body, whether the connection stays open)."""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        status_line, *lines = head.split(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        headers = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        keep = headers.get(b"connection") != b"close"
        if b"content-length" in headers:
            return status, self._take(int(headers[b"content-length"])), keep
        if headers.get(b"transfer-encoding") == b"chunked":
            parts = []
            while True:
                size = int(self._line().split(b";", 1)[0], 16)
                if not size:
                    while self._line():  # trailers, up to the empty line
                        pass
                    return status, b"".join(parts), keep
                parts.append(self._take(size))
                self._take(2)
        raise ValueError(f"response without a length (status {status})")


class Client:
    def __init__(self, url: str, token: str, ca: str | None):
        u = urllib3.util.parse_url(url)
        self.host, self.port = u.host, u.port or 443
        self.token = token
        if ca:
            self.ctx = ssl.create_default_context(cafile=ca)
            self.ctx.check_hostname = False
        else:
            self.ctx = ssl.create_default_context()
            self.ctx.check_hostname = False
            self.ctx.verify_mode = ssl.CERT_NONE
        urllib3.disable_warnings()
        self.ca = ca
        self.watchers: list[Watcher] = []
        self.pending = 0
        self.all_got = gevent.event.Event()

    def pool(self, size: int) -> urllib3.HTTPSConnectionPool:
        # One shared SSLContext: without it urllib3 builds a context per connection and loads
        # the system CA bundle each time (tens of ms of blocking CPU per connection).
        return urllib3.HTTPSConnectionPool(self.host, self.port, maxsize=size, block=True,
                                           retries=False, timeout=30, ssl_context=self.ctx,
                                           assert_hostname=False)

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}", "Accept": "application/json",
                "Content-Type": "application/json"}

    # ------------------------------------------------------------------------- create / list
    def _connect(self, timeout: float = 30):
        raw = socket.create_connection((self.host, self.port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.ctx.wrap_socket(raw, server_hostname=self.host)

    def create(self, path: str, n: int, concurrency: int, prefix: str, template: str) -> dict:
        """POST ``n`` objects from ``concurrency`` keep-alive connections. HTTP/1.1 written and read by hand (as the
        watches are): urllib3 cost ~0.26 ms of client CPU per request, more than a tenth of what the server
        spends on a whole workspace, on a machine whose cores the load generator shares."""
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nAuthorization: Bearer {self.token}\r\n"
                "Accept: application/json\r\nContent-Type: application/json\r\nUser-Agent: kcp-bench-create\r\n"
                ).encode()
        lat, errors, first_error = [], 0, None
        todo = iter(range(n))

        def worker():
            nonlocal errors, first_error
            conn = None
            for i in todo:
                body = template.replace("{name}", f"{prefix}{i:05d}").encode()
                t = perf()
                try:
                    if conn is None:
                        conn = _Connection(self._connect())
                    conn.sock.sendall(b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body))
                    status, data, keep = conn.response()
                    ok = status in (200, 201)
                    if not ok and first_error is None:
                        first_error = f"{status}: {data[:300]!r}"
                    if not keep:
                        conn.sock.close()
                        conn = None
                except (OSError, ValueError) as e:
                    ok = False
                    first_error = first_error or repr(e)
                    if conn is not None:
                        conn.sock.close()
                        conn = None
                if ok:
                    lat.append(perf() - t)
                else:
                    errors += 1
            if conn is not None:
                conn.sock.close()

        t0, c0 = perf(), time.process_time()
        gevent.joinall([gevent.spawn(worker) for _ in range(min(concurrency, n))])
        wall, cpu = perf() - t0, time.process_time() - c0
        return {"created": len(lat), "errors": errors, "first_error": first_error, "cpu_s": cpu,
                "seconds": wall, "per_s": len(lat) / wall if wall else None, **stats_ms(lat)}

    def list(self, path: str, n: int, accept: str) -> dict:
        pool = self.pool(1)
        h = {**self.headers, "Accept": accept}
        lat, size, items, kind, err = [], 0, None, None, None
        for _ in range(n):
            t = perf()
            r = pool.urlopen("GET", path, headers=h)
            data = r.data
            dt = perf() - t
            if r.status != 200:
                err = f"{r.status}: {data[:300]!r}"
                break
            lat.append(dt)
            size = len(data)
        if lat:
            obj = json.loads(data)
            kind = obj.get("kind")
            items = len(obj.get("rows") or obj.get("items") or [])
        pool.close()
        return {"bytes": size, "items": items, "kind": kind, "error": err, **stats_ms(lat)}

    # ------------------------------------------------------------------------------ watches
    def _open_one(self, path: str) -> Watcher:
        sock = self._connect(timeout=60)
        req = (f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
               f"Authorization: Bearer {self.token}\r\nAccept: application/json\r\n"
               f"User-Agent: kcp-bench-watch\r\n\r\n").encode()
        sock.sendall(req)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before response headers")
            buf += chunk
            if len(buf) > 65536:
                raise ConnectionError("response headers too long")
        head, _, rest = buf.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if b" 200 " not in status + b" ":
            sock.close()
            raise ConnectionError(f"watch answered {status.decode(errors='replace')}: {rest[:200]!r}")
        sock.settimeout(None)
        w = Watcher(sock)
        w.tail = rest[-256:]
        return w

    def _read(self, w: Watcher):
        sock = w.sock
        try:
            while True:
                data = sock.recv(262144)
                if not data:
                    break
                m = w.marker
                if m is not None:
                    now = perf()
                    if m in w.tail + data:
                        w.got = now
                        w.marker = None
                        self.pending -= 1
                        if self.pending == 0:
                            self.all_got.set()
                w.tail = data[-256:]
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            w.alive = False

    def watch_open(self, path: str, n: int, concurrency: int = 100) -> dict:
        want = n - len(self.watchers)
        if want <= 0:
            return {"open": len(self.watchers), "opened": 0, "failed": 0, "seconds": 0}
        failed, first_error = 0, None

        def one(_):
            nonlocal failed, first_error
            try:
                w = self._open_one(path)
            except Exception as e:  # noqa: BLE001
                failed += 1
                first_error = first_error or repr(e)
                return
            w.reader = gevent.spawn(self._read, w)
            self.watchers.append(w)

        t0 = perf()
        g = gevent.pool.Pool(concurrency)
        for i in range(want):
            g.spawn(one, i)
        g.join()
        dt = perf() - t0
        gevent.sleep(0.2)
        dead = sum(1 for w in self.watchers if not w.alive)
        return {"open": len(self.watchers), "opened": want - failed, "failed": failed,
                "closed_by_server": dead, "first_error": first_error, "seconds": dt}

    def watch_close(self, keep: int = 0) -> dict:
        drop, self.watchers = self.watchers[keep:], self.watchers[:keep]
        for w in drop:
            try:
                w.sock.close()
            except OSError:
                pass
            if w.reader is not None:
                w.reader.kill(block=False)
        gevent.sleep(0.1)
        return {"open": len(self.watchers), "closed": len(drop)}

    def fanout(self, write: dict, writes: int, warmup: int = 1, timeout: float = 30.0,
               pause: float = 0.5, samples: bool = False) -> dict:
        """Time one write's delivery to every open watch, ``writes`` times (after ``warmup``).

        t0 is taken just before the write request is sent; each reader stamps the moment the
        bytes holding this write's unique marker come out of its socket. The client's share is
        reported as ``client_cpu_ms`` (process CPU time consumed between t0 and the last
        delivery): when it approaches the wall time the client, not the server, is the limit.
        """
        pool = self.pool(1)
        lat, missing, acks, cpu, wall, errors = [], 0, [], [], [], []
        busy: dict[str, list[int]] = {}
        live = [w for w in self.watchers if w.alive]
        for k in range(warmup + writes):
            marker = f"bench-{uuid.uuid4().hex[:12]}-{k}"
            mb = marker.encode()
            self.all_got.clear()
            self.pending = len(live)
            for w in live:
                w.got = None
                w.marker = mb
            body = write["template"].replace("{marker}", marker).encode()
            k0 = cpu_ticks()
            c0, t0 = time.process_time(), perf()
            try:
                r = pool.urlopen(write["method"], write["path"], body=body,
                                 headers={**self.headers,
                                          "Content-Type": write.get("content_type",
                                                                    "application/json"),
                                          **({"Authorization": f"Bearer {write['token']}"}
                                             if write.get("token") else {})})
                ack = perf() - t0
                if r.status >= 300:
                    errors.append(f"{r.status}: {r.data[:300]!r}")
            except Exception as e:  # noqa: BLE001
                ack = None
                errors.append(repr(e))
            self.all_got.wait(timeout)
            t_end = max((w.got for w in live if w.got), default=perf())
            c1 = time.process_time()
            k1 = cpu_ticks()
            for w in live:
                w.marker = None
            if k >= warmup:
                got = [w.got - t0 for w in live if w.got is not None]
                lat.extend(got)
                missing += len(live) - len(got)
                if ack is not None:
                    acks.append(ack)
                cpu.append(c1 - c0)
                for name, (b1, t1) in k1.items():
                    b0, t0_ = k0.get(name, (b1, t1))
                    acc = busy.setdefault(name, [0, 0])
                    acc[0] += b1 - b0
                    acc[1] += t1 - t0_
                wall.append(t_end - t0)
            gevent.sleep(pause)
        pool.close()
        return {"watchers": len(live), "writes": writes, "missing": missing,
                "errors": errors[:3], "ack_p50_ms": percentile([a * 1000 for a in acks], 50),
                "client_cpu_ms": percentile([c * 1000 for c in cpu], 50),
                "last_delivery_ms": percentile([w * 1000 for w in wall], 50),
                "cpu_busy": {n: (b / t if t else None) for n, (b, t) in busy.items()},
                **({"samples_ms": [v * 1000 for v in lat]} if samples else {}), **stats_ms(lat)}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--token", default="none")
    ap.add_argument("--ca")
    a = ap.parse_args(argv)
    raise_nofile()
    c = Client(a.url, a.token, a.ca)
    stdin = FileObject(sys.stdin.fileno(), "rb")
    out = sys.stdout
    while True:
        line = stdin.readline()
        if not line:
            break
        req = json.loads(line)
        cmd = req.pop("cmd")
        if cmd == "quit":
            c.watch_close(0)
            print(json.dumps({"ok": True}), file=out, flush=True)
            break
        try:
            res = getattr(c, cmd)(**req)
            res["ok"] = True
        except Exception as e:  # noqa: BLE001
            res = {"ok": False, "error": repr(e)}
        print(json.dumps(res), file=out, flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
