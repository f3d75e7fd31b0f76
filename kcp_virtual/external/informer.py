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

**Watches from the cache.** Every client watch through a virtual workspace would otherwise be a watch
on the shard of its own (a connection, a greenlet, a watcher there). ``watch`` serves one from memory
instead: the current objects as ADDED events (resourceVersion "" or "0"), or the events after a
resourceVersion replayed from a bounded history of recent events, then every change as it arrives. A
``Subscription`` (a push ``Watch``) gets each event handed to it without yielding, and hands it on to the
client connection; events are shared, their stream line serialized once for all watchers. What the
cache cannot answer exactly as the shard would -- a version older than its history or newer than its progress, one the shard's own (unfiltered,
so shorter) history no longer reaches (asked with a watch that ends at once), a logical cluster it
holds nothing of -- is ``NotFresh``: the caller watches live and the shard decides (410, 404...).

**Listeners.** A controller that follows another shard's objects (``add_listener``) is called, without
yielding, with the object's address after each change, and with None after each relist (everything may have
changed); ``peek`` reads the last known copy of an object even while the cache is unsynced (the shard is down),
for consumers for whom a stale answer beats none (the front-proxy's routing, replicas).

Failures: a 410 (the shard's history no longer reaches back) relists at once; anything else (the
shard unreachable, an error answer, a malformed event) marks the cache unsynced and relists after a
backoff of 0.2 s doubling to 5 s. A watch the shard ends (its timeout) resumes from ``progress_rv``.
Any failure, relist or stop ends every subscription (its stream ends, the client watches again from
the last version it saw), as does a subscriber that falls too far behind (its client connection's queue,
or ``queue_limit`` events waiting for it to start): a subscription never skips or repeats an event.
"""

from __future__ import annotations

import random
import time
from collections import deque
from typing import Any

import gevent
import gevent.event
import orjson
import structlog

from kcp_virtual.framework import errors
from kcp_virtual.framework.shardclient import (CLUSTER_ANNOTATION, GroupVersionResource, ListQuery, NotFresh,
                                               WatchEvent)
from kcp_virtual.framework.watchstream import Watch

__all__ = ["Informer", "Informers", "Subscription", "NotFresh", "MIN_BACKOFF", "MAX_BACKOFF", "DEFAULT_LIMIT",
           "HISTORY", "QUEUE_LIMIT", "BOOKMARK_INTERVAL"]

log = structlog.get_logger("kcp.informer")

MIN_BACKOFF = 0.2
MAX_BACKOFF = 5.0
#: A watch that ends sooner than this without an error is retried after a backoff too (no busy loop).
_SHORT_WATCH = 1.0
#: Each informer is a watch the shard wakes every ~20 ms while anything is written; beyond this many
#: (distinct resource and selector pairs) reads simply stay live.
DEFAULT_LIMIT = 64
#: Recent events kept for watches that resume from a resourceVersion.
HISTORY = 10_000
#: Events a subscription may have waiting; one more ends it (as the apiserver drops a too-slow watcher).
QUEUE_LIMIT = 1_000
#: Seconds between the BOOKMARKs of a subscription that allows them (the shard's ``bookmark_interval``).
BOOKMARK_INTERVAL = 60.0
#: As the apiserver: a watch without timeoutSeconds ends after 30 to 60 minutes.
MIN_WATCH_TIMEOUT = 1800.0

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


def _requested_version(value: str) -> int:
    """A watch's resourceVersion N; anything the shard might read differently (or refuse) is for the shard."""
    if not (value.isascii() and value.isdigit()):
        raise NotFresh(f"resourceVersion {value!r}: the shard decides")
    return int(value)


def _check_limits(**limits: float) -> None:
    """Sizes and intervals must be positive (a zero interval would be a busy loop): a ValueError at start-up."""
    for name, value in limits.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, not {value!r}")


class _Event:
    """One change as the shard sent it: kept in the history and handed as is to every subscription it
    concerns, so its stream line is serialized once for all of them (``watchstream.json_line``)."""

    __slots__ = ("rv", "type", "object", "cluster", "namespace", "_line")

    def __init__(self, rv: int, type: str, obj: dict, cluster: str, namespace: str):
        self.rv = rv
        self.type = type
        self.object = obj
        self.cluster = cluster
        self.namespace = namespace
        self._line: bytes | None = None

    def encoded(self) -> bytes:
        line = self._line
        if line is None:
            line = self._line = orjson.dumps({"type": self.type, "object": self.object}) + b"\n"
        return line

    def concerns(self, cluster: str, namespace: str) -> bool:
        """Whether a watch of ``cluster`` (or ``*``) and ``namespace`` (or "") sees it; a cluster-scoped object
        (no namespace) is seen whatever the namespace, as the shard ignores one for cluster scope."""
        return (cluster == "*" or cluster == self.cluster) and (
            not namespace or not self.namespace or namespace == self.namespace)


class Informer:
    """The objects of ``gvr`` matching ``label_selector`` in all logical clusters; see the module docstring.

    ``get``, ``list`` and ``watch`` implement ``kcp_virtual.framework.shardclient.Informer``. ``start()``
    spawns the greenlet (in the calling thread's hub), ``stop()`` kills it, closes its watch and ends every
    subscription.
    """

    def __init__(self, shard: Any, gvr: GroupVersionResource, label_selector: str = "", *,
                 min_backoff: float = MIN_BACKOFF, max_backoff: float = MAX_BACKOFF, history: int = HISTORY,
                 queue_limit: int = QUEUE_LIMIT, bookmark_interval: float = BOOKMARK_INTERVAL,
                 progress_notify: bool = True):
        _check_limits(history=history, queue_limit=queue_limit, bookmark_interval=bookmark_interval)
        self.shard = shard
        self.gvr = gvr
        self.label_selector = label_selector
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.queue_limit = queue_limit
        self.bookmark_interval = bookmark_interval
        # the shard's progress bookmarks (every ~20 ms while anything is written), which ``fresh`` needs; a
        # consumer that only follows changes (``add_listener``, ``peek``) is spared them
        self.progress_notify = progress_notify
        self.synced = False
        self.progress_rv = 0
        self.lists = 0  # completed LISTs: the first one and every relist
        self._clusters: dict[str, dict[_Key, dict]] = {}
        self._sorted: dict[str, list[_Key]] = {}  # a cluster's keys in the shard's order; dropped on add/remove
        self._namespaced: bool | None = None  # known from the first object
        self._list_kind = self._list_api_version = ""  # as the shard's LIST names them
        self._history: deque[_Event] = deque(maxlen=history)
        self._history_floor = 0  # every event after this resourceVersion is in the history
        self._subscriptions: dict[tuple[str, str], dict[Subscription, None]] = {}  # by (cluster, namespace)
        self._greenlet: gevent.Greenlet | None = None
        self._listeners: list[Callable[[tuple[str, str, str] | None], None]] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "Informer":
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)
        return self

    def stop(self) -> None:
        greenlet, self._greenlet = self._greenlet, None
        self.synced = False
        self._end_subscriptions("the informer stopped")
        if greenlet is not None:
            greenlet.kill()

    def add_listener(self, listener: Callable[[tuple[str, str, str] | None], None]) -> None:
        """Call ``listener((cluster, namespace, name))`` after each change, ``listener(None)`` after each relist."""
        self._listeners.append(listener)

    def _tell(self, address: tuple[str, str, str] | None) -> None:
        for listener in self._listeners:
            try:
                listener(address)
            except Exception:  # noqa: BLE001 - a listener's bug must not stop the cache
                log.exception("informer listener failed", resource=self.gvr.path_resource)

    # ------------------------------------------------------------------ reads

    def peek(self, cluster: str, namespace: str, name: str) -> dict | None:
        """The last known copy of one object, synced or not (None: none known)."""
        bucket = self._clusters.get(cluster)
        return None if bucket is None else bucket.get((namespace, name))

    def addresses(self) -> list[tuple[str, str, str]]:
        """``(cluster, namespace, name)`` of every object known now."""
        return [(cluster, *key) for cluster, bucket in self._clusters.items() for key in bucket]

    def fresh(self, fresh_as_of: int) -> bool:
        """Whether the cache has seen everything up to ``fresh_as_of``."""
        return self.synced and self.progress_rv >= fresh_as_of

    def _require_fresh(self, fresh_as_of: int) -> None:
        if not self.fresh(fresh_as_of):
            raise NotFresh(f"{self.progress_rv} < {fresh_as_of}" if self.synced else "not synced")

    def get(self, cluster: str, namespace: str, name: str, fresh_as_of: int) -> dict | None:
        self._require_fresh(fresh_as_of)
        bucket = self._clusters.get(cluster)
        return None if bucket is None else bucket.get((namespace, name))

    def list(self, cluster: str, namespace: str, fresh_as_of: int) -> dict | None:
        self._require_fresh(fresh_as_of)
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

    # ------------------------------------------------------------------ watches

    @property
    def subscriptions(self) -> int:
        """How many watches this informer serves now."""
        return sum(map(len, self._subscriptions.values()))

    def watch(self, cluster: str, namespace: str, resource_version: str, fresh_as_of: int, *,
              allow_bookmarks: bool = False, timeout_seconds: int | None = None) -> "Subscription | None":
        """The watch the shard would serve for this view with no selector of the caller's: from resourceVersion
        "" or "0" the current objects as ADDED events in the shard's order, from N the events after N; then the
        changes, BOOKMARKs (with ``allow_bookmarks``) every ``bookmark_interval`` while caught up, until
        ``timeout_seconds`` (default 30 to 60 minutes) or ``close()`` (the client left). NotFresh (or
        None, for a logical cluster it holds no object of) when the cache cannot answer exactly that."""
        if resource_version in ("", "0"):
            listed = self.list(cluster, namespace, fresh_as_of)
            if listed is None:
                return None
            backlog: list = [WatchEvent("ADDED", obj) for obj in listed["items"]]
        else:
            since = _requested_version(resource_version)
            self._require_replayable(since, fresh_as_of)
            self._require_shard_history(cluster, namespace, since)  # I/O: check the cache again afterwards
            self._require_replayable(since, fresh_as_of)
            backlog = self._replay(cluster, namespace, since)
        # no yield from the backlog to the subscription: the next event the informer applies is its first
        seconds = timeout_seconds if timeout_seconds is not None else MIN_WATCH_TIMEOUT * (1 + random.random())
        subscription = Subscription(self, cluster, namespace, backlog, allow_bookmarks=allow_bookmarks,
                                    deadline=time.monotonic() + max(seconds, 0))
        self._subscriptions.setdefault((cluster, namespace), {})[subscription] = None
        return subscription

    def _require_replayable(self, since: int, fresh_as_of: int) -> None:
        self._require_fresh(fresh_as_of)
        if since < self._history_floor:
            raise NotFresh(f"resourceVersion {since} is older than the cache's history ({self._history_floor})")
        if since > self.progress_rv:
            raise NotFresh(f"resourceVersion {since} is newer than the cache ({self.progress_rv})")

    def _require_shard_history(self, cluster: str, namespace: str, since: int) -> None:
        """The shard would serve a watch from ``since`` there: its history, which holds every write of the
        resource, not only this selection, still reaches back to it (else a 410) and the logical cluster exists.
        Asked with a watch that ends at once; any refusal is NotFresh, so the shard's answer reaches the caller."""
        query = ListQuery(label_selector=self.label_selector, resource_version=str(since), timeout_seconds=0)
        try:
            probe = self.shard.watch(self.gvr, cluster, namespace, query)
        except errors.StatusError as exc:
            raise NotFresh(f"the shard refuses a watch from {since}: {exc}") from None
        try:
            for event in probe:
                if event.type == "ERROR":
                    raise NotFresh(f"the shard refuses a watch from {since}: {event.object.get('message')}")
        finally:
            probe.close()

    def _replay(self, cluster: str, namespace: str, since: int) -> list[_Event]:
        """The history's events after ``since`` that a watch of ``cluster``/``namespace`` sees, oldest first."""
        events = []
        for event in reversed(self._history):  # resumes are mostly recent: walk back from the newest
            if event.rv <= since:
                break
            if event.concerns(cluster, namespace):
                events.append(event)
        events.reverse()
        return events

    def _publish(self, event: _Event) -> None:
        """Hand ``event`` to every subscription it concerns, without yielding; a full queue ends its watch."""
        groups = self._subscriptions
        if not groups:
            return
        overflowing = []
        for (cluster, namespace), group in list(groups.items()):
            if event.concerns(cluster, namespace):
                for subscription in list(group):  # a client leaving while it is handed the event leaves the group
                    if not subscription.offer(event):
                        overflowing.append(subscription)
        for subscription in overflowing:
            log.info("watch too slow, ending it", resource=self.gvr.path_resource, cluster=subscription.cluster,
                     queued=self.queue_limit)
            subscription.end()
            self.unsubscribe(subscription)

    def unsubscribe(self, subscription: "Subscription") -> None:
        key = (subscription.cluster, subscription.namespace)
        group = self._subscriptions.get(key)
        if group is not None:
            group.pop(subscription, None)
            if not group:
                del self._subscriptions[key]

    def _end_subscriptions(self, why: str) -> None:
        groups, self._subscriptions = self._subscriptions, {}
        if groups:
            log.info("ending the watches served from the informer", resource=self.gvr.path_resource, reason=why,
                     watches=sum(map(len, groups.values())))
        for group in groups.values():
            for subscription in group:
                subscription.end()

    def bookmark(self) -> dict:
        """A BOOKMARK object at ``progress_rv``, as the shard makes them (the resource's kind)."""
        return {"kind": self._list_kind.removesuffix("List"), "apiVersion": self._list_api_version,
                "metadata": {"resourceVersion": str(self.progress_rv)}}

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
        # no yield from here on: readers see the old state or the new one, each with its own progress_rv;
        # watches of the old one end (what happened in between is not known event by event)
        self._end_subscriptions("relisted")
        self._clusters, self._sorted, self._namespaced = clusters, {}, namespaced
        self._list_kind, self._list_api_version = result["kind"], result["apiVersion"]
        self._history.clear()
        self._history_floor = rv
        self.progress_rv = rv
        self.synced = True
        self.lists += 1
        self._tell(None)

    def _watch(self) -> None:
        query = ListQuery(label_selector=self.label_selector, resource_version=str(self.progress_rv),
                          allow_bookmarks=True, progress_notify=self.progress_notify)
        try:
            watch = self.shard.watch(self.gvr, "*", "", query)
            try:
                for event in watch:
                    self._apply(event.type, event.object)
            finally:
                watch.close()
        except BaseException:
            self._end_subscriptions("the informer's watch failed")  # it relists: events may be missed until then
            raise

    def _apply(self, kind: str, obj: dict) -> None:
        """One event, applied and handed to the subscriptions without yielding (nobody sees half of it)."""
        if kind == "ERROR":
            status = obj if isinstance(obj, dict) else {}
            if status.get("code") == 410:
                raise _Expired()
            raise RuntimeError(f"the watch failed: {status.get('code')} {status.get('message')}")
        rv = _resource_version(obj)
        if kind == "BOOKMARK":
            self.progress_rv = max(self.progress_rv, rv)
            return
        cluster, key = _address(obj)
        if kind == "ADDED" or kind == "MODIFIED":
            bucket = self._clusters.get(cluster)
            if bucket is None:
                bucket = self._clusters[cluster] = {}
            if key not in bucket:
                self._sorted.pop(cluster, None)
            bucket[key] = obj
            if self._namespaced is None:
                self._namespaced = bool(key[0])
        elif kind == "DELETED":
            bucket = self._clusters.get(cluster)
            if bucket is not None and bucket.pop(key, None) is not None:
                self._sorted.pop(cluster, None)
                if not bucket:
                    del self._clusters[cluster]
        else:
            raise ValueError(f"unknown watch event type {kind!r}")
        self.progress_rv = max(self.progress_rv, rv)
        history = self._history
        if len(history) == history.maxlen:
            self._history_floor = history[0].rv  # about to fall out
        event = _Event(rv, kind, obj, cluster, key[0])
        history.append(event)
        self._publish(event)
        if self._listeners:
            self._tell((cluster, *key))


