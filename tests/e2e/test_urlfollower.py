"""``examples/urlfollower.py``, the plumbing of every example controller, against a real shard: the informer goes on
from its last resourceVersion across watch calls, lists again only for a version gone (410) and then reports what
went meanwhile as DELETED, delivers again what its handler failed on, ends an open watch at once on ``stop()`` and
leaves no socket behind; the follower keeps one worker per URL of an object's ``status.virtualWorkspaces``."""

from __future__ import annotations

import os
import threading
import time
import uuid
from functools import partial
from types import SimpleNamespace

import pytest
from kubernetes import client

from examples import urlfollower
from examples.urlfollower import URLFollower, URLWorker
from server.shard import ShardConfig
from server.testing import running_shard
from tests.e2e.test_sharding import wait_for

GROUP, VERSION, PLURAL = "follow.example.io", "v1", "followeds"


@pytest.fixture
def shard():
    """A shard of its own that remembers only a few watch events, so that a version expires when we want it to,
    and sends bookmarks often."""
    with running_shard(ShardConfig(watch_history_events=5, bookmark_interval=0.5)) as running:
        yield running


@pytest.fixture
def quick_watches(monkeypatch):
    monkeypatch.setattr(urlfollower, "WATCH_SECONDS", 1)


def admin(shard) -> client.Configuration:
    return shard.api_client().configuration


def namespace(shard) -> tuple[client.CoreV1Api, str]:
    core = client.CoreV1Api(shard.cluster_client("root"))
    name = f"follow-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name}})
    return core, name


def configmap(core: client.CoreV1Api, ns: str, name: str) -> None:
    core.create_namespaced_config_map(ns, {"metadata": {"name": name}})


class Recorder:
    """A handler that records ``(event type, name)``; ``hold`` makes it block on a condition of the informer."""

    def __init__(self):
        self.events: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.hold = None      # (predicate(kind, obj) -> bool, release Event)
        self.holding = threading.Event()
        self.fail = set()     # names whose next delivery raises (once each)

    def __call__(self, kind: str, obj: dict) -> None:
        name = obj["metadata"]["name"]
        if name in self.fail:
            self.fail.discard(name)
            raise RuntimeError(f"handler refuses {name} once")
        if self.hold is not None and self.hold[0](kind, obj):
            self.holding.set()
            self.hold[1].wait(30)
        with self.lock:
            self.events.append((kind, name))

    def seen(self) -> list[tuple[str, str]]:
        with self.lock:
            return list(self.events)


def configmaps(shard, handle) -> tuple[URLWorker, urlfollower.Informer, client.CoreV1Api, str]:
    core, ns = namespace(shard)
    worker = URLWorker(shard.url, admin(shard))
    informer = worker.inform(partial(client.CoreV1Api(worker.client("root")).list_namespaced_config_map, ns), handle,
                             name="configmaps")
    return worker, informer, core, ns


@pytest.fixture
def informed(shard):
    """A URLWorker informing a ``Recorder`` of the ConfigMaps of a fresh namespace (start it); stopped at the end."""
    handle = Recorder()
    worker, informer, core, ns = configmaps(shard, handle)
    yield SimpleNamespace(handle=handle, worker=worker, informer=informer, core=core, ns=ns)
    if handle.hold is not None:
        handle.hold[1].set()
    worker.stop()
    worker.join(10)


def test_the_informer_goes_on_from_its_last_version_across_watch_calls(informed, quick_watches):
    handle, informer, core, ns = informed.handle, informed.informer, informed.core, informed.ns
    configmap(core, ns, "listed")
    informed.worker.start()
    wait_for(lambda: ("ADDED", "listed") in handle.seen())
    configmap(core, ns, "watched")
    wait_for(lambda: ("ADDED", "watched") in handle.seen())
    calls = informer.watches
    wait_for(lambda: informer.watches >= calls + 2, timeout=15)   # watch calls ended and were made again
    configmap(core, ns, "later")
    core.delete_namespaced_config_map("watched", ns)
    wait_for(lambda: ("DELETED", "watched") in handle.seen())
    assert handle.seen() == [("ADDED", "listed"), ("ADDED", "watched"), ("ADDED", "later"), ("DELETED", "watched")]
    assert informer.lists == 1
    assert set(informer.objects) == {("root", ns, "listed"), ("root", ns, "later")}


def test_bookmarks_carry_the_version_past_what_the_informer_does_not_see(shard, informed, quick_watches):
    handle, informer, core, ns = informed.handle, informed.informer, informed.core, informed.ns
    configmap(core, ns, "mine")
    _, elsewhere = namespace(shard)
    informed.worker.start()
    wait_for(lambda: ("ADDED", "mine") in handle.seen())
    for i in range(8):   # more events than the shard remembers, none of them in the informer's namespace
        configmap(core, elsewhere, f"x{i}")
    last = int(core.read_namespaced_config_map("x7", elsewhere).metadata.resource_version)
    wait_for(lambda: int(informer.version or 0) >= last, timeout=15)   # a bookmark told it
    calls = informer.watches
    wait_for(lambda: informer.watches >= calls + 2, timeout=15)
    assert informer.lists == 1 and handle.seen() == [("ADDED", "mine")]   # re-watching from there is no 410


