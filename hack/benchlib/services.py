"""The servers a bench run measures, each started pinned to the server core.

* Shard    -- ``kcp start`` (ours), with a static bearer token for user ``bench``
* Trivial  -- the floor: benchlib.trivial (gevent.pywsgi + werkzeug, same TLS cert)
* Nginx    -- the ceiling: one nginx worker serving the same bytes over TLS, same cert
* ExternalVW -- ``kcp virtual-workspaces`` serving a shard's virtual workspaces as its own process
* TLSFloor -- benchlib.tls_floor: idle TLS watches held with nothing but OpenSSL's and gevent's socket state

Each has ``.url`` (https://127.0.0.1:port), ``.pid`` (for RSS) and ``.stop()``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import time

import urllib3

from .util import Cores, Fatal, free_port, tail, wait_until

HACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_ROOT = os.path.dirname(HACK_DIR)
VENV_BIN = os.path.dirname(sys.executable)


class Service:
    name = "service"

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log_path = ""

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self):
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)

    def _check_alive(self):
        if self.proc is not None and self.proc.poll() is not None:
            t = tail(self.log_path)
            last = t.strip().splitlines()[-1] if t.strip() else "no output"
            raise Fatal(f"{self.name} exited with {self.proc.returncode}: {last} "
                        f"(log {self.log_path})\n{t}")


def repo_env() -> dict:
    """The environment of our server processes: the repository root importable, so that
    ``--virtual-workspace tests.vw_demo:demo`` (a test-only virtual workspace) loads."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO_ROOT,
                                                                       os.environ.get("PYTHONPATH")]))}


def _http(ca: str | None = None) -> urllib3.PoolManager:
    """A urllib3 pool trusting ``ca`` (no hostname check), or not verifying at all."""
    if ca:
        ctx = ssl.create_default_context(cafile=ca)
        ctx.check_hostname = False
    else:
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return urllib3.PoolManager(ssl_context=ctx, assert_hostname=False, retries=False, timeout=10)


# ------------------------------------------------------------------------------------ shard

class Shard(Service):
    """``kcp start`` in a temp root directory, pinned to the server core."""

    name = "shard"
    ready_timeout = 90

    def __init__(self, workdir: str, cores: Cores, extra_args: list[str] | None = None,
                 name: str = "kcp"):
        """``name`` keeps several shards apart in one work dir (root dir, log, token file)."""
        super().__init__()
        self.workdir = workdir
        self.name = name
        self.root = os.path.join(workdir, name)
        self.cores = cores
        self.extra_args = extra_args or []
        self.token = "bench-" + secrets.token_hex(16)
        self.user_token = "bench-user-" + secrets.token_hex(16)  # a plain user (no groups): RBAC decides
        self.log_path = os.path.join(workdir, f"{name}.log")

    @property
    def ca(self) -> str:
        return os.path.join(self.root, "ca.crt")

    @property
    def kubeconfig(self) -> str:
        return os.path.join(self.root, "admin.kubeconfig")

    @property
    def auth(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def user_auth(self) -> dict:
        return {"Authorization": f"Bearer {self.user_token}"}

    def start(self):
        os.makedirs(self.root, exist_ok=True)
        tokens = os.path.join(self.workdir, f"{self.name}-tokens.csv")
        with open(tokens, "w") as f:
            f.write(f'{self.token},bench,bench-uid,"system:masters"\n')
            f.write(f'{self.user_token},bench-user,bench-user-uid\n')
        self.port = free_port()
        kcp = os.path.join(VENV_BIN, "kcp")
        cmd = [kcp, "start", "--root-directory", self.root, "--secure-port", str(self.port),
               "--token-auth-file", tokens, *self.extra_args]
        self.cmdline = " ".join(cmd)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cores.server_cmd(cmd), stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.workdir, env=repo_env())
        t0 = time.monotonic()

        def ready():
            self._check_alive()
            if not os.path.exists(self.ca):
                return False
            r = _http(self.ca).request("GET", self.url + "/readyz", headers=self.auth,
                                       timeout=2)
            return r.status == 200

        try:
            wait_until(ready, self.ready_timeout, 0.2, f"{self.url}/readyz")
        except Exception:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        self.http = _http(self.ca)
        return self

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> urllib3.BaseHTTPResponse:
        h = {**self.auth, "Accept": "application/json", **(headers or {})}
        if body is not None:
            h.setdefault("Content-Type", "application/json")
        return self.http.request(method, self.url + path, body=body, headers=h)

    def api_client(self):
        """A kubernetes.client.ApiClient from <root>/admin.kubeconfig (admin client cert)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=self.kubeconfig)

    def serving_cert(self) -> tuple[str, str] | None:
        """(cert, key) files of the certificate the shard serves, found in its root dir."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        served = ssl.get_server_certificate(("127.0.0.1", self.port))
        served_der = ssl.PEM_cert_to_DER_cert(served)
        certs, keys = [], []
        for dirpath, _, files in os.walk(self.root):
            for fn in files:
                path = os.path.join(dirpath, fn)
                try:
                    data = open(path, "rb").read()
                except OSError:
                    continue
                if b"-----BEGIN CERTIFICATE-----" in data:
                    certs.append((path, data))
                if b"PRIVATE KEY-----" in data:
                    keys.append((path, data))
        for cpath, cdata in certs:
            try:
                cert = x509.load_pem_x509_certificate(cdata)
            except ValueError:
                continue
            if cert.public_bytes(serialization.Encoding.DER) != served_der:
                continue
            want = cert.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
            for kpath, kdata in keys:
                try:
                    key = serialization.load_pem_private_key(kdata, password=None)
                except (ValueError, TypeError):
                    continue
                pub = key.public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
                if pub == want:
                    return cpath, kpath
        return None


