"""``kcp workspace`` (alias ``kcp ws``): move around workspaces the way people do, through the workspaces view.

* ``kcp ws`` or ``kcp ws current`` -- the workspace the current kubeconfig context points at;
* ``kcp ws list [--personal]`` -- the workspaces of the current one that you may enter (the
  ``workspaces`` virtual workspace, so exactly those: never a list you cannot use);
* ``kcp ws create NAME [--type T] [--enter]`` -- a new workspace in the current one, owned by you;
* ``kcp ws use PATH`` -- switch to another workspace: an absolute path (``root:org:team``), a child of
  the current one (``team``), ``..`` for the parent, or ``-`` for the previous one.

The current workspace is read from the server URL of the current context's cluster
(``https://host:port/clusters/<path>``), the kubeconfig shape ``kcp start`` writes. Switching never
rewrites an entry to point elsewhere: it writes a cluster and a context named after the workspace
(``root:org:team``, with the current context's user and certificate authority) and makes that context
current, so every name in the kubeconfig stays true; the context left behind is kept as
``workspace.kcp.io/previous`` (kcp's name), which ``use -`` returns to. The workspaces view is on the same
host, at ``/services/workspaces/<parent>/all``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml

__all__ = ["add_parser", "run", "WorkspaceError"]

GROUP, VERSION, PLURAL = "tenancy.kcp.dev", "v1beta1", "workspaces"
_SERVER = re.compile(r"^(?P<base>https?://[^/]+(?:/.*?)?)/clusters/(?P<path>[a-z0-9:-]+)/?$")
_PATH = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(:[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
ENTER_TIMEOUT = 30.0
#: The context ``kcp ws use`` leaves behind, for ``kcp ws use -`` (the name kcp's kubectl plugin uses).
PREVIOUS_CONTEXT = "workspace.kcp.io/previous"


class WorkspaceError(Exception):
    """A failure to report to the user in one line (exit status 1)."""


def add_parser(sub) -> None:
    ws = sub.add_parser("workspace", aliases=["ws"], help="list, create and switch between workspaces")
    _connection_options(ws, None)
    common = argparse.ArgumentParser(add_help=False)
    _connection_options(common, argparse.SUPPRESS)  # also accepted after the command
    commands = ws.add_subparsers(dest="workspace_command", metavar="COMMAND")  # none: ``current``
    listing = commands.add_parser("list", parents=[common],
                                  help="the workspaces of the current workspace that you may enter")
    listing.add_argument("--personal", action="store_true", help="only those you own")
    create = commands.add_parser("create", parents=[common],
                                 help="create a workspace in the current workspace, owned by you")
    create.add_argument("name")
    create.add_argument("--type", default=None, help="WorkspaceType name, or <path>:<name> (default universal)")
    create.add_argument("--enter", action="store_true", help="wait until it is Ready and use it")
    use = commands.add_parser("use", parents=[common], help="switch the current context to another workspace")
    use.add_argument("path", help="root:org:team (absolute), team (a child of the current one), .. (the parent) "
                                  "or - (the previous one)")
    commands.add_parser("current", parents=[common], help="print the current workspace")
    ws.set_defaults(func=run)


def _connection_options(parser, default) -> None:
    parser.add_argument("--kubeconfig", default=default,
                        help="kubeconfig to read and update (default: $KUBECONFIG, else ~/.kube/config)")
    parser.add_argument("--context", default=default, help="kubeconfig context (default: the current one)")


def run(args, out=None) -> int:
    out = out or sys.stdout
    try:
        kubeconfig = Kubeconfig.load(args.kubeconfig, args.context)
        handler: Callable[[Any, Kubeconfig, Any], None] = _COMMANDS[args.workspace_command or "current"]
        handler(args, kubeconfig, out)
    except WorkspaceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------- the kubeconfig

class Kubeconfig:
    """The current context of a kubeconfig file: its workspace and the clients of the workspaces view."""

    def __init__(self, path: Path, data: dict, context: str):
        self.path, self.data, self.context = path, data, context

    @classmethod
    def load(cls, path: str | None, context: str | None) -> "Kubeconfig":
        if path is None:
            env = os.environ.get("KUBECONFIG", "")
            path = env.split(os.pathsep)[0] if env else str(Path.home() / ".kube" / "config")
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise WorkspaceError(f"cannot read kubeconfig {path}: {exc.strerror}") from None
        context = context or data.get("current-context")
        if not context:
            raise WorkspaceError(f"{path} has no current context")
        return cls(Path(path), data, context)

    def _entry(self, kind: str, name: str) -> dict:
        for entry in self.data.get(kind) or ():
            if entry.get("name") == name:
                return entry
        raise WorkspaceError(f"{self.path}: no {kind[:-1]} {name!r}")

    def _cluster_of(self, context: str) -> dict:
        return self._entry("clusters", self._entry("contexts", context)["context"]["cluster"])["cluster"]

    @property
    def cluster(self) -> dict:
        return self._cluster_of(self.context)

    def location(self, context: str | None = None) -> tuple[str, str]:
        """``(base URL, workspace path)`` of the server of ``context`` (default: the current one)."""
        context = context or self.context
        server = self._cluster_of(context).get("server", "")
        match = _SERVER.match(server)
        if match is None:
            raise WorkspaceError(f"the server of context {context!r} ({server}) is not a workspace URL "
                                 "(https://host:port/clusters/<workspace>)")
        return match["base"], match["path"]

    def previous(self) -> str:
        """The workspace ``kcp ws use`` left last."""
        if not any(entry.get("name") == PREVIOUS_CONTEXT for entry in self.data.get("contexts") or ()):
            raise WorkspaceError("no previous workspace: kcp ws use has not switched yet")
        return self.location(PREVIOUS_CONTEXT)[1]

    def switch(self, path: str) -> None:
        """Make the context named ``path`` current, creating it (and its cluster) from the current one."""
        base, _ = self.location()
        current = self._entry("contexts", self.context)["context"]
        cluster = {**self.cluster, "server": f"{base}/clusters/{path}"}
        self._put("clusters", path, "cluster", cluster)
        existing = next((e["context"] for e in self.data.get("contexts") or () if e.get("name") == path), {})
        context = {**existing, "cluster": path}
        if "user" in current:
            context["user"] = current["user"]
        if self.context != path:
            self._put("contexts", PREVIOUS_CONTEXT, "context", dict(current))
        self._put("contexts", path, "context", context)
        self.data["current-context"] = self.context = path
        self.path.write_text(yaml.safe_dump(self.data, default_flow_style=False, sort_keys=False))

    def _put(self, kind: str, name: str, field: str, value: dict) -> None:
        entries = self.data.setdefault(kind, [])
        for entry in entries:
            if entry.get("name") == name:
                entry[field] = value
                return
        entries.append({"name": name, field: value})

    def workspaces(self, org: str, scope: str = "all"):
        """A ``CustomObjectsApi`` whose server is the workspaces view of ``org``."""
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(config_file=str(self.path), context=self.context,
                                client_configuration=configuration, persist_config=False)
        base, _ = self.location()
        host = configuration.host = f"{base}/services/workspaces/{org}/{scope}"
        refresh = configuration.refresh_api_key_hook
        if refresh is not None:  # the kubeconfig loader's token refresh resets the host (and itself): keep ours

            def refresh_keeping_host(config_object):
                refresh(config_object)
                config_object.host = host
                config_object.refresh_api_key_hook = refresh_keeping_host

            configuration.refresh_api_key_hook = refresh_keeping_host
        return client.CustomObjectsApi(client.ApiClient(configuration))


def _api_error(exc) -> WorkspaceError:
    try:
        return WorkspaceError(json.loads(exc.body)["message"])
    except Exception:  # noqa: BLE001 - no Status body: say what we know
        return WorkspaceError(f"{exc.status} {exc.reason}")


def _call(fn, *args, **kwargs):
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return fn(*args, **kwargs)
    except ApiException as exc:
        raise _api_error(exc) from None
    except HTTPError as exc:
        raise WorkspaceError(f"cannot reach the server: {exc}") from None


# ---------------------------------------------------------------------- commands

def _current(args, kubeconfig: Kubeconfig, out) -> None:
    print(f'Current workspace is "{kubeconfig.location()[1]}".', file=out)


def _list(args, kubeconfig: Kubeconfig, out) -> None:
    _, current = kubeconfig.location()
    api = kubeconfig.workspaces(current, "personal" if args.personal else "all")
    items = _call(api.list_cluster_custom_object, GROUP, VERSION, PLURAL)["items"]
    rows = [("NAME", "TYPE", "PHASE", "URL")]
    for item in items:
        status, spec = item.get("status") or {}, item.get("spec") or {}
        rows.append((item["metadata"]["name"], (spec.get("type") or {}).get("name") or "",
                     status.get("phase") or "", status.get("URL") or ""))
    if len(rows) == 1:
        print(f'No workspaces you may access in "{current}".', file=out)
        return
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("   ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip(), file=out)


def _type_reference(value: str) -> dict:
    path, _, name = value.rpartition(":")
    return {"name": name, "path": path} if path else {"name": name}


def _create(args, kubeconfig: Kubeconfig, out) -> None:
    _, current = kubeconfig.location()
    api = kubeconfig.workspaces(current)
    body: dict = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Workspace", "metadata": {"name": args.name},
                  "spec": {}}
    if args.type:
        body["spec"]["type"] = _type_reference(args.type)
    created = _call(api.create_cluster_custom_object, GROUP, VERSION, PLURAL, body)
    ref = (created.get("spec") or {}).get("type") or {}
    shown = f'{ref.get("path")}:{ref.get("name")}' if ref.get("path") else ref.get("name", "")
    print(f'Workspace "{args.name}" (type {shown}) created.', file=out)
    if not args.enter:
        return
    deadline = time.monotonic() + ENTER_TIMEOUT
    while True:  # the owner's access is granted by the lifecycle controller: until then it may be a 404
        try:
            phase = (_call(api.get_cluster_custom_object, GROUP, VERSION, PLURAL, args.name).get("status")
                     or {}).get("phase")
        except WorkspaceError:
            phase = None
        if phase == "Ready":
            break
        if time.monotonic() > deadline:
            raise WorkspaceError(f'workspace "{args.name}" is not Ready after {ENTER_TIMEOUT:.0f}s (phase {phase})')
        time.sleep(0.1)
    kubeconfig.switch(f"{current}:{args.name}")
    print(f'Current workspace is "{current}:{args.name}".', file=out)


def resolve_path(current: str, target: str) -> str:
    """``..`` is the parent, ``root...`` is absolute, anything else is a child of ``current``."""
    if target == "..":
        parent = current.rpartition(":")[0]
        if not parent:
            raise WorkspaceError(f'"{current}" has no parent')
        return parent
    path = target if target == "root" or target.startswith("root:") else f"{current}:{target}"
    if not _PATH.match(path):
        raise WorkspaceError(f'"{target}" is not a workspace path')
    return path


def _use(args, kubeconfig: Kubeconfig, out) -> None:
    _, current = kubeconfig.location()
    path = kubeconfig.previous() if args.path == "-" else resolve_path(current, args.path)
    parent, _, name = path.rpartition(":")
    if parent:  # that it exists and that we may enter it: the view of its parent shows it
        _call(kubeconfig.workspaces(parent).get_cluster_custom_object, GROUP, VERSION, PLURAL, name)
    kubeconfig.switch(path)
    print(f'Current workspace is "{path}".', file=out)


_COMMANDS = {"current": _current, "list": _list, "create": _create, "use": _use}
