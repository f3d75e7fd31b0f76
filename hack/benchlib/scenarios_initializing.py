"""initializingworkspaces virtual workspace rows (issue 13): a workspace type's initializer at scale.

One shard (``ctx.shard``, virtual workspaces in-process) gets a type workspace ``root:bench-init`` with
WorkspaceType ``bench`` (an initializer, and ``initializerPermissions`` for namespaces and configmaps) and a
service account holding ``initialize`` on it. Then:

* **end to end**: the example controller (``python -m examples.initializer_controller``, its own process on the
  client core, the service account's token) runs while 1,000 workspaces of the type are created at once (32
  concurrent clients); the row is the time from the first create until every one is Ready -- each seeded with a
  Namespace and a ConfigMap through the content proxy and released through the view (target >= 100/s);
* **watch fan-out**: 1,000 watches on the view's wildcard URL (as the service account) vs 1,000 watches of the same
  ClusterWorkspaces directly on the shard (admin, ``/clusters/*`` with the view's label selector), one write to an
  Initializing workspace, its MODIFIED delivery time at every watcher, side by side (target VW p99 <= 1.3x direct).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Iterator
from urllib.parse import quote

import yaml

from kcp_virtual.initializingworkspaces.initializers import PHASE_LABEL, initializer_label

from .scenarios import Context, Row, scenario
from .scenarios_apiexport import _ok, _post
from .services import REPO_ROOT, Service, repo_env
from .util import cpu_seconds, median, tail, wait_until

TYPE_CLUSTER, TYPE = "root:bench-init", "bench"
INITIALIZER = f"{TYPE_CLUSTER}:{TYPE}"
PARENT = "root:bench-init-ws"
PLAIN_PARENT = "root:bench-plain-ws"  # the same number of workspaces without an initializer, for comparison
WORKSPACES = 1000
WATCHERS = 1000
TENANCY = "/apis/tenancy.kcp.dev/v1alpha1"
VW = f"/services/initializingworkspaces/{INITIALIZER}/clusters/*{TENANCY}/clusterworkspaces"
TEMPLATE = json.dumps({"apiVersion": "tenancy.kcp.dev/v1alpha1", "kind": "ClusterWorkspace",
                       "metadata": {"name": "{name}", "labels": {"bench": "init"}},
                       "spec": {"type": {"name": TYPE, "path": TYPE_CLUSTER}}})


def _ready_workspace(shard, parent: str, name: str) -> None:
    _post(shard, f"/clusters/{parent}{TENANCY}/clusterworkspaces", {"metadata": {"name": name}}, name)

    def ready():
        r = shard.request("GET", f"/clusters/{parent}{TENANCY}/clusterworkspaces/{name}")
        return r.status == 200 and (json.loads(r.data).get("status") or {}).get("phase") == "Ready"
    wait_until(ready, 30, 0.05, f"workspace {parent}:{name}")


def _setup(ctx: Context) -> str:
    """The type, its service account's token (memoized in ctx.meta) and the parent of the new workspaces."""
    if ctx.meta.get("initializing_token"):
        return ctx.meta["initializing_token"]
    shard = ctx.shard
    _ready_workspace(shard, "root", TYPE_CLUSTER.split(":")[1])
    _ready_workspace(shard, "root", PARENT.split(":")[1])
    _ready_workspace(shard, "root", PLAIN_PARENT.split(":")[1])
    rules = [{"apiGroups": [""], "resources": ["namespaces", "configmaps"], "verbs": ["get", "create"]}]
    _post(shard, f"/clusters/{TYPE_CLUSTER}{TENANCY}/workspacetypes",
          {"metadata": {"name": TYPE}, "spec": {"initializer": True, "initializerPermissions": rules}}, "type")
    core = f"/clusters/{TYPE_CLUSTER}/api/v1/namespaces/default/serviceaccounts"
    _post(shard, core, {"metadata": {"name": "initializer"}}, "service account")
    rbac = f"/clusters/{TYPE_CLUSTER}/apis/rbac.authorization.k8s.io/v1"
    _post(shard, f"{rbac}/clusterroles", {"metadata": {"name": "initializer"}, "rules": [
        {"apiGroups": ["tenancy.kcp.dev"], "resources": ["workspacetypes"], "verbs": ["initialize"],
         "resourceNames": [TYPE]},
        {"apiGroups": ["tenancy.kcp.dev"], "resources": ["workspacetypes"], "verbs": ["get", "list", "watch"]}]},
          "role")
    _post(shard, f"{rbac}/clusterrolebindings", {
        "metadata": {"name": "initializer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "initializer"},
        "subjects": [{"kind": "ServiceAccount", "name": "initializer", "namespace": "default"}]}, "binding")
    token = json.loads(_post(shard, f"{core}/initializer/token", {"spec": {"audiences": []}}, "token").data)
    ctx.meta["initializing_token"] = token["status"]["token"]
    return ctx.meta["initializing_token"]


def _kubeconfig(ctx: Context, token: str) -> str:
    path = os.path.join(ctx.workdir, "initializer.kubeconfig")
    with open(path, "w") as f:
        yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "current-context": "c",
                        "clusters": [{"name": "c", "cluster": {"server": f"{ctx.shard.url}/clusters/{TYPE_CLUSTER}",
                                                               "certificate-authority": ctx.shard.ca}}],
                        "users": [{"name": "u", "user": {"token": token}}],
                        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}, f)
    return path


