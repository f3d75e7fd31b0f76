"""The external virtual-workspace process killed (SIGKILL) or hung (SIGSTOP) under load, behind a forwarding shard.

Eight clients read through the shard's ``/services/demo/...`` and forwarded watches are open when the
process dies. While it is down every request is answered at once with a 503 Status; while it is hung,
within the shard's ``request_timeout`` with a 504 Status; no request waits longer than that; the
forwarded watches end; and once the process is back, service resumes by itself (no shard restart).
How a forwarded watch ends (a clean end of the stream, or an error) is #18's to settle: only that it
ends is checked here.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
import threading
import time
from dataclasses import replace

import pytest

from server.shard import ShardConfig
from tests.reliability.conditions import percentile, record, scale
from tests.topologies import running_topology
from tests.vw_demo import DEMO_VIRTUAL_WORKSPACES

CLIENTS = 8
REQUEST_TIMEOUT = 2.0
ROUNDS = scale(1, 5)
LIST = "/services/demo/clusters/root/api/v1/namespaces/default/configmaps"


@pytest.fixture(scope="module")
def topology():
    config = ShardConfig(virtual_workspaces=DEMO_VIRTUAL_WORKSPACES, bookmark_interval=1.0)
    with running_topology("forwarded", replace(config, request_timeout=REQUEST_TIMEOUT)) as running:
        yield running


def context(shard) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=shard.ca_file)
    ctx.load_cert_chain(str(shard.shard.pki.admin_cert_path), str(shard.shard.pki.admin_key_path))
    return ctx


class Load:
    """``CLIENTS`` threads reading through the shard; every answer timed, by phase."""

    def __init__(self, shard):
        self.shard = shard
        self.phase = "up"
        self.answers: list[tuple[str, int, float, str]] = []  # (phase, status, seconds, reason)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CLIENTS)]

    def _run(self) -> None:
        connection = None
        while not self.stop.is_set():
            phase = self.phase
            if connection is None:
                connection = http.client.HTTPSConnection("127.0.0.1", self.shard.shard.port,
                                                         context=context(self.shard), timeout=30)
            started = time.monotonic()
            try:
                connection.request("GET", LIST)
                response = connection.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.answers.append((phase, 0, time.monotonic() - started, repr(exc)))
                connection.close()
                connection = None
                continue
            reason = json.loads(body).get("reason", "") if response.status != 200 else ""
            self.answers.append((phase, response.status, time.monotonic() - started, reason))
            time.sleep(0.01)
        if connection is not None:
            connection.close()

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def of(self, phase: str) -> list[tuple[str, int, float, str]]:
        return [a for a in self.answers if a[0] == phase]


def open_watches(shard, n: int) -> list[threading.Event]:
    ended = []
    for _ in range(n):
        connection = http.client.HTTPSConnection("127.0.0.1", shard.shard.port, context=context(shard), timeout=60)
        connection.request("GET", LIST + "?watch=true")
        response = connection.getresponse()
        assert response.status == 200
        done = threading.Event()

        def drain(response=response, connection=connection, done=done):
            try:
                while response.read(1024):
                    pass
            except (OSError, http.client.HTTPException):
                pass
            connection.close()
            done.set()

        threading.Thread(target=drain, daemon=True).start()
        ended.append(done)
    return ended


def wait_for(predicate, timeout: float) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, "timed out"
        time.sleep(0.02)
    return time.monotonic() - started


def test_the_external_process_killed_or_hung_under_load(topology):
    vw, shard, external = topology
    figures = []
    for round_ in range(ROUNDS):
        for fault in ("kill", "hang"):
            with Load(shard) as load:
                wait_for(lambda: sum(1 for a in load.of("up") if a[1] == 200) >= 20, 10)
                watches = open_watches(shard, 4)
                load.phase = "down"
                faulted = time.monotonic()
                if fault == "kill":
                    external.kill()
                else:
                    os.kill(external.process.pid, signal.SIGSTOP)
                try:
                    if fault == "kill":
                        watch_end_s = max(wait_for(w.is_set, 5) for w in watches)
                    time.sleep(REQUEST_TIMEOUT * 2)
                finally:
                    if fault == "hang":
                        os.kill(external.process.pid, signal.SIGCONT)
                load.phase = "back"
                backed = time.monotonic()
                if fault == "kill":
                    external.start()
                wait_for(lambda: any(a[0] == "back" and a[1] == 200 for a in load.answers), 15)
                recovered_s = time.monotonic() - backed  # a killed process: its start included
                if fault == "hang":  # the watches came through the hang; they end with the client
                    watch_end_s = None
                time.sleep(0.3)
            down, back = load.of("down"), load.of("back")
            down_statuses = {a[1] for a in down}
            expected = {503} if fault == "kill" else {504, 200}  # a hang: what was answered before it, then 504s
            assert down and down_statuses <= expected | {200}, (fault, sorted({(a[1], a[3]) for a in down}))
            assert (503 if fault == "kill" else 504) in down_statuses, (fault, down_statuses)
            assert all(a[3] in ("ServiceUnavailable", "Timeout", "") for a in down), {a[3] for a in down}
            slowest = max(a[2] for a in down + back)
            assert slowest < REQUEST_TIMEOUT + 1.5, f"a request took {slowest:.1f} s (timeout {REQUEST_TIMEOUT} s)"
            assert back[-1][1] == 200, back[-5:]
            figures.append({"fault": fault, "round": round_ + 1, "answers_while_down": len(down),
                            "statuses_while_down": {str(s): sum(1 for a in down if a[1] == s) for s in down_statuses},
                            "p99_ms_while_down": round(percentile([a[2] * 1000 for a in down], 99), 1),
                            "slowest_s": round(slowest, 2),
                            "watches_ended_s": round(watch_end_s, 2) if watch_end_s is not None else None,
                            "recovered_s": round(recovered_s, 2),
                            "down_s": round(backed - faulted, 2)})
    record("vw_crash", request_timeout_s=REQUEST_TIMEOUT, clients=CLIENTS, runs=figures)
