"""The cross-tenant oracle (issue #16): every answer of the shard and of every virtual workspace, in all three
topologies, compared with what an independent model (``oracle.rbac``) says the caller may see and do.

A randomized world (``oracle.world``) of tenants, users in groups, service accounts, grants and an export
is built through the API; then thousands of probes (``oracle.views``: one module per server) are sent by
random callers -- sometimes with forged ``X-Remote-*`` requestheaders (a client that is not the shard's
proxy: they must change nothing) or an impersonation they were never granted (403), sometimes with the
token of a service account deleted halfway (401) -- while grants are added and revoked and objects
created between them. Some lists are checked as watches: their initial events must be the list, and an
object created while the watch is open must arrive exactly when the caller may see it. A leak is an answer showing more than the model allows; a wrong denial one showing
less. Right after a change the server may lag the model for a moment (kube's RBAC does too): a GET that
disagrees is asked again for up to ``CONVERGE_S``, and only what stays wrong is a mismatch; how often and
how long it lagged is reported. Checks: 2,000 per topology in CI, 10,000 with ``KCP_RELIABILITY=long``.
"""

from __future__ import annotations

import json
import random
import time
from urllib.parse import urlparse

import pytest

from server.shard import ShardConfig
from tests.reliability.conditions import record, scale
from tests.reliability.oracle.views import VIEWS, Probe
from tests.reliability.oracle.world import INITIALIZER, World
from kcp_virtual.external.delegated import TOKEN_TTL
from tests.reliability.shardprocess import RestClient, https_connection
from tests.topologies import TOPOLOGIES, running_topology

CHECKS = scale(2000, 10_000)
MUTATE_EVERY = 20
CONVERGE_S = 2.0
WATCH_EVERY = 7       # of the checks, those that are a watchable list's: checked as a watch instead
WATCH_WAIT_S = 5.0    # for an event that must come
ABSENCE_S = 0.1       # for events that must not
SPOOFS = {
    "none": {},
    "requestheader": {"X-Remote-User": "kcp-admin", "X-Remote-Group": "system:masters",
                      "X-Remote-Extra-Scopes": "cluster:root"},
    "impersonate": {"Impersonate-User": "someone-else"},
    "impersonate-masters": {"Impersonate-User": "kcp-admin", "Impersonate-Group": "system:masters"},
    # The group the initializingworkspaces view adds for the initializer: believed from nobody else.
    "initializer-group": {"X-Remote-User": "kcp-admin", "X-Remote-Group": f"system:kcp:initializer:{INITIALIZER}"},
    "impersonate-initializer": {"Impersonate-User": "someone-else",
                                "Impersonate-Group": f"system:kcp:initializer:{INITIALIZER}"},
}


@pytest.fixture(scope="module", params=TOPOLOGIES)
def topology(request, tmp_path_factory):
    rng = random.Random(f"oracle-{request.param}")
    tokens, groups = World.token_file_lines(rng)
    token_file = tmp_path_factory.mktemp("oracle") / "tokens.csv"
    token_file.write_text(tokens)
    with running_topology(request.param, ShardConfig(token_auth_file=str(token_file))) as (vw, shard, _):
        admin = RestClient(shard.shard.port, shard.ca_file, cert=(str(shard.shard.pki.admin_cert_path),
                                                                 str(shard.shard.pki.admin_key_path)))
        world = World(admin, rng)
        world.build(groups)
        yield request.param, vw, shard, world
        admin.close()


