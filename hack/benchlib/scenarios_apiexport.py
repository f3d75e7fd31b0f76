"""apiexport virtual workspace rows (issue 7): a provider's view over 1,000 bound workspaces.

One shard (``ctx.shard``, which serves the stock virtual workspaces in-process) gets a provider
workspace exporting ``widgets.example.io`` and 1,000 consumer workspaces, each binding the export
and holding 10 Widgets. Then:

* **wildcard LIST** through ``/services/apiexport/<provider>/widgets/clusters/*`` (10,000 objects)
  against the floor of any server: the same objects read from the SQLite file with one range query
  and JSON-encoded as a list (orjson), in this process (target: VW p50 <= 2x that);
* **watch fan-out**: 1,000 watches on the wildcard URL, one Widget patched in a consumer, its
  MODIFIED delivery time at every watcher (target p99 <= 100 ms);
* **GET** of one Widget through ``clusters/<consumer>`` vs the same GET on the shard (wrk -c50,
  target >= 0.87).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import orjson

from .scenarios import Context, Row, compare_wrk, scenario
from .util import median

PROVIDER = "root:bench-provider"
EXPORT = "widgets"
CONSUMERS, PER_CONSUMER = 1000, 10
WATCHERS = 1000
APIS = "/apis/apis.kcp.dev/v1alpha1"
VW = f"/services/apiexport/{PROVIDER}/{EXPORT}/clusters"
SCHEMA = {"type": "object", "properties": {
    "spec": {"type": "object", "properties": {"size": {"type": "integer"}, "color": {"type": "string"}}},
    "status": {"type": "object", "properties": {"observed": {"type": "boolean"}}}}}


def _consumer(i: int) -> str:
    return f"bench-c-{i:04d}"


def _ok(r, what: str, codes=(200, 201, 409)):
    if r.status not in codes:
        raise RuntimeError(f"{what}: {r.status} {r.data[:300]!r}")
    return r


def _post(shard, path: str, body: dict, what: str):
    return _ok(shard.request("POST", path, json.dumps(body).encode()), what)


def _workspace(shard, parent: str, name: str):
    _post(shard, f"/clusters/{parent}/apis/tenancy.kcp.dev/v1alpha1/clusterworkspaces",
          {"apiVersion": "tenancy.kcp.dev/v1alpha1", "kind": "ClusterWorkspace", "metadata": {"name": name},
           "spec": {}}, f"workspace {name}")


def _wait(fn, what: str, timeout: float = 300.0, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(every)
    raise RuntimeError(f"timed out waiting for {what}")


def _setup(ctx: Context) -> str:
    """The provider, 1,000 bound consumers with 10 Widgets each; returns the export's identity."""
    shard = ctx.shard
    if ctx.meta.get("apiexport_identity"):
        return ctx.meta["apiexport_identity"]
    t0 = time.monotonic()
    _workspace(shard, "root", PROVIDER.split(":")[1])
    _wait(lambda: shard.request("GET", f"/clusters/{PROVIDER}{APIS}/apiexports").status == 200, "provider workspace")
    _post(shard, f"/clusters/{PROVIDER}{APIS}/apiresourceschemas", {
        "apiVersion": "apis.kcp.dev/v1alpha1", "kind": "APIResourceSchema", "metadata": {"name": "v1.widgets.example.io"},
        "spec": {"group": "example.io", "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": SCHEMA,
                               "subresources": {"status": {}}}]}}, "schema")
    _post(shard, f"/clusters/{PROVIDER}{APIS}/apiexports", {
        "apiVersion": "apis.kcp.dev/v1alpha1", "kind": "APIExport", "metadata": {"name": EXPORT},
        "spec": {"latestResourceSchemas": ["v1.widgets.example.io"]}}, "export")

    def identity():
        r = shard.request("GET", f"/clusters/{PROVIDER}{APIS}/apiexports/{EXPORT}")
        return r.status == 200 and (json.loads(r.data).get("status") or {}).get("identityHash")
    ident = _wait(identity, "export identity")
    ctx.log(f"creating {CONSUMERS:,} consumer workspaces, bindings and {CONSUMERS * PER_CONSUMER:,} widgets")

    def consumer(i: int):
        name = _consumer(i)
        _workspace(shard, "root", name)
        cluster = f"root:{name}"
        _wait(lambda: shard.request("GET", f"/clusters/{cluster}{APIS}/apibindings").status == 200,
              f"workspace {cluster}", every=0.05)
        _post(shard, f"/clusters/{cluster}{APIS}/apibindings", {
            "apiVersion": "apis.kcp.dev/v1alpha1", "kind": "APIBinding", "metadata": {"name": EXPORT},
            "spec": {"reference": {"workspace": {"path": PROVIDER, "exportName": EXPORT}}}}, "binding")

        def bound():
            r = shard.request("GET", f"/clusters/{cluster}{APIS}/apibindings/{EXPORT}")
            return r.status == 200 and (json.loads(r.data).get("status") or {}).get("phase") == "Bound"
        _wait(bound, f"binding in {cluster}", every=0.05)
        for k in range(PER_CONSUMER):
            _post(shard, f"/clusters/{cluster}/apis/example.io/v1/namespaces/default/widgets", {
                "apiVersion": "example.io/v1", "kind": "Widget", "metadata": {"name": f"w-{k}"},
                "spec": {"size": k, "color": "red"}}, "widget")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(consumer, range(CONSUMERS)))
    ctx.log(f"apiexport setup took {time.monotonic() - t0:.0f}s")
    ctx.meta["apiexport_identity"] = ident
    ctx.meta["apiexport_setup_s"] = round(time.monotonic() - t0, 1)
    return ident


