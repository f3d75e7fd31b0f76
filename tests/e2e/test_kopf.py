"""kopf 1.4x starts against a CRD created with ``kubectl apply``: it discovers the kind, watches it, and a
handler's result is patched into ``/status``; its finalizer flow (add, delete, remove) works too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from tests.e2e.test_crd_kubectl import crd, widget

pytest.importorskip("kopf")

OPERATOR = textwrap.dedent("""
    import kopf

    @kopf.on.create("example.com", "v1", "widgets")
    def created(spec, name, **_):
        return {"message": f"hello {name} of size {spec['size']}"}

    @kopf.on.delete("example.com", "v1", "widgets")
    def deleted(name, **_):
        pass
""")


def wait_for(fn, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_kopf_operator_reconciles_widgets(kcp_shard, tmp_path):
    shard = kcp_shard
    shard.kubectl("apply", "-f", "-", input=json.dumps(crd()))
    (tmp_path / "operator.py").write_text(OPERATOR)
    env = {**os.environ, "KUBECONFIG": shard.kubeconfig, "HOME": str(tmp_path)}
    log_path = tmp_path / "kopf.log"
    with open(log_path, "w") as log:
        operator = subprocess.Popen([sys.executable, "-m", "kopf", "run", "--standalone", "-A", "--verbose",
                                     str(tmp_path / "operator.py")], env=env, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=tmp_path)
    try:
        assert wait_for(lambda: "Starting the watch-stream for widgets.v1.example.com" in log_path.read_text()), \
            log_path.read_text()[-3000:]
        shard.kubectl("apply", "-f", "-", input=json.dumps(widget("w1", size=3)))

        def status():
            obj = json.loads(shard.kubectl("get", "widget", "w1", "-o", "json").stdout)
            return (obj.get("status") or {}).get("created")
        assert wait_for(status) == {"message": "hello w1 of size 3"}, log_path.read_text()[-3000:]
        obj = json.loads(shard.kubectl("get", "widget", "w1", "-o", "json").stdout)
        assert "kopf.zalando.org/KopfFinalizerMarker" in obj["metadata"]["finalizers"]
        shard.kubectl("delete", "widget", "w1", "--wait=false")
        assert wait_for(lambda: shard.kubectl("get", "widgets", "-o", "name").stdout.strip() == ""), \
            log_path.read_text()[-3000:]
        assert "Handler 'deleted' succeeded." in log_path.read_text()
    finally:
        operator.terminate()
        try:
            operator.wait(10)
        except subprocess.TimeoutExpired:
            operator.kill()
            operator.wait()