class Subscription(Watch):
    """One client's watch served from an ``Informer``: a push ``Watch`` (``framework.watchstream``). Started, it
    sends its backlog (initial ADDED events or replayed ones) and whatever the informer handed it since it was
    made, then each event as the informer applies it (``offer``, in the informer's greenlet, without waiting),
    BOOKMARKs, until its deadline, ``close()`` or ``end()``. No greenlet of its own: the hub's shared timer
    (``framework.timers``) brings the deadline and the bookmarks. Until it is started, at most ``queue_limit``
    offered events wait (more ends it, as the apiserver drops a watcher that falls behind); once started, the
    client connection's queue bounds it."""

    __slots__ = ("informer", "cluster", "namespace", "_backlog", "_deadline", "_bookmarks", "_ended")

    def __init__(self, informer: Informer, cluster: str, namespace: str, backlog: list, *, allow_bookmarks: bool,
                 deadline: float):
        super().__init__()
        self.informer = informer
        self.cluster = cluster
        self.namespace = namespace
        self._backlog: list | None = list(backlog)
        self._deadline = deadline
        self._bookmarks = allow_bookmarks
        self._ended = False

    def offer(self, event: _Event) -> bool:
        """Hand ``event`` on (never yields); False when too many wait for a start: the caller ends this watch."""
        backlog = self._backlog
        if backlog is not None:
            if len(backlog) >= self.informer.queue_limit:
                return False
            backlog.append(event)
            return True
        self._emit((event,))
        return True

    def end(self) -> None:
        """End the stream after the event being delivered (the informer's side: relist, overflow, stop)."""
        self._ended = True
        if self._backlog is not None:
            self._backlog = []
        elif not self.closed:
            self._end()

    def _run(self) -> None:
        backlog, self._backlog = self._backlog, None
        if self._ended:
            self._end()
            return
        self._emit(backlog)
        if not self.closed:
            self._arm()

    def _arm(self) -> None:
        due = self._deadline
        if self._bookmarks:
            due = min(due, time.monotonic() + self.informer.bookmark_interval)
        self._after(due - time.monotonic())

    def _timer_fired(self) -> None:
        if time.monotonic() >= self._deadline:
            self._end()
            return
        self._emit((WatchEvent("BOOKMARK", self.informer.bookmark()),))  # everything up to progress_rv is sent
        if not self.closed:
            self._arm()

    def _stop(self) -> None:
        self._backlog = None
        self.informer.unsubscribe(self)


class Informers:
    """One ``Informer`` per (resource, label selector) of ``shard``, started on first use; at most ``limit``
    (later pairs get None: their reads stay live). ``options`` are the informers' (``bookmark_interval``...).
    ``stop()`` stops them all."""

    def __init__(self, shard: Any, *, limit: int = DEFAULT_LIMIT, **options):
        _check_limits(**{k: v for k, v in options.items()
                         if k in ("history", "queue_limit", "bookmark_interval")})
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
