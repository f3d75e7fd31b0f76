"""The ``workspaces`` virtual workspace: exactly the workspaces of ``root`` the caller may enter, in any phase."""

from __future__ import annotations

import random

from tests.reliability.oracle.rbac import Caller
from tests.reliability.oracle.views import Probe, View, items
from tests.reliability.oracle.world import ORG, World, cluster_of

BASE = f"/services/workspaces/{ORG}"
RESOURCE = "apis/tenancy.kcp.dev/v1beta1/workspaces"


class WorkspacesView(View):
    name = "workspaces"

    def probe(self, world: World, caller: Caller, rng: random.Random) -> Probe:
        policy = world.policy

        def visible() -> frozenset:
            return frozenset(ws for ws in world.workspaces() if policy.may_enter(caller, cluster_of(ws)))

        # A service account enters only its own workspace, never the org: it may not list the org's workspaces.
        def denied_org() -> bool:
            return not policy.may_enter(caller, ORG)

        if rng.random() < 0.6:
            scope = rng.choice(("all", "all", "personal"))
            return Probe(self.name, caller.key, "GET", f"{BASE}/{scope}/{RESOURCE}", via="vw", names=items,
                         watchable=True,
                         expect=lambda: (403, None) if denied_org() else
                         (200, visible() if scope == "all" else frozenset()))  # the admin owns them all
        ws = rng.choice(sorted(world.workspaces()))
        return Probe(self.name, caller.key, "GET", f"{BASE}/all/{RESOURCE}/{ws}", via="vw",
                     expect=lambda: (403 if denied_org() else 200 if ws in visible() else 404, None))
