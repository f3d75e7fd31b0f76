"""A parked registry watch (on the ``registry`` fixture of tests/conftest.py): what it keeps while idle (every byte is paid once per idle watch) and that the
pieces shared between watches (the bookmark maker) still make each watch's own BOOKMARKs."""

from __future__ import annotations

import time
import tracemalloc

import gevent

from server.registry.generic import ListOptions


class Collect:
    """A watch sink that keeps what it is handed."""

    __slots__ = ("got", "done")

    def __init__(self):
        self.got = []
        self.done = False

    def events(self, events) -> None:
        self.got.extend(events)

    def ended(self) -> None:
        self.done = True


def _types(registry):
    return (registry.catalog.lookup("root", "", "v1", "configmaps"),
            registry.catalog.lookup("root", "apps", "v1", "deployments"))


def _watch(registry, rt, **kw):
    return registry.watch(rt, "root", "default", ListOptions(resource_version=str(registry.store.current_rv())),
                          allow_bookmarks=True, deadline=time.monotonic() + 600, **kw)


def test_watches_of_one_kind_share_a_bookmark_maker_that_makes_each_watchs_bookmark(registry):
    configmaps, deployments = _types(registry)
    a, b, c = _watch(registry, configmaps), _watch(registry, configmaps), _watch(registry, deployments)
    assert a.bookmark is b.bookmark and a.bookmark is not c.bookmark
    assert a.bookmark(7) == {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"resourceVersion": "7"}}
    assert c.bookmark(9, initial_events_end=True) == {
        "kind": "Deployment", "apiVersion": "apps/v1",
        "metadata": {"resourceVersion": "9", "annotations": {"k8s.io/initial-events-end": "true"}}}
    for w in (a, b, c):
        w.close()


def test_a_subscribed_watch_gets_events_bookmarks_and_its_end(registry):
    configmaps, _ = _types(registry)
    sink = Collect()
    watch = _watch(registry, configmaps, bookmark_interval=0.05)
    watch.start(sink)
    registry.create(configmaps, "root", "default", {"metadata": {"name": "one"}, "data": {"a": "b"}})
    deadline = time.monotonic() + 10
    while not ({"ADDED", "BOOKMARK"} <= {e.type for e in sink.got}) and time.monotonic() < deadline:
        gevent.sleep(0.02)
    types = [e.type for e in sink.got]
    assert "ADDED" in types and "BOOKMARK" in types
    added = next(e for e in sink.got if e.type == "ADDED")
    assert added.object["metadata"]["name"] == "one"
    bookmark = next(e for e in sink.got if e.type == "BOOKMARK").object
    assert bookmark["kind"] == "ConfigMap" and int(bookmark["metadata"]["resourceVersion"]) >= int(added.object["metadata"]["resourceVersion"])
    registry.store.close()  # the store going away ends the watch (its subscriber is told)
    deadline = time.monotonic() + 10
    while not sink.done and time.monotonic() < deadline:
        gevent.sleep(0.02)
    assert sink.done and watch.closed


def test_an_idle_subscribed_watch_keeps_little(registry):
    """The registry's share of an idle watch (its RegistryWatch, store cursor, its place in the hub's shared
    timer; ~390 bytes, 684 with a libev timer per watch): a regression guard for per-watch closures, partials,
    timers and floats, each ~24-200 bytes times every idle watch."""
    configmaps, _ = _types(registry)
    n = 2000
    options = [ListOptions(resource_version=str(registry.store.current_rv())) for _ in range(n)]
    sinks = [Collect() for _ in range(n)]
    gevent.sleep(0)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    watches = []
    for opts, sink in zip(options, sinks):
        w = registry.watch(configmaps, "root", "default", opts, allow_bookmarks=True,
                           deadline=time.monotonic() + 600)
        w.start(sink)
        watches.append(w)
    per_watch = (tracemalloc.get_traced_memory()[0] - before) / n
    tracemalloc.stop()
    try:
        assert per_watch < 420, f"{per_watch:.0f} bytes per idle watch"
    finally:
        for w in watches:
            w.close()
