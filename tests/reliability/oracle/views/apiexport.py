"""The ``apiexport`` virtual workspace: the export's objects in every bound workspace, for its content's users."""

from __future__ import annotations

import random

from tests.reliability.oracle.rbac import Caller
from tests.reliability.oracle.views import Probe, View
from tests.reliability.oracle.world import APIS, BOUND, EXPORT, PROVIDER, TENANTS, World, cluster_of

BASE = f"/services/apiexport/{cluster_of(PROVIDER)}/{EXPORT}/clusters"
WIDGETS = "apis/example.io/v1/widgets"


def cluster_names(answer: dict) -> frozenset:
    return frozenset((item["metadata"]["annotations"]["kcp.dev/cluster"], item["metadata"]["name"])
                     for item in answer.get("items") or ())


class APIExportView(View):
    name = "apiexport"

    def probe(self, world: World, caller: Caller, rng: random.Random) -> Probe:
        policy = world.policy
        provider = cluster_of(PROVIDER)

        def content(verb: str) -> bool:  # kcp's apiExportsContentAuthorizer: the verb on apiexports/content
            return policy.permits(caller, provider, verb, APIS, "apiexports/content", "", EXPORT)

        def widgets(clusters) -> frozenset:
            return frozenset((c, name) for c in clusters for name in world.widgets.get(c, ()))

        if rng.random() < 0.5:
            return Probe(self.name, caller.key, "GET", f"{BASE}/*/{WIDGETS}", via="vw", names=cluster_names,
                         watchable=True, during=lambda: world.create_widget(cluster_of(rng.choice(BOUND))),
                         expect=lambda: (200, widgets(cluster_of(ws) for ws in BOUND)) if content("list")
                         else (403, None))
        ws = rng.choice(TENANTS)
        cluster = cluster_of(ws)
        # An unbound workspace is a 403 for everyone ("could not find suitable APIBinding").
        return Probe(self.name, caller.key, "GET", f"{BASE}/{cluster}/{WIDGETS}", via="vw", names=cluster_names,
                     expect=lambda: (200, widgets([cluster])) if content("list") and ws in BOUND else (403, None))
