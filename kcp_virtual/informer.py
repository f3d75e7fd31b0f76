"""A watch-fed cache of one resource of the shard, for virtual workspaces in their own process (kcp's informers).

In the forwarded topology a read through a virtual workspace costs a call back to the shard. An
``Informer`` keeps every object of one resource that matches a label selector, in every logical
cluster -- LIST ``*``, then WATCH ``*`` from the list's resourceVersion with bookmarks and the shard's
progress notifications, in one greenlet -- so such reads can be answered from memory.

A Kubernetes read with resourceVersion "" must be most recent, so the cache answers only when it has
provably seen everything the shard had acknowledged when the request was forwarded
(``Request.fresh_as_of``): it is ``synced`` and its ``progress_rv`` -- the highest resourceVersion
of an event or bookmark received -- is at least that. Otherwise it says ``NotFresh`` and the caller
reads live; nobody waits for the cache. Progress notifications make the second condition hold
within about 20 ms of a write to any resource, not only to this one.

Failures: a 410 (the shard's history no longer reaches back) relists at once; anything else (the
shard unreachable, an error answer, a malformed event) marks the cache unsynced and relists after a
backoff of 0.2 s doubling to 5 s. A watch the shard ends (its timeout) resumes from ``progress_rv``.
"""

from __future__ import annotations

import time
from typing import Any

import gevent
import structlog

from kcp_virtual.framework.shardclient import CLUSTER_ANNOTATION, GroupVersionResource, ListQuery, NotFresh

__all__ = ["Informer", "Informers", "NotFresh", "MIN_BACKOFF", "MAX_BACKOFF", "DEFAULT_LIMIT"]

log = structlog.get_logger("kcp.informer")

MIN_BACKOFF = 0.2
MAX_BACKOFF = 5.0
#: A watch that ends sooner than this without an error is retried after a backoff too (no busy loop).
_SHORT_WATCH = 1.0
#: Each informer is a watch the shard wakes every ~20 ms while anything is written; beyond this many
#: (distinct resource and selector pairs) reads simply stay live.
DEFAULT_LIMIT = 64

_Key = tuple[str, str]  # (namespace, name) within one logical cluster


class _Expired(Exception):
    """The watch got a 410: its resourceVersion is older than the shard's history."""


def _resource_version(obj: Any) -> int:
    """An event's (or a list's) resourceVersion; a malformed one fails the watch, which then relists."""
    return int(obj["metadata"]["resourceVersion"])


def _address(obj: dict) -> tuple[str, _Key]:
    meta = obj["metadata"]
    cluster = (meta.get("annotations") or {}).get(CLUSTER_ANNOTATION)
    name = meta["name"]
    if not isinstance(cluster, str) or not cluster or not isinstance(name, str):
        raise ValueError("an object without a logical cluster or name")
    return cluster, (meta.get("namespace") or "", name)


