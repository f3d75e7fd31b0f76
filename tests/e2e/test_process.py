"""``kcp start`` as a process: first start, restart with the same data, kill -9 during writes, clean SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import urllib3
import yaml


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class KcpProcess:
    def __init__(self, root: Path, port: int):
        self.root, self.port = root, port
        self.proc = None
        self.output: list[str] = []

    def start(self) -> "KcpProcess":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "start", "--root-directory", str(self.root),
             "--secure-port", str(self.port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any("admin kubeconfig" in line for line in self.output):
                return self
            if self.proc.poll() is not None:
                raise AssertionError("kcp exited:\n" + "".join(self.output))
            time.sleep(0.05)
        raise AssertionError("kcp did not start:\n" + "".join(self.output))

    def _drain(self):
        for line in self.proc.stdout:
            self.output.append(line)

    def client(self) -> urllib3.PoolManager:
        return urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=str(self.root / "ca.crt"),
                                   cert_file=str(self.root / "admin.crt"), key_file=str(self.root / "admin.key"))


def test_first_start_writes_kubeconfig_and_restart_reuses_everything(tmp_path):
    root = tmp_path / ".kcp"
    port = free_port()
    kcp = KcpProcess(root, port).start()
    try:
        text = "".join(kcp.output)
        assert f"https://127.0.0.1:{port}" in text and str(root / "admin.kubeconfig") in text
        config = yaml.safe_load((root / "admin.kubeconfig").read_text())
        servers = {c["name"]: c["cluster"]["server"] for c in config["clusters"]}
        contexts = {c["name"] for c in config["contexts"]}
        assert config["current-context"] == "root" and contexts == {"root", "base"}
        assert servers[next(c["context"]["cluster"] for c in config["contexts"] if c["name"] == "root")] == \
            f"https://127.0.0.1:{port}/clusters/root"
        http = kcp.client()
        r = http.request("POST", f"https://127.0.0.1:{port}/clusters/root/api/v1/namespaces/default/configmaps",
                         body=json.dumps({"metadata": {"name": "persisted"}}),
                         headers={"Content-Type": "application/json"})
        assert r.status == 201
        ca_before = (root / "ca.crt").read_bytes()
    finally:
        kcp.proc.send_signal(signal.SIGTERM)
        assert kcp.proc.wait(15) == 0
    assert "Traceback" not in "".join(kcp.output)
    kcp = KcpProcess(root, port).start()
    try:
        assert (root / "ca.crt").read_bytes() == ca_before
        r = kcp.client().request("GET", f"https://127.0.0.1:{port}/clusters/root/api/v1/namespaces/default/"
                                        "configmaps/persisted")
        assert r.status == 200
    finally:
        kcp.proc.send_signal(signal.SIGINT)
        assert kcp.proc.wait(15) == 0


def test_kill_9_during_creates_loses_no_acknowledged_object(tmp_path):
    root = tmp_path / ".kcp"
    port = free_port()
    kcp = KcpProcess(root, port).start()
    http = kcp.client()
    acknowledged: list[str] = []
    stop = threading.Event()

    def create_loop(worker: int):
        i = 0
        while not stop.is_set():
            name = f"w{worker}-{i}"
            try:
                r = http.request("POST", f"https://127.0.0.1:{port}/clusters/root/api/v1/namespaces/default/"
                                         "configmaps", body=json.dumps({"metadata": {"name": name}}),
                                 headers={"Content-Type": "application/json"}, retries=False, timeout=5)
            except Exception:
                return
            if r.status == 201:
                acknowledged.append(name)
            i += 1

    workers = [threading.Thread(target=create_loop, args=(n,)) for n in range(4)]
    for w in workers:
        w.start()
    time.sleep(1.5)
    os.kill(kcp.proc.pid, signal.SIGKILL)
    kcp.proc.wait(10)
    stop.set()
    for w in workers:
        w.join(10)
    assert len(acknowledged) > 50
    kcp = KcpProcess(root, port).start()
    try:
        r = kcp.client().request("GET", f"https://127.0.0.1:{port}/clusters/root/api/v1/namespaces/default/"
                                        "configmaps")
        present = {item["metadata"]["name"] for item in json.loads(r.data)["items"]}
        missing = [name for name in acknowledged if name not in present]
        assert not missing, f"{len(missing)} acknowledged objects lost"
    finally:
        kcp.proc.send_signal(signal.SIGTERM)
        kcp.proc.wait(15)
