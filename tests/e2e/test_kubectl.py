"""kubectl 1.32 against a real shard: get (Table, -A, -o), selectors, chunking, watch, label, patch, delete, wait."""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import pytest
import yaml


@pytest.fixture(scope="module")
def shard(kcp_shard_module):
    return kcp_shard_module


def ns_with(shard, *configmaps: str, labels: dict | None = None) -> str:
    ns = f"k-{uuid.uuid4().hex[:8]}"
    shard.kubectl("create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Namespace",
                                                            "metadata": {"name": ns}}))
    for name in configmaps:
        body = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": ns, "labels": labels or {}}, "data": {"a": "1", "b": "2"}}
        shard.kubectl("create", "-f", "-", input=json.dumps(body))
    return ns


def test_version_reports_minor_32(shard):
    out = shard.kubectl("version", "-o", "json").stdout
    assert json.loads(out)["serverVersion"]["minor"] == "32"


def test_get_prints_server_side_table(shard):
    ns = ns_with(shard, "one", "two")
    out = shard.kubectl("get", "configmaps", "-n", ns).stdout
    header = out.splitlines()[0].split()
    assert header == ["NAME", "DATA", "AGE"]
    assert [line.split()[:2] for line in out.splitlines()[1:]] == [["one", "2"], ["two", "2"]]


def test_get_all_namespaces_and_show_labels(shard):
    ns = ns_with(shard, "labelled", labels={"team": "blue"})
    out = shard.kubectl("get", "configmaps", "-A", "--show-labels").stdout
    rows = [line.split() for line in out.splitlines()]
    assert rows[0][0] == "NAMESPACE" and rows[0][-1] == "LABELS"
    assert [ns, "labelled", "2"] == [r for r in rows if r[1] == "labelled" and r[0] == ns][0][:3]
    assert "team=blue" in [r for r in rows if r[0] == ns][0][-1]


@pytest.mark.parametrize("fmt", ["yaml", "json", "name"])
def test_get_output_formats(shard, fmt):
    ns = ns_with(shard, "fmt")
    out = shard.kubectl("get", "configmap", "fmt", "-n", ns, "-o", fmt).stdout
    if fmt == "name":
        assert out.strip() == "configmap/fmt"
    else:
        obj = yaml.safe_load(out) if fmt == "yaml" else json.loads(out)
        assert obj["kind"] == "ConfigMap" and obj["data"] == {"a": "1", "b": "2"}


