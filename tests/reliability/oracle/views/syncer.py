"""The ``syncer`` virtual workspace: each sync target sees exactly the objects placed on it, split, and cannot make
or remove any.

The model: ``sync`` on the SyncTarget (in the provider, the tenancy rule included) opens its view, whose URL
must carry the target's UID (another is a 404, but to who may not sync it: a 403 first). The view holds the
ConfigMaps and Deployments labelled for the target's key (``World.target_key``, computed here); a Deployment
of R replicas placed on N targets shows each its share, R // N plus one for the first R % N of the targets in
the order of their keys. Create and delete are 405.
"""

from __future__ import annotations

import random
import uuid

from tests.reliability.oracle.rbac import Caller
from tests.reliability.oracle.views import Probe, View
from tests.reliability.oracle.world import PROVIDER, TARGETS, TENANTS, WORKLOAD, World, cluster_of


def placed_names(answer: dict) -> frozenset:
    """(workspace, name) of each item, with its replicas for a Deployment."""
    return frozenset((item["metadata"]["annotations"]["kcp.dev/cluster"], item["metadata"]["name"],
                      (item.get("spec") or {}).get("replicas")) for item in answer.get("items") or ())


def share(world: World, replicas: int, targets: set[str], target: str) -> int:
    keys = sorted(world.target_key(t) for t in targets)
    index = keys.index(world.target_key(target))
    return replicas // len(keys) + (1 if index < replicas % len(keys) else 0)


class SyncerView(View):
    name = "syncer"

    def probe(self, world: World, caller: Caller, rng: random.Random) -> Probe:
        target = rng.choice(TARGETS)
        right_uid = rng.random() < 0.85
        uid = world.target_uids[target] if right_uid else str(uuid.UUID(int=rng.getrandbits(128)))
        base = f"/services/syncer/{cluster_of(PROVIDER)}/{target}/{uid}/clusters"

        def may_sync() -> bool:
            return world.policy.permits(caller, cluster_of(PROVIDER), "sync", WORKLOAD, "synctargets", "", target)

        def gated(answer) -> callable:
            return lambda: (403, None) if not may_sync() else answer() if right_uid else (404, None)

        def configmaps() -> frozenset:
            return frozenset((cluster, name, None) for (cluster, _, name), on in world.placed.items() if target in on)

        def deployments() -> frozenset:
            return frozenset((cluster_of(TENANTS[0]), name, share(world, replicas, on, target))
                             for name, (replicas, on) in world.deployments.items() if target in on)

        kind = rng.choices(("configmaps", "deployments", "selected", "get", "create", "delete"),
                           weights=(3, 2, 1, 2, 1, 1))[0]
        if kind == "selected":  # by another target's state label, which its view does not show: it matches nothing
            other = f"state.workload.kcp.dev/{world.target_key(next(t for t in TARGETS if t != target))}"
            selector, matches = rng.choice(((f"{other}%3DSync", False), (other, False), (f"!{other}", True)))
            return Probe(self.name, caller.key, "GET", f"{base}/*/api/v1/configmaps?labelSelector={selector}",
                         via="vw", names=placed_names,
                         expect=gated(lambda: (200, configmaps() if matches else frozenset())))
        if kind == "configmaps":
            def during() -> None:
                (cluster, ns), names = rng.choice(sorted(world.configmaps.items()))
                world.place(cluster, ns, rng.choice(sorted(names)), {target})
            return Probe(self.name, caller.key, "GET", f"{base}/*/api/v1/configmaps", via="vw", names=placed_names,
                         watchable=True, during=during, expect=gated(lambda: (200, configmaps())))
        if kind == "deployments":
            return Probe(self.name, caller.key, "GET", f"{base}/*/apis/apps/v1/deployments", via="vw",
                         names=placed_names, watchable=True,
                         during=lambda: world.create_deployment(rng.randint(0, 7)),
                         expect=gated(lambda: (200, deployments())))
        (cluster, ns, name), _ = rng.choice(sorted(world.placed.items()))
        path = f"{base}/{cluster}/api/v1/namespaces/{ns}/configmaps"
        if kind == "get":
            return Probe(self.name, caller.key, "GET", f"{path}/{name}", via="vw",
                         expect=gated(lambda: (200 if target in world.placed[(cluster, ns, name)] else 404, None)))
        if kind == "create":
            return Probe(self.name, caller.key, "POST", path, via="vw", body={"metadata": {"name": f"s-{world.serial()}"}},
                         expect=gated(lambda: (405, None)))
        return Probe(self.name, caller.key, "DELETE", f"{path}/{name}", via="vw", expect=gated(lambda: (405, None)))