def _raw_list(ctx: Context, identity: str, runs: int) -> tuple[float, int, int]:
    """p50 seconds of: one SQLite range query for the export's objects + orjson list encoding; items; bytes."""
    conn = sqlite3.connect(f"file:{os.path.join(ctx.shard.root, 'kcp.db')}?mode=ro", uri=True)
    try:
        sample = conn.execute("SELECT key FROM objects WHERE key LIKE ? LIMIT 1", (f"%widgets:{identity}%",)).fetchone()
        if sample is None:
            raise RuntimeError("no stored widgets found")
        prefix = sample[0][:sample[0].index(identity) + len(identity)]
        times, items, size = [], 0, 0
        decoded = [orjson.loads(v) for (v,) in conn.execute("SELECT value FROM objects WHERE key >= ? AND key < ?",
                                                            (prefix + "/", prefix + "0")).fetchall()]
        encode = []
        for _ in range(runs):
            t = time.perf_counter()
            orjson.dumps({"apiVersion": "example.io/v1", "kind": "WidgetList", "metadata": {}, "items": decoded})
            encode.append(time.perf_counter() - t)
        ctx.meta["apiexport_encode_only_ms"] = median(encode) * 1000
        for _ in range(runs):
            t = time.perf_counter()
            rows = conn.execute("SELECT value FROM objects WHERE key >= ? AND key < ?",
                                (prefix + "/", prefix + "0")).fetchall()
            body = orjson.dumps({"apiVersion": "example.io/v1", "kind": "WidgetList", "metadata": {},
                                 "items": [orjson.loads(v) for (v,) in rows]})
            times.append(time.perf_counter() - t)
            items, size = len(rows), len(body)
        return median(times), items, size
    finally:
        conn.close()


@scenario("apiexport-list", f"wildcard LIST through the apiexport VW over {CONSUMERS:,} bound workspaces x "
                            f"{PER_CONSUMER} Widgets vs the raw storage query + JSON encoding")
