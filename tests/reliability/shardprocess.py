"""``kcp start`` as a real subprocess, to be killed with SIGKILL and restarted on the same port and data."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

from tests.topologies import REPOSITORY, ServerProcess, free_port

START_TIMEOUT = 30.0


def https_connection(port: int, ca_file: str, timeout: float = 10.0, cert: tuple[str, str] | None = None
                     ) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cafile=ca_file)
    if cert:
        context.load_cert_chain(*cert)
    return http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=timeout)


class ShardProcess(ServerProcess):
    """A shard in its own process: ``start()`` (seconds until /readyz answers 200; again after a kill: same port and
    data), ``kill()`` (SIGKILL), ``stop()``."""

    def __init__(self, workdir: Path, *args: str, port: int | None = None):
        self.workdir = Path(workdir)
        self.root = self.workdir / ".kcp"
        self.port = port or free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.args = args
        self.log_path = self.workdir / "shard.log"
        self.process: subprocess.Popen | None = None

    @property
    def ca_file(self) -> str:
        return str(self.root / "ca.crt")

    @property
    def kubeconfig(self) -> str:
        return str(self.root / "admin.kubeconfig")

    @property
    def admin_cert(self) -> tuple[str, str]:
        return str(self.root / "admin.crt"), str(self.root / "admin.key")

    def start(self) -> float:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))}
        command = [sys.executable, "-m", "server.cli", "start", "--root-directory", str(self.root),
                   "--secure-port", str(self.port), *self.args]
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, cwd=REPOSITORY, env=env, stdout=log, stderr=log)
        while time.monotonic() - started < START_TIMEOUT:
            if self.process.poll() is not None:
                raise RuntimeError(f"kcp start exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            if self.ready():
                return time.monotonic() - started
            time.sleep(0.01)
        self.kill()
        raise RuntimeError(f"kcp start did not become ready in time:\n{self.log()[-4000:]}")

    def ready(self) -> bool:
        if not Path(self.ca_file).exists():
            return False
        connection = https_connection(self.port, self.ca_file, timeout=2)
        try:
            connection.request("GET", "/readyz")
            return connection.getresponse().status == 200
        except (OSError, ssl.SSLError):
            return False
        finally:
            connection.close()


class RestClient:
    """JSON over one keep-alive HTTPS connection, as the admin (client certificate) or with a bearer token.

    ``call`` returns ``(status, body)`` -- the decoded JSON, or the raw bytes when it is not JSON -- and never
    raises for an HTTP status; a dropped connection is reopened once.
    """

    def __init__(self, port: int, ca_file: str, *, cert: tuple[str, str] | None = None, token: str | None = None,
                 timeout: float = 30.0):
        self.port, self.ca_file, self.cert, self.token, self.timeout = port, ca_file, cert, token, timeout
        self._connection = None

    def call(self, method: str, path: str, body=None, *, headers: dict | None = None,
             content_type: str = "application/json") -> tuple[int, object]:
        sent = {"Accept": "application/json", **(headers or {})}
        if self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        if data is not None:
            sent["Content-Type"] = content_type
        for attempt in (0, 1):
            if self._connection is None:
                self._connection = https_connection(self.port, self.ca_file, self.timeout, self.cert)
            try:
                self._connection.request(method, path, body=data, headers=sent)
                response = self._connection.getresponse()
                raw = response.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
                continue
            try:
                return response.status, json.loads(raw)
            except ValueError:
                return response.status, raw
        raise AssertionError("unreachable")

    def ok(self, method: str, path: str, body=None, **kw):
        status, answer = self.call(method, path, body, **kw)
        assert status < 300, (method, path, status, answer)
        return answer

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
