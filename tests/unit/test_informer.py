"""The informer (``kcp_virtual.external.informer``) against a real shard, and ``ForwardingStorage`` reading from it.

The shard runs in its own thread (``server.testing``); the remote ShardClient, the informer's greenlet
and the storage run on this thread's hub, so waiting is ``gevent.sleep``. ``Client`` is the remote
client with informers (as ``kcp_virtual.external.remote`` offers them), counting its live reads, with a gate
that holds the informer between two watches (to make it stale on purpose) and an optional watch
timeout (so the shard ends its watches soon).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import replace

import gevent
import gevent.event
import orjson
import pytest
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request as HTTPRequest

from kcp_virtual.external.informer import Informer, Informers
from kcp_virtual.external.remote import RemoteShardClient
from kcp_virtual.framework import errors
from kcp_virtual.framework.requestinfo import parse_request_info
from kcp_virtual.framework.shardclient import GroupVersionResource, ListQuery, NotFresh, User
from kcp_virtual.framework.storage import ForwardingStorage, as_caller
from kcp_virtual.framework.virtualworkspace import Context, Request
from kcp_virtual.framework.watchstream import json_line
from server.shard import ShardConfig
from server.testing import running_shard
from tests.vw_demo import CONFIGMAPS, DEMO_LABELS, UPPER_CASE

SECRETS = GroupVersionResource("", "v1", "secrets")
NAMESPACES = GroupVersionResource("", "v1", "namespaces")
SELECTOR = "demo=true"
ADMIN = User("admin", groups=("system:masters", "system:authenticated"))


class Client(RemoteShardClient):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.informers = Informers(self)
        self.live: Counter = Counter()
        self.gate = gevent.event.Event()
        self.gate.set()
        self.waiting = False  # a watch is held at the gate
        self.watch_timeout: int | None = None

    def informer(self, gvr, label_selector=""):
        return self.informers.informer(gvr, label_selector)

    def get(self, *args, **kwargs):
        self.live["get"] += 1
        return super().get(*args, **kwargs)

    def list(self, gvr, cluster, namespace, query, **kwargs):
        self.live["list"] += 1
        return super().list(gvr, cluster, namespace, query, **kwargs)

    def watch(self, gvr, cluster, namespace, query, **kwargs):
        if not query.progress_notify:  # not the informer's own: a watch of the storage, or the informer's probe
            probe = query.timeout_seconds == 0 and query.resource_version not in ("", "0")
            self.live["probe" if probe else "watch"] += 1
        self.waiting = True
        self.gate.wait()
        self.waiting = False
        if self.watch_timeout is not None:
            query = replace(query, timeout_seconds=self.watch_timeout)
        return super().watch(gvr, cluster, namespace, query, **kwargs)


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        gevent.sleep(0.01)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def configmap(name: str, value: str = "v", labels: dict | None = None) -> dict:
    return {"metadata": {"name": name, "labels": DEMO_LABELS if labels is None else labels}, "data": {"k": value}}


def current_rv(shard) -> int:
    return shard.run(shard.shard.registry.current_resource_version)


def caught_up(shard, informer: Informer):
    """The informer has seen everything the shard has now (so the shard's own list carries the same rv)."""
    rv = current_rv(shard)
    wait_until(lambda: informer.fresh(rv))
    return rv


def new_workspace(shard) -> str:
    cluster = f"root:{unique('ws')}"
    shard.run(shard.shard.registry.ensure_logical_cluster, cluster)
    return cluster


@pytest.fixture(scope="module")
def shard(kcp_shard_module):
    return kcp_shard_module


@pytest.fixture
def client(shard):
    remote = Client.from_kubeconfig(shard.kubeconfig)
    yield remote
    remote.gate.set()
    remote.informers.stop()


def vw_request(cluster: str, fresh_as_of: int | None, user=ADMIN) -> Request:
    http = HTTPRequest(EnvironBuilder(path="/api/v1/namespaces/default/configmaps").get_environ())
    return Request(http=http, user=user, context=Context(cluster), path=http.path, prefix="",
                   info=parse_request_info("GET", http.path, http.args), fresh_as_of=fresh_as_of)


def same(a: dict, b: dict) -> bool:
    return orjson.dumps(a) == orjson.dumps(b)


def same_list(cached: dict, live: dict) -> bool:
    """The same bytes but for the resourceVersion, which may differ by writes elsewhere in between: the cached
    one is never newer than the live one read after it, and when they agree the bytes are all the same."""
    cached_rv, live_rv = int(cached["metadata"]["resourceVersion"]), int(live["metadata"]["resourceVersion"])
    if cached_rv == live_rv:
        return same(cached, live)
    return cached_rv < live_rv and same({**cached, "metadata": {}}, {**live, "metadata": {}})


# ---------------------------------------------------------------------- the shard's progress notifications

def _collect(watch, into: list) -> None:
    for event in watch:
        into.append(event)


def test_progress_bookmarks_follow_writes_to_other_resources_and_stop_when_idle(shard, client):
    rv = current_rv(shard)
    query = ListQuery(resource_version=str(rv), allow_bookmarks=True, progress_notify=True)
    plain = replace(query, progress_notify=False)
    seen, seen_plain = [], []
    watches = [client.watch(CONFIGMAPS, "*", "", query), client.watch(CONFIGMAPS, "*", "", plain)]
    readers = [gevent.spawn(_collect, watches[0], seen), gevent.spawn(_collect, watches[1], seen_plain)]
    try:
        for i in range(3):
            secret = client.create(SECRETS, "root", "default", {"metadata": {"name": unique("s")}})
            written = int(secret["metadata"]["resourceVersion"])
            wait_until(lambda: any(e.type == "BOOKMARK" and int(e.object["metadata"]["resourceVersion"]) >= written
                                   for e in seen), timeout=2)
        assert all(e.type == "BOOKMARK" for e in seen)
        rvs = [int(e.object["metadata"]["resourceVersion"]) for e in seen]
        assert rvs == sorted(set(rvs)) and rvs[-1] >= written  # only when it advanced
        count = len(seen)
        gevent.sleep(0.3)
        assert len(seen) == count  # idle: nothing
        assert seen_plain == []  # without progressNotify: nothing before the usual bookmark interval
    finally:
        gevent.killall(readers)
        for watch in watches:
            watch.close()


def test_progress_notify_is_ignored_from_anyone_but_system_masters(shard, client):
    viewer = User(unique("viewer"), groups=("system:authenticated",))
    client.create(GroupVersionResource("rbac.authorization.k8s.io", "v1", "clusterrolebindings"), "root", "", {
        "metadata": {"name": viewer.name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": viewer.name}]})
    query = ListQuery(resource_version=str(current_rv(shard)), allow_bookmarks=True, progress_notify=True)
    seen: list = []
    watch = client.watch(CONFIGMAPS, "root", "default", query, user=viewer)
    reader = gevent.spawn(_collect, watch, seen)
    try:
        client.create(SECRETS, "root", "default", {"metadata": {"name": unique("s")}})
        gevent.sleep(0.3)  # a master's watch has its BOOKMARK within ~20 ms (the test above)
        assert seen == []
    finally:
        reader.kill()
        watch.close()


def test_the_in_process_client_passes_progress_notify_through(shard):
    def progress():
        app = shard.shard
        rv = app.registry.current_resource_version()
        events = app.shard_client.watch(CONFIGMAPS, "root", "default", ListQuery(
            resource_version=str(rv), allow_bookmarks=True, progress_notify=True))
        try:
            secret = app.shard_client.create(SECRETS, "root", "default", {"metadata": {"name": unique("s")}})
            with gevent.Timeout(2):
                event = next(events)
            return event, int(secret["metadata"]["resourceVersion"])
        finally:
            events.close()

    event, written = shard.run(progress)
    assert event.type == "BOOKMARK" and int(event.object["metadata"]["resourceVersion"]) == written


# ---------------------------------------------------------------------- the informer

def test_the_informer_holds_the_selected_objects_of_every_cluster_as_the_shard_has_them(shard, client):
    other = new_workspace(shard)
    names = {"root": unique("a"), other: unique("b")}
    for cluster, name in names.items():
        client.create(CONFIGMAPS, cluster, "default", configmap(name))
    outside = unique("plain")
    client.create(CONFIGMAPS, "root", "default", configmap(outside, labels={}))
    informer = client.informer(CONFIGMAPS, SELECTOR)
    assert client.informer(CONFIGMAPS, SELECTOR) is informer  # one per (resource, selector)
    wait_until(lambda: informer.synced)
    rv = caught_up(shard, informer)
    for cluster, name in names.items():
        assert same(informer.get(cluster, "default", name, rv), client.get(CONFIGMAPS, cluster, "default", name))
    assert informer.get("root", "default", outside, rv) is None
    assert informer.get(other, "default", names["root"], rv) is None  # keyed by logical cluster

    for cluster in ("*", "root", other):
        cached = informer.list(cluster, "default", rv)
        live = client.list(CONFIGMAPS, cluster, "default", ListQuery(label_selector=SELECTOR))
        assert same_list(cached, live)
    cached = informer.list("*", "", rv)
    live = client.list(CONFIGMAPS, "*", "", ListQuery(label_selector=SELECTOR))
    assert same_list(cached, live) and len(live["items"]) >= 2
    empty = new_workspace(shard)
    assert informer.list(empty, "", caught_up(shard, informer)) is None  # cannot tell: ask the shard

    name = names[other]
    updated = client.update(CONFIGMAPS, other, "default", name, configmap(name, "changed"))
    wait_until(lambda: informer.progress_rv >= int(updated["metadata"]["resourceVersion"]))
    assert same(informer.get(other, "default", name, informer.progress_rv), updated)
    client.update(CONFIGMAPS, other, "default", name, configmap(name, "changed", labels={"demo": "no"}))
    rv = caught_up(shard, informer)
    assert informer.get(other, "default", name, rv) is None  # left the selection: gone
    client.delete(CONFIGMAPS, "root", "default", names["root"])
    rv = caught_up(shard, informer)
    assert informer.get("root", "default", names["root"], rv) is None
    assert informer.lists == 1


def test_an_informer_answers_nothing_it_cannot_vouch_for(shard, client):
    name = unique("fresh")
    client.create(CONFIGMAPS, "root", "default", configmap(name))
    client.watch_timeout = 1
    informer = client.informer(CONFIGMAPS, SELECTOR)
    with pytest.raises(NotFresh):
        informer.get("root", "default", name, 0)  # not synced yet
    wait_until(lambda: informer.synced)
    rv = caught_up(shard, informer)
    assert informer.get("root", "default", name, rv) is not None
    client.gate.clear()
    wait_until(lambda: client.waiting)  # the shard ended the watch; the next one is held
    updated = client.update(CONFIGMAPS, "root", "default", name, configmap(name, "new"))
    written = int(updated["metadata"]["resourceVersion"])
    with pytest.raises(NotFresh):
        informer.get("root", "default", name, written)
    with pytest.raises(NotFresh):
        informer.list("*", "", written)
    assert informer.get("root", "default", name, rv)["data"] == {"k": "v"}  # what it had at rv
    client.gate.set()
    wait_until(lambda: informer.fresh(written))
    assert informer.get("root", "default", name, written)["data"] == {"k": "new"}
    assert informer.lists == 1  # resumed from where it was, no relist


def test_a_lost_history_is_relisted():
    with running_shard(ShardConfig(watch_history_events=3)) as shard:
        client = Client.from_kubeconfig(shard.kubeconfig)
        client.watch_timeout = 1
        try:
            informer = client.informer(CONFIGMAPS, SELECTOR)
            wait_until(lambda: informer.synced)
            client.gate.clear()
            wait_until(lambda: client.waiting)
            stale = informer.progress_rv
            names = [unique("while-away") for _ in range(10)]
            for name in names:
                client.create(CONFIGMAPS, "root", "default", configmap(name))
            assert shard.run(shard.shard.store.oldest_rv, "core/configmaps") > stale  # the 410 is real
            client.gate.set()
            wait_until(lambda: informer.lists == 2)
            rv = caught_up(shard, informer)
            for name in names:
                assert informer.get("root", "default", name, rv) is not None
        finally:
            client.gate.set()
            client.informers.stop()


class Failing(Client):
    """Lists fail ``list_failures`` times, the first watch fails ``watch_failures`` times; calls are recorded."""

    list_failures = 0
    watch_failures = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.list_calls: list[tuple[float, bool]] = []  # (when, was the informer synced then)

    def list(self, gvr, cluster, namespace, query, **kwargs):
        self.list_calls.append((time.monotonic(), self.informers.informer(gvr, query.label_selector).synced))
        if len(self.list_calls) <= self.list_failures:
            raise errors.ServiceUnavailable("the shard is away")
        return super().list(gvr, cluster, namespace, query, **kwargs)

    def watch(self, gvr, cluster, namespace, query, **kwargs):
        if self.watch_failures:
            self.watch_failures -= 1
            raise errors.ServiceUnavailable("the shard is away")
        return super().watch(gvr, cluster, namespace, query, **kwargs)


def test_failures_back_off_and_leave_the_informer_unsynced_until_it_relisted(shard):
    client = Failing.from_kubeconfig(shard.kubeconfig)
    client.list_failures = 4
    client.watch_timeout = 1  # so that the shard ends the watch and the next one can fail
    try:
        informer = client.informer(CONFIGMAPS, SELECTOR)
        wait_until(lambda: informer.synced, timeout=10)
        times = [t for t, _ in client.list_calls]
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert len(gaps) == 4
        for gap, expected in zip(gaps, (0.2, 0.4, 0.8, 1.6)):
            assert expected * 0.9 <= gap <= expected + 0.5, gaps
        client.watch_failures = 1
        wait_until(lambda: len(client.list_calls) == 6, timeout=10)
        wait_until(lambda: informer.synced)
        assert [synced for _, synced in client.list_calls[4:]] == [False, False]
    finally:
        client.informers.stop()


def test_informers_are_capped_and_stop_cleanly(shard):
    client = Client.from_kubeconfig(shard.kubeconfig)
    informers = Informers(client, limit=1)
    first = informers.informer(CONFIGMAPS, SELECTOR)
    assert informers.informer(SECRETS, "") is None  # over the cap: reads stay live
    wait_until(lambda: first.synced)
    greenlet = first._greenlet
    informers.stop()
    assert greenlet.dead and not first.synced
    with pytest.raises(NotFresh):
        first.get("root", "default", "x", 0)


# ---------------------------------------------------------------------- ForwardingStorage

def test_the_storage_reads_from_a_fresh_informer_exactly_what_it_reads_live(shard, client):
    storage = ForwardingStorage(client, CONFIGMAPS, labels=DEMO_LABELS)
    view = ForwardingStorage(client, CONFIGMAPS, labels=DEMO_LABELS, transform=UPPER_CASE)
    other = new_workspace(shard)
    name = unique("cached")
    client.create(CONFIGMAPS, "root", "default", configmap(name, "lower"))
    client.create(CONFIGMAPS, other, "default", configmap(unique("cached"), "lower"))
    rv = current_rv(shard)
    assert storage.get(vw_request("root", rv), "default", name)  # the first use starts the informer, goes live
    assert client.live["get"] == 1
    informer = client.informer(CONFIGMAPS, SELECTOR)
    wait_until(lambda: informer.synced)
    rv = caught_up(shard, informer)
    live_gets, live_lists = client.live["get"], client.live["list"]
    for s in (storage, view):
        cached, live = s.get(vw_request("root", rv), "default", name), s.get(vw_request("root", None), "default", name)
        assert same(cached, live)
        for cluster, namespace in (("root", "default"), ("*", ""), ("*", "default"), (other, "")):
            for query in (ListQuery(), ListQuery(resource_version="0", limit=1)):
                cached = s.list(vw_request(cluster, rv), namespace, query)
                live = s.list(vw_request(cluster, None), namespace, replace(query, limit=0))
                assert same_list(cached, live)
    assert view.get(vw_request("root", rv), "default", name)["data"] == {"k": "LOWER"}
    # the None-freshness reads above went live, the fresh ones did not
    assert client.live["get"] - live_gets == 2 and client.live["list"] - live_lists == 16


def test_the_storage_reads_live_whenever_the_cache_may_not_answer(shard, client):
    storage = ForwardingStorage(client, CONFIGMAPS, labels=DEMO_LABELS)
    client.watch_timeout = 1  # the shard ends each watch soon: the gate can hold the next one
    name = unique("live")
    client.create(CONFIGMAPS, "root", "default", configmap(name))
    client.create(CONFIGMAPS, "root", "default", configmap(unique("live")))
    informer = client.informer(CONFIGMAPS, SELECTOR)
    wait_until(lambda: informer.synced)
    rv = caught_up(shard, informer)

    def live_reads(read) -> tuple[int, int]:
        before = Counter(client.live)
        read()
        return client.live["get"] - before["get"], client.live["list"] - before["list"]

    fresh = vw_request("root", rv)
    assert live_reads(lambda: storage.get(fresh, "default", name)) == (0, 0)
    assert live_reads(lambda: storage.get(vw_request("root", rv + 1000), "default", name)) == (1, 0)  # stale
    assert live_reads(lambda: storage.get(vw_request("root", None), "default", name)) == (1, 0)
    as_them = ForwardingStorage(client, CONFIGMAPS, labels=DEMO_LABELS, act_as=as_caller)
    assert live_reads(lambda: as_them.get(fresh, "default", name)) == (1, 0)  # the caller's permissions apply
    for query in (ListQuery(limit=1), ListQuery(label_selector="a=b"), ListQuery(field_selector="metadata.name=x"),
                  ListQuery(resource_version=str(rv))):
        assert live_reads(lambda: storage.list(fresh, "default", query)) == (0, 1)
    for query in (ListQuery(continue_token="x"), ListQuery(resource_version_match="NotOlderThan")):
        before = client.live["list"]
        with pytest.raises(errors.BadRequest):  # the shard's answer to these
            storage.list(fresh, "default", query)
        assert client.live["list"] == before + 1
    assert live_reads(lambda: storage.list(fresh, "default", ListQuery())) == (0, 0)

    # misses: the shard says which 404 it is
    for cluster, missing in (("root", unique("missing")), ("root:nope", name)):
        with pytest.raises(errors.NotFound) as cached:
            storage.get(vw_request(cluster, rv), "default", missing)
        with pytest.raises(errors.NotFound) as live:
            storage.get(vw_request(cluster, None), "default", missing)
        assert cached.value.status() == live.value.status()
    assert "logical cluster" in cached.value.status()["message"]
    with pytest.raises(errors.NotFound):
        storage.list(vw_request("root:nope", rv), "", ListQuery())

    # stale after a write straight to the shard: live, and the write is seen
    client.gate.clear()
    wait_until(lambda: client.waiting)
    updated = client.update(CONFIGMAPS, "root", "default", name, configmap(name, "written"))
    written = current_rv(shard)
    assert informer.progress_rv < written
    reads = live_reads(lambda: storage.get(vw_request("root", written), "default", name))
    assert reads == (1, 0)
    assert same(storage.get(vw_request("root", written), "default", name), updated)
    client.gate.set()


def test_read_your_writes_through_the_storage(shard, client):
    """Every read after a write straight to the shard sees it, whether the cache or the shard answers."""
    storage = ForwardingStorage(client, CONFIGMAPS, labels=DEMO_LABELS)
    name = unique("ryw")
    client.create(CONFIGMAPS, "root", "default", configmap(name, "0"))
    informer = client.informer(CONFIGMAPS, SELECTOR)
    wait_until(lambda: informer.synced)
    cached = 0
    for i in range(1, 51):
        client.update(CONFIGMAPS, "root", "default", name, configmap(name, str(i)))
        if i % 2:
            gevent.sleep(0.03)  # time for the event: some reads come from the cache
        before = client.live["get"]
        read = storage.get(vw_request("root", current_rv(shard)), "default", name)
        assert read["data"] == {"k": str(i)}
        cached += client.live["get"] == before
    assert cached >= 10


# ---------------------------------------------------------------------- watches served from the informer

def stream(events) -> bytes:
    """A watch's bytes as the resource handler streams them (ended by the watch's timeout)."""
    try:
        return b"".join(map(json_line, events))
    finally:
        events.close()


def side_by_side(storage: ForwardingStorage, cluster: str, namespace: str, query: ListQuery, rv: int,
                 informer: Informer) -> tuple[bytes, bytes]:
    """The same watch from the cache (asserted: it subscribed) and live, streamed at the same time."""
    before = informer.subscriptions
    cached = storage.watch(vw_request(cluster, rv), namespace, query)
    assert informer.subscriptions == before + 1, "not served from the cache"
    live = storage.watch(vw_request(cluster, None), namespace, query)
    streams = [gevent.spawn(stream, cached), gevent.spawn(stream, live)]
    gevent.joinall(streams, raise_error=True)
    return streams[0].value, streams[1].value


def lines(data: bytes) -> list[dict]:
    return [orjson.loads(line) for line in data.splitlines()]


def synced_informer(client, **options) -> Informer:
    client.informers = Informers(client, **options)
    informer = client.informer(CONFIGMAPS, SELECTOR)
    wait_until(lambda: informer.synced)
    return informer


def test_a_watch_resumed_within_the_history_is_the_shards_byte_for_byte(shard, client):
    storage = ForwardingStorage(client, CONFIGMAPS, labels=DEMO_LABELS)
    view = ForwardingStorage(client, CONFIGMAPS, labels=DEMO_LABELS, transform=UPPER_CASE)
    informer = synced_informer(client)
    other = new_workspace(shard)
    names = [unique("resume") for _ in range(3)]
    client.create(CONFIGMAPS, other, "default", configmap(unique("before")))
    since = caught_up(shard, informer)
    for cluster in ("root", other):
        for name in names:
            client.create(CONFIGMAPS, cluster, "default", configmap(name))
        client.update(CONFIGMAPS, cluster, "default", names[0], configmap(names[0], "changed"))
        client.update(CONFIGMAPS, cluster, "default", names[1], configmap(names[1], labels={"demo": "false"}))
        client.update(CONFIGMAPS, cluster, "default", names[1], configmap(names[1], "back"))
        client.delete(CONFIGMAPS, cluster, "default", names[2])
        client.create(CONFIGMAPS, cluster, "default", configmap(unique("outside"), labels={}))
    rv = caught_up(shard, informer)
    query = ListQuery(resource_version=str(since), timeout_seconds=1)
    for s, cluster, namespace in ((storage, "root", "default"), (storage, "*", ""), (storage, other, ""),
                                  (view, "*", "default")):
        cached, live = side_by_side(s, cluster, namespace, query, rv, informer)
        assert cached == live
        types = [(e["type"], e["object"]["metadata"]["name"]) for e in lines(cached)]
        if cluster == other:
            assert types == [("ADDED", names[0]), ("ADDED", names[1]), ("ADDED", names[2]), ("MODIFIED", names[0]),
                             ("DELETED", names[1]), ("ADDED", names[1]), ("DELETED", names[2])]
    assert b'"K":"CHANGED"' not in cached and b'"k":"CHANGED"' in cached  # the view's transformation applies
    assert client.live["watch"] == 4 and client.live["probe"] == 4  # the live halves; one probe per resume
    wait_until(lambda: informer.subscriptions == 0)


def test_initial_events_are_the_shards(shard, client):
    storage = ForwardingStorage(client, CONFIGMAPS, labels=DEMO_LABELS)
    informer = synced_informer(client)
    other = new_workspace(shard)
    for cluster in ("root", other):
        for _ in range(3):
            client.create(CONFIGMAPS, cluster, "default", configmap(unique("initial")))
        client.create(CONFIGMAPS, cluster, "default", configmap(unique("outside"), labels={}))
    client.create(NAMESPACES, other, "", {"metadata": {"name": "elsewhere"}})
    client.create(CONFIGMAPS, other, "elsewhere", configmap(unique("elsewhere")))
    rv = caught_up(shard, informer)
    for requested in ("", "0"):
        for cluster, namespace in (("root", "default"), ("*", ""), (other, "default"), (other, "")):
            # timeoutSeconds 0: the initial events, then the end
            query = ListQuery(resource_version=requested, timeout_seconds=0)
            cached, live = side_by_side(storage, cluster, namespace, query, rv, informer)
            assert cached == live and {e["type"] for e in lines(cached)} == {"ADDED"}
            if cluster == other:
                assert len(lines(cached)) == (3 if namespace else 4)
    assert client.live["probe"] == 0


def test_objects_leaving_the_view_arrive_as_deleted(shard, client):
    storage = ForwardingStorage(client, CONFIGMAPS, labels=DEMO_LABELS)
    informer = synced_informer(client)
    cluster = new_workspace(shard)
    name = unique("leaving")
    client.create(CONFIGMAPS, cluster, "default", configmap(name))
    rv = caught_up(shard, informer)
    watch = storage.watch(vw_request(cluster, rv), "default", ListQuery(timeout_seconds=30))
    assert informer.subscriptions == 1
    assert next(watch).type == "ADDED"
    relabelled = client.update(CONFIGMAPS, cluster, "default", name, configmap(name, labels={"demo": "false"}))
    with gevent.Timeout(2):
        event = next(watch)
    assert (event.type, event.object) == ("DELETED", relabelled)
    assert event.encoded() == orjson.dumps({"type": "DELETED", "object": relabelled}) + b"\n"
    watch.close()
    assert informer.subscriptions == 0  # at once


def test_versions_the_cache_cannot_replay_are_watched_live(shard, client):
    storage = ForwardingStorage(client, CONFIGMAPS, labels=DEMO_LABELS)
    informer = synced_informer(client)
    name = unique("live-watch")
    client.create(CONFIGMAPS, "root", "default", configmap(name))
    rv = caught_up(shard, informer)
    floor = informer._history_floor

    def served_live(cluster: str, namespace: str, query: ListQuery, fresh_as_of=rv, s=storage) -> bool:
        before = client.live["watch"]
        watch = s.watch(vw_request(cluster, fresh_as_of), namespace, query)
        watch.close()
        assert informer.subscriptions == 0
        return client.live["watch"] == before + 1

    assert not served_live("root", "default", ListQuery(resource_version=str(floor)))  # the oldest it has
    for query in (ListQuery(resource_version=str(floor - 1)), ListQuery(resource_version=str(rv + 100)),
                  ListQuery(label_selector="a=b"), ListQuery(field_selector=f"metadata.name={name}"),
                  ListQuery(resource_version=str(rv), send_initial_events=True)):
        assert served_live("root", "default", query), query
    assert served_live("root", "default", ListQuery(), fresh_as_of=None)
    assert served_live("root", "default", ListQuery(), fresh_as_of=current_rv(shard) + 1000)  # stale
    as_them = ForwardingStorage(client, CONFIGMAPS, labels=DEMO_LABELS, act_as=as_caller)
    assert served_live("root", "default", ListQuery(), s=as_them)
    assert served_live(new_workspace(shard), "", ListQuery())  # nothing cached there: does it exist?
    with pytest.raises(errors.NotFound):  # no: the shard's 404
        storage.watch(vw_request("root:nowhere", rv), "", ListQuery())
    with pytest.raises(errors.NotFound):  # a resume there: the shard's 404 too (the probe asked it)
        storage.watch(vw_request("root:nowhere", rv), "", ListQuery(resource_version=str(rv)))
    with pytest.raises(errors.BadRequest):
        storage.watch(vw_request("root", rv), "", ListQuery(resource_version="x"))


def test_a_version_the_shards_history_no_longer_has_is_its_410():
    """Too old for the informer's history, or only for the shard's (which holds every write of the resource,
    those outside the view too): the shard's 410, live."""
    with running_shard(ShardConfig(watch_history_events=5)) as shard:
        client = Client.from_kubeconfig(shard.kubeconfig)
        storage = ForwardingStorage(client, CONFIGMAPS, labels=DEMO_LABELS)
        try:
            informer = synced_informer(client, history=3)
            first = caught_up(shard, informer)
            for _ in range(20):  # outside the view: the informer's history still reaches ``first``
                client.create(CONFIGMAPS, "root", "default", configmap(unique("outside"), labels={}))
            rv = caught_up(shard, informer)
            assert informer._history_floor <= first < shard.run(shard.shard.store.oldest_rv, "core/configmaps")
            query = ListQuery(resource_version=str(first), timeout_seconds=2)
            events = lines(stream(storage.watch(vw_request("root", rv), "", query)))
            assert [(e["type"], e["object"]["code"]) for e in events] == [("ERROR", 410)]
            assert client.live["probe"] == 1 and informer.subscriptions == 0

            since = rv
            for _ in range(10):  # in the view: out of the informer's history and the shard's
                client.create(CONFIGMAPS, "root", "default", configmap(unique("inside")))
            rv = caught_up(shard, informer)
            assert since < informer._history_floor
            query = ListQuery(resource_version=str(since), timeout_seconds=2)
            events = lines(stream(storage.watch(vw_request("root", rv), "", query)))
            assert [(e["type"], e["object"]["code"]) for e in events] == [("ERROR", 410)]
            assert client.live["probe"] == 1  # known too old without asking
        finally:
            client.informers.stop()


def _consume(watch, into: list) -> None:
    """What the resource handler does with a watch: read it, and close it however the reading ends."""
    try:
        for event in watch:
            into.append(event)
    finally:
        watch.close()


def test_a_slow_subscriber_overflows_and_its_watch_ends(shard, client):
    informer = synced_informer(client, queue_limit=2)
    cluster = new_workspace(shard)
    client.create(CONFIGMAPS, cluster, "default", configmap(unique("first")))
    rv = caught_up(shard, informer)
    slow = informer.watch(cluster, "", "", rv)
    reading = informer.watch(cluster, "", "", rv)
    seen: list = []
    reader = gevent.spawn(_consume, reading, seen)
    for _ in range(3):
        client.create(CONFIGMAPS, cluster, "default", configmap(unique("burst")))
    caught_up(shard, informer)
    wait_until(lambda: len(seen) == 4)
    assert informer.subscriptions == 1  # the slow one left at once
    assert list(slow) == []  # its stream ends: its client watches again
    reader.kill()
    wait_until(lambda: informer.subscriptions == 0)


class FailingOnce(Client):
    """The informer's next ``watch_failures`` watches fail."""

    watch_failures = 0

    def watch(self, gvr, cluster, namespace, query, **kwargs):
        if self.watch_failures and query.progress_notify:
            self.watch_failures -= 1
            raise errors.ServiceUnavailable("the shard is away")
        return super().watch(gvr, cluster, namespace, query, **kwargs)


def test_a_relist_ends_the_subscriptions():
    with running_shard(ShardConfig(watch_history_events=3)) as shard:
        client = FailingOnce.from_kubeconfig(shard.kubeconfig)
        client.watch_timeout = 1
        try:
            informer = synced_informer(client)
            rv = caught_up(shard, informer)
            seen: list = []
            reader = gevent.spawn(_consume, informer.watch("*", "", "", rv), seen)
            name = unique("seen")
            client.create(CONFIGMAPS, "root", "default", configmap(name))
            wait_until(lambda: any(e.object["metadata"]["name"] == name for e in seen))
            client.gate.clear()
            wait_until(lambda: client.waiting)  # the shard ended the informer's watch: the subscription stays
            assert not reader.dead and informer.subscriptions == 1
            for _ in range(10):
                client.create(CONFIGMAPS, "root", "default", configmap(unique("while-away")))
            client.gate.set()  # 410: relist
            wait_until(lambda: informer.lists == 2)
            reader.join(2)
            assert reader.dead and informer.subscriptions == 0
            assert [e.object["metadata"]["name"] for e in seen][-1] == name  # nothing after what it had seen

            reader = gevent.spawn(_consume, informer.watch("*", "", "", caught_up(shard, informer)), seen)
            client.watch_failures = 1  # a failure, not a 410: the same
            wait_until(lambda: informer.lists == 3, timeout=10)
            reader.join(2)
            assert reader.dead and informer.subscriptions == 0
        finally:
            client.gate.set()
            client.informers.stop()


def test_stopping_the_informer_ends_the_subscriptions(shard, client):
    informer = synced_informer(client)
    reader = gevent.spawn(list, informer.watch("*", "", "", caught_up(shard, informer)))
    gevent.sleep(0)
    client.informers.stop()
    reader.join(2)
    assert reader.dead and informer.subscriptions == 0


def test_bookmarks_when_allowed(shard, client):
    informer = synced_informer(client, bookmark_interval=0.3)
    cluster = new_workspace(shard)
    client.create(CONFIGMAPS, cluster, "default", configmap(unique("bookmarked")))
    rv = caught_up(shard, informer)
    with_bookmarks = gevent.spawn(list, informer.watch(cluster, "", "", rv, allow_bookmarks=True, timeout_seconds=2))
    without = gevent.spawn(list, informer.watch(cluster, "", "", rv, timeout_seconds=2))
    gevent.joinall([with_bookmarks, without], raise_error=True)
    assert [e.type for e in without.value] == ["ADDED"]
    events = with_bookmarks.value
    assert events[0].type == "ADDED" and {e.type for e in events[1:]} == {"BOOKMARK"} and 3 <= len(events) <= 7
    for event in events[1:]:
        assert event.object == {"kind": "ConfigMap", "apiVersion": "v1",
                                "metadata": {"resourceVersion": event.object["metadata"]["resourceVersion"]}}
        assert int(event.object["metadata"]["resourceVersion"]) >= rv


def test_a_client_leaving_removes_its_subscription(shard, client):
    informer = synced_informer(client)
    rv = caught_up(shard, informer)
    watches = [informer.watch("*", "", "", rv) for _ in range(2)]
    readers = [gevent.spawn(stream, watch) for watch in watches]
    wait_until(lambda: informer.subscriptions == 2)
    watches[0].close()  # what the client connection does when its client leaves
    readers[0].join(1)
    assert readers[0].dead and not readers[1].dead and informer.subscriptions == 1
    readers[1].kill()  # the consumer killed (a stream reset): its close() runs
    assert informer.subscriptions == 0
