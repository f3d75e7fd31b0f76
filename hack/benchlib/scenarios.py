"""The registry of bench scenarios and the context they share.

A scenario is a generator ``fn(ctx) -> Iterator[Row]`` registered with ``@scenario``; rows are
yielded as they are measured so a failure later in a scenario keeps the earlier rows. Rows of
one ``group`` are printed together as one table, so a new comparison (virtual workspace vs
direct, forwarded vs in-process, nginx proxy_pass in front) is a new scenario that yields rows
into its own group, typically via ``compare_wrk`` for request/response traffic or the
``ClientProc`` commands for watches.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator

from . import util
from .services import ClientProc, Nginx, Shard, Trivial, generate_cert
from .util import cpu_seconds, median, rss_kib

# --------------------------------------------------------------------------------- registry


@dataclass
class Row:
    group: str
    name: str
    metrics: dict
    target: str | None = None  # human-readable, e.g. "ratio >= 0.35"
    ok: bool | None = None  # target met?
    note: str = ""


@dataclass
class Scenario:
    name: str
    title: str
    fn: Callable[["Context"], Iterator[Row]]
    needs_shard: bool = True


SCENARIOS: list[Scenario] = []


def scenario(name: str, title: str, needs_shard: bool = True):
    def deco(fn):
        if any(s.name == name for s in SCENARIOS):
            raise ValueError(f"duplicate scenario {name}")
        SCENARIOS.append(Scenario(name, title, fn, needs_shard))
        return fn

    return deco


class ShardUnavailable(RuntimeError):
    pass


# ---------------------------------------------------------------------------------- context

GET_PATH = "/clusters/root/api/v1/namespaces/default/configmaps/bench"
TABLE_ACCEPT = "application/json;as=Table;v=v1;g=meta.k8s.io"

# Used for the floor/ceiling rows when no shard could be started (bytes of a real ConfigMap GET).
CANNED_BODY = json.dumps({
    "kind": "ConfigMap", "apiVersion": "v1",
    "metadata": {"name": "bench", "namespace": "default", "uid": "6f0a3c1e-8f2b-4d5e-9a7c-0b1d2e3f4a5b",
                 "resourceVersion": "42", "creationTimestamp": "2024-01-01T00:00:00Z",
                 "annotations": {"kcp.io/cluster": "root"}},
    "data": {"key": "value", "payload": "x" * 64}}, separators=(",", ":")).encode()


@dataclass
class Context:
    workdir: str
    cores: util.Cores
    quick: bool
    runs: int
    duration: float
    scale: bool = False  # the long scale runs too (hack/bench --scale)
    shard_args: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    _shard: Shard | None = None
    _shard_error: str | None = None
    _cert: tuple[str, str] | None = None
    _body: bytes | None = None
    _services: dict = field(default_factory=dict)
    _cleanup: list = field(default_factory=list)

    def log(self, msg: str):
        print(f"  .. {msg}", flush=True)

    # -- the shard under test
    @property
    def shard(self) -> Shard:
        if self._shard is None and self._shard_error is None:
            self.log("starting kcp shard")
            try:
                s = Shard(self.workdir, self.cores, self.shard_args)
                s.start()
            except Exception as e:  # noqa: BLE001
                self._shard_error = f"{type(e).__name__}: {e}"
                self.meta["shard_error"] = self._shard_error
                self.log(f"shard unavailable: {self._shard_error}")
            else:
                self._shard = s
                self._cleanup.append(s)
                self.meta["shard"] = {"cmd": s.cmdline, "startup_s": round(s.startup_s, 2),
                                      "log": s.log_path}
                self.log(f"shard ready at {s.url} in {s.startup_s:.1f}s")
        if self._shard is None:
            raise ShardUnavailable(self._shard_error)
        return self._shard

    @property
    def shard_ok(self) -> bool:
        try:
            self.shard
            return True
        except ShardUnavailable:
            return False

    # -- one TLS certificate for everything measured
    @property
    def cert(self) -> tuple[str, str]:
        if self._cert is None:
            found = self.shard.serving_cert() if self.shard_ok else None
            if found:
                self._cert = found
                self.meta["cert"] = f"the shard's serving cert {found[0]}"
            else:
                self._cert = generate_cert(self.workdir)
                self.meta["cert"] = "generated ECDSA P-256 (shard's serving cert not found)"
        return self._cert

    # -- the bytes of the ConfigMap GET under test
    @property
    def body(self) -> bytes:
        if self._body is None:
            if self.shard_ok:
                ensure_get_object(self.shard)
                r = self.shard.request("GET", GET_PATH)
                if r.status != 200:
                    raise RuntimeError(f"GET {GET_PATH}: {r.status} {r.data[:300]!r}")
                self._body = r.data
            else:
                self._body = CANNED_BODY
            self.meta["get_body_bytes"] = len(self._body)
        return self._body

    def service(self, key: str, factory: Callable[[], object]):
        """Start a service once per run (``factory().start()``) and stop it at the end."""
        if key not in self._services:
            svc = factory()
            self._cleanup.append(svc)
            svc.start()
            self._services[key] = svc
        return self._services[key]

    def stop_service(self, key: str):
        svc = self._services.pop(key, None)
        if svc is not None:
            svc.stop()
            self._cleanup.remove(svc)

    @property
    def trivial(self) -> Trivial:
        return self.service("trivial", lambda: Trivial(self.workdir, self.cores, self.cert, self.body))

    @property
    def nginx(self) -> Nginx:
        return self.service("nginx", lambda: Nginx(self.workdir, self.cores, self.cert,
                                                   {GET_PATH: self.body}))

    def client(self, url: str, token: str = "none", ca: str | None = None) -> ClientProc:
        c = ClientProc(self.workdir, self.cores, url, token, ca)
        self._cleanup.append(c)
        return c

    def close_client(self, c: ClientProc):
        c.stop()
        self._cleanup.remove(c)

    def cleanup(self):
        while self._cleanup:
            try:
                self._cleanup.pop().stop()
            except Exception as e:  # noqa: BLE001
                print(f"  !! cleanup: {e}")


# ---------------------------------------------------------------------------------- helpers

def ensure_namespace(shard: Shard, ns: str, cluster: str = "root"):
    body = json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    r = shard.request("POST", f"/clusters/{cluster}/api/v1/namespaces", body.encode())
    if r.status not in (200, 201, 409):
        raise RuntimeError(f"create namespace {ns}: {r.status} {r.data[:300]!r}")


def ensure_get_object(shard: Shard):
    """ConfigMap default/bench in root, created through the API with the admin client cert."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    api = client.CoreV1Api(shard.api_client())
    try:
        api.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="default")))
    except ApiException as e:
        if e.status != 409:
            raise
    cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="bench", labels={"app": "bench"}),
                            data={"key": "value", "payload": "x" * 64})
    try:
        api.create_namespaced_config_map("default", cm)
    except ApiException as e:
        if e.status != 409:
            raise


