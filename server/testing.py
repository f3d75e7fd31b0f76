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

Storage: SQLite in the shard's directory, or etcd with ``pytest --kcp-storage=etcd`` (or
``KCP_TEST_STORAGE=etcd``): one ``etcd`` process (Debian ``etcd-server``) is started for the test session,
``KCP_TEST_ETCD_SERVERS`` names one already running instead, and every shard gets its own prefix (the
same one again when restarted on the same directory). ``running_etcd()`` starts one for any other use.
Several shards of one deployment: ``join_shard(root, name)``, and ``start_front_proxy(root)`` in front of them.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from server.shard import Shard, ShardConfig

START_TIMEOUT = 30.0


class _Running:
    """A server started in a thread of its own (its own gevent hub), and the ways to talk to it."""

    def __init__(self, server, hub, stop_event, thread: threading.Thread, workdir: Path):
        self.server = server
        self._hub = hub
        self._stop_event = stop_event
        self._thread = thread
        self.workdir = workdir

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def kubeconfig(self) -> str:
        return str(self.server.kubeconfig_path)

    @property
    def root_directory(self) -> Path:
        return self.server.root

    @property
    def ca_file(self) -> str:
        return str(self.server.pki.ca_cert_path)

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


class RunningShard(_Running):
    """A started shard (``.shard``)."""

    @property
    def shard(self) -> Shard:
        return self.server


class RunningFrontProxy(_Running):
    """A started ``kcp front-proxy`` (``.proxy``); its kubeconfig holds the shared CA's admin credentials."""

    @property
    def proxy(self):
        return self.server


def _spawn(fn):
    import gevent

    gevent.spawn(fn)


