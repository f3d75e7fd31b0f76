"""``kcp start`` on etcd, end to end: the flags (TLS to etcd included), acknowledged writes across ``kill -9``,
a list at a past resourceVersion, a prefix another shard holds, and etcd going away under a running shard
(503 Status, readiness, reconnect). Every test starts its own etcd (``server.testing.EtcdProcess``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from server import pki
from server.shard import ShardConfig
from server.testing import EtcdProcess, free_port, running_etcd, running_shard

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def kcp(*args: str, **options) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "server.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **options)


def started(proc: subprocess.Popen, timeout: float = 30.0) -> str:
    """The output up to the "serving" line (raises with the output if the process ends first)."""
    lines = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("kcp is serving on"):
            return "".join(lines)
        assert time.monotonic() < deadline, "".join(lines)
    raise AssertionError(f"exited {proc.wait()}:\n{''.join(lines)}")


def kubectl(kubeconfig: str, home, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(home), "KUBECONFIG": kubeconfig}
    return subprocess.run(["kubectl", f"--cache-dir={home}/cache", *args], env=env, capture_output=True, text=True,
                          check=check, timeout=60)


def test_kcp_start_on_etcd_over_tls_keeps_acknowledged_writes_across_kill_9(tmp_path):
    ca = pki.CA.create("etcd-ca")
    with running_etcd(tmp_path / "etcd", tls=ca) as etcd:
        port = free_port()
        args = ["start", "--root-directory", str(tmp_path / "kcp"), "--secure-port", str(port),
                "--etcd-servers", etcd.url, "--etcd-prefix", "/kcp/one", "--etcd-cafile", etcd.ca_file,
                "--etcd-certfile", etcd.client_cert, "--etcd-keyfile", etcd.client_key]
        first = kcp(*args)
        try:
            assert "prefix=/kcp/one/" in started(first)
            kubeconfig = str(tmp_path / "kcp" / "admin.kubeconfig")
            kubectl(kubeconfig, tmp_path, "create", "configmap", "kept", "--from-literal=a=1")
            version = json.loads(kubectl(kubeconfig, tmp_path, "get", "configmap", "kept", "-o", "json").stdout)[
                "metadata"]["resourceVersion"]
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        second = kcp(*args)
        try:
            started(second)
            kept = json.loads(kubectl(kubeconfig, tmp_path, "get", "configmap", "kept", "-o", "json").stdout)
            assert kept["data"] == {"a": "1"} and kept["metadata"]["resourceVersion"] == version
            # the same list at a past revision, as etcd had it then
            kubectl(kubeconfig, tmp_path, "create", "configmap", "later")
            names = lambda rv: [i["metadata"]["name"] for i in json.loads(kubectl(  # noqa: E731
                kubeconfig, tmp_path, "get", "--raw", "/api/v1/namespaces/default/configmaps?"
                f"resourceVersion={rv}&resourceVersionMatch=Exact").stdout)["items"]]
            assert "later" not in names(version) and "kept" in names(version)
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0


def test_a_prefix_held_by_another_shard_is_refused_at_start(tmp_path):
    with running_etcd(tmp_path / "etcd") as etcd:
        config = ShardConfig(etcd_servers=etcd.servers, etcd_prefix="/shared")
        with running_shard(config):
            for prefix, message in (("/shared", 'etcd prefix "/shared/" belongs to shard "root", not "other"'),
                                    ("/shared/inner", 'overlaps prefix "/shared/" of shard "root"'),
                                    ("/", 'overlaps prefix "/shared/" of shard "root"')):
                proc = kcp("start", "--root-directory", str(tmp_path / "other"), "--secure-port", "0",
                           "--etcd-servers", etcd.url, "--etcd-prefix", prefix, "--shard-name", "other")
                output = proc.communicate(timeout=30)[0]
                assert proc.returncode == 1 and message in output, output


@pytest.mark.parametrize("flags, message", [
    (["--etcd-servers", "ftp://127.0.0.1:1"], "is not an http:// or https:// URL"),
    (["--etcd-servers", "http://127.0.0.1:1", "--etcd-prefix", "registry"], "--etcd-prefix: etcd prefix"),
    (["--etcd-servers", "http://127.0.0.1:1", "--etcd-certfile", "x.crt"], "go together"),
    (["--shard-name", "Not A Name"], "--shard-name"),
    (["--root-shard-kubeconfig", "x.kubeconfig"], "needs a --shard-name other than 'root'"),
])
def test_bad_flags_are_refused(tmp_path, flags, message):
    proc = kcp("start", "--root-directory", str(tmp_path), "--secure-port", "0", *flags)
    output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 2 and message in output, output


def test_unreachable_etcd_at_start_is_a_clear_error(tmp_path):
    proc = kcp("start", "--root-directory", str(tmp_path), "--secure-port", "0",
               "--etcd-servers", f"http://127.0.0.1:{free_port()}")
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 1 and "etcd is unavailable" in output, output


def test_a_lost_etcd_is_a_503_then_the_shard_reconnects_by_itself(tmp_path):
    etcd = EtcdProcess(tmp_path / "etcd").start()
    try:
        with running_shard(ShardConfig(etcd_servers=etcd.servers, etcd_prefix="/lost")) as shard:
            core = client.CoreV1Api(shard.api_client())
            core.create_namespaced_config_map("default", {"metadata": {"name": "before"}})
            etcd.stop()
            with pytest.raises(ApiException) as info:
                core.create_namespaced_config_map("default", {"metadata": {"name": "during"}})
            status = json.loads(info.value.body)
            assert info.value.status == 503 and status["kind"] == "Status" and status["reason"] == "ServiceUnavailable"
            assert "storage unavailable" in status["message"] and info.value.headers["Retry-After"] == "1"
            assert core.read_namespaced_config_map("before", "default").metadata.name == "before"  # from memory
            wait = time.monotonic() + 10
            while shard.kubectl("get", "--raw", "/readyz", check=False).returncode == 0:
                assert time.monotonic() < wait, "readyz stayed ok"
                time.sleep(0.1)
            assert "[-]storage failed" in shard.kubectl("get", "--raw", "/readyz?verbose", check=False).stderr + \
                shard.kubectl("get", "--raw", "/readyz?verbose", check=False).stdout
            etcd.start()
            wait = time.monotonic() + 20
            while True:  # the next request after etcd is back goes through
                try:
                    core.create_namespaced_config_map("default", {"metadata": {"name": "after"}})
                    break
                except ApiException as exc:
                    assert exc.status == 503 and time.monotonic() < wait
                    time.sleep(0.1)
            assert shard.kubectl("get", "--raw", "/readyz").stdout == "ok"
            names = {c.metadata.name for c in core.list_namespaced_config_map("default").items}
            assert {"before", "after"} <= names and "during" not in names
    finally:
        etcd.stop()