def compare_wrk(ctx: Context, group: str, targets: list[tuple[str, Callable[[], str]]],
                ratios: list[tuple[str, str, float | None]], headers: dict | None = None,
                cpu: dict[str, list[int]] | None = None) -> Iterator[Row]:
    """wrk -t1 -c50 against each target URL, interleaved ``ctx.runs`` times; medians per target.

    ``targets``: (label, url_factory[, headers]); a factory raising ShardUnavailable yields an error row;
    per-target headers replace ``headers`` for that target.
    ``ratios``: (numerator label, denominator label, minimum ratio or None) on req/s.
    ``cpu``: per label, the server processes (name -> pid) whose CPU time per request is reported
    (``cpu_us_req``: all of them together, what one request costs the server core; the split in the note).
    """
    urls, results, target_headers = {}, {}, {}
    for label, fn, *extra in targets:
        target_headers[label] = extra[0] if extra else headers
        try:
            urls[label] = fn()
        except ShardUnavailable as e:
            yield Row(group, label, {}, note=f"not measured: shard unavailable ({e})")
    for label, url in urls.items():  # warm up each target (connections, caches, JIT-less Python)
        util.run_wrk(ctx.cores, url, duration=1, headers=target_headers[label])
    for run in range(ctx.runs):
        for label, url in urls.items():
            ctx.log(f"wrk {label} (run {run + 1}/{ctx.runs}) {url}")
            pids = (cpu or {}).get(label, {})
            before = {name: util.cpu_seconds(pid) for name, pid in pids.items()}
            r = util.run_wrk(ctx.cores, url, duration=ctx.duration, headers=target_headers[label])
            if pids and r.get("requests"):
                r["cpu_us"] = {name: (util.cpu_seconds(pid) - before[name]) * 1e6 / r["requests"]
                               for name, pid in pids.items()}
            results.setdefault(label, []).append(r)
    agg = {}
    for label, runs in results.items():
        m = {k: median([r[k] for r in runs if r.get(k) is not None])
             for k in ("req_s", "p50_ms", "p99_ms")}
        m["requests"] = sum(r["requests"] or 0 for r in runs)
        m["errors"] = sum(r["non2xx"] + r["socket_errors"] for r in runs)
        notes = [] if not m["errors"] else ["ERRORS: non-2xx/socket"]
        split = [r["cpu_us"] for r in runs if r.get("cpu_us")]
        if split:
            m["cpu_us_req"] = median([sum(c.values()) for c in split])
            m["cpu_us_by_process"] = {name: median([c[name] for c in split]) for name in split[0]}
            if len(split[0]) > 1:
                notes.append("CPU/request: " + " + ".join(f"{name} {median([c[name] for c in split]):.0f} us"
                                                          for name in split[0]))
        if len(runs) > 1:
            m["req_s_runs"] = [round(r["req_s"]) for r in runs]
        agg[label] = m
        yield Row(group, label, m, note="; ".join(notes))
    for num, den, minimum in ratios:
        if num in agg and den in agg and agg[den]["req_s"]:
            ratio = agg[num]["req_s"] / agg[den]["req_s"]
            yield Row(group, f"{num} / {den}", {"ratio": ratio},
                      target=f">= {minimum}" if minimum is not None else None,
                      ok=(ratio >= minimum) if minimum is not None else None)