def test_a_version_gone_is_listed_again_and_what_went_meanwhile_is_deleted(informed, quick_watches):
    handle, informer, core, ns = informed.handle, informed.informer, informed.core, informed.ns
    for name in ("a-goes", "b-holds", "c-stays"):
        configmap(core, ns, name)
    release = threading.Event()
    # the first list's last object holds the informer before it watches: the list's version expires meanwhile
    handle.hold = (lambda kind, obj: informer.lists == 1 and obj["metadata"]["name"] == "c-stays", release)
    informed.worker.start()
    assert handle.holding.wait(20)
    core.delete_namespaced_config_map("a-goes", ns)
    for i in range(8):   # more events than the shard remembers
        configmap(core, ns, f"x{i}")
        core.delete_namespaced_config_map(f"x{i}", ns)
    release.set()
    wait_for(lambda: informer.lists == 2 and ("DELETED", "a-goes") in handle.seen(), timeout=20)
    configmap(core, ns, "d-new")
    wait_for(lambda: ("ADDED", "d-new") in handle.seen())
    seen = handle.seen()
    assert seen[:3] == [("ADDED", "a-goes"), ("ADDED", "b-holds"), ("ADDED", "c-stays")]
    assert sorted(seen[3:6]) == [("ADDED", "b-holds"), ("ADDED", "c-stays"), ("DELETED", "a-goes")]
    assert not any(name.startswith("x") for _, name in seen)   # never there at a version we saw
    assert set(informer.objects) == {("root", ns, n) for n in ("b-holds", "c-stays", "d-new")}


def test_an_event_the_handler_failed_on_is_delivered_again(informed, quick_watches):
    handle, informer = informed.handle, informed.informer
    informed.worker.start()
    wait_for(lambda: informer.watches >= 1)
    handle.fail.add("flaky")
    configmap(informed.core, informed.ns, "flaky")
    wait_for(lambda: ("ADDED", "flaky") in handle.seen(), timeout=15)
    assert informer.lists == 1   # delivered again by watching from before it, not by a new list


def _connections_to(port: int) -> int:
    """This process's established TCP connections whose remote end is ``port`` (the client side of them)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[3] == "01" and fields[9] in inodes:
                    count += 1
    return count


def test_stop_ends_an_open_watch_at_once_and_join_leaves_no_socket(kcp_shard):
    shard = kcp_shard   # bookmarks once a minute: nothing but stop() wakes the watch
    handle = Recorder()
    worker, informer, core, ns = configmaps(shard, handle)
    port = int(shard.url.rsplit(":", 1)[1])
    before = _connections_to(port)
    worker.start()
    configmap(core, ns, "watched")
    wait_for(lambda: ("ADDED", "watched") in handle.seen())   # the watch (of WATCH_SECONDS = 60) is open
    core.patch_namespaced_config_map("watched", ns, {"data": {"k": "v"}})   # and a write through the worker's pool
    client.CoreV1Api(worker.client("root")).read_namespaced_config_map("watched", ns)
    assert _connections_to(port) > before
    started = time.monotonic()
    worker.stop()
    worker.join(10)
    assert not worker.alive and time.monotonic() - started < 5
    wait_for(lambda: _connections_to(port) == before, timeout=5)


def followed_crd(shard) -> client.CustomObjectsApi:
    extensions = client.ApiextensionsV1Api(shard.cluster_client("root"))
    extensions.create_custom_resource_definition({
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {"group": GROUP, "scope": "Cluster",
                 "names": {"plural": PLURAL, "singular": "followed", "kind": "Followed", "listKind": "FollowedList"},
                 "versions": [{"name": VERSION, "served": True, "storage": True, "subresources": {"status": {}},
                               "schema": {"openAPIV3Schema": {"type": "object",
                                                              "x-kubernetes-preserve-unknown-fields": True}}}]}})
    objects = client.CustomObjectsApi(shard.cluster_client("root"))
    wait_for(lambda: _listable(objects))
    return objects


def _listable(objects: client.CustomObjectsApi) -> bool:
    try:
        objects.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        return True
    except client.ApiException:
        return False


class Worker:
    """What a controller would run per URL, reduced to its life: started, stopped, joined."""

    def __init__(self, url: str):
        self.url = url
        self.started = self.stopped = self.joined = False

    def start(self):
        self.started = True
        return self

    def stop(self):
        self.stopped = True

    def join(self, timeout=None):
        self.joined = True

    @property
    def alive(self):
        return self.started and not self.stopped


def test_the_follower_keeps_one_worker_per_published_url(shard):
    objects = followed_crd(shard)
    objects.create_cluster_custom_object(GROUP, VERSION, PLURAL, {"apiVersion": f"{GROUP}/{VERSION}",
                                                                 "kind": "Followed", "metadata": {"name": "it"}})
    objects.create_cluster_custom_object(GROUP, VERSION, PLURAL, {"apiVersion": f"{GROUP}/{VERSION}",
                                                                 "kind": "Followed", "metadata": {"name": "other"}})

    def publish(name: str, *urls: str) -> None:
        objects.patch_cluster_custom_object_status(GROUP, VERSION, PLURAL, name, {"status": {
            "virtualWorkspaces": [{"url": url} for url in urls]}})

    made: list[Worker] = []
    follower = URLFollower(admin(shard), "root", (GROUP, VERSION, PLURAL), "it",
                           worker=lambda url: made.append(Worker(url)) or made[-1]).start()
    try:
        publish("it", "https://one", "https://two")
        wait_for(lambda: sorted(follower.workers) == ["https://one", "https://two"])
        one = follower.workers["https://one"]
        publish("other", "https://elsewhere")   # another object's list is not ours
        publish("it", "https://two", "https://three")
        wait_for(lambda: sorted(follower.workers) == ["https://three", "https://two"])
        assert one.stopped and all(w.started for w in made) and [w.url for w in made] == [
            "https://one", "https://two", "https://three"]
        objects.delete_cluster_custom_object(GROUP, VERSION, PLURAL, "it")
        wait_for(lambda: not follower.workers)
        assert all(w.stopped for w in made)
    finally:
        follower.stop()
        follower.join(10)
    assert all(w.joined for w in made) and not follower.alive