def test_label_selector_field_selector_and_chunking(shard):
    ns = ns_with(shard)
    for i in range(5):
        shard.kubectl("create", "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"c{i}", "namespace": ns, "labels": {"even": str(i % 2 == 0).lower()}}}))
    out = shard.kubectl("get", "cm", "-n", ns, "-l", "even=true", "-o", "name").stdout.split()
    assert out == ["configmap/c0", "configmap/c2", "configmap/c4"]
    out = shard.kubectl("get", "cm", "-n", ns, "--field-selector", "metadata.name=c3", "-o", "name").stdout.split()
    assert out == ["configmap/c3"]
    out = shard.kubectl("get", "cm", "-n", ns, "--chunk-size=2", "-o", "name").stdout.split()
    assert out == [f"configmap/c{i}" for i in range(5)]


def test_label_annotate_patch(shard):
    ns = ns_with(shard, "p")
    shard.kubectl("label", "cm", "p", "-n", ns, "color=red")
    shard.kubectl("annotate", "cm", "p", "-n", ns, "note=hello")
    shard.kubectl("patch", "cm", "p", "-n", ns, "--type", "merge", "-p", '{"data":{"a":"9"}}')
    shard.kubectl("patch", "cm", "p", "-n", ns, "--type", "json", "-p",
                  '[{"op":"remove","path":"/data/b"}]')
    obj = json.loads(shard.kubectl("get", "cm", "p", "-n", ns, "-o", "json").stdout)
    assert obj["metadata"]["labels"] == {"color": "red"}
    assert obj["metadata"]["annotations"]["note"] == "hello"
    assert obj["data"] == {"a": "9"}
    shard.kubectl("label", "cm", "p", "-n", ns, "color-")
    obj = json.loads(shard.kubectl("get", "cm", "p", "-n", ns, "-o", "json").stdout)
    assert not obj["metadata"].get("labels")
    failed = shard.kubectl("patch", "cm", "p", "-n", ns, "--type", "json", "-p",
                           '[{"op":"test","path":"/data/a","value":"0"}]', check=False)
    assert failed.returncode != 0 and "Invalid" in failed.stderr or "test" in failed.stderr


def test_delete_and_wait_for_delete(shard):
    ns = ns_with(shard, "gone", "kept")
    shard.kubectl("delete", "cm", "gone", "-n", ns)
    out = shard.kubectl("get", "cm", "-n", ns, "-o", "name").stdout.split()
    assert out == ["configmap/kept"]
    shard.kubectl("patch", "cm", "kept", "-n", ns, "--type", "merge", "-p",
                  '{"metadata":{"finalizers":["example.com/hold"]}}')
    shard.kubectl("delete", "cm", "kept", "-n", ns, "--wait=false")
    waiter = subprocess.Popen(
        ["kubectl", f"--cache-dir={shard.workdir / 'kubectl-home' / 'cache'}", "wait", "--for=delete",
         "cm/kept", "-n", ns, "--timeout=30s"],
        env={"HOME": str(shard.workdir / "kubectl-home"), "KUBECONFIG": shard.kubeconfig, "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    assert waiter.poll() is None  # still waiting: the finalizer holds the object
    shard.kubectl("patch", "cm", "kept", "-n", ns, "--type", "merge", "-p", '{"metadata":{"finalizers":null}}')
    out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0, err
    assert "condition met" in out or "deleted" in out


def test_get_watch_prints_changes(shard):
    ns = ns_with(shard, "w")
    home = shard.workdir / "kubectl-home"
    watcher = subprocess.Popen(
        ["kubectl", f"--cache-dir={home / 'cache'}", "get", "cm", "-n", ns, "-w", "--request-timeout=0"],
        env={"HOME": str(home), "KUBECONFIG": shard.kubeconfig, "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    shard.kubectl("create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "ConfigMap",
                                                            "metadata": {"name": "w2", "namespace": ns}}))
    time.sleep(1.0)
    watcher.terminate()
    out, _ = watcher.communicate(timeout=10)
    names = [line.split()[0] for line in out.splitlines()[1:]]
    assert names == ["w", "w2"]


def test_delete_namespace_removes_content(shard):
    ns = ns_with(shard, "x", "y")
    shard.kubectl("delete", "namespace", ns)
    out = shard.kubectl("get", "cm", "-A", "-o", "name").stdout
    assert "configmap/x" not in out.split() or ns not in shard.kubectl("get", "cm", "-A").stdout


def test_api_resources_lists_builtins(shard):
    out = shard.kubectl("api-resources", "-o", "name").stdout.split()
    for name in ("configmaps", "namespaces", "secrets", "serviceaccounts", "events", "leases.coordination.k8s.io",
                 "deployments.apps"):
        assert name in out


def test_unknown_resource_is_an_error(shard):
    result = shard.kubectl("get", "widgets", check=False)
    assert result.returncode != 0
    assert "the server doesn't have a resource type" in result.stderr


def test_wait_honours_its_timeout_on_an_idle_watch(shard):
    """The watch's headers go out at once: client-go waits for them before it starts its timeout clock."""
    ns = ns_with(shard, "stays")
    started = time.monotonic()
    result = shard.kubectl("wait", "--for=delete", "cm/stays", "-n", ns, "--timeout=2s", check=False, timeout=30)
    assert result.returncode != 0 and "timed out" in result.stderr
    assert time.monotonic() - started < 15