# -------------------------------------------------------------------------------- scenarios

@scenario("get", "GET one ConfigMap: ours vs the trivial pywsgi floor vs nginx (wrk -c50)",
          needs_shard=False)
def scen_get(ctx: Context) -> Iterator[Row]:
    ctx.body  # create + fetch the object first (so the three serve the same bytes)
    auth = ctx.shard.auth if ctx.shard_ok else {}
    yield from compare_wrk(
        ctx, "GET configmap (wrk -t1 -c50, keep-alive TLS)",
        [("ours", lambda: ctx.shard.url + GET_PATH),
         ("trivial", lambda: ctx.trivial.url + GET_PATH),
         ("nginx", lambda: ctx.nginx.url + GET_PATH)],
        [("ours", "trivial", 0.35), ("ours", "nginx", None), ("trivial", "nginx", None)],
        headers=auth)
    ctx.stop_service("nginx")


RBAC_BINDINGS = 1000


@scenario("rbac", f"authorization cost: GET as a user authorized by RBAC among {RBAC_BINDINGS:,} RoleBindings "
                  "vs system:masters (wrk -c50)")
def scen_rbac(ctx: Context) -> Iterator[Row]:
    shard = ctx.shard
    ctx.body  # the object under test exists
    ctx.log(f"creating {RBAC_BINDINGS} RoleBindings in root/default")
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "bench-reader", "namespace": "default"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]}
    shard.request("POST", "/clusters/root/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles",
                  json.dumps(role).encode())
    for i in range(RBAC_BINDINGS):
        subject = "bench-user" if i == RBAC_BINDINGS - 1 else f"someone-{i}"
        binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": f"bench-{i}", "namespace": "default"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "bench-reader"},
                   "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": subject}]}
        r = shard.request("POST", "/clusters/root/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
                          json.dumps(binding).encode())
        if r.status not in (201, 409):
            raise RuntimeError(f"create rolebinding: {r.status} {r.data[:300]!r}")
    yield from compare_wrk(
        ctx, f"GET configmap: RBAC ({RBAC_BINDINGS:,} RoleBindings) vs system:masters (wrk -t1 -c50)",
        [("masters", lambda: shard.url + GET_PATH, shard.auth),
         ("rbac user", lambda: shard.url + GET_PATH, shard.user_auth)],
        [("rbac user", "masters", 1 / 1.3)])