class _Controller(Service):
    """``python -m examples.initializer_controller`` as the service account, pinned to the client core."""

    name = "initializer controller"

    def __init__(self, ctx: Context, token: str):
        super().__init__()
        self.log_path = os.path.join(ctx.workdir, "initializer-controller.log")
        self.command = ctx.cores.client_cmd([
            sys.executable, "-m", "examples.initializer_controller", "--kubeconfig", _kubeconfig(ctx, token),
            "--type-cluster", TYPE_CLUSTER, "--type", TYPE, "--workers", "16"])

    def start(self) -> "_Controller":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=REPO_ROOT, env=repo_env())

        def watching():
            self._check_alive()
            return "following virtual workspace" in tail(self.log_path)
        wait_until(watching, 30, 0.1, f"the initializer controller (log {self.log_path})")
        return self


def _not_ready(shard, parent: str = PARENT) -> int | None:
    """How many bench workspaces are not Ready yet: 0 or 1 (a LIST with limit=1 of those not Ready)."""
    selector = quote(f"bench=init,{PHASE_LABEL}!=Ready", safe="")
    r = shard.request("GET", f"/clusters/{parent}{TENANCY}/clusterworkspaces?labelSelector={selector}&limit=1")
    if r.status != 200:
        raise RuntimeError(f"list workspaces: {r.status} {r.data[:300]!r}")
    return len(json.loads(r.data)["items"])


def _create_until_ready(ctx: Context, admin, parent: str, template: str, prefix: str, also_pid: int = 0) -> dict:
    """Create WORKSPACES in ``parent`` at once (32 clients) and wait until all are Ready: the creation's figures,
    the seconds, and the CPU per workspace of the shard (and of ``also_pid``)."""
    shard = ctx.shard
    t0, shard_cpu0, other_cpu0 = time.monotonic(), cpu_seconds(shard.pid), cpu_seconds(also_pid) if also_pid else 0
    r = admin.call("create", path=f"/clusters/{parent}{TENANCY}/clusterworkspaces", n=WORKSPACES, concurrency=32,
                   prefix=prefix, template=template)
    while _not_ready(shard, parent) and time.monotonic() < t0 + 300:
        time.sleep(0.05)
    seconds = time.monotonic() - t0
    done = not _not_ready(shard, parent) and r["created"] == WORKSPACES
    return {"create": r, "seconds": seconds, "per_s": WORKSPACES / seconds if done else None,
            "shard_cpu_ms": (cpu_seconds(shard.pid) - shard_cpu0) * 1000 / WORKSPACES,
            "other_cpu_ms": (cpu_seconds(also_pid) - other_cpu0) * 1000 / WORKSPACES if also_pid else None}


@scenario("initializing-e2e", f"{WORKSPACES:,} workspaces of an initializer type created at once until the example "
                              "initializer controller has initialized all and all are Ready")
