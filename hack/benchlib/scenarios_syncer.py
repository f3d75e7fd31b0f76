"""syncer virtual workspace rows (issue 14): what the per-target transformation costs, against the same work untransformed.

One shard (``ctx.shard``, serving the stock virtual workspaces in-process) gets, in ``root``, 100 SyncTargets
``bench-t-000`` ... ``bench-t-099`` and one more, ``bench-lister``; a Deployment placed on all 100 (by their
state labels), and 10,000 Deployments placed on ``bench-lister`` only. Then, side by side in one run:

* **watch fan-out**: each of the 100 targets watches its view (``/services/syncer/root/<t>/<uid>/clusters/*``,
  Deployments): one write of the shared Deployment's spec reaches each as MODIFIED with its own share of the
  replicas. Against it: 100 direct watches on the shard, each with the label selector of one target
  (``/clusters/*/...?labelSelector=state.workload.kcp.dev/<key>=Sync``) -- the same selection, untransformed.
  Target: VW p99 <= 1.5x direct.
* **LIST of 10,000 placed Deployments** through ``bench-lister``'s view against the same LIST on the shard with
  its label selector; the difference per object is the transformation's cost. Target: VW p50 <= 2x direct.

Both use the admin token (the VW then skips its SubjectAccessReview, which a syncer's watch pays once when it
opens and a LIST once per request).
"""

from __future__ import annotations

import json
import time
from typing import Iterator

from .scenarios import Context, Row, ensure_namespace, scenario
from .util import median, percentile

TARGETS = 100
OBJECTS = 10_000
FANOUT_NS, LIST_NS = "bench-syncer-fanout", "bench-syncer-list"
WORKLOAD = "/apis/workload.kcp.dev/v1alpha1/synctargets"
DEPLOYMENTS = "/apis/apps/v1/deployments"
KEY_LABEL = "internal.workload.kcp.dev/key"
MERGE_PATCH = "application/merge-patch+json"


def _ok(r, what: str, codes=(200, 201, 409)):
    if r.status not in codes:
        raise RuntimeError(f"{what}: {r.status} {r.data[:300]!r}")
    return r


def _deployment(name: str, labels: dict, replicas: int) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "bench"}},
                     "template": {"metadata": {"labels": {"app": "bench"}},
                                  "spec": {"containers": [{"name": "app", "image": "nginx:1.27",
                                                           "ports": [{"containerPort": 80}]}]}}}}


def _target(ctx: Context, name: str) -> tuple[str, str]:
    """Create SyncTarget ``name`` in root (if missing): ``(key, view path)`` once the shard labelled it."""
    shard = ctx.shard
    _ok(shard.request("POST", f"/clusters/root{WORKLOAD}", json.dumps(
        {"apiVersion": "workload.kcp.dev/v1alpha1", "kind": "SyncTarget", "metadata": {"name": name}}).encode()),
        f"sync target {name}")
    target = json.loads(_ok(shard.request("GET", f"/clusters/root{WORKLOAD}/{name}"), name, codes=(200,)).data)
    meta = target["metadata"]
    return meta["labels"][KEY_LABEL], f"/services/syncer/root/{name}/{meta['uid']}/clusters/*"


def _setup(ctx: Context) -> dict:
    """The targets and their placed Deployments (once per run)."""
    if "syncer" in ctx.meta:
        return ctx.meta["syncer"]
    shard = ctx.shard
    t0 = time.monotonic()
    targets = [_target(ctx, f"bench-t-{i:03d}") for i in range(TARGETS)]
    lister = _target(ctx, "bench-lister")
    ensure_namespace(shard, FANOUT_NS)
    ensure_namespace(shard, LIST_NS)
    shared = _deployment("shared", {f"state.workload.kcp.dev/{key}": "Sync" for key, _ in targets}, 250)
    _ok(shard.request("POST", f"/clusters/root/apis/apps/v1/namespaces/{FANOUT_NS}/deployments",
                      json.dumps(shared).encode()), "shared deployment")
    ctx.log(f"creating {OBJECTS:,} Deployments placed on bench-lister")
    c = ctx.client(shard.url, shard.token, shard.ca)
    try:
        template = json.dumps(_deployment("{name}", {f"state.workload.kcp.dev/{lister[0]}": "Sync"}, 3))
        r = c.call("create", path=f"/clusters/root/apis/apps/v1/namespaces/{LIST_NS}/deployments", n=OBJECTS,
                   concurrency=32, prefix="d-", template=template)
        if r["errors"]:
            raise RuntimeError(f"creating Deployments: {r['errors']} failed, first: {r['first_error']}")
    finally:
        ctx.close_client(c)
    ctx.meta["syncer"] = setup = {"targets": targets, "lister": lister,
                                  "setup_s": round(time.monotonic() - t0, 1)}
    ctx.log(f"syncer setup took {setup['setup_s']:.0f}s")
    return setup


def _watch_paths(setup: dict, label: str, query: str) -> list[str]:
    if label == "vw":
        return [f"{view}{DEPLOYMENTS}?{query}" for _, view in setup["targets"]]
    return [f"/clusters/*{DEPLOYMENTS}?{query}&labelSelector=state.workload.kcp.dev/{key}%3DSync"
            for key, _ in setup["targets"]]


