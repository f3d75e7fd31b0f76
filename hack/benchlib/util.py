"""Small helpers shared by the bench driver, the services and the scenarios."""

from __future__ import annotations

import os
import re
import resource
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE to the hard limit (children inherit it); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cores:
    """Where things run: the server under test on one core, load generators on the other."""

    server: str | None
    client: str | None

    @classmethod
    def detect(cls) -> "Cores":
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) >= 2 and shutil.which("taskset"):
            return cls(str(cpus[0]), str(cpus[1]))
        return cls(None, None)

    def server_cmd(self, cmd: list[str]) -> list[str]:
        return ["taskset", "-c", self.server, *cmd] if self.server else cmd

    def client_cmd(self, cmd: list[str]) -> list[str]:
        return ["taskset", "-c", self.client, *cmd] if self.client else cmd

    def describe(self) -> str:
        if not self.server:
            return "unpinned (fewer than 2 CPUs or no taskset)"
        return f"server on CPU {self.server}, load generators on CPU {self.client}"


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
    except OSError:
        pass
    return out


def _sum_over_tree(pid: int, tree: bool, measure, total):
    """``total`` plus ``measure(p)`` of pid (and its descendants when tree); a process ``measure`` cannot
    read (None: gone meanwhile) counts nothing and its children are not visited."""
    todo, seen = [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        value = measure(p)
        if value is None:
            continue
        total += value
        if tree:
            todo.extend(_children(p))
    return total


def _rss(p: int) -> int | None:
    try:
        with open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return 0


def rss_kib(pid: int, tree: bool = True) -> int:
    """VmRSS of pid (plus its descendants when tree) in KiB."""
    return _sum_over_tree(pid, tree, _rss, 0)


def cpu_seconds(pid: int, tree: bool = True) -> float:
    """user+system CPU seconds of pid (plus its live descendants when tree)."""
    tck = os.sysconf("SC_CLK_TCK")

    def cpu(p: int) -> float | None:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / tck
        except (OSError, IndexError, ValueError):
            return None

    return _sum_over_tree(pid, tree, cpu, 0.0)


def background_busy(seconds: float = 1.0) -> float:
    """System-wide CPU busy % over ``seconds`` (call while nothing of ours runs)."""
    def read():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return sum(v), v[3] + v[4]

    t0, i0 = read()
    time.sleep(seconds)
    t1, i1 = read()
    return 100.0 * (1 - (i1 - i0) / max(1, t1 - t0))


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile, q in [0, 100]."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def median(values: list[float]) -> float | None:
    if not values:
        return None
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


# ---------------------------------------------------------------------------------------- wrk

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"cannot parse wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict:
    res: dict = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["req_s"] = float(m.group(1)) if m else None
    for q in ("50", "90", "99"):
        m = re.search(rf"^\s+{q}(?:\.000)?%\s+(\S+)", out, re.M)
        res[f"p{q}_ms"] = _ms(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = int(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    return res


def run_wrk(cores: Cores, url: str, *, connections: int = 50, duration: float = 5,
            headers: dict | None = None, script: str | None = None) -> dict:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency"]
    for k, v in (headers or {}).items():
        cmd += ["-H", f"{k}: {v}"]
    if script:
        cmd += ["-s", script]
    cmd.append(url)
    p = subprocess.run(cores.client_cmd(cmd), capture_output=True, text=True,
                       timeout=duration + 60)
    if p.returncode != 0:
        raise RuntimeError(f"wrk failed ({p.returncode}): {p.stderr.strip() or p.stdout.strip()}")
    res = parse_wrk(p.stdout)
    if res["req_s"] is None:
        raise RuntimeError(f"cannot parse wrk output:\n{p.stdout}")
    return res


class Fatal(RuntimeError):
    """Raised inside a wait_until condition to stop waiting at once (e.g. the process died)."""


def wait_until(fn, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            v = fn()
            if v:
                return v
        except Fatal:
            raise
        except Exception as e:  # noqa: BLE001 - polling
            last_exc = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}"
                       + (f" (last error: {last_exc})" if last_exc else ""))


def tail(path: str, n: int = 30) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            lines = f.read().decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-n:])
    except OSError:
        return "(no log)"
