"""Virtual workspace plugins (``kcp_virtual.framework.plugins``): discovery by entry point, selection by name, and
the start-up errors a broken install gives, from real distributions installed with pip."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from kcp_virtual.framework import plugins
from kcp_virtual.framework.plugins import PluginError
from server.testing import installed_plugins

GOOD = """
from kcp_virtual import VirtualWorkspace, cluster_path_resolver

def {factory}(shard):
    return VirtualWorkspace(name={name!r}, resolve=cluster_path_resolver({name!r}),
                            authorize=lambda user, attributes, context: (True, ""), handler=lambda request: None)
"""


def project(tmp_path, dist: str, module: str, source: str, entry_points: dict[str, str]):
    root = tmp_path / dist
    root.mkdir()
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    lines = "\n".join(f'{name} = "{value}"' for name, value in entry_points.items())
    (root / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=70.1"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "{dist}"
        version = "1.0"
        [tool.setuptools]
        py-modules = ["{module}"]
        [project.entry-points."kcp_virtual.virtual_workspaces"]
        """) + lines + "\n")
    return root


def kcp(*args: str, root) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server.cli", *args, "--root-directory", str(root)],
                          capture_output=True, text=True, timeout=60)


def test_the_stock_virtual_workspaces_are_plugins():
    assert {"workspaces", "apiexport"} <= set(plugins.installed())
    built = [factory.plugin_name for factory in plugins.load(["workspaces", "apiexport"])]
    assert built == ["apiexport", "workspaces"]  # name order, whatever order they were asked in


def test_an_installed_plugin_is_found_and_selected_by_name(tmp_path):
    hello = project(tmp_path, "kcp-hello", "hello_vw", GOOD.format(factory="hello", name="hello"),
                    {"hello": "hello_vw:hello"})
    with installed_plugins(hello):
        assert "hello" in plugins.installed()
        [factory] = plugins.select(["hello"])
        assert factory(object()).name == "hello"
    assert "hello" not in plugins.installed()


def test_an_unknown_name_says_what_is_installed():
    with pytest.raises(PluginError, match=r"no virtual workspace named 'nope' is installed \(installed: .*apiexport"):
        plugins.load(["nope"])


def test_a_plugin_that_fails_to_import_names_itself_and_the_cause(tmp_path):
    broken = project(tmp_path, "kcp-broken", "broken_vw", "import does_not_exist\n", {"broken": "broken_vw:f"})
    with installed_plugins(broken):
        with pytest.raises(PluginError, match=r"plugin 'broken' \(broken_vw:f, kcp-broken 1.0\) failed to load: "
                                              r"ModuleNotFoundError"):
            plugins.load()


def test_a_name_claimed_by_two_distributions_is_refused(tmp_path):
    one = project(tmp_path, "kcp-one", "one_vw", GOOD.format(factory="f", name="same"), {"same": "one_vw:f"})
    two = project(tmp_path, "kcp-two", "two_vw", GOOD.format(factory="f", name="same"), {"same": "two_vw:f"})
    with installed_plugins(one, two):
        with pytest.raises(PluginError, match=r"'same' is installed twice: .*kcp-(one|two) 1.0.*kcp-(one|two) 1.0"):
            plugins.installed()


def test_a_factory_must_build_the_virtual_workspace_its_entry_point_names(tmp_path):
    liar = project(tmp_path, "kcp-liar", "liar_vw", GOOD.format(factory="f", name="workspaces"),
                   {"innocent": "liar_vw:f"})
    with installed_plugins(liar):
        [factory] = plugins.load(["innocent"])
        with pytest.raises(PluginError, match="built a virtual workspace named 'workspaces'"):
            factory(object())


def test_kcp_start_stops_with_a_clear_message(tmp_path):
    result = kcp("start", "--secure-port", "0", "--virtual-workspaces=workspaces,nope", root=tmp_path)
    assert result.returncode == 2
    assert "error: no virtual workspace named 'nope' is installed" in result.stderr
    broken = project(tmp_path, "kcp-broken", "broken_vw", "raise RuntimeError('boom')\n", {"broken": "broken_vw:f"})
    with installed_plugins(broken):
        result = kcp("start", "--secure-port", "0", root=tmp_path)
    assert result.returncode == 2
    assert "plugin 'broken'" in result.stderr and "RuntimeError: boom" in result.stderr


def test_kcp_virtual_workspaces_stops_with_a_clear_message(tmp_path):
    result = kcp("virtual-workspaces", "--kubeconfig", str(tmp_path / "none"), "--virtual-workspaces=nope",
                 root=tmp_path)
    assert result.returncode == 2
    assert "error: no virtual workspace named 'nope' is installed" in result.stderr