class Informer:
    """The objects of ``gvr`` matching ``label_selector`` in all logical clusters; see the module docstring.

    ``get`` and ``list`` implement ``kcp_virtual.framework.shardclient.Informer``. ``start()`` spawns the
    greenlet (in the calling thread's hub), ``stop()`` kills it and closes its watch.
    """

    def __init__(self, shard: Any, gvr: GroupVersionResource, label_selector: str = "", *,
                 min_backoff: float = MIN_BACKOFF, max_backoff: float = MAX_BACKOFF):
        self.shard = shard
        self.gvr = gvr
        self.label_selector = label_selector
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.synced = False
        self.progress_rv = 0
        self.lists = 0  # completed LISTs: the first one and every relist
        self._clusters: dict[str, dict[_Key, dict]] = {}
        self._sorted: dict[str, list[_Key]] = {}  # a cluster's keys in the shard's order; dropped on add/remove
        self._namespaced: bool | None = None  # known from the first object
        self._list_kind = self._list_api_version = ""  # as the shard's LIST names them
        self._greenlet: gevent.Greenlet | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "Informer":
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)
        return self

    def stop(self) -> None:
        greenlet, self._greenlet = self._greenlet, None
        self.synced = False
        if greenlet is not None:
            greenlet.kill()

    # ------------------------------------------------------------------ reads

    def fresh(self, fresh_as_of: int) -> bool:
        """Whether the cache has seen everything up to ``fresh_as_of``."""
        return self.synced and self.progress_rv >= fresh_as_of

    def get(self, cluster: str, namespace: str, name: str, fresh_as_of: int) -> dict | None:
        if not self.fresh(fresh_as_of):
            raise NotFresh(f"{self.progress_rv} < {fresh_as_of}" if self.synced else "not synced")
        bucket = self._clusters.get(cluster)
        return None if bucket is None else bucket.get((namespace, name))

    def list(self, cluster: str, namespace: str, fresh_as_of: int) -> dict | None:
        if not self.fresh(fresh_as_of):
            raise NotFresh(f"{self.progress_rv} < {fresh_as_of}" if self.synced else "not synced")
        clusters = self._clusters
        if cluster == "*":
            names = sorted(clusters)
        elif cluster in clusters:
            names = [cluster]
        else:
            return None  # no object here: whether the logical cluster exists is the shard's to say
        only = namespace if namespace and self._namespaced else None  # the shard ignores it for cluster scope
        items: list[dict] = []
        for name in names:
            bucket = clusters[name]
            keys = self._sorted.get(name)
            if keys is None:
                keys = self._sorted[name] = sorted(bucket)
            if only is None:
                items.extend(map(bucket.__getitem__, keys))
            else:
                items.extend(bucket[k] for k in keys if k[0] == only)
        return {"kind": self._list_kind, "apiVersion": self._list_api_version,
                "metadata": {"resourceVersion": str(self.progress_rv)}, "items": items}

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        backoff = self.min_backoff
        resume = False  # watch on from progress_rv (the shard ended the last watch) instead of relisting
        while True:
            started = time.monotonic()
            failed = False
            try:
                if not resume:
                    self._relist()
                self._watch()
                resume = True
            except _Expired:
                if resume:  # the history moved on past the resumed watch: relist at once
                    log.info("informer watch expired, relisting", resource=self.gvr.path_resource,
                             resource_version=self.progress_rv)
                    resume = False
                    continue
                failed = True  # straight after a list it is no lost history but a fault
            except Exception as exc:  # noqa: BLE001 - any failure: unsynced, relist after a backoff
                if self.synced or backoff == self.min_backoff:
                    log.info("informer failed, relisting", resource=self.gvr.path_resource, error=repr(exc),
                             retry_in=backoff)
                self.synced = False
                resume = False
                failed = True
            if time.monotonic() - started >= _SHORT_WATCH:  # it had been working: start backing off afresh
                backoff = self.min_backoff
                if not failed:
                    continue
            gevent.sleep(backoff)  # failed, or the shard ended a watch at once: never a busy loop
            backoff = min(backoff * 2, self.max_backoff)

    def _relist(self) -> None:
        result = self.shard.list(self.gvr, "*", "", ListQuery(label_selector=self.label_selector))
        rv = _resource_version(result)
        clusters: dict[str, dict[_Key, dict]] = {}
        namespaced = None
        for obj in result["items"]:
            cluster, key = _address(obj)
            clusters.setdefault(cluster, {})[key] = obj
            if namespaced is None:
                namespaced = bool(key[0])
        # no yield from here on: readers see the old state or the new one, each with its own progress_rv
        self._clusters, self._sorted, self._namespaced = clusters, {}, namespaced
        self._list_kind, self._list_api_version = result["kind"], result["apiVersion"]
        self.progress_rv = rv
        self.synced = True
        self.lists += 1

    def _watch(self) -> None:
        query = ListQuery(label_selector=self.label_selector, resource_version=str(self.progress_rv),
                          allow_bookmarks=True, progress_notify=True)
        watch = self.shard.watch(self.gvr, "*", "", query)
        try:
            for event in watch:
                self._apply(event.type, event.object)
        finally:
            watch.close()

    def _apply(self, kind: str, obj: dict) -> None:
        """One event, applied without yielding (readers never see half of it)."""
        if kind == "ERROR":
            status = obj if isinstance(obj, dict) else {}
            if status.get("code") == 410:
                raise _Expired()
            raise RuntimeError(f"the watch failed: {status.get('code')} {status.get('message')}")
        rv = _resource_version(obj)
        if kind == "ADDED" or kind == "MODIFIED":
            cluster, key = _address(obj)
            bucket = self._clusters.get(cluster)
            if bucket is None:
                bucket = self._clusters[cluster] = {}
            if key not in bucket:
                self._sorted.pop(cluster, None)
            bucket[key] = obj
            if self._namespaced is None:
                self._namespaced = bool(key[0])
        elif kind == "DELETED":
            cluster, key = _address(obj)
            bucket = self._clusters.get(cluster)
            if bucket is not None and bucket.pop(key, None) is not None:
                self._sorted.pop(cluster, None)
                if not bucket:
                    del self._clusters[cluster]
        elif kind != "BOOKMARK":
            raise ValueError(f"unknown watch event type {kind!r}")
        if rv > self.progress_rv:
            self.progress_rv = rv


class Informers:
    """One ``Informer`` per (resource, label selector) of ``shard``, started on first use; at most ``limit``
    (later pairs get None: their reads stay live). ``stop()`` stops them all."""

    def __init__(self, shard: Any, *, limit: int = DEFAULT_LIMIT, **options):
        self.shard = shard
        self.limit = limit
        self.options = options
        self._informers: dict[tuple[GroupVersionResource, str], Informer] = {}

    def informer(self, gvr: GroupVersionResource, label_selector: str = "") -> Informer | None:
        key = (gvr, label_selector)
        informer = self._informers.get(key)
        if informer is None:
            if len(self._informers) >= self.limit:
                return None
            informer = self._informers[key] = Informer(self.shard, gvr, label_selector, **self.options).start()
        return informer

    def stop(self) -> None:
        for informer in self._informers.values():
            informer.stop()
        self._informers.clear()
