"""The ``initializingworkspaces`` virtual workspace: who may list and watch which Initializing workspaces, what an
initializer may change in their status, and the content proxy -- open while a workspace waits, 403 once Ready;
and that the initializer's group opens nothing on the shard itself (the caller's own rights decide there).

The model: ``initialize`` on WorkspaceType ``db`` in the provider (the tenancy rule included: the grant is asked
of the provider's workspace) opens the view, and only that; the view holds exactly the workspaces of type db not
released yet. Through the proxy the caller acts with the initializer's group, which holds the type's
``initializerPermissions`` (list and create ConfigMaps) in the workspace -- whatever the caller holds there itself
(nothing: these workspaces are nobody's but the admin's).
"""

from __future__ import annotations

import random

from tests.reliability.oracle.rbac import Caller
from tests.reliability.oracle.views import Probe, View, items
from tests.reliability.oracle.world import (CLUSTER_WORKSPACES, INITIALIZER, INITIALIZER_RULES, ORG, PROVIDER,
                                            TENANCY, TENANTS, TYPE, World, cluster_of)

BASE = f"/services/initializingworkspaces/{INITIALIZER}/clusters"


class InitializingWorkspacesView(View):
    name = "initializingworkspaces"

    def probe(self, world: World, caller: Caller, rng: random.Random) -> Probe:
        def may_initialize() -> bool:
            return world.policy.permits(caller, cluster_of(PROVIDER), "initialize", TENANCY, "workspacetypes", "",
                                        TYPE)

        def gated(answer) -> callable:
            return lambda: answer() if may_initialize() else (403, None)

        kind = rng.choices(("list", "get", "status", "release", "proxy-list", "proxy-create", "direct"),
                           weights=(4, 2, 2, 0.5, 2, 1, 1))[0]
        if kind == "list":
            return Probe(self.name, caller.key, "GET", f"{BASE}/*{CLUSTER_WORKSPACES}", via="vw", names=items,
                         watchable=True, during=world.create_initializing,
                         expect=gated(lambda: (200, frozenset(world.initializing))))
        # A workspace of type db (waiting or released), or one of another type (never in the view).
        name = rng.choice(sorted(world.initializing | world.released) or ["none"]) if rng.random() < 0.8 \
            else rng.choice(TENANTS)
        own = f"{BASE}/{ORG}:{name}{CLUSTER_WORKSPACES}/{name}"
        waiting = lambda: name in world.initializing  # noqa: E731
        if kind == "get":
            return Probe(self.name, caller.key, "GET", own, via="vw",
                         expect=gated(lambda: (200 if waiting() else 404, None)))
        if kind == "status":  # anything but removing itself: a 422 while it waits
            change = rng.choice(({"status": {"phase": "Ready"}}, {"status": {"initializers": [INITIALIZER, "x:y"]}},
                                 {"spec": {"type": {"name": "other"}}}, {"metadata": {"labels": {"a": "b"}}}))
            return Probe(self.name, caller.key, "PATCH", f"{own}/status", via="vw", body=change,
                         headers={"Content-Type": "application/merge-patch+json"},
                         expect=gated(lambda: (422 if waiting() else 404, None)))
        if kind == "release":
            def released(status: int) -> None:
                if status == 200:
                    world.release(name)
            return Probe(self.name, caller.key, "PATCH", f"{own}/status", via="vw",
                         body={"status": {"initializers": []}}, done=released,
                         headers={"Content-Type": "application/merge-patch+json"},
                         expect=gated(lambda: (200 if waiting() else 404, None)))
        configmaps = f"{BASE}/{ORG}:{name}/api/v1/namespaces/default/configmaps"
        if kind == "direct":  # the workspace on the shard itself: the caller's own rights, never the initializer's
            cluster = cluster_of(name)
            return Probe(self.name, caller.key, "GET", f"/clusters/{cluster}/api/v1/namespaces/default/configmaps",
                         names=items,
                         expect=lambda: (200, frozenset(world.configmaps.get((cluster, "default"), set())
                                                        | world.initialized.get(name, set())))
                         if world.policy.permits(caller, cluster, "list", "", "configmaps", "default")
                         else (403, None))
        if kind == "proxy-list":
            holds = any(rule.allows("list", "", "configmaps", "") for rule in INITIALIZER_RULES)
            return Probe(self.name, caller.key, "GET", configmaps, via="vw", names=items,
                         expect=gated(lambda: (200, frozenset(world.initialized.get(name, ())))
                                      if waiting() and holds else (403, None)))
        made = f"by-{caller.key.replace(':', '-')}-{world.serial()}"

        def created(status: int) -> None:
            if status == 201:
                world.initialized[name].add(made)

        return Probe(self.name, caller.key, "POST", configmaps, via="vw", body={"metadata": {"name": made}},
                     done=created, expect=gated(lambda: (201 if waiting() else 403, None)))