def scen_apiexport_list(ctx: Context) -> Iterator[Row]:
    identity = _setup(ctx)
    group = f"apiexport VW: wildcard LIST of {CONSUMERS * PER_CONSUMER:,} Widgets"
    runs = 5 if ctx.quick else 15
    raw_s, raw_items, raw_bytes = _raw_list(ctx, identity, runs)
    yield Row(group, "raw: SQLite range query + orjson decode + list encode",
              {"p50_ms": raw_s * 1000, "items": raw_items, "bytes": raw_bytes}, note="in the bench process")
    yield Row(group, "floor: orjson list encode only (objects in memory)",
              {"p50_ms": ctx.meta["apiexport_encode_only_ms"]}, note="in the bench process; no query, no HTTP")
    c = ctx.client(ctx.shard.url, ctx.shard.token, ctx.shard.ca)
    try:
        results = {}
        for label, path in (("vw clusters/*", f"{VW}/*/apis/example.io/v1/widgets"),
                            ("direct shard clusters/* (identity)", f"/clusters/*/apis/example.io/v1/widgets:{identity}")):
            c.call("list", path=path, n=2, accept="application/json")   # warm up
            r = c.call("list", path=path, n=runs, accept="application/json")
            if r.get("error"):
                yield Row(group, label, {}, note=f"ERROR {r['error']}")
                continue
            results[label] = r
            yield Row(group, label, {"p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "items": r["items"],
                                     "bytes": r["bytes"]})
        vw = results.get("vw clusters/*")
        if vw and raw_s:
            ratio = vw["p50_ms"] / (raw_s * 1000)
            yield Row(group, "vw / raw", {"ratio": ratio}, target="<= 2", ok=ratio <= 2)
    finally:
        ctx.close_client(c)


@scenario("apiexport-watch", f"one Widget write delivered to {WATCHERS:,} watchers on the apiexport VW wildcard URL")
def scen_apiexport_watch(ctx: Context) -> Iterator[Row]:
    _setup(ctx)
    group = f"apiexport VW: write -> MODIFIED at {WATCHERS:,} wildcard watchers"
    c = ctx.client(ctx.shard.url, ctx.shard.token, ctx.shard.ca)
    try:
        # from the current resourceVersion: no initial ADDED events for the 10,000 Widgets
        listed = _ok(ctx.shard.request("GET", f"{VW}/*/apis/example.io/v1/widgets?limit=1"), "VW list", codes=(200,))
        rv = json.loads(listed.data)["metadata"]["resourceVersion"]
        opened = c.call("watch_open", path=f"{VW}/*/apis/example.io/v1/widgets?watch=true&allowWatchBookmarks=true"
                                           f"&resourceVersion={rv}", n=WATCHERS, concurrency=100)
        time.sleep(2.0)
        target = f"/clusters/root:{_consumer(7)}/apis/example.io/v1/namespaces/default/widgets/w-3"
        f = c.call("fanout", write={"method": "PATCH", "path": target, "content_type": "application/merge-patch+json",
                                    "template": '{"metadata":{"annotations":{"seq":"{marker}"}}}'},
                   writes=3 if ctx.quick else 5, warmup=1, timeout=30.0)
        note = f"{opened['failed']} failed to open" if opened.get("failed") else ""
        if f["missing"]:
            note += f" {f['missing']} deliveries missing"
        yield Row(group, f"{f['watchers']:,} watchers x{f['writes']} writes",
                  {"p50_ms": f["p50_ms"], "p99_ms": f["p99_ms"], "max_ms": f["max_ms"], "ack_ms": f["ack_p50_ms"]},
                  target="p99 <= 100 ms", ok=f["p99_ms"] is not None and f["p99_ms"] <= 100 and not f["missing"],
                  note=note.strip())
    finally:
        ctx.close_client(c)


@scenario("apiexport-get", "GET one Widget: through the apiexport VW (clusters/<consumer>) vs directly (wrk -c50)")
def scen_apiexport_get(ctx: Context) -> Iterator[Row]:
    _setup(ctx)
    shard = ctx.shard
    cluster = f"root:{_consumer(3)}"
    path = f"/apis/example.io/v1/namespaces/default/widgets/w-1"
    _ok(shard.request("GET", f"{VW}/{cluster}{path}"), "VW GET", codes=(200,))
    yield from compare_wrk(ctx, "apiexport VW: GET one Widget (wrk -t1 -c50)",
                           [("direct", lambda: f"{shard.url}/clusters/{cluster}{path}", shard.auth),
                            ("vw", lambda: f"{shard.url}{VW}/{cluster}{path}", shard.auth)],
                           [("vw", "direct", 0.95)],
                           cpu={"direct": {"shard": shard.pid}, "vw": {"shard": shard.pid}})
