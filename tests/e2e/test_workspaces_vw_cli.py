"""``kcp ws``: list, create, use, current -- as a user whose kubeconfig points at a workspace of the shard.

The command reaches the workspaces view on the host of the kubeconfig's server, so it runs where
clients talk to the shard: embedded and forwarded (the external topology has another host).
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml

from server.cli import build_parser
from server.shard import ShardConfig
from tests.e2e.test_workspaces_vw import Env, token, write_token_file
from tests.topologies import running_topology


@pytest.fixture(scope="module", params=("embedded", "forwarded"))
def env(request, tmp_path_factory):
    tokens = write_token_file(tmp_path_factory.mktemp("workspaces-cli"))
    with running_topology(request.param, ShardConfig(token_auth_file=tokens)) as (vw, shard, _):
        yield Env(vw, shard)


def user_kubeconfig(env: Env, user: str, workspace: str) -> Path:
    path = env.vw.workdir / f"{user}-cli.kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kcp",
        "clusters": [{"name": "kcp", "cluster": {"server": f"{env.shard.url}/clusters/{workspace}",
                                                 "certificate-authority": env.shard.ca_file}}],
        "users": [{"name": user, "user": {"token": token(user)}}],
        "contexts": [{"name": "kcp", "context": {"cluster": "kcp", "user": user}}]}))
    return path


def kcp(capsys, kubeconfig: Path, *args: str) -> tuple[int, str, str]:
    """``kcp ws ARGS`` in this process; its output apart from the shard's logs (which go to stdout too)."""
    capsys.readouterr()
    parsed = build_parser().parse_args(["ws", *args, "--kubeconfig", str(kubeconfig)])
    out = io.StringIO()
    code = parsed.func(parsed, out=out)
    return code, out.getvalue(), capsys.readouterr().err


def test_ws_create_use_list_current(env, capsys):
    org = env.new_org()
    env.grant(org, "alice-creates", [("User", "alice")], names=None, verbs=("create",), resource="clusterworkspaces")
    env.create_cluster_workspace(org, "not-for-alice")
    kubeconfig = user_kubeconfig(env, "alice", org)

    assert kcp(capsys, kubeconfig, "current") == (0, f'Current workspace is "{org}".\n', "")
    assert kcp(capsys, kubeconfig, "list")[1] == f'No workspaces you may access in "{org}".\n'

    code, out, err = kcp(capsys, kubeconfig, "create", "team", "--enter")
    assert code == 0, err
    assert out.splitlines() == ['Workspace "team" (type root:universal) created.',
                                f'Current workspace is "{org}:team".']
    assert kcp(capsys, kubeconfig, "current")[1] == f'Current workspace is "{org}:team".\n'

    assert kcp(capsys, kubeconfig, "use", "..")[1] == f'Current workspace is "{org}".\n'
    code, out, _ = kcp(capsys, kubeconfig, "list")
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "TYPE", "PHASE", "URL"]
    assert [row.split()[:3] for row in rows] == [["team", "universal", "Ready"]]
    assert rows[0].split()[3] == f"{env.shard.url}/clusters/{org}:team"
    assert kcp(capsys, kubeconfig, "list", "--personal")[1].splitlines()[1].split()[0] == "team"

    assert kcp(capsys, kubeconfig, "use", "team")[0] == 0
    assert kcp(capsys, kubeconfig, "use", f"{org}")[1] == f'Current workspace is "{org}".\n'
    code, _, err = kcp(capsys, kubeconfig, "use", "not-for-alice")
    assert code == 1 and "not found" in err
    code, _, err = kcp(capsys, kubeconfig, "use", "Bad_Name")
    assert code == 1 and "not a workspace path" in err
    code, _, err = kcp(capsys, kubeconfig, "create", "team")
    assert code == 1 and "already exists" in err
    assert kcp(capsys, kubeconfig, "current")[1] == f'Current workspace is "{org}".\n'


def servers(kubeconfig: Path) -> tuple[str, dict[str, str]]:
    """The current context, and the server of each context's cluster."""
    data = yaml.safe_load(kubeconfig.read_text())
    clusters = {c["name"]: c["cluster"]["server"] for c in data["clusters"]}
    return data["current-context"], {c["name"]: clusters[c["context"]["cluster"]] for c in data["contexts"]}


def test_ws_switches_contexts_named_after_workspaces_and_back(env, capsys):
    org = env.new_org()
    env.grant(org, "alice-creates", [("User", "alice")], names=None, verbs=("create",), resource="clusterworkspaces")
    kubeconfig = user_kubeconfig(env, "alice", org)
    assert kcp(capsys, kubeconfig, "create", "team", "--enter")[0] == 0
    current, by_context = servers(kubeconfig)
    # the context the user had still points where its name says; the new one is named after its workspace
    assert current == f"{org}:team"
    assert by_context["kcp"] == f"{env.shard.url}/clusters/{org}"
    assert by_context[f"{org}:team"] == f"{env.shard.url}/clusters/{org}:team"
    assert by_context["workspace.kcp.io/previous"] == f"{env.shard.url}/clusters/{org}"
    assert kcp(capsys, kubeconfig)[1] == f'Current workspace is "{org}:team".\n'  # kcp ws alone: the current one

    assert kcp(capsys, kubeconfig, "use", "-")[1] == f'Current workspace is "{org}".\n'
    assert servers(kubeconfig)[0] == org
    assert kcp(capsys, kubeconfig, "use", "-")[1] == f'Current workspace is "{org}:team".\n'  # and back, as cd -
    assert kcp(capsys, kubeconfig, "use", "..")[0] == 0
    current, by_context = servers(kubeconfig)
    assert (current, by_context[org], by_context[f"{org}:team"]) == (
        org, f"{env.shard.url}/clusters/{org}", f"{env.shard.url}/clusters/{org}:team")
    data = yaml.safe_load(kubeconfig.read_text())
    assert {c["name"]: c["context"]["user"] for c in data["contexts"]}[org] == "alice"


def test_ws_use_dash_without_history_is_a_clear_error(env, capsys):
    kubeconfig = user_kubeconfig(env, "alice", env.new_org())
    code, _, err = kcp(capsys, kubeconfig, "use", "-")
    assert code == 1 and "no previous workspace" in err