def start_shard(config: ShardConfig | None = None, workdir: Path | None = None, *, port: int = 0) -> RunningShard:
    """Start a shard in a background thread (on ``port``, a free one by default); the caller must ``stop()`` it."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="kcp-test-"))
    config = replace(config or ShardConfig(), root_directory=workdir / ".kcp", bind_address="127.0.0.1",
                     secure_port=port)
    if not config.etcd_servers and not config.storage and default_storage() == "etcd":
        config = replace(config, etcd_servers=session_etcd().servers, etcd_prefix=etcd_prefix_for(workdir))
    return RunningShard(*_serve_in_thread(lambda: Shard(config).start(), "kcp-shard"), workdir)


def _serve_in_thread(start, name: str):
    """``start()`` (returning a started server with ``stop()``) in a thread with its own hub, which stops it when
    told to: ``(server, hub, stop_event, thread)``; start-up errors are raised here."""
    state: dict = {}
    ready = threading.Event()

    def serve():
        import gevent.event

        stop_event = gevent.event.Event()
        try:
            server = start()
        except BaseException as exc:
            state["error"] = exc
            ready.set()
            return
        state.update(server=server, hub=gevent.get_hub(), stop_event=stop_event)
        ready.set()
        try:
            stop_event.wait()
        finally:
            server.stop()

    thread = threading.Thread(target=serve, name=name, daemon=True)
    thread.start()
    if not ready.wait(START_TIMEOUT):
        raise RuntimeError(f"{name} did not start in time")
    if "error" in state:
        raise state["error"]
    return state["server"], state["hub"], state["stop_event"], thread


def start_front_proxy(root: RunningShard, workdir: Path | None = None) -> RunningFrontProxy:
    """``kcp front-proxy`` for the deployment of root shard ``root``, in a background thread."""
    from server.frontproxy import FrontProxyServer

    workdir = Path(workdir or tempfile.mkdtemp(prefix="kcp-test-proxy-"))
    return RunningFrontProxy(*_serve_in_thread(lambda: FrontProxyServer(
        root_shard_kubeconfig=root.kubeconfig, root_directory=workdir / ".kcp-front-proxy", secure_port=0).start(),
        "kcp-front-proxy"), workdir)


def join_shard(root: RunningShard, name: str, config: ShardConfig | None = None,
               workdir: Path | None = None, *, port: int = 0) -> RunningShard:
    """One more shard ``name`` for the deployment of root shard ``root`` (its CAs, its Shard object in root)."""
    return start_shard(replace(config or ShardConfig(), shard_name=name, root_shard_kubeconfig=root.kubeconfig),
                       workdir, port=port)


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


# ---------------------------------------------------------------------- etcd

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EtcdProcess:
    """One etcd member (the ``etcd`` binary) on free loopback ports with its data in ``directory``.

    ``tls`` (a ``server.pki.CA``): serve HTTPS with a certificate of that CA and require client
    certificates of it (``client_cert``/``client_key`` are written for clients). ``stop()`` and ``start()``
    again keep the data and the port, for restart and reconnect tests.
    """

    def __init__(self, directory: Path | str, *, tls=None, name: str = "etcd"):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.port, self.peer_port = free_port(), free_port()
        self.ca_file = self.client_cert = self.client_key = None
        self._tls = tls
        scheme = "http"
        if tls is not None:
            from server import pki

            scheme = "https"
            self.ca_file = str(self.directory / "etcd-ca.crt")
            Path(self.ca_file).write_bytes(tls.cert_pem)
            pki.write_pem_pair(self.directory / "etcd-server.crt", self.directory / "etcd-server.key",
                               # clientAuth too: etcd's JSON gateway dials etcd's gRPC with this certificate
                               *tls.issue("etcd", server_names=["127.0.0.1", "localhost"], server=True, client=True))
            self.client_cert, self.client_key = str(self.directory / "etcd-client.crt"), str(self.directory / "etcd-client.key")
            pki.write_pem_pair(self.client_cert, self.client_key, *tls.issue("kcp-shard"))
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    @property
    def servers(self) -> list[str]:
        return [self.url]

    def command(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.peer_port}"
        command = [shutil.which("etcd") or "/usr/bin/etcd", "--name", self.name, "--data-dir", str(self.directory / "data"),
                   "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                   "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                   "--initial-cluster", f"{self.name}={peer}", "--logger", "zap", "--log-level", "error"]
        if self._tls is not None:
            command += ["--cert-file", str(self.directory / "etcd-server.crt"),
                        "--key-file", str(self.directory / "etcd-server.key"),
                        "--client-cert-auth", "--trusted-ca-file", self.ca_file]
        return command

    def start(self, timeout: float = START_TIMEOUT) -> "EtcdProcess":
        if shutil.which("etcd") is None and not os.path.exists("/usr/bin/etcd"):
            raise RuntimeError("etcd is not installed (Debian etcd-server; ./hack/test installs it)")
        log = open(self.directory / "etcd.log", "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}: "
                                   f"{(self.directory / 'etcd.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("etcd did not become healthy in time")
            time.sleep(0.05)
        return self

    def ready(self) -> bool:
        context = None
        if self._tls is not None:
            context = ssl.create_default_context(cafile=self.ca_file)
            context.load_cert_chain(self.client_cert, self.client_key)
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1, context=context) as answer:
                return b'"true"' in answer.read()
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop etcd (``signal.SIGKILL``: crash it); the data stays for another ``start()``."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def running_etcd(directory: Path | str | None = None, *, tls=None) -> Iterator[EtcdProcess]:
    """A started etcd member in ``directory`` (a temporary one by default), stopped and removed on exit."""
    workdir = Path(directory or tempfile.mkdtemp(prefix="kcp-etcd-"))
    etcd = EtcdProcess(workdir, tls=tls).start()
    try:
        yield etcd
    finally:
        etcd.stop()
        if directory is None:
            shutil.rmtree(workdir, ignore_errors=True)


class _ExternalEtcd:
    def __init__(self, servers: str):
        self.servers = [s.strip() for s in servers.split(",") if s.strip()]


_session: dict = {}


def default_storage() -> str:
    """``sqlite`` or ``etcd``: what shards started here store in unless their config says otherwise."""
    return _session.get("storage") or os.environ.get("KCP_TEST_STORAGE", "sqlite")


def session_etcd():
    """The etcd every test shard of this process shares (started on first use, stopped at exit)."""
    etcd = _session.get("etcd")
    if etcd is None:
        external = os.environ.get("KCP_TEST_ETCD_SERVERS")
        if external:
            etcd = _ExternalEtcd(external)
        else:
            directory = Path(tempfile.mkdtemp(prefix="kcp-test-etcd-"))
            etcd = EtcdProcess(directory).start()
            atexit.register(shutil.rmtree, directory, True)
            atexit.register(etcd.stop)
        _session["etcd"] = etcd
    return etcd


def etcd_prefix_for(workdir: Path | str) -> str:
    """A prefix of its own for the shard in ``workdir`` (stable, so a restart finds its data again)."""
    digest = hashlib.sha256(str(Path(workdir).resolve()).encode()).hexdigest()[:16]
    return f"/kcp-test/{digest}"


# ---------------------------------------------------------------------- pytest plugin

try:
    import pytest
except ImportError:  # pragma: no cover - pytest is only needed for the fixtures
    pytest = None

if pytest is not None:
    def pytest_addoption(parser):
        parser.addoption("--kcp-storage", choices=("sqlite", "etcd"), default=None,
                         help="storage of the shards server.testing starts (default: $KCP_TEST_STORAGE or sqlite)")

    def pytest_configure(config):
        """Shard log lines go through ``logging``, which pytest captures per test and shows for failures."""
        from server.http import logs

        logs.route_to_stdlib()
        storage = config.getoption("--kcp-storage", default=None)
        if storage:
            _session["storage"] = storage

    def pytest_report_header(config):
        return f"kcp storage: {default_storage()}"

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