def scen_initializing_e2e(ctx: Context) -> Iterator[Row]:
    token = _setup(ctx)
    shard = ctx.shard
    group = f"initializingworkspaces: {WORKSPACES:,} workspaces initialized end to end"
    admin = ctx.client(shard.url, shard.token, shard.ca)
    try:
        ctx.log(f"reference: {WORKSPACES:,} workspaces without an initializer")
        plain = _create_until_ready(ctx, admin, PLAIN_PARENT, TEMPLATE.replace(f'"{TYPE}"', '"universal"').replace(
            TYPE_CLUSTER, "root"), "pw-")
        yield Row(group, "reference: without an initializer (type universal), until Ready",
                  {"per_s": plain["per_s"], "seconds": plain["seconds"], "shard_cpu_ms": plain["shard_cpu_ms"]},
                  note=plain["create"]["first_error"] or "")
        controller = ctx.service("initializer-controller", lambda: _Controller(ctx, token))
        time.sleep(1.0)  # its list is done and its watch open
        ctx.log(f"creating {WORKSPACES:,} workspaces of type {INITIALIZER} with 32 concurrent clients")
        result = _create_until_ready(ctx, admin, PARENT, TEMPLATE, "iw-", controller.pid)
        r = result["create"]
        yield Row(group, "create: API accepts (c=32)",
                  {"per_s": r["per_s"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "errors": r["errors"]},
                  note=r["first_error"] or "")
        seeded = [_ok(shard.request("GET", f"/clusters/{PARENT}:iw-{i:05d}/api/v1/namespaces/initialized/configmaps/"
                                           "initialized-by"), "seeded configmap", codes=(200, 404)).status == 200
                  for i in range(0, WORKSPACES, WORKSPACES // 10)]
        note = "" if all(seeded) else f"{seeded.count(False)} of {len(seeded)} sampled workspaces not seeded"
        if controller.proc is None or controller.proc.poll() is not None:
            note += " the controller exited"
        per_s = result["per_s"]
        yield Row(group, "with the initializer: until all initialized and Ready",
                  {"per_s": per_s, "seconds": result["seconds"], "shard_cpu_ms": result["shard_cpu_ms"],
                   "controller_cpu_ms": result["other_cpu_ms"]},
                  target="per_s >= 100", ok=per_s is not None and per_s >= 100 and all(seeded),
                  note=(note or "cpu_ms: per workspace; controller: 16 workers, kubernetes client, own process on the "
                                 "client core").strip())
    finally:
        ctx.stop_service("initializer-controller")
        ctx.close_client(admin)


@scenario("initializing-watch", f"one write delivered to {WATCHERS:,} watchers of the initializingworkspaces VW vs "
                                f"{WATCHERS:,} direct shard watches of the same objects")
def scen_initializing_watch(ctx: Context) -> Iterator[Row]:
    token = _setup(ctx)
    shard = ctx.shard
    group = f"initializingworkspaces VW: write -> MODIFIED at {WATCHERS:,} watchers"
    name = "iw-watched"
    _post(shard, f"/clusters/{PARENT}{TENANCY}/clusterworkspaces", json.loads(TEMPLATE.replace("{name}", name)),
          "watched workspace")

    def initializing():
        r = shard.request("GET", f"/clusters/{PARENT}{TENANCY}/clusterworkspaces/{name}")
        return r.status == 200 and (json.loads(r.data).get("status") or {}).get("phase") == "Initializing"
    wait_until(initializing, 30, 0.05, "the watched workspace Initializing")
    key, value = initializer_label(INITIALIZER)
    selector = quote(f"{PHASE_LABEL}=Initializing,{key}={value}", safe="")
    write = {"method": "PATCH", "path": f"/clusters/{PARENT}{TENANCY}/clusterworkspaces/{name}",
             "content_type": "application/merge-patch+json", "token": shard.token,   # the admin writes
             "template": '{"metadata":{"annotations":{"bench-seq":"{marker}"}}}'}
    paths = {"vw": VW + "?watch=true&allowWatchBookmarks=true&resourceVersion={rv}",
             "direct": f"/clusters/*{TENANCY}/clusterworkspaces?watch=true&allowWatchBookmarks=true"
                       f"&labelSelector={selector}&resourceVersion={{rv}}"}
    p99: dict[str, list[float]] = {"vw": [], "direct": []}
    rounds = 1 if ctx.quick else 3
    for round_ in range(rounds):
        for label in ("vw", "direct") if round_ % 2 == 0 else ("direct", "vw"):  # alternate: drift hits both
            c = ctx.client(shard.url, token if label == "vw" else shard.token, shard.ca)
            try:
                rv = json.loads(_ok(shard.request("GET", f"/clusters/{PARENT}{TENANCY}/clusterworkspaces?limit=1"),
                                    "list", codes=(200,)).data)["metadata"]["resourceVersion"]
                opened = c.call("watch_open", path=paths[label].format(rv=rv), n=WATCHERS, concurrency=100)
                time.sleep(2.0)
                f = c.call("fanout", write=write, writes=3 if ctx.quick else 5, warmup=1, timeout=30.0)
                note = f"{opened['failed']} failed to open ({opened.get('first_error')})" if opened.get("failed") else ""
                if f["missing"]:
                    note += f" {f['missing']} deliveries missing"
                if f["errors"]:
                    note += f" write failed: {f['errors'][0]}"
                if f["p99_ms"] is not None and not f["missing"]:
                    p99[label].append(f["p99_ms"])
                yield Row(group, f"{label} ({f['watchers']:,} watchers x{f['writes']} writes, round {round_ + 1})",
                          {"p50_ms": f["p50_ms"], "p99_ms": f["p99_ms"], "max_ms": f["max_ms"],
                           "ack_ms": f["ack_p50_ms"], "client_cpu_ms": f["client_cpu_ms"]}, note=note.strip())
            finally:
                ctx.close_client(c)
    if p99["vw"] and p99["direct"]:
        ratio = median(p99["vw"]) / median(p99["direct"])
        yield Row(group, "vw / direct (median p99)", {"ratio": ratio}, target="<= 1.3", ok=ratio <= 1.3)
