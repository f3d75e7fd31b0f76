"""The README's walk-through and the widget controller's set-up, run exactly as written, so they stay true.

The shell blocks are read from the Markdown files and run with bash in a shard's working directory (which
holds ``.kcp/admin.kubeconfig``, as a clone does after ``kcp start``), with ``.venv/bin`` on the PATH and a
HOME of their own. Then what the walk-through leads to is checked with kubectl: the listing through the
published URL, the controller reconciling with the identity the set-up made, and the answers people get
when they step off the path (a write through ``/clusters/*``, strategic merge on a custom resource, a
caller without the grant).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from server.testing import running_shard
from tests.e2e.test_apibinding import wait_for

REPO = Path(__file__).resolve().parents[2]


def shell_block(markdown: Path, heading: str) -> str:
    """The first ```sh block after ``heading``."""
    text = markdown.read_text()
    start = text.index(f"\n{heading}\n")
    match = re.compile(r"```sh\n(.*?)\n```\n", re.S).search(text, start)
    assert match is not None, f"no sh block after {heading!r} in {markdown}"
    return match.group(1)


@pytest.fixture(scope="module")
def walked():
    """A fresh shard after the README walk-through and the controller set-up."""
    with running_shard() as shard:
        env = {**os.environ, "HOME": str(shard.workdir / "home"),
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
        env.pop("KUBECONFIG", None)

        def run(script: str) -> subprocess.CompletedProcess:
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=shard.workdir, env=env,
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
            return done

        walk = run(shell_block(REPO / "README.md", "## Your first API export"))
        setup = run(shell_block(REPO / "examples" / "widget_controller" / "README.md", "## Running it"))
        yield shard, env, walk, setup


def kubectl(shard, env, *args, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["kubectl", f"--kubeconfig={shard.kubeconfig}", *args], cwd=shard.workdir, env=env,
                          capture_output=True, text=True, timeout=60)
    assert not check or done.returncode == 0, done.stderr
    return done


def url(shard) -> str:
    return f"{shard.url}/services/apiexport/root:provider/widgets"


def test_the_walk_through_lists_the_consumer_widget_through_the_published_url(walked):
    shard, _, walk, _ = walked
    lines = [line.split() for line in walk.stdout.splitlines()]
    assert ["default", "w1", "root:consumer"] == next(line for line in lines if line[:1] == ["default"])[:3]
    one = walk.stdout[walk.stdout.index("apiVersion: example.io/v1"):]
    assert "name: w1" in one and "kcp.dev/cluster: root:consumer" in one and "size: 3" in one
    export = json.loads(kubectl(shard, walked[1], "--server", f"{shard.url}/clusters/root:provider", "get",
                                "apiexport", "widgets", "-o", "json").stdout)
    assert export["status"]["virtualWorkspaces"] == [{"url": url(shard)}]


def test_the_walk_through_leaves_every_kubeconfig_name_true(walked):
    import yaml

    shard = walked[0]
    config = yaml.safe_load(Path(shard.kubeconfig).read_text())
    clusters = {c["name"]: c["cluster"]["server"] for c in config["clusters"]}
    assert config["current-context"] == "root:provider"  # where the controller set-up left it
    for name in ("root", "root:provider", "root:consumer"):
        assert clusters[name] == f"{shard.url}/clusters/{name}"


def test_the_controller_reconciles_with_the_identity_the_set_up_made(walked):
    shard, env, _, _ = walked
    assert (shard.workdir / "provider.kubeconfig").exists()
    controller = subprocess.Popen(
        [sys.executable, "-m", "examples.widget_controller", "--kubeconfig", "provider.kubeconfig",
         "--export-cluster", "root:provider", "--export", "widgets"],
        cwd=shard.workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: kubectl(shard, env, "--server", f"{url(shard)}/clusters/root:consumer", "get", "widget",
                                 "w1", "-o", "jsonpath={.status.observed}").stdout, lambda out: out == "true",
                 timeout=30)
    finally:
        controller.terminate()
        controller.wait(10)
    listed = kubectl(shard, env, "--kubeconfig", str(shard.workdir / "provider.kubeconfig"), "--server",
                     f"{url(shard)}/clusters/*", "get", "widgets", "-A")
    assert "w1" in listed.stdout


def test_a_caller_without_the_grant_is_told_which_permission_where(walked):
    shard, env, _, _ = walked
    denied = kubectl(shard, env, "--as=carol", "--server", f"{url(shard)}/clusters/*", "get", "widgets", "-A",
                     check=False)
    assert denied.returncode != 0
    assert 'it needs list on apiexports/content "widgets" in workspace "root:provider"' in denied.stderr, \
        denied.stderr


def test_stepping_off_the_path_gets_one_clear_status(walked, tmp_path):
    shard, env, _, _ = walked
    widget = tmp_path / "w2.yaml"
    widget.write_text("apiVersion: example.io/v1\nkind: Widget\nmetadata:\n  name: w2\nspec:\n  size: 1\n")
    applied = kubectl(shard, env, "--server", f"{url(shard)}/clusters/*", "apply", "-f", str(widget), check=False)
    assert applied.returncode != 0
    assert "Error from server (MethodNotAllowed)" in applied.stderr
    assert "name one workspace, /clusters/<workspace>, to read one object or write" in applied.stderr
    assert "failed to download openapi" not in applied.stderr
    patched = kubectl(shard, env, "--server", f"{url(shard)}/clusters/root:consumer", "patch", "widget", "w1",
                      "--type=strategic", "-p", '{"spec":{"size":4}}', check=False)
    assert patched.returncode != 0
    assert ("accepted media types include: application/json-patch+json, application/merge-patch+json, "
            "application/apply-patch+yaml") in patched.stderr, patched.stderr
    created = kubectl(shard, env, "--server", f"{url(shard)}/clusters/root:consumer", "apply", "-f", str(widget))
    assert "widget.example.io/w2 created" in created.stdout
