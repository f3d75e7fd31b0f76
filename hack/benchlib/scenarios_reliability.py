"""What the reliability features cost a request (issue 16): the audit log behind ``--audit-log-path``.

Two shards side by side, identical but for the flag, serve the same GET to the same ``wrk -c50`` load as
a plain user (RBAC decides, so the event carries a real decision); ``cpu_us_req`` is each shard's CPU
per request, and the ratio of req/s is the audit log's price (one orjson event and one ``write`` each).
"""

from __future__ import annotations

import json
import os
from typing import Iterator

from .scenarios import GET_PATH, Context, Row, compare_wrk, ensure_get_object, scenario
from .services import Shard


def _grant_get(shard: Shard) -> None:
    rbac = "/clusters/root/apis/rbac.authorization.k8s.io/v1/namespaces/default"
    shard.request("POST", f"{rbac}/roles", json.dumps({
        "metadata": {"name": "bench-reader", "namespace": "default"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]}).encode())
    shard.request("POST", f"{rbac}/rolebindings", json.dumps({
        "metadata": {"name": "bench-reader", "namespace": "default"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "bench-reader"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bench-user"}]}).encode())


@scenario("audit", "audit log cost: GET configmap as an RBAC user, with vs without --audit-log-path (wrk -c50)")
def scen_audit(ctx: Context) -> Iterator[Row]:
    plain = ctx.shard
    audit_path = os.path.join(ctx.workdir, "audit.log")
    audited = ctx.service("shard-audit", lambda: Shard(ctx.workdir, ctx.cores, [*ctx.shard_args,
                                                                                  "--audit-log-path", audit_path],
                                                       name="kcp-audit"))
    for shard in (plain, audited):
        ensure_get_object(shard)
        _grant_get(shard)
    yield from compare_wrk(
        ctx, "GET configmap as an RBAC user: --audit-log-path vs none (wrk -t1 -c50)",
        [("no audit", lambda: plain.url + GET_PATH, plain.user_auth),
         ("audit log", lambda: audited.url + GET_PATH, audited.user_auth)],
        [("audit log", "no audit", 0.85)],
        cpu={"no audit": {"shard": plain.pid}, "audit log": {"shard": audited.pid}})
    size = os.path.getsize(audit_path) if os.path.exists(audit_path) else 0
    with open(audit_path, "rb") as f:
        lines = sum(1 for _ in f)
    yield Row("GET configmap as an RBAC user: --audit-log-path vs none (wrk -t1 -c50)", "audit log size",
              {"events": lines, "bytes_per_event": round(size / lines) if lines else None})
    ctx.stop_service("shard-audit")
