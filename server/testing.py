"""A real shard for tests: ``running_shard()`` and the ``kcp_shard`` pytest fixture.

The shard runs in a background thread with its own gevent hub, so the test thread can use
blocking clients (the ``kubernetes`` client, kubectl subprocesses) without monkey-patching.
It binds a free loopback port, keeps its data in a temporary directory, and starts in well
under a second::

    from server.testing import running_shard

    with running_shard() as shard:
        api = kubernetes.client.CoreV1Api(shard.api_client())
        api.list_namespace()

With pytest, load the plugin (``pytest_plugins = ["server.testing"]`` in a conftest) and ask for ``kcp_shard``.
``installed_plugins`` installs virtual workspace plugin projects for a test, as users install them.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from server.shard import Shard, ShardConfig

START_TIMEOUT = 30.0


class RunningShard:
    """A started shard and the ways to talk to it."""

    def __init__(self, shard: Shard, hub, stop_event, thread: threading.Thread, workdir: Path):
        self.shard = shard
        self._hub = hub
        self._stop_event = stop_event
        self._thread = thread
        self.workdir = workdir

    @property
    def url(self) -> str:
        return self.shard.url

    @property
    def kubeconfig(self) -> str:
        return str(self.shard.kubeconfig_path)

    @property
    def root_directory(self) -> Path:
        return self.shard.root

    @property
    def ca_file(self) -> str:
        return str(self.shard.pki.ca_cert_path)

    def api_client(self, context: str = "root"):
        """A ``kubernetes.client.ApiClient`` for the admin identity (``system:masters``)."""
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(config_file=self.kubeconfig, context=context, client_configuration=configuration)
        return client.ApiClient(configuration)

    def cluster_client(self, cluster: str):
        """An admin ``ApiClient`` whose server URL is ``/clusters/<cluster>``."""
        api = self.api_client("base")
        api.configuration.host = f"{self.url}/clusters/{cluster}"
        return api

    def kubectl(self, *args: str, check: bool = True, input: str | None = None, server: str | None = None,
                timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run kubectl with its own HOME and cache directory against this shard."""
        home = self.workdir / "kubectl-home"
        home.mkdir(exist_ok=True)
        env = {**os.environ, "HOME": str(home), "KUBECONFIG": self.kubeconfig}
        command = ["kubectl", f"--cache-dir={home / 'cache'}", *(["--server", server] if server else []), *args]
        return subprocess.run(command, env=env, input=input, capture_output=True, text=True, check=check,
                              timeout=timeout)

    def run(self, fn, *args, **kwargs):
        """Call ``fn`` on the shard's hub thread (for direct registry access from tests) and return its result."""
        result: dict = {}
        done = threading.Event()

        def call():
            try:
                result["value"] = fn(*args, **kwargs)
            except BaseException as exc:  # re-raised in the caller's thread
                result["error"] = exc
            finally:
                done.set()

        self._hub.loop.run_callback_threadsafe(_spawn, call)
        done.wait(START_TIMEOUT)
        if "error" in result:
            raise result["error"]
        return result.get("value")

    def stop(self) -> None:
        if self._thread.is_alive():
            self._hub.loop.run_callback_threadsafe(self._stop_event.set)
            self._thread.join(START_TIMEOUT)


def _spawn(fn):
    import gevent

    gevent.spawn(fn)


def start_shard(config: ShardConfig | None = None, workdir: Path | None = None) -> RunningShard:
    """Start a shard in a background thread; the caller must ``stop()`` it."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="kcp-test-"))
    config = replace(config or ShardConfig(), root_directory=workdir / ".kcp", bind_address="127.0.0.1",
                     secure_port=0)
    state: dict = {}
    ready = threading.Event()

    def serve():
        import gevent.event

        stop_event = gevent.event.Event()
        try:
            shard = Shard(config).start()
        except BaseException as exc:
            state["error"] = exc
            ready.set()
            return
        state.update(shard=shard, hub=gevent.get_hub(), stop_event=stop_event)
        ready.set()
        try:
            stop_event.wait()
        finally:
            shard.stop()

    thread = threading.Thread(target=serve, name="kcp-shard", daemon=True)
    thread.start()
    if not ready.wait(START_TIMEOUT):
        raise RuntimeError("the shard did not start in time")
    if "error" in state:
        raise state["error"]
    return RunningShard(state["shard"], state["hub"], state["stop_event"], thread, workdir)


@contextlib.contextmanager
def running_shard(config: ShardConfig | None = None, *, keep: bool = False) -> Iterator[RunningShard]:
    """A started shard on a free loopback port with a temporary root directory, stopped on exit."""
    workdir = Path(tempfile.mkdtemp(prefix="kcp-test-"))
    running = start_shard(config, workdir)
    try:
        yield running
    finally:
        running.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def installed_plugins(*projects: str | os.PathLike) -> Iterator[Path]:
    """Virtual workspace plugin projects (directories with a ``pyproject.toml``) installed for the duration.

    ``pip install`` puts them into a temporary directory that goes first on ``sys.path`` and ``PYTHONPATH``,
    so an in-process shard and ``kcp virtual-workspaces`` subprocesses find them by entry point exactly as
    they find a plugin a user installed; the virtual environment itself is left alone.
    """
    target = Path(tempfile.mkdtemp(prefix="kcp-plugins-"))
    saved_path, saved_env = list(sys.path), os.environ.get("PYTHONPATH")
    try:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "--no-deps", "--no-build-isolation", "--target", str(target), *map(str, projects)],
                       check=True, capture_output=True, text=True)
        sys.path.insert(0, str(target))
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), saved_env]))
        importlib.invalidate_caches()
        yield target
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"pip could not install {', '.join(map(str, projects))}:\n{exc.stderr}") from None
    finally:
        sys.path[:] = saved_path
        if saved_env is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved_env
        importlib.invalidate_caches()
        shutil.rmtree(target, ignore_errors=True)


# ---------------------------------------------------------------------- pytest plugin

try:
    import pytest
except ImportError:  # pragma: no cover - pytest is only needed for the fixtures
    pytest = None

if pytest is not None:
    def pytest_configure(config):
        """Shard log lines go through ``logging``, which pytest captures per test and shows for failures."""
        from server.http import logs

        logs.route_to_stdlib()

    @pytest.fixture
    def kcp_shard():
        """A fresh shard for one test."""
        with running_shard() as shard:
            yield shard

    @pytest.fixture(scope="module")
    def kcp_shard_module():
        """A shard shared by the tests of one module (faster; tests must not depend on each other's objects)."""
        with running_shard() as shard:
            yield shard

    @pytest.fixture
    def kcp_kubeconfig(kcp_shard) -> str:
        return kcp_shard.kubeconfig