# ------------------------------------------------------------------------- external VW

class ExternalVW(Service):
    """``kcp virtual-workspaces`` for ``shard`` (its kubeconfig and root directory), pinned to the
    server core like the shard itself, or with ``own_core`` to the other one (a deployment gives it a machine
    of its own; on two cores that is the load generators' core); ``factories`` are ``module:factory`` specs.

    The port is chosen up front so that the shard it serves can be started first with
    ``--shard-virtual-workspace-url`` (``ExternalVW.url_for(port)``) for the forwarded topology."""

    name = "virtual-workspaces"
    ready_timeout = 60

    def __init__(self, workdir: str, cores: Cores, shard: Shard, factories: list[str], port: int, *,
                 own_core: bool = False):
        super().__init__()
        self.cores, self.shard, self.factories, self.port = cores, shard, factories, port
        self.own_core = own_core
        self.log_path = os.path.join(workdir, f"{shard.name}-virtual-workspaces.log")

    @staticmethod
    def url_for(port: int) -> str:
        return f"https://127.0.0.1:{port}"

    def start(self):
        kcp = os.path.join(VENV_BIN, "kcp")
        cmd = [kcp, "virtual-workspaces", "--kubeconfig", self.shard.kubeconfig,
               "--root-directory", self.shard.root, "--secure-port", str(self.port)]
        for spec in self.factories:
            cmd += ["--virtual-workspace", spec]
        self.cmdline = " ".join(cmd)
        with open(self.log_path, "ab") as log:
            pinned = self.cores.client_cmd(cmd) if self.own_core else self.cores.server_cmd(cmd)
            self.proc = subprocess.Popen(pinned, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.shard.workdir, env=repo_env())
        http = _http(self.shard.ca)

        def ready():
            self._check_alive()
            return http.request("GET", self.url + "/readyz", timeout=2).status == 200

        try:
            wait_until(ready, self.ready_timeout, 0.1, f"{self.url}/readyz")
        except Exception:
            self.stop()
            raise
        return self


# ------------------------------------------------------------------------ generated cert