def _stats(samples: list[float]) -> dict:
    return {"p50_ms": percentile(samples, 50), "p99_ms": percentile(samples, 99),
            "max_ms": max(samples) if samples else None}


@scenario("syncer-watch", f"one Deployment write -> MODIFIED at {TARGETS} sync targets' syncer views (each its "
                          "own share) vs the same selections watched directly")
def scen_syncer_watch(ctx: Context) -> Iterator[Row]:
    """Rounds alternate direct and vw (each: 100 watches opened, writes, closed), so load from outside and the
    collector's pauses fall on both alike; percentiles are over every delivery of every round."""
    setup = _setup(ctx)
    shard = ctx.shard
    group = f"syncer VW: one Deployment write -> MODIFIED at {TARGETS} sync targets"
    rounds, writes = (2, 8) if ctx.quick else (4, 10)
    write = {"method": "PATCH", "path": f"/clusters/root/apis/apps/v1/namespaces/{FANOUT_NS}/deployments/shared",
             "content_type": MERGE_PATCH,
             "template": '{"spec":{"template":{"metadata":{"annotations":{"seq":"{marker}"}}}}}'}
    samples: dict[str, list[float]] = {"direct": [], "vw": []}
    acks: dict[str, list[float]] = {"direct": [], "vw": []}
    missing = {"direct": 0, "vw": 0}
    errors: list[str] = []
    c = ctx.client(shard.url, shard.token, shard.ca)
    try:
        for round_ in range(rounds):
            for label in (("direct", "vw") if round_ % 2 == 0 else ("vw", "direct")):
                listed = _ok(shard.request("GET", f"/clusters/root/apis/apps/v1/namespaces/{FANOUT_NS}/deployments"),
                             "list", codes=(200,))
                query = f"watch=true&allowWatchBookmarks=true&resourceVersion={json.loads(listed.data)['metadata']['resourceVersion']}"
                for i, path in enumerate(_watch_paths(setup, label, query)):
                    opened = c.call("watch_open", path=path, n=i + 1, concurrency=1)
                    if opened["failed"]:
                        raise RuntimeError(f"{label} watch {i}: {opened['first_error']}")
                time.sleep(0.5)
                f = c.call("fanout", write=write, writes=writes, warmup=1, timeout=30.0, samples=True)
                samples[label] += f["samples_ms"]
                acks[label].append(f["ack_p50_ms"])
                missing[label] += f["missing"]
                errors += f["errors"]
                c.call("watch_close", keep=0)
    finally:
        ctx.close_client(c)
    seen = {}
    for label in ("direct", "vw"):
        seen[label] = stats = _stats(samples[label])
        note = "each with one target's label selector" if label == "direct" else "each its own share"
        if missing[label]:
            note += f"; {missing[label]} deliveries missing"
        yield Row(group, f"{label}: {TARGETS} watchers x{rounds * writes} writes ({rounds} rounds)",
                  {**stats, "ack_ms": median(acks[label]), "deliveries": len(samples[label])},
                  note=note + ("; write errors: " + "; ".join(errors[:3]) if errors else ""))
    vw, direct = seen["vw"], seen["direct"]
    if vw["p99_ms"] and direct["p99_ms"]:
        ratio = vw["p99_ms"] / direct["p99_ms"]
        yield Row(group, "vw / direct", {"p99_x": ratio, "p50_x": vw["p50_ms"] / direct["p50_ms"]},
                  target="p99_x <= 1.5", ok=ratio <= 1.5 and not missing["vw"])


@scenario("syncer-list", f"LIST of {OBJECTS:,} Deployments placed on one sync target: its syncer view (transformed) "
                         "vs the same label-selected LIST on the shard")
def scen_syncer_list(ctx: Context) -> Iterator[Row]:
    """The two LISTs alternate, one request each, so outside load falls on both alike."""
    setup = _setup(ctx)
    shard = ctx.shard
    key, view = setup["lister"]
    group = f"syncer VW: LIST of {OBJECTS:,} placed Deployments"
    runs = 5 if ctx.quick else 15
    paths = {"direct": f"/clusters/*{DEPLOYMENTS}?labelSelector=state.workload.kcp.dev/{key}%3DSync",
             "vw": f"{view}{DEPLOYMENTS}"}
    times: dict[str, list[float]] = {"direct": [], "vw": []}
    last: dict[str, dict] = {}
    c = ctx.client(shard.url, shard.token, shard.ca)
    try:
        for label, path in paths.items():
            c.call("list", path=path, n=2, accept="application/json")   # warm up
        for _ in range(runs):
            for label, path in paths.items():
                r = c.call("list", path=path, n=1, accept="application/json")
                if r.get("error"):
                    raise RuntimeError(f"{label} LIST: {r['error']}")
                times[label].append(r["p50_ms"])
                last[label] = r
    finally:
        ctx.close_client(c)
    for label in paths:
        yield Row(group, label, {**_stats(times[label]), "items": last[label]["items"], "bytes": last[label]["bytes"]},
                  note="" if label == "vw" else "managedFields included (the view drops them)")
    vw, direct = median(times["vw"]), median(times["direct"])
    items = last["vw"]["items"]
    yield Row(group, "vw / direct", {"ratio": vw / direct, "transform_us_per_object": (vw - direct) * 1000 / items},
              target="ratio <= 2", ok=vw / direct <= 2 and items == last["direct"]["items"] == OBJECTS)
