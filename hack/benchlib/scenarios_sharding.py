"""Sharding rows (issue 15): etcd against SQLite, two shards against one, the front-proxy against nginx.

* ``etcd-get``: one ConfigMap GET from a shard on etcd and from one on SQLite, side by side (wrk -c50): reads are
  served from memory on both, so the ratio should be ~1;
* ``etcd-create``: 1,000 ConfigMap creates with 32 clients on each (target >= 300/s on etcd): every create is an
  etcd transaction while the store's write lock is held, so etcd's commit latency bounds the rate;
* ``shards-workspaces``: workspaces created until Ready, in two orgs, on one shard and on two (target >= 1.6x);
  with two shards each org lives on its own shard and its children are scheduled by load; on etcd (an etcd per
  shard, pinned with it, as kcp runs its shards) and on SQLite;
* ``front-proxy``: GET through ``kcp front-proxy`` against the shard direct and nginx ``proxy_pass`` to the same
  shard (the same work: the bearer token passed on, the shard authenticates it), at c=1 for the added p50
  (target <= 1 ms) and at c=50 for req/s and CPU per request.

Pinning: every server process (shards, etcd, front-proxy, nginx) is on the server core and the load generators on
the client core -- except the second shard of ``shards-workspaces`` (and its etcd), which gets the client core
(shared with the light creating client) so that the two shards run on separate cores, as the target asks.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from typing import Iterator

from . import util
from .scenarios import GET_PATH, Context, Row, compare_wrk, ensure_get_object, ensure_namespace, scenario
from .services import VENV_BIN, Nginx, Service, Shard, _http, nginx_upstream, repo_env
from .util import Cores, free_port, median, wait_until

CREATES, CONCURRENCY = 1000, 32
CM_TEMPLATE = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "{name}"},
                          "data": {"a": "alpha", "payload": "p" * 480}})
WS_TEMPLATE = json.dumps({"apiVersion": "tenancy.kcp.dev/v1alpha1", "kind": "ClusterWorkspace",
                          "metadata": {"name": "{name}", "labels": {"bench": "sharding"}}})
CWS = "/apis/tenancy.kcp.dev/v1alpha1/clusterworkspaces"


class Etcd(Service):
    """One etcd member on free loopback ports (Debian ``etcd-server``), pinned like a server."""

    name = "etcd"

    def __init__(self, workdir: str, cores: Cores, key: str = "etcd"):
        super().__init__()
        self.dir = os.path.join(workdir, key)
        self.cores = cores
        self.log_path = os.path.join(workdir, f"{key}.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        self.port, peer = free_port(), f"http://127.0.0.1:{free_port()}"
        cmd = ["etcd", "--name", "bench", "--data-dir", os.path.join(self.dir, "data"), "--listen-client-urls",
               self.url, "--advertise-client-urls", self.url, "--listen-peer-urls", peer,
               "--initial-advertise-peer-urls", peer, "--initial-cluster", f"bench={peer}", "--logger", "zap",
               "--log-level", "error"]
        os.makedirs(self.dir, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cores.server_cmd(cmd), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)

        def ready():
            self._check_alive()
            return b'"true"' in _http().request("GET", self.url + "/health", timeout=2).data

        wait_until(ready, 30, 0.1, "etcd /health")
        return self


class FrontProxy(Service):
    """``kcp front-proxy`` for the deployment of root shard ``root``, pinned to the server core."""

    name = "front-proxy"

    def __init__(self, workdir: str, cores: Cores, root: Shard):
        super().__init__()
        self.root_shard = root
        self.cores = cores
        self.dir = os.path.join(workdir, "front-proxy")
        self.log_path = os.path.join(workdir, "front-proxy.log")

    def start(self):
        self.port = free_port()
        cmd = [os.path.join(VENV_BIN, "kcp"), "front-proxy",
               "--root-shard-kubeconfig", self.root_shard.kubeconfig, "--root-directory", self.dir,
               "--secure-port", str(self.port)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cores.server_cmd(cmd), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=repo_env())

        def ready():
            self._check_alive()
            return _http(self.root_shard.ca).request("GET", self.url + "/readyz", timeout=2).status == 200

        wait_until(ready, 60, 0.2, "front-proxy /readyz")
        return self


def etcd(ctx: Context) -> Etcd:
    return ctx.service("etcd", lambda: Etcd(ctx.workdir, ctx.cores))


def etcd_shard(ctx: Context) -> Shard:
    """A shard storing in etcd (the same flags as the SQLite one under test otherwise)."""
    server = etcd(ctx)
    return ctx.service("etcd-shard", lambda: Shard(ctx.workdir, ctx.cores, [
        *ctx.shard_args, "--etcd-servers", server.url, "--etcd-prefix", "/bench"], name="etcd-shard"))


# ------------------------------------------------------------------------------- etcd vs SQLite

@scenario("etcd-get", "GET one ConfigMap from a shard on etcd vs one on SQLite (wrk -c50, side by side)")
def scen_etcd_get(ctx: Context) -> Iterator[Row]:
    sqlite, on_etcd = ctx.shard, etcd_shard(ctx)
    for shard in (sqlite, on_etcd):
        ensure_get_object(shard)
    yield from compare_wrk(
        ctx, "GET configmap: etcd vs SQLite (wrk -t1 -c50, keep-alive TLS)",
        [("sqlite", lambda: sqlite.url + GET_PATH, sqlite.auth),
         ("etcd", lambda: on_etcd.url + GET_PATH, on_etcd.auth)],
        [("etcd", "sqlite", None)], cpu={"sqlite": {"shard": sqlite.pid}, "etcd": {"shard": on_etcd.pid}})


@scenario("etcd-create", f"create {CREATES:,} ConfigMaps with {CONCURRENCY} clients on etcd and on SQLite")
def scen_etcd_create(ctx: Context) -> Iterator[Row]:
    group = f"create {CREATES:,} ConfigMaps (c={CONCURRENCY}): etcd vs SQLite"
    rates = {}
    for label, shard, target in (("sqlite", ctx.shard, None), ("etcd", etcd_shard(ctx), 300)):
        namespace = f"bench-create-{label}"
        ensure_namespace(shard, namespace)
        c = ctx.client(shard.url, shard.token, shard.ca)
        try:
            pids = {"shard": shard.pid, **({"etcd": etcd(ctx).pid} if label == "etcd" else {})}
            before = {name: util.cpu_seconds(pid) for name, pid in pids.items()}
            ctx.log(f"creating {CREATES} ConfigMaps on the {label} shard")
            r = c.call("create", path=f"/clusters/root/api/v1/namespaces/{namespace}/configmaps", n=CREATES,
                       concurrency=CONCURRENCY, prefix="cm-", template=CM_TEMPLATE)
            cpu = {name: (util.cpu_seconds(pid) - before[name]) * 1e6 / max(r["created"], 1)
                   for name, pid in pids.items()}
        finally:
            ctx.close_client(c)
        rates[label] = r["per_s"]
        yield Row(group, label, {"per_s": r["per_s"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                                 "errors": r["errors"], "cpu_us_create": sum(cpu.values())},
                  target=f"per_s >= {target}" if target else None,
                  ok=(r["per_s"] >= target and not r["errors"]) if target else None,
                  note="; ".join(filter(None, [r["first_error"] or "", "CPU/create: " + " + ".join(
                      f"{name} {us:.0f} us" for name, us in cpu.items())])))
    if rates.get("sqlite"):
        yield Row(group, "etcd / sqlite", {"ratio": rates["etcd"] / rates["sqlite"]})


# ------------------------------------------------------------------------------- two shards vs one

def _create_in(ctx: Context, shard: Shard, cluster: str, n: int, prefix: str, out: dict) -> None:
    c = ctx.client(shard.url, shard.token, shard.ca)
    try:
        out[cluster] = c.call("create", path=f"/clusters/{cluster}{CWS}", n=n, concurrency=CONCURRENCY // 2,
                              prefix=prefix, template=WS_TEMPLATE)
    finally:
        ctx.close_client(c)


def _workspaces(shard: Shard, cluster: str) -> list[dict]:
    r = shard.request("GET", f"/clusters/{cluster}{CWS}?labelSelector=bench%3Dsharding")
    if r.status != 200:
        raise RuntimeError(f"list workspaces in {cluster}: {r.status} {r.data[:300]!r}")
    return json.loads(r.data)["items"]


def _ready(shard: Shard, cluster: str) -> int:
    return sum(1 for i in _workspaces(shard, cluster) if (i.get("status") or {}).get("phase") == "Ready")


def _org(shard: Shard, name: str, on: str) -> None:
    body = {"metadata": {"name": name}, "spec": {"shard": {"name": on}}}
    r = shard.request("POST", f"/clusters/root{CWS}", json.dumps(body).encode())
    if r.status not in (201, 409):
        raise RuntimeError(f"create org {name}: {r.status} {r.data[:300]!r}")
    wait_until(lambda: shard.request("GET", f"/clusters/root{CWS}/{name}").status == 200 and json.loads(
        shard.request("GET", f"/clusters/root{CWS}/{name}").data).get("status", {}).get("phase") == "Ready",
        60, 0.1, f"org {name} Ready")


def _workspace_rate(ctx: Context, label: str, orgs: list[tuple[Shard, str]], n: int,
                    cores: dict[str, list[int]]) -> dict:
    """Create ``n`` workspaces split over ``orgs`` (each through the shard holding it) until all are Ready.

    ``cores``: the server processes pinned to each core. Besides the wall-clock rate, ``core_per_s`` is the rate
    the busiest core could sustain alone (N / its processes' CPU seconds): what the configuration achieves on
    an otherwise idle machine, measurable on a loaded one."""
    t0 = time.monotonic()
    cpu0 = {core: sum(util.cpu_seconds(pid) for pid in pids) for core, pids in cores.items()}
    results: dict = {}
    threads = [threading.Thread(target=_create_in, args=(ctx, shard, f"root:{org}", n // len(orgs), "ws-", results))
               for shard, org in orgs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    accepted = time.monotonic() - t0
    created = sum(r["created"] for r in results.values())
    ready, deadline = 0, time.monotonic() + 600
    while ready < created and time.monotonic() < deadline:
        time.sleep(0.1)
        ready = sum(_ready(shard, f"root:{org}") for shard, org in orgs)
    seconds = time.monotonic() - t0
    cpu = {core: sum(util.cpu_seconds(pid) for pid in pids) - cpu0[core] for core, pids in cores.items()}
    ctx.log(f"{label}: {ready}/{created} Ready in {seconds:.1f}s (all accepted after {accepted:.1f}s); CPU " +
            ", ".join(f"{core} {value:.1f}s" for core, value in cpu.items()))
    home = {org: (json.loads(orgs[0][0].request("GET", f"/clusters/root{CWS}/{org}").data)["status"]
                  .get("location") or {}).get("current") for _, org in orgs}  # the orgs are in root (root shard)
    remote = sum(1 for shard, org in orgs for w in _workspaces(shard, f"root:{org}")
                 if ((w.get("status") or {}).get("location") or {}).get("current") != home[org])
    return {"per_s": ready / seconds, "core_per_s": ready / max(max(cpu.values()), 1e-9), "seconds": seconds,
            "elsewhere": remote,
            "accepted_s": accepted, "ready": ready, "errors": sum(r["errors"] for r in results.values()),
            "cpu_ms_workspace": sum(cpu.values()) * 1e3 / max(ready, 1)}


@scenario("shards-workspaces", "workspaces created until Ready: two shards (separate cores) vs one, on etcd and "
                               "on SQLite")
def scen_shards_workspaces(ctx: Context) -> Iterator[Row]:
    n = 1000 if ctx.quick else 2000
    other_core = Cores(ctx.cores.client, ctx.cores.server)  # the second shard (and its etcd) on the other core
    for storage in ("etcd", "sqlite"):
        group = (f"workspace creation until Ready: two shards vs one "
                 f"({storage}{', an etcd per shard on its core' if storage == 'etcd' else ''})")
        pids: dict[str, list[int]] = {}

        def shard(key: str, cores: Cores, *flags: str) -> Shard:
            core = f"CPU {cores.server}"
            if storage == "etcd":  # each shard with an etcd of its own, on its core (kcp's shards: one etcd each)
                server = ctx.service(f"{key}-etcd", lambda: Etcd(ctx.workdir, cores, f"{key}-etcd"))
                flags = (*flags, "--etcd-servers", server.url, "--etcd-prefix", f"/{key}")
                pids.setdefault(core, []).append(server.pid)
            started = ctx.service(key, lambda: Shard(ctx.workdir, cores, [*ctx.shard_args, *flags], name=key))
            pids.setdefault(core, []).append(started.pid)
            return started

        one = shard(f"ws-one-{storage}", ctx.cores)
        _org(one, "org-a", "root")
        _org(one, "org-b", "root")
        single = _workspace_rate(ctx, "one shard", [(one, "org-a"), (one, "org-b")], n, pids)
        yield Row(group, f"one shard: {n} workspaces in 2 orgs", single)
        for key in (f"ws-one-{storage}", f"ws-one-{storage}-etcd"):
            ctx.stop_service(key)

        pids = {}
        root = shard(f"ws-root-{storage}", ctx.cores)
        two = shard(f"ws-two-{storage}", other_core, "--shard-name", "two", "--root-shard-kubeconfig", root.kubeconfig)
        wait_until(lambda: len(json.loads(root.request("GET", "/clusters/root/apis/tenancy.kcp.dev/v1alpha1/shards")
                                          .data)["items"]) == 2, 30, 0.1, "two Shards")
        _org(root, "org-a", "root")
        _org(root, "org-b", "two")
        double = _workspace_rate(ctx, "two shards", [(root, "org-a"), (two, "org-b")], n, pids)
        yield Row(group, f"two shards: {n} workspaces in 2 orgs (one per shard), scheduled by load", double)
        for metric, what in (("core_per_s", "by the busiest core's CPU"), ("per_s", "wall clock")):
            ratio = double[metric] / single[metric] if single[metric] else None
            yield Row(group, f"two shards / one ({what})", {"ratio": ratio}, target=">= 1.6",
                      ok=ratio is not None and ratio >= 1.6,
                      note="robust under other load: N / CPU seconds of the busiest core" if metric == "core_per_s"
                      else "needs a quiet machine: other load takes cores from the two-core configuration")
        for key in (f"ws-two-{storage}", f"ws-root-{storage}", f"ws-two-{storage}-etcd", f"ws-root-{storage}-etcd"):
            ctx.stop_service(key)


# ------------------------------------------------------------------------------- front-proxy

NGINX_LOCATION = """\
        location /clusters/ {{
            proxy_pass https://kcp_shard;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
            proxy_ssl_session_reuse on;
            proxy_buffering off;
            proxy_read_timeout 3600s;
        }}
"""


def _front_proxy_targets(ctx: Context):
    shard = ctx.shard
    ctx.body  # the object under test exists
    proxy = ctx.service("front-proxy", lambda: FrontProxy(ctx.workdir, ctx.cores, shard))
    nginx = ctx.service("front-proxy-nginx", lambda: Nginx(
        ctx.workdir, ctx.cores, ctx.cert, {}, extra=NGINX_LOCATION.format(ca=shard.ca),
        http_extra=nginx_upstream("kcp_shard", shard.port)))
    for label, url in (("front-proxy", proxy.url), ("nginx", nginx.url)):
        r = _http().request("GET", url + GET_PATH, headers=shard.auth)
        if r.status != 200:
            raise RuntimeError(f"GET through {label}: {r.status} {r.data[:300]!r}")
    return shard, proxy, nginx, [("direct", lambda: shard.url + GET_PATH, shard.auth),
                                 ("front-proxy", lambda: proxy.url + GET_PATH, shard.auth),
                                 ("nginx proxy_pass", lambda: nginx.url + GET_PATH, shard.auth)]


@scenario("front-proxy", "GET through kcp front-proxy vs the shard direct vs nginx proxy_pass (c=1 and c=50)")
def scen_front_proxy(ctx: Context) -> Iterator[Row]:
    shard, proxy, nginx, targets = _front_proxy_targets(ctx)
    group = "front-proxy: GET configmap (wrk -t1 -c1; all servers on the server core)"
    for _, url, headers in targets:
        util.run_wrk(ctx.cores, url(), connections=1, duration=1, headers=headers)
    runs: dict[str, list[dict]] = {}
    for run in range(ctx.runs):
        for label, url, headers in targets:
            ctx.log(f"wrk -c1 {label} (run {run + 1}/{ctx.runs})")
            runs.setdefault(label, []).append(util.run_wrk(ctx.cores, url(), connections=1, duration=ctx.duration,
                                                           headers=headers))
    p50 = {}
    for label, rs in runs.items():
        m = {k: median([r[k] for r in rs if r.get(k) is not None]) for k in ("p50_ms", "p99_ms", "req_s")}
        m["errors"] = sum(r["non2xx"] + r["socket_errors"] for r in rs)
        p50[label] = m["p50_ms"]
        yield Row(group, label, m, note="ERRORS: non-2xx/socket" if m["errors"] else "")
    if None not in p50.values():
        added = p50["front-proxy"] - p50["direct"]
        yield Row(group, "added p50: front-proxy - direct", {"added_p50_ms": added}, target="<= 1 ms",
                  ok=added <= 1.0)
        yield Row(group, "added p50: nginx proxy_pass - direct",
                  {"added_p50_ms": p50["nginx proxy_pass"] - p50["direct"]})
    yield from compare_wrk(
        ctx, "front-proxy: GET configmap (wrk -t1 -c50; all servers on the server core)", targets,
        [("front-proxy", "direct", None), ("front-proxy", "nginx proxy_pass", None)],
        cpu={"direct": {"shard": shard.pid}, "front-proxy": {"front-proxy": proxy.pid, "shard": shard.pid},
             "nginx proxy_pass": {"nginx": nginx.pid, "shard": shard.pid}})
    for key in ("front-proxy-nginx", "front-proxy"):
        ctx.stop_service(key)
