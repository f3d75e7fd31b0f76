"""The shard's own API: what a caller may read and write inside a tenant's workspace."""

from __future__ import annotations

import random

from tests.reliability.oracle.rbac import Caller
from tests.reliability.oracle.views import Probe, View, items
from tests.reliability.oracle.world import NAMESPACES, PROVIDER, TENANTS, World, cluster_of


class ShardView(View):
    name = "shard"

    def probe(self, world: World, caller: Caller, rng: random.Random) -> Probe:
        cluster = cluster_of(rng.choice((*TENANTS, *TENANTS, PROVIDER)))
        ns = rng.choice(NAMESPACES)
        policy = world.policy
        kind = rng.choice(("list", "list", "get", "secrets", "all-namespaces", "create"))
        base = f"/clusters/{cluster}/api/v1"
        configmaps = world.configmaps.get((cluster, ns), set())

        def expect_list(resource: str, namespace: str, names) -> callable:
            return lambda: ((200, frozenset(names())) if policy.permits(caller, cluster, "list", "", resource, namespace)
                            else (403, None))

        if kind == "list":
            return Probe(self.name, caller.key, "GET", f"{base}/namespaces/{ns}/configmaps",
                         expect_list("configmaps", ns, lambda: world.configmaps.get((cluster, ns), set())), names=items,
                         watchable=True, during=(lambda: world.create_configmap(cluster, ns))
                         if (cluster, ns) in world.configmaps else None)
        if kind == "secrets":
            return Probe(self.name, caller.key, "GET", f"{base}/namespaces/{ns}/secrets",
                         expect_list("secrets", ns, lambda: world.secrets.get((cluster, ns), set())), names=items)
        if kind == "all-namespaces":
            def every() -> set:
                return {name for (c, _), names in world.configmaps.items() if c == cluster for name in names}
            return Probe(self.name, caller.key, "GET", f"{base}/configmaps", expect_list("configmaps", "", every),
                         names=items)
        if kind == "get" and configmaps:
            name = rng.choice(sorted(configmaps))
            return Probe(self.name, caller.key, "GET", f"{base}/namespaces/{ns}/configmaps/{name}",
                         lambda: (200 if policy.permits(caller, cluster, "get", "", "configmaps", ns, name) else 403,
                                  None))
        name = f"by-{caller.key.replace(':', '-')}-{world.serial()}"

        def created(status: int) -> None:
            if status == 201:
                world.configmaps[(cluster, ns)].add(name)

        return Probe(self.name, caller.key, "POST", f"{base}/namespaces/{ns}/configmaps",
                     lambda: (201 if policy.permits(caller, cluster, "create", "", "configmaps", ns) else 403, None),
                     body={"metadata": {"name": name}, "data": {"by": caller.key}}, done=created)
