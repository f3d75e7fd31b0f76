"""The three virtual-workspace topologies as test fixtures (README.md, "Virtual workspaces in their own process").

* ``embedded``: the shard serves its virtual workspaces in-process (``kcp start``);
* ``external``: ``kcp virtual-workspaces`` serves them as its own process (a real subprocess), and
  clients talk to it directly;
* ``forwarded``: clients talk to the shard, which forwards ``/services/*`` to that process
  (``--run-virtual-workspaces=false --shard-virtual-workspace-url ...``).

``running_topology(name, config)`` starts one and yields ``(VWTopology, shard, external process or
None)``; the ``VWTopology`` differs between them only in its base URL, which is the point. The
virtual workspaces of ``config.virtual_workspaces`` run in the external process too: plugins by name
(``--virtual-workspaces``), factories given directly as ``--virtual-workspace module:factory``, so those must
be importable module-level callables.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from server.shard import ShardConfig
from server.testing import RunningShard, running_shard
from tests.vw_demo import VWTopology

TOPOLOGIES = ("embedded", "external", "forwarded")
REPOSITORY = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def virtual_workspace_args(virtual_workspaces) -> list[str]:
    """The ``kcp virtual-workspaces`` flags serving what ``ShardConfig.virtual_workspaces`` serves in-process:
    nothing for every installed plugin (None), else ``--virtual-workspaces=<plugin names>`` and one
    ``--virtual-workspace module:qualname`` per factory given directly."""
    if virtual_workspaces is None:
        return []
    names = [item if isinstance(item, str) else item.plugin_name for item in virtual_workspaces
             if isinstance(item, str) or hasattr(item, "plugin_name")]
    args = [f"--virtual-workspaces={','.join(names)}"]
    for item in virtual_workspaces:
        if not isinstance(item, str) and not hasattr(item, "plugin_name"):
            args += ["--virtual-workspace", f"{item.__module__}:{item.__qualname__}"]
    return args


class ServerProcess:
    """A server subprocess (``process``) logging to ``log_path``: ``stop()`` (SIGTERM), ``kill()`` (SIGKILL)."""

    process: subprocess.Popen | None = None
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None


class ExternalVirtualWorkspaces(ServerProcess):
    """A ``kcp virtual-workspaces`` subprocess for a test shard: ``start()``, ``stop()``, ``kill()`` (SIGKILL)."""

    def __init__(self, shard: RunningShard, virtual_workspaces, port: int, *, extra_args: tuple[str, ...] = ()):
        self.shard = shard
        self.port = port
        self.url = f"https://127.0.0.1:{port}"
        self.command = [sys.executable, "-m", "server.cli", "virtual-workspaces", "--kubeconfig", shard.kubeconfig,
                        "--root-directory", str(shard.root_directory), "--secure-port", str(port),
                        *virtual_workspace_args(virtual_workspaces), *extra_args]
        self.log_path = shard.workdir / f"virtual-workspaces-{port}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> "ExternalVirtualWorkspaces":
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY),
                                                                         os.environ.get("PYTHONPATH")]))}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command, cwd=REPOSITORY, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"kcp virtual-workspaces exited with {self.process.returncode}:\n{self.log()}")
            if self.ready():
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"kcp virtual-workspaces did not become ready in time:\n{self.log()}")

    def ready(self) -> bool:
        context = ssl.create_default_context(cafile=self.shard.ca_file)
        connection = http.client.HTTPSConnection("127.0.0.1", self.port, context=context, timeout=5)
        try:
            connection.request("GET", "/readyz")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()



@contextlib.contextmanager
def running_topology(name: str, config: ShardConfig | None = None
                     ) -> Iterator[tuple[VWTopology, RunningShard, ExternalVirtualWorkspaces | None]]:
    """A shard (and, but for ``embedded``, a ``kcp virtual-workspaces`` process) serving ``config``'s
    virtual workspaces in topology ``name``."""
    if name not in TOPOLOGIES:
        raise ValueError(f"unknown topology {name!r}; one of {TOPOLOGIES}")
    config = config or ShardConfig()
    if name == "embedded":
        with running_shard(config) as shard:
            yield VWTopology(name, shard.url, shard.kubeconfig, shard.workdir), shard, None
        return
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    with running_shard(replace(config, run_virtual_workspaces=False, shard_virtual_workspace_url=url)) as shard:
        external = ExternalVirtualWorkspaces(  # its watches from the cache bookmark as the shard's do
            shard, config.virtual_workspaces, port,
            extra_args=("--bookmark-interval", str(config.bookmark_interval))).start()
        try:
            base = url if name == "external" else shard.url
            yield VWTopology(name, base, shard.kubeconfig, shard.workdir), shard, external
        finally:
            external.stop()
