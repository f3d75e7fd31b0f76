"""The informer (``kcp_virtual.informer``) against a real shard, and ``ForwardingStorage`` reading from it.

The shard runs in its own thread (``server.testing``); the remote ShardClient, the informer's greenlet
and the storage run on this thread's hub, so waiting is ``gevent.sleep``. ``Client`` is the remote
client with informers (as ``kcp_virtual.remote`` offers them), counting its live reads, with a gate
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

from kcp_virtual.framework import errors
from kcp_virtual.framework.requestinfo import parse_request_info
from kcp_virtual.framework.shardclient import GroupVersionResource, ListQuery, NotFresh, User
from kcp_virtual.framework.storage import ForwardingStorage, as_caller
from kcp_virtual.framework.virtualworkspace import Context, Request
from kcp_virtual.informer import Informer, Informers
from kcp_virtual.remote import RemoteShardClient
from server.shard import ShardConfig
from server.testing import running_shard
from tests.vw_demo import CONFIGMAPS, DEMO_LABELS, UPPER_CASE

SECRETS = GroupVersionResource("", "v1", "secrets")
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
