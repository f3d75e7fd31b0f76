"""Overload and slow clients against a real ``kcp start`` process (issue #16, "Overload").

Each attack runs while a well-behaved client (``Prober``: one keep-alive connection, a GET every 20 ms,
as a user subject to the limits) measures its latency; the figures (429s, each attack's cut times, the
prober's p50/p99) go to ``KCP_RELIABILITY_RESULTS``. What is asserted is behaviour, not speed: the
limits answer 429 Status with ``Retry-After``, watches and ``system:masters`` are exempt, every slow
client is cut within its documented timeout (plus scheduling slack), a flood past ``--max-connections``
is refused at once, and the prober is answered throughout (no error, nothing slower than a few seconds).
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time

import pytest

from tests.reliability.attacks import Burst, ConnectionFlood, Prober, Slowloris, StalledWatch, TrickledBody
from tests.reliability.conditions import record, scale
from tests.reliability.shardprocess import RestClient, ShardProcess

HEADER_TIMEOUT, BODY_TIMEOUT, IDLE_TIMEOUT = 2.0, 2.0, 3.0
MAX_READ_ONLY, MAX_MUTATING, MAX_CONNECTIONS = 4, 2, 300
SLACK = 2.0  # seconds a cut may come after its timeout on a loaded two-core machine
DURATION = scale(5.0, 30.0)
TOKENS = {"prober": "token-of-the-prober", "flooder": "token-of-the-flooder"}
CONFIGMAPS = "/clusters/root/api/v1/namespaces/default/configmaps"
PROBE = f"{CONFIGMAPS}/probe"


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("overload")
    tokens = workdir / "tokens.csv"
    tokens.write_text("".join(f'{token},{user},{user}-uid,"tenants"\n' for user, token in TOKENS.items()))
    process = ShardProcess(workdir, "--token-auth-file", str(tokens),
                           "--max-requests-inflight", str(MAX_READ_ONLY),
                           "--max-mutating-requests-inflight", str(MAX_MUTATING),
                           "--max-connections", str(MAX_CONNECTIONS),
                           "--request-header-timeout", str(HEADER_TIMEOUT),
                           "--request-body-timeout", str(BODY_TIMEOUT),
                           "--idle-connection-timeout", str(IDLE_TIMEOUT))
    process.start()
    admin = RestClient(process.port, process.ca_file, cert=process.admin_cert)
    admin.ok("POST", "/clusters/root/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
        "metadata": {"name": "tenants-edit"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                                                          "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "tenants"}]})
    admin.ok("POST", CONFIGMAPS, {"metadata": {"name": "probe"}, "data": {"a": "b"}})
    for i in range(40):  # LISTs of 6 MB, more than a socket buffer: their sends wait for the readers
        admin.ok("POST", CONFIGMAPS, {"metadata": {"name": f"filler-{i}"}, "data": {"k": "v" * 150_000}})
    process.admin = admin
    yield process
    admin.close()
    process.stop()


def prober(shard) -> Prober:
    return Prober(shard.port, shard.ca_file, TOKENS["prober"], PROBE)


def metric(shard, name: str) -> float:
    status, text = shard.admin.call("GET", "/metrics")
    assert status == 200
    text = text.decode() if isinstance(text, bytes) else json.dumps(text)
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and (line[len(name)] in " {"))


def assert_prober_was_answered(probe: Prober, allowed=(200,)) -> None:
    assert not probe.errors, probe.errors[:5]
    assert probe.latencies, "the prober got no answer at all"
    assert set(probe.statuses) <= set(allowed), probe.statuses
    assert max(probe.latencies) < 5.0, f"a well-behaved request took {max(probe.latencies):.1f} s"


def test_requests_past_the_in_flight_limits_get_429_and_watches_and_masters_do_not_count(shard):
    dropped_before = metric(shard, "apiserver_dropped_requests_total")
    watches = []
    context = ssl.create_default_context(cafile=shard.ca_file)
    for _ in range(MAX_READ_ONLY + 4):  # more watches than read-only slots: none is refused, none takes a slot
        sock = context.wrap_socket(socket.create_connection(("127.0.0.1", shard.port), timeout=10),
                                   server_hostname="127.0.0.1")
        sock.sendall(f"GET {CONFIGMAPS}?watch=true HTTP/1.1\r\nHost: x\r\n"
                     f"Authorization: Bearer {TOKENS['flooder']}\r\n\r\n".encode())
        assert sock.recv(12) == b"HTTP/1.1 200"
        watches.append(sock)

    def create(i, n):
        return json.dumps({"metadata": {"generateName": f"burst-{i}-"}, "data": {"n": str(n)}}).encode()

    admin_answers: list[int] = []
    stop_admin = threading.Event()

    def admin_reads():  # system:masters is exempt: never a 429
        client = RestClient(shard.port, shard.ca_file, cert=shard.admin_cert)
        while not stop_admin.is_set():
            admin_answers.append(client.call("GET", CONFIGMAPS)[0])
        client.close()

    admin_thread = threading.Thread(target=admin_reads, daemon=True)
    with prober(shard).running() as probe:
        admin_thread.start()
        with Burst(shard.port, shard.ca_file, 24, TOKENS["flooder"], "GET", CONFIGMAPS) as reads, \
                Burst(shard.port, shard.ca_file, 12, TOKENS["flooder"], "POST", CONFIGMAPS, create) as writes:
            time.sleep(DURATION)
        stop_admin.set()
        admin_thread.join(30)
    for sock in watches:
        sock.close()
    for burst, ok in ((reads, 200), (writes, 201)):
        answers = burst.report.answers
        assert set(answers) <= {ok, 429}, answers
        assert answers.get(429, 0) > 0 and answers.get(ok, 0) > 0, answers
        assert burst.retry_after == {"1"} and not burst.bad_429
    assert admin_answers and set(admin_answers) == {200}, set(admin_answers)
    assert_prober_was_answered(probe, allowed=(200, 429))
    rejected = reads.report.answers[429] + writes.report.answers[429] + probe.statuses.get(429, 0)
    assert metric(shard, "apiserver_dropped_requests_total") - dropped_before == rejected
    record("overload", attack="burst: 24 LIST + 12 create clients, limits 4/2", seconds=DURATION,
           reads=reads.report.answers, writes=writes.report.answers, prober=probe.figures())


def test_slowloris_heads_are_cut_at_the_header_timeout(shard):
    with prober(shard).running() as probe:
        with Slowloris(shard.port, shard.ca_file, scale(100, 250)) as attack:
            time.sleep(max(DURATION, HEADER_TIMEOUT + SLACK + 1))
    report = attack.report
    assert report.not_cut == 0 and report.cut, report.figures()
    assert max(report.cut) < HEADER_TIMEOUT + SLACK, report.figures()
    assert_prober_was_answered(probe)
    record("overload", attack=f"slowloris: {attack.connections} heads at 1 byte/s", seconds=DURATION,
           header_timeout=HEADER_TIMEOUT, connections=report.figures(), prober=probe.figures())


def test_trickled_bodies_are_cut_at_the_body_timeout_with_a_408(shard):
    """The first ``MAX_MUTATING`` hold the mutating slots until their 408; the others get a 429 at once."""
    with prober(shard).running() as probe:
        with TrickledBody(shard.port, shard.ca_file, scale(30, 100), TOKENS["flooder"], CONFIGMAPS) as attack:
            time.sleep(max(DURATION, BODY_TIMEOUT + SLACK + 1))
    report = attack.report
    assert report.not_cut == 0, report.figures()
    assert report.answers == {408: MAX_MUTATING, 429: attack.connections - MAX_MUTATING}, report.figures()
    assert max(report.cut) < BODY_TIMEOUT + SLACK, report.figures()
    assert_prober_was_answered(probe)
    record("overload", attack=f"trickled bodies: {attack.connections} POSTs at 1 byte/s", seconds=DURATION,
           body_timeout=BODY_TIMEOUT, connections=report.figures(), prober=probe.figures())


def test_watch_clients_that_never_read_are_cut_when_their_sends_block(shard):
    watches_before = metric(shard, "apiserver_open_watches")
    big = "x" * 200_000
    shard.admin.ok("POST", CONFIGMAPS, {"metadata": {"name": "big"}, "data": {"v": big}})
    with prober(shard).running() as probe:
        with StalledWatch(shard.port, shard.ca_file, scale(10, 40), TOKENS["flooder"],
                          f"{CONFIGMAPS}?watch=true&fieldSelector=metadata.name%3Dbig") as attack:
            deadline = time.monotonic() + 10
            while metric(shard, "apiserver_open_watches") < watches_before + attack.connections:
                assert time.monotonic() < deadline, "the watches did not open"
                time.sleep(0.1)
            for n in range(scale(80, 200)):  # 16 MB of events per watch: more than any socket buffers hold
                shard.admin.ok("PUT", f"{CONFIGMAPS}/big", {"metadata": {"name": "big"}, "data": {"v": f"{n}{big}"}})
            written = time.monotonic()
            while metric(shard, "apiserver_open_watches") > watches_before:
                assert time.monotonic() - written < IDLE_TIMEOUT + SLACK + 2, "stalled watches were not cut"
                time.sleep(0.2)
            cut_after = time.monotonic() - written
    assert attack.report.not_cut == 0, attack.report.figures()
    assert_prober_was_answered(probe)
    record("overload", attack=f"stalled watches: {attack.connections} clients never reading", seconds=DURATION,
           idle_timeout=IDLE_TIMEOUT, cut_s_after_last_write=round(cut_after, 2), connections=attack.report.figures(),
           prober=probe.figures())


def test_a_connection_flood_past_max_connections_is_refused_at_once(shard):
    with prober(shard).running() as probe:
        with ConnectionFlood(shard.port, shard.ca_file, scale(2 * MAX_CONNECTIONS, 4 * MAX_CONNECTIONS)) as attack:
            time.sleep(DURATION)
    report = attack.report
    assert report.refused > 0 and report.opened <= MAX_CONNECTIONS, report.figures()
    assert max(attack.refused_after) < 1.0 + SLACK, report.figures()  # a reset at once, not a wait in the backlog
    assert_prober_was_answered(probe)
    # once the flood ends its slots free again
    assert RestClient(shard.port, shard.ca_file, token=TOKENS["prober"]).call("GET", PROBE)[0] == 200
    record("overload", attack=f"connection flood: {attack.connections} connections, max {MAX_CONNECTIONS}",
           seconds=DURATION, connections=report.figures(), refused_after_s_max=round(max(attack.refused_after), 3),
           prober=probe.figures())