class Checker:
    """Sends probes as their callers, compares with the model, keeps the score."""

    def __init__(self, topology: str, vw, shard, world: World):
        self.world = world
        self.direct_to_external = topology == "external"
        self.ports = {"shard": shard.shard.port, "vw": urlparse(vw.base_url).port}
        self.ca_file = shard.ca_file
        self.clients: dict[tuple[str, str], RestClient] = {}
        self.checks: dict[str, int] = {}
        self.mismatches: list[dict] = []
        self.converged: list[float] = []
        self.watched_arrivals = 0  # watches that had to see an object created while they were open
        self.outcomes: dict[str, int] = {}  # view:status(+items, capped at 3): that the probes reach both sides

    def client(self, via: str, caller: str) -> RestClient:
        key = (via, caller)
        if key not in self.clients:
            self.clients[key] = RestClient(self.ports[via], self.ca_file, token=self.world.tokens[caller], timeout=20)
        return self.clients[key]

    def expected(self, probe: Probe, spoof: str) -> list[tuple[int, frozenset | None]]:
        """The right answers: one, but for a token revoked moments ago at the external process, which -- as kube's
        delegated authentication -- believes a TokenReview for ``TOKEN_TTL`` seconds: then the answer it had."""
        if spoof.startswith("impersonate"):
            answer = (403, None)  # nobody here is granted impersonation of users or groups
        else:
            answer = probe.expect()
        if probe.caller not in self.world.revoked:
            return [answer]
        if self.direct_to_external and time.monotonic() - self.world.revoked[probe.caller] < TOKEN_TTL + 1:
            return [(401, None), answer]
        return [(401, None)]

    def check_watch(self, probe: Probe, spoof: str) -> None:
        """The list as a watch: its initial events are the list, then what ``probe.during`` creates arrives
        exactly when the model says the caller sees it (waiting ``ABSENCE_S`` for what must not come)."""
        label = f"{probe.view}-watch/{spoof}"
        self.checks[label] = self.checks.get(label, 0) + 1
        connection = https_connection(self.ports[probe.via], self.ca_file, timeout=10)
        separator = "&" if "?" in probe.path else "?"
        connection.request("GET", f"{probe.path}{separator}watch=true&sendInitialEvents=true&allowWatchBookmarks=true"
                                  "&resourceVersionMatch=NotOlderThan&timeoutSeconds=10",
                           headers={"Authorization": f"Bearer {self.world.tokens[probe.caller]}", **SPOOFS[spoof]})
        try:
            response = connection.getresponse()
            if response.status != 200:
                response.read()
                self._compare(probe, spoof, label, (response.status, None), self.expected(probe, spoof))
                return
            seen: list[dict] = []
            for event in _events(response):
                if event["type"] == "BOOKMARK":
                    if (event["object"]["metadata"].get("annotations") or {}).get("k8s.io/initial-events-end"):
                        break
                    continue
                seen.append(event["object"])
            else:
                raise AssertionError(f"{label}: the watch ended before its initial events did")
            initial = (200, probe.names({"items": seen}))
            outcome = f"{label.split('/')[0]}:200+{min(len(initial[1]), 3)}"
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
            if not self._compare(probe, spoof, label, initial, self.expected(probe, spoof)) or probe.during is None:
                return
            probe.during()
            expected = [(status, names) for status, names in self.expected(probe, spoof) if status == 200]
            coming = expected[0][1] - initial[1] if expected else frozenset()
            if coming:
                self.watched_arrivals += 1
            arrived: list[dict] = []
            connection.sock.settimeout(WATCH_WAIT_S if coming else ABSENCE_S)
            try:
                for event in _events(response):
                    if event["type"] != "BOOKMARK":
                        arrived.append(event["object"])
                        if coming <= probe.names({"items": arrived}):
                            break
            except TimeoutError:
                pass
            self._compare(probe, spoof, label, (200, initial[1] | probe.names({"items": arrived})), expected)
        finally:
            connection.close()

    def _compare(self, probe: Probe, spoof: str, label: str, observed, expected: list) -> bool:
        if observed in expected:
            return True
        self.mismatches.append({"kind": classify(expected[0], observed), "view": label, "spoof": spoof,
                                "caller": probe.caller, "request": f"WATCH {probe.via}:{probe.path}",
                                "expected": describe(expected[0]), "observed": describe(observed)})
        return False

    def observe(self, probe: Probe, spoof: str) -> tuple[int, frozenset | None]:
        status, answer = self.client(probe.via, probe.caller).call(
            probe.method, probe.path, probe.body, headers={**probe.headers, **SPOOFS[spoof]},
            content_type=probe.headers.get("Content-Type", "application/json"))
        names = probe.names(answer) if probe.names and status == 200 and isinstance(answer, dict) else None
        return status, names

    def check(self, probe: Probe, spoof: str) -> None:
        label = f"{probe.view}/{spoof}"
        self.checks[label] = self.checks.get(label, 0) + 1
        observed = self.observe(probe, spoof)
        expected = self.expected(probe, spoof)
        outcome = f"{probe.view}:{observed[0]}" + ("" if observed[1] is None else f"+{min(len(observed[1]), 3)}")
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if probe.done is not None:
            probe.done(observed[0])
        if observed in expected:
            return
        if probe.method == "GET":
            started = time.monotonic()
            while time.monotonic() - started < CONVERGE_S:
                time.sleep(0.05)
                observed, expected = self.observe(probe, spoof), self.expected(probe, spoof)
                if observed in expected:
                    self.converged.append(time.monotonic() - started)
                    return
        expected = expected[0]
        self.mismatches.append({"kind": classify(expected, observed), "view": probe.view, "spoof": spoof,
                                "caller": probe.caller, "request": f"{probe.method} {probe.via}:{probe.path}",
                                "expected": describe(expected), "observed": describe(observed)})