LIST_NS = "bench-list"
CM_TEMPLATE = json.dumps({
    "apiVersion": "v1", "kind": "ConfigMap",
    "metadata": {"name": "{name}", "labels": {"app": "bench", "tier": "list"},
                 "annotations": {"bench.kcp.io/note": "created by hack/bench"}},
    "data": {"a": "alpha", "b": "bravo", "payload": "p" * 480}})


@scenario("create-list", "create 1,000 ConfigMaps concurrently; sequential LIST (JSON and Table)")
def scen_create_list(ctx: Context) -> Iterator[Row]:
    shard = ctx.shard
    group = "create + LIST 1,000 ConfigMaps"
    ensure_namespace(shard, LIST_NS)
    c = ctx.client(shard.url, shard.token, shard.ca)
    try:
        n, conc = 1000, 32
        ctx.log(f"creating {n} ConfigMaps with {conc} concurrent clients")
        r = c.call("create", path=f"/clusters/root/api/v1/namespaces/{LIST_NS}/configmaps",
                   n=n, concurrency=conc, prefix="cm-", template=CM_TEMPLATE)
        yield Row(group, f"create (c={conc})",
                  {"per_s": r["per_s"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                   "errors": r["errors"]},
                  target="per_s >= 500", ok=r["per_s"] >= 500 and not r["errors"],
                  note=r["first_error"] or "")
        reps = 10 if ctx.quick else 30
        path = f"/clusters/root/api/v1/namespaces/{LIST_NS}/configmaps"
        for label, accept in (("LIST json", "application/json"), ("LIST Table", TABLE_ACCEPT)):
            ctx.log(f"{label} x{reps}")
            r = c.call("list", path=path, n=reps, accept=accept)
            note = r["error"] or ""
            if not note and r["items"] != n:
                note = f"expected {n} items/rows, got {r['items']} (kind {r['kind']})"
            yield Row(group, label, {"p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                                     "bytes": r["bytes"], "items": r["items"]},
                      target="p50_ms <= 100",
                      ok=(r["p50_ms"] is not None and r["p50_ms"] <= 100 and not note),
                      note=note)
    finally:
        ctx.close_client(c)


WATCH_NS = "bench-watch"
WATCH_PATH = f"/clusters/root/api/v1/namespaces/{WATCH_NS}/configmaps?watch=true&allowWatchBookmarks=true"
TARGET_PATH = f"/clusters/root/api/v1/namespaces/{WATCH_NS}/configmaps/target"


def _shard_write(shard: Shard) -> dict:
    """How the fan-out client modifies the watched ConfigMap: merge patch, else PUT."""
    ensure_namespace(shard, WATCH_NS)
    body = {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "target", "namespace": WATCH_NS}, "data": {"seq": "init"}}
    r = shard.request("POST", f"/clusters/root/api/v1/namespaces/{WATCH_NS}/configmaps",
                      json.dumps(body).encode())
    if r.status not in (200, 201, 409):
        raise RuntimeError(f"create target ConfigMap: {r.status} {r.data[:300]!r}")
    patch = {"method": "PATCH", "path": TARGET_PATH,
             "content_type": "application/merge-patch+json",
             "template": '{"data":{"seq":"{marker}"}}'}
    r = shard.request("PATCH", TARGET_PATH, b'{"data":{"seq":"probe"}}',
                      {"Content-Type": patch["content_type"]})
    if r.status == 200:
        return patch
    body["data"]["seq"] = "{marker}"
    put = {"method": "PUT", "path": TARGET_PATH, "template": json.dumps(body)}
    r = shard.request("PUT", TARGET_PATH, put["template"].replace("{marker}", "probe").encode())
    if r.status == 200:
        return put
    raise RuntimeError(f"cannot modify {TARGET_PATH} by PATCH or PUT: {r.status} {r.data[:300]!r}")


def _idle_row(ctx, group, label, c, pid, n, path) -> Row:
    import time

    before = rss_kib(pid)
    r = c.call("watch_open", path=path, n=n, concurrency=100)
    time.sleep(2.0)  # let the server settle (greenlets parked, buffers allocated)
    after = rss_kib(pid)
    opened = r["open"]
    per = (after - before) / max(1, r["opened"])
    note = f"{r['failed']} failed: {r['first_error']}" if r["failed"] else ""
    if r.get("closed_by_server"):
        note += f" {r['closed_by_server']} closed by the server"
    return Row(group, f"{label} {opened:,} watches",
               {"rss_before_mib": before / 1024, "rss_after_mib": after / 1024,
                "kib_per_watch": per, "open_s": r["seconds"]},
               target="kib_per_watch <= 16", ok=per <= 16 and not r["failed"], note=note.strip())


def _fanout_row(ctx, group, label, c, pid, write, targets_ms: float | None) -> Row:
    """One row: delivery latency percentiles over all watchers and writes, plus where the CPU
    went -- ``server_cpu_ms`` (server process CPU per write cycle, incl. the pause between
    writes), ``client_cpu_ms`` (client process CPU per delivery window) and each pinned core's
    busy % during the delivery windows."""
    writes = 3 if ctx.quick else 5
    cpu0 = cpu_seconds(pid)
    r = c.call("fanout", write=write, writes=writes, warmup=1, timeout=30.0)
    server_cpu_ms = (cpu_seconds(pid) - cpu0) * 1000 / (writes + 1)
    note = []
    if r["missing"]:
        note.append(f"{r['missing']} deliveries missing")
    if r["errors"]:
        note.append("write errors: " + "; ".join(r["errors"]))
    if r["client_cpu_ms"] and r["last_delivery_ms"] and \
            r["client_cpu_ms"] > 0.8 * r["last_delivery_ms"]:
        note.append("client process CPU-bound: upper bound")
    busy = r.get("cpu_busy") or {}

    def pct(core):
        v = busy.get(core) if core is not None else None
        return None if v is None else 100.0 * v

    srv_busy, cli_busy = pct(ctx.cores.server), pct(ctx.cores.client)
    if cli_busy is not None and cli_busy > 85 and (srv_busy or 0) < cli_busy:
        note.append("client core saturated (by the client or other load): upper bound")
    m = {"p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "max_ms": r["max_ms"],
         "ack_ms": r["ack_p50_ms"], "server_cpu_ms": server_cpu_ms,
         "client_cpu_ms": r["client_cpu_ms"], "srv_core_busy_%": srv_busy,
         "cli_core_busy_%": cli_busy}
    ok = None
    if targets_ms is not None:
        ok = r["p99_ms"] is not None and r["p99_ms"] <= targets_ms and not r["missing"]
    return Row(group, f"{label} {r['watchers']:,} watchers x{writes} writes", m,
               target=f"p99_ms <= {targets_ms:g}" if targets_ms is not None else None,
               ok=ok, note="; ".join(note))


def _settle(c, write, shard=None):
    """After closing watches: one write so the server notices the dead ones, then a pause."""
    import time

    c.call("fanout", write=write, writes=0, warmup=1, timeout=3.0, pause=0)
    time.sleep(2.0)


@scenario("watch", "idle TLS watch memory (RSS delta) and one write's delivery to N watchers")
def scen_watch(ctx: Context) -> Iterator[Row]:
    shard = ctx.shard
    write = _shard_write(shard)
    mem_group, fan_group = "idle TLS watches: shard RSS per watch", "watch fan-out: write -> MODIFIED at N watchers"
    c = ctx.client(shard.url, shard.token, shard.ca)
    try:
        ctx.log("opening 1,000 idle watches")
        yield _idle_row(ctx, mem_group, "ours", c, shard.pid, 1000, WATCH_PATH)
        if not ctx.quick:
            ctx.log("opening 5,000 idle watches")
            yield _idle_row(ctx, mem_group, "ours", c, shard.pid, 5000, WATCH_PATH)
            c.call("watch_close", keep=1000)
            _settle(c, write)
        ctx.log("fan-out to 1,000 watchers")
        ours = _fanout_row(ctx, fan_group, "ours", c, shard.pid, write, None)
        yield ours
        ctx.log("opening 10,000 watches")
        r = c.call("watch_open", path=WATCH_PATH, n=10000, concurrency=100)
        if r["failed"]:
            ctx.log(f"{r['failed']} watches failed to open: {r['first_error']}")
        ctx.log("fan-out to 10,000 watchers")
        yield _fanout_row(ctx, fan_group, "ours", c, shard.pid, write, 200)
    finally:
        ctx.close_client(c)
    # the same 1,000-watcher fan-out from the trivial pywsgi server, side by side: the floor of this stack
    ctx.log("fan-out to 1,000 watchers of the trivial server (the floor)")
    floor = _trivial_fanout(ctx, fan_group, 1000)
    yield floor
    p99, floor_p99 = ours.metrics.get("p99_ms"), floor.metrics.get("p99_ms")
    if p99 is not None and floor_p99:
        ratio = p99 / floor_p99
        yield Row(fan_group, "ours / trivial floor, 1,000 watchers", {"p99_x": ratio, "p50_x": (
            ours.metrics["p50_ms"] / floor.metrics["p50_ms"]) if floor.metrics.get("p50_ms") else None},
            target="p99_x <= 1.2", ok=ratio <= 1.2)


def _trivial_fanout(ctx: Context, group: str, watchers: int) -> Row:
    t = ctx.trivial
    write = {"method": "POST", "path": "/_write", "template": "{marker}", "content_type": "text/plain"}
    c = ctx.client(t.url)
    try:
        c.call("watch_open", path="/watch?watch=true", n=watchers, concurrency=100)
        return _fanout_row(ctx, group, "trivial", c, t.pid, write, None)
    finally:
        ctx.close_client(c)


@scenario("watch-floor", "the same watch measurements against the trivial pywsgi fan-out (floor, "
                         "includes the client's own cost)", needs_shard=False)
def scen_watch_floor(ctx: Context) -> Iterator[Row]:
    t = ctx.trivial
    mem_group, fan_group = "idle TLS watches: shard RSS per watch", "watch fan-out: write -> MODIFIED at N watchers"
    write = {"method": "POST", "path": "/_write", "template": "{marker}", "content_type": "text/plain"}
    c = ctx.client(t.url)
    try:
        yield _idle_row(ctx, mem_group, "trivial", c, t.pid, 1000, "/watch?watch=true")
        yield _fanout_row(ctx, fan_group, "trivial", c, t.pid, write, None)
        c.call("watch_open", path="/watch?watch=true", n=10000, concurrency=100)
        yield _fanout_row(ctx, fan_group, "trivial", c, t.pid, write, None)
    finally:
        ctx.close_client(c)


# The virtual workspace rows (issue 5) register themselves on import; last, as they use the above.
from . import scenarios_vw  # noqa: E402,F401
from . import scenarios_apiexport  # noqa: E402,F401
from . import scenarios_workspaces  # noqa: E402,F401
from . import scenarios_reliability  # noqa: E402,F401
from . import scenarios_initializing  # noqa: E402,F401
from . import scenarios_sharding  # noqa: E402,F401
from . import scenarios_syncer  # noqa: E402,F401
