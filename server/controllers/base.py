"""A level-triggered reconcile loop fed by a storage watch: client-go's informer + workqueue, in greenlets.

Controllers must survive restarts and missed events, so events never carry meaning here: each one
only enqueues the object's key, and the reconcile function reads the current object and drives it
towards the desired state idempotently. A full list at start (and after a 410 on the watch) covers
whatever happened while nobody was watching. A key is never reconciled by two workers at once;
a failing key is retried with exponential backoff and the failure is logged, never raised.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

import gevent
import gevent.event
import structlog

from kcp_virtual.framework import errors
from server.registry.generic import cluster_of
from server.storage import Key, ResourceExpiredError, StorageError, Store

log = structlog.get_logger("kcp.controllers")


class WorkQueue:
    """Deduplicating FIFO of keys. A key added while it is being processed is queued again when done."""

    def __init__(self):
        self._queue: deque = deque()
        self._queued: set = set()
        self._active: set = set()
        self._dirty: set = set()
        self._ready = gevent.event.Event()

    def __len__(self) -> int:
        return len(self._queue) + len(self._dirty)

    def add(self, key) -> None:
        if key in self._queued:
            return
        if key in self._active:
            self._dirty.add(key)
            return
        self._queued.add(key)
        self._queue.append(key)
        self._ready.set()

    def get(self):
        """The next key (blocks); the caller must call ``done(key)`` afterwards."""
        while not self._queue:
            self._ready.clear()
            self._ready.wait()
        key = self._queue.popleft()
        self._queued.discard(key)
        self._active.add(key)
        if self._queue:
            self._ready.set()  # let the next waiting worker through
        return key

    def done(self, key) -> None:
        self._active.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    @property
    def idle(self) -> bool:
        return not self._queue and not self._active and not self._dirty


class Reconciler:
    """Runs ``reconcile(key)`` for every object of ``resource`` (a storage key such as
    ``tenancy.kcp.dev/clusterworkspaces``) in all clusters: once at start, then on every change."""

    def __init__(self, store: Store, resource: str, reconcile: Callable[[Key], None], *, name: str,
                 workers: int = 4, backoff_base: float = 0.05, backoff_max: float = 30.0):
        self.store = store
        self.resource = resource
        self.reconcile = reconcile
        self.name = name
        self.workers = workers
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.queue = WorkQueue()
        self._failures: dict[Key, int] = {}
        self._retries: dict[Key, gevent.Greenlet] = {}
        self._greenlets: list[gevent.Greenlet] = []
        self._watcher = None
        self._stopped = False
        self._log = log.bind(controller=name)

    def start(self) -> None:
        self._stopped = False
        self._greenlets = [gevent.spawn(self._list_watch)]
        self._greenlets += [gevent.spawn(self._work) for _ in range(self.workers)]

    def stop(self) -> None:
        self._stopped = True
        if self._watcher is not None:
            self._watcher.close()
        gevent.killall([*self._greenlets, *self._retries.values()], block=True, timeout=5)
        self._greenlets = []
        self._retries.clear()

    def enqueue(self, key: Key) -> None:
        if not self._stopped:
            self.queue.add(key)

    @property
    def idle(self) -> bool:
        """Nothing queued, in flight or waiting for a retry (tests and benchmarks wait for this)."""
        return self.queue.idle and not self._retries

    # ------------------------------------------------------------------ list + watch

    def _list_watch(self) -> None:
        delay = self.backoff_base
        while not self._stopped:
            try:
                items, rv = self.store.list(self.resource)
                for obj in items:
                    meta = obj["metadata"]
                    self.enqueue(Key(self.resource, cluster_of(meta), meta.get("namespace", ""), meta["name"]))
                self._watcher = self.store.watch(self.resource, None, None, rv)
                delay = self.backoff_base
                with self._watcher:
                    while not self._stopped:
                        events = self._watcher.next(None)
                        if not events and self._watcher.closed:
                            return
                        for event in events:
                            self.enqueue(event.key)
            except ResourceExpiredError:
                self._log.info("watch expired, relisting")
            except StorageError:
                return  # the store is closing: the shard is stopping
            except Exception:  # never let the loop die; relist after a pause
                self._log.exception("list/watch failed", retry_in=delay)
                gevent.sleep(delay)
                delay = min(delay * 2, self.backoff_max)

    # ------------------------------------------------------------------ workers

    def _work(self) -> None:
        while True:
            key = self.queue.get()
            try:
                self.reconcile(key)
            except Exception as exc:
                self._retry_later(key, exc)
            else:
                self._failures.pop(key, None)
            finally:
                self.queue.done(key)

    def _retry_later(self, key: Key, exc: Exception) -> None:
        if self._stopped:
            return
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        delay = min(self.backoff_base * 2 ** (failures - 1), self.backoff_max)
        fields = {"cluster": key.cluster, "name": key.name, "attempt": failures, "retry_in": round(delay, 3)}
        if isinstance(exc, errors.Conflict):
            self._log.debug("reconcile conflict", **fields)
        elif isinstance(exc, errors.StatusError):
            self._log.warning("reconcile failed", error=exc.message, code=exc.code, **fields)
        else:
            self._log.warning("reconcile failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc, **fields)
        previous = self._retries.pop(key, None)
        if previous is not None:
            previous.kill(block=False)
        self._retries[key] = gevent.spawn_later(delay, self._retry, key)

    def _retry(self, key: Key) -> None:
        self._retries.pop(key, None)
        self.enqueue(key)


class TriggeredController:
    """A controller of one ``reconciler`` and its ``triggers``: more loops, on other resources, that feed it work
    (usually by enqueuing keys into it). All of them start, stop and are idle together."""

    reconciler: Reconciler
    triggers: list[Reconciler]

    def start(self) -> None:
        self.reconciler.start()
        for trigger in self.triggers:
            trigger.start()

    def stop(self) -> None:
        for trigger in self.triggers:
            trigger.stop()
        self.reconciler.stop()

    @property
    def idle(self) -> bool:
        """Nothing queued, in flight or waiting for a retry, in any loop (tests and benchmarks wait for this)."""
        return self.reconciler.idle and all(trigger.idle for trigger in self.triggers)