def _events(response):
    while True:
        line = response.readline()
        if not line:
            return
        yield json.loads(line)


def classify(expected, observed) -> str:
    (want, want_names), (got, got_names) = expected, observed
    allowed_want, allowed_got = want < 300 or want == 404, got < 300 or got == 404
    if allowed_got and not allowed_want:
        return "leak"
    if allowed_want and not allowed_got:
        return "wrong denial"
    if want_names is not None and got_names is not None:
        if got_names - want_names:
            return "leak"
        return "wrong denial"
    return "other"


def describe(answer) -> str:
    status, names = answer
    return f"{status} {sorted(names)}" if names is not None else str(status)


def test_no_caller_sees_or_does_more_or_less_than_the_model_allows(topology):
    name, vw, shard, world = topology
    rng = world.rng
    checker = Checker(name, vw, shard, world)
    callers = sorted(world.callers)
    started = time.monotonic()
    for n in range(CHECKS):
        if n == CHECKS // 2:
            world.delete_service_account("sa:t1:doomed")  # its token must be refused from now on
        if n % MUTATE_EVERY == MUTATE_EVERY - 1:
            world.mutate()
        caller = world.callers[rng.choice(callers)]
        view = rng.choice(VIEWS)
        spoof = rng.choices(list(SPOOFS), weights=(6, 2, 1, 1, 1, 1))[0]
        probe = view.probe(world, caller, rng)
        if probe.watchable and n % WATCH_EVERY == 0:
            checker.check_watch(probe, spoof)
        else:
            checker.check(probe, spoof)
        if len(checker.mismatches) >= 10:
            break  # enough to show; each one waited CONVERGE_S
    seconds = time.monotonic() - started
    checks = sum(checker.checks.values())
    for client in checker.clients.values():
        client.close()
    kinds = {kind: sum(1 for m in checker.mismatches if m["kind"] == kind) for kind in ("leak", "wrong denial", "other")}
    record("oracle", topology=name, checks=checks, seconds=round(seconds, 1), mutations=world.mutations,
           by_view_and_spoof=dict(sorted(checker.checks.items())), outcomes=dict(sorted(checker.outcomes.items())),
           leaks=kinds["leak"],
           wrong_denials=kinds["wrong denial"], other_mismatches=kinds["other"],
           watches_with_a_live_arrival=checker.watched_arrivals, lagged_then_converged=len(checker.converged),
           lag_max_ms=round(max(checker.converged) * 1000) if checker.converged else 0,
           mismatch_examples=checker.mismatches[:5])
    assert not checker.mismatches, f"{len(checker.mismatches)} mismatches, e.g. {checker.mismatches[:5]}"
    assert {label.split("/")[0].removesuffix("-watch") for label in checker.checks} == {view.name for view in VIEWS}
    for view in VIEWS:  # every view was seen both allowing and refusing, or the checks prove little
        statuses = {int(o.split(":")[1][:3]) for o in checker.outcomes if o.startswith(f"{view.name}:")}
        assert any(s < 300 for s in statuses) and any(s >= 400 for s in statuses), (view.name, statuses)
