"""The ``workspaces`` virtual workspace at scale: an org of 10,000 workspaces of which the caller sees 100.

* LIST through the view as a plain user (one rules review, 10,000 names matched) -- p50 <= 50 ms;
* how fast workspaces are created: accepted by the API, and until every one is Ready (logical
  cluster, default policy and owner grants written by the lifecycle controller) -- >= 100/s;
* the shard's memory per empty workspace (RSS delta / N) -- <= 100 KiB (kcp publishes 9.8 MiB).
"""

from __future__ import annotations

import json
import time
from typing import Iterator

from . import util
from .scenarios import TABLE_ACCEPT, Context, Row, scenario
from .services import Shard
from .util import rss_kib


WS_ORG = "bench-ws"
WS_COUNT = 10_000
WS_VISIBLE = 100
WS_CW = f"/clusters/root:{WS_ORG}/apis/tenancy.kcp.dev/v1alpha1/clusterworkspaces"
WS_VIEW = f"/services/workspaces/root:{WS_ORG}/all/apis/tenancy.kcp.dev/v1beta1/workspaces"
WS_TEMPLATE = json.dumps({"apiVersion": "tenancy.kcp.dev/v1alpha1", "kind": "ClusterWorkspace",
                          "metadata": {"name": "{name}", "labels": {"bench": "workspaces"}}})


def _post(shard: Shard, path: str, obj: dict) -> None:
    r = shard.request("POST", path, json.dumps(obj).encode())
    if r.status not in (201, 409):
        raise RuntimeError(f"POST {path}: {r.status} {r.data[:300]!r}")


def _grant(shard: Shard, cluster: str, name: str, subject: str, resource_names: list[str]) -> None:
    rbac = f"/clusters/{cluster}/apis/rbac.authorization.k8s.io/v1"
    _post(shard, f"{rbac}/clusterroles", {"metadata": {"name": name}, "rules": [{
        "apiGroups": ["tenancy.kcp.dev"], "resources": ["clusterworkspaces/content"], "verbs": ["access"],
        "resourceNames": resource_names}]})
    _post(shard, f"{rbac}/clusterrolebindings", {
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": subject}]})


def _ready_count(shard: Shard) -> int:
    r = shard.request("GET", f"{WS_CW}?labelSelector=bench%3Dworkspaces")
    if r.status != 200:
        raise RuntimeError(f"list workspaces: {r.status} {r.data[:300]!r}")
    return sum(1 for item in json.loads(r.data)["items"] if (item.get("status") or {}).get("phase") == "Ready")


@scenario("workspaces", f"the workspaces virtual workspace: LIST in an org of {WS_COUNT:,} workspaces where the "
                        f"caller sees {WS_VISIBLE}; workspace creation rate; shard memory per empty workspace")
def scen_workspaces(ctx: Context) -> Iterator[Row]:
    shard = ctx.shard
    group = f"workspaces: {WS_COUNT:,} in one org"
    n = 2_000 if ctx.quick else WS_COUNT
    _post(shard, "/clusters/root/apis/tenancy.kcp.dev/v1alpha1/clusterworkspaces", {"metadata": {"name": WS_ORG}})
    util.wait_until(lambda: shard.request("GET", f"{WS_CW}?limit=1").status == 200, 30, 0.1, f"root:{WS_ORG}")
    _grant(shard, "root", f"enter-{WS_ORG}", "bench-user", [WS_ORG])
    time.sleep(1.0)
    before = rss_kib(shard.pid)
    admin = ctx.client(shard.url, shard.token, shard.ca)
    user = ctx.client(shard.url, shard.user_token, shard.ca)
    try:
        conc = 32
        ctx.log(f"creating {n:,} workspaces with {conc} concurrent clients")
        t0 = time.monotonic()
        r = admin.call("create", path=WS_CW, n=n, concurrency=conc, prefix="ws-", template=WS_TEMPLATE)
        yield Row(group, f"create: API accepts (c={conc})",
                  {"per_s": r["per_s"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "errors": r["errors"]},
                  note=r["first_error"] or "")
        ctx.log("waiting until every workspace is Ready (logical cluster, default policy, owner grants)")
        ready = 0
        deadline = time.monotonic() + 600
        while ready < r["created"] and time.monotonic() < deadline:
            time.sleep(2.0)
            ready = _ready_count(shard)
            ctx.log(f"{ready:,}/{r['created']:,} Ready after {time.monotonic() - t0:.0f}s")
        seconds = time.monotonic() - t0
        per_s = ready / seconds if seconds else None
        yield Row(group, "create: until all Ready", {"per_s": per_s, "seconds": seconds, "ready": ready},
                  target="per_s >= 100", ok=per_s is not None and per_s >= 100 and ready == r["created"])
        time.sleep(2.0)
        after = rss_kib(shard.pid)
        per = (after - before) / max(ready, 1)
        yield Row(group, "shard memory per empty workspace",
                  {"rss_before_mib": before / 1024, "rss_after_mib": after / 1024, "kib_per_workspace": per},
                  target="kib_per_workspace <= 100", ok=per <= 100,
                  note="RSS delta / N; kcp's published figure is 9.8 MiB")
        visible = [f"ws-{i:05d}" for i in range(0, n, max(n // WS_VISIBLE, 1))][:WS_VISIBLE]
        _grant(shard, f"root:{WS_ORG}", "bench-user-sees-100", "bench-user", visible)
        reps = 10 if ctx.quick else 30
        for label, accept in (("LIST json", "application/json"), ("LIST Table", TABLE_ACCEPT)):
            ctx.log(f"{label} through the virtual workspace as bench-user x{reps}")
            r = user.call("list", path=WS_VIEW, n=reps, accept=accept)
            note = r["error"] or ""
            if not note and r["items"] != len(visible):
                note = f"expected {len(visible)} items/rows, got {r['items']} (kind {r['kind']})"
            yield Row(group, f"{label}: user sees {len(visible)} of {n:,}",
                      {"p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "bytes": r["bytes"], "items": r["items"]},
                      target="p50_ms <= 50", ok=r["p50_ms"] is not None and r["p50_ms"] <= 50 and not note,
                      note=note)
        ctx.log("LIST of every ClusterWorkspace directly on the shard (admin), for scale")
        r = admin.call("list", path=WS_CW, n=3 if ctx.quick else 5, accept="application/json")
        yield Row(group, f"direct LIST of all {n:,} ClusterWorkspaces (admin)",
                  {"p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "bytes": r["bytes"], "items": r["items"]},
                  note=r["error"] or "")
    finally:
        ctx.close_client(admin)
        ctx.close_client(user)