def generate_cert(directory: str) -> tuple[str, str]:
    """A self-signed ECDSA P-256 cert for 127.0.0.1 (used when no shard cert is available)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kcp-bench")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    cpath, kpath = os.path.join(directory, "bench.crt"), os.path.join(directory, "bench.key")
    with open(cpath, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(kpath, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cpath, kpath


# ---------------------------------------------------------------------------------- trivial

class BenchlibServer(Service):
    """A ``python -m benchlib.<module>`` server (``args()``), pinned to the server core, ready once
    ``GET ready_path`` answers one of ``ready_statuses``."""

    module = ""
    ready_path = "/"
    ready_statuses = (200,)

    def args(self) -> list[str]:
        raise NotImplementedError

    def start(self):
        self.port = free_port()
        cmd = [sys.executable, "-m", f"benchlib.{self.module}", "--port", str(self.port), *self.args()]
        env = {**os.environ, "PYTHONPATH": HACK_DIR}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cores.server_cmd(cmd), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env)
        http = _http()

        def ready():
            self._check_alive()
            return http.request("GET", self.url + self.ready_path, timeout=2).status in self.ready_statuses

        wait_until(ready, 30, 0.1, self.name)
        return self


class Trivial(BenchlibServer):
    """benchlib.trivial: the gevent.pywsgi + werkzeug floor, serving ``body``."""

    name = "trivial"
    module = "trivial"

    def __init__(self, workdir: str, cores: Cores, cert: tuple[str, str], body: bytes):
        super().__init__()
        self.workdir, self.cores, self.cert, self.body = workdir, cores, cert, body
        self.log_path = os.path.join(workdir, "trivial.log")

    def args(self) -> list[str]:
        body_file = os.path.join(self.workdir, "trivial-body.json")
        with open(body_file, "wb") as f:
            f.write(self.body)
        return ["--cert", self.cert[0], "--key", self.cert[1], "--body-file", body_file]


class TrivialRelay(BenchlibServer):
    """benchlib.trivial_relay: the floor of any forwarder on our stack, in front of ``external`` (see there)."""

    name = "trivial-relay"
    module = "trivial_relay"
    ready_path = "/readyz"
    ready_statuses = (200, 401, 403)

    def __init__(self, workdir: str, cores: Cores, cert: tuple[str, str], shard: "Shard", external: "ExternalVW"):
        super().__init__()
        self.workdir, self.cores, self.cert, self.shard, self.external = workdir, cores, cert, shard, external
        self.log_path = os.path.join(workdir, "trivial-relay.log")

    def args(self) -> list[str]:
        root = self.shard.root
        return ["--cert", self.cert[0], "--key", self.cert[1], "--upstream-port", str(self.external.port),
                "--proxy-cert", os.path.join(root, "shard-proxy.crt"),
                "--proxy-key", os.path.join(root, "shard-proxy.key"), "--ca", os.path.join(root, "ca.crt")]


class TLSFloor(BenchlibServer):
    """benchlib.tls_floor: what an idle TLS watch costs any server on our stack (OpenSSL + gevent's socket)."""

    name = "tls-floor"
    module = "tls_floor"

    def __init__(self, workdir: str, cores: Cores, cert: tuple[str, str]):
        super().__init__()
        self.workdir, self.cores, self.cert = workdir, cores, cert
        self.log_path = os.path.join(workdir, "tls-floor.log")

    def args(self) -> list[str]:
        return ["--cert", self.cert[0], "--key", self.cert[1]]


# ------------------------------------------------------------------------------------ nginx

NGINX_CONF = """\
worker_processes 1;
worker_rlimit_nofile {nofile};
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
{user}
events {{
    worker_connections {conns};
}}
http {{
    access_log off;
    types {{ }}
    default_type application/json;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path {dir}/tmp-body;
    proxy_temp_path {dir}/tmp-proxy;
{http_extra}
    fastcgi_temp_path {dir}/tmp-fastcgi;
    uwsgi_temp_path {dir}/tmp-uwsgi;
    scgi_temp_path {dir}/tmp-scgi;
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {dir}/www;
{extra}
    }}
}}
"""


def nginx_upstream(name: str, port: int) -> str:
    """An ``http_extra`` block for ``Nginx``: upstream ``name`` at 127.0.0.1:``port``, kept alive as a proxy's pool."""
    return f"""\
    upstream {name} {{
        server 127.0.0.1:{port};
        keepalive 256;
    }}
"""


class Nginx(Service):
    """The ceiling: one nginx worker, TLS with the same cert, ``access_log off``.

    ``files`` maps URL paths to bytes served statically; ``extra`` is appended inside the server
    block (e.g. a proxy_pass location for a later "nginx in front" row), ``http_extra`` inside the
    http block (e.g. an ``upstream`` with keep-alive connections for that location).
    """

    name = "nginx"

    def __init__(self, workdir: str, cores: Cores, cert: tuple[str, str],
                 files: dict[str, bytes], extra: str = "", nofile: int = 20000,
                 http_extra: str = ""):
        super().__init__()
        self.dir = os.path.join(workdir, f"nginx-{secrets.token_hex(3)}")
        self.cores, self.cert, self.files, self.extra = cores, cert, files, extra
        self.http_extra = http_extra
        self.nofile = nofile
        self.log_path = os.path.join(self.dir, "error.log")

    def start(self):
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        www = os.path.join(self.dir, "www")
        os.makedirs(www, exist_ok=True)
        for urlpath, data in self.files.items():
            path = os.path.join(www, urlpath.lstrip("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        # the worker may run as an unprivileged user: make the tree readable
        for d in (os.path.dirname(self.dir), self.dir):
            os.chmod(d, 0o755)
        for dirpath, dirnames, filenames in os.walk(www):
            os.chmod(dirpath, 0o755)
            for fn in filenames:
                os.chmod(os.path.join(dirpath, fn), 0o644)
        self.port = free_port()
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(
                dir=self.dir, port=self.port, cert=self.cert[0], key=self.cert[1],
                nofile=self.nofile, conns=max(1024, self.nofile - 100), extra=self.extra,
                http_extra=self.http_extra,
                user="user root;" if os.geteuid() == 0 else ""))
        cmd = [binary, "-p", self.dir, "-e", self.log_path, "-c", conf]
        self.proc = subprocess.Popen(self.cores.server_cmd(cmd), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        http = _http()

        def ready():
            self._check_alive()
            http.request("GET", self.url + "/", timeout=2)
            return True

        wait_until(ready, 20, 0.1, "nginx")
        return self

    def stop(self):
        p = self.proc
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGQUIT)  # graceful; SIGTERM is fast shutdown, both fine
        super().stop()


# ----------------------------------------------------------------------------- client proc

class ClientProc:
    """benchlib.client as a subprocess pinned to the client core; ``call`` sends one command."""

    def __init__(self, workdir: str, cores: Cores, url: str, token: str = "none",
                 ca: str | None = None):
        self.log_path = os.path.join(workdir, f"client-{secrets.token_hex(3)}.log")
        cmd = [sys.executable, "-m", "benchlib.client", "--url", url, "--token", token]
        if ca:
            cmd += ["--ca", ca]
        env = {**os.environ, "PYTHONPATH": HACK_DIR}
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cores.client_cmd(cmd), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def call(self, cmd: str, **kw) -> dict:
        import json

        self.proc.stdin.write((json.dumps({"cmd": cmd, **kw}) + "\n").encode())
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bench client died ({self.proc.poll()}); log {self.log_path}:\n"
                               f"{tail(self.log_path)}")
        res = json.loads(line)
        if not res.pop("ok", False):
            raise RuntimeError(f"bench client {cmd} failed: {res.get('error')}")
        return res

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.call("quit")
                self.proc.wait(10)
            except Exception:  # noqa: BLE001
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()

