"""CPU-heavy work of one request on a worker thread, so that the gevent hub keeps serving everyone else.

The hub runs every request of every tenant. Work that takes it milliseconds of pure Python (decoding a
big body, pruning and defaulting it, computing its managedFields) runs on a one-thread pool of the calling
hub instead, while the greenlet waits cooperatively: the interpreter hands the GIL back every switch
interval (5 ms), so the hub is never held longer than that. One worker per hub, because a second thread
competing for the GIL would take turns from the hub too; the work queues behind it instead. Only what
touches nothing but its arguments may run here (never storage, which is the hub's).

The cyclic garbage collector is paused while the worker runs. Such work allocates hundreds of thousands of
short-lived objects (a YAML node graph, managedFields paths) that reference counting frees; counted by the
collector, they trigger full collections of the whole heap, which hold the GIL -- and the hub -- for 100 ms
and more (measured: a 1.2 MB YAML body held the hub 140 ms with the collector on, 16 ms with it paused,
and decoded twice as fast). The pause ends with the work, which is bounded by the body size limit.
"""

from __future__ import annotations

import gc
import threading
import weakref
from typing import Callable, TypeVar

import gevent
from gevent.threadpool import ThreadPool

__all__ = ["THRESHOLD_BYTES", "run", "run_if"]

#: Work on more bytes than this goes to the worker (a libyaml decode of 32 KiB takes about 4 ms).
THRESHOLD_BYTES = 32 * 1024

_T = TypeVar("_T")
_POOLS: "weakref.WeakKeyDictionary[object, ThreadPool]" = weakref.WeakKeyDictionary()


def run(fn: Callable[..., _T], *args) -> _T:
    """``fn(*args)`` on the hub's worker; its exception is raised here, in the calling greenlet."""
    hub = gevent.get_hub()
    pool = _POOLS.get(hub)
    if pool is None:
        pool = _POOLS[hub] = ThreadPool(1, hub=hub, idle_task_timeout=30)
    ok, value = pool.apply(_captured, (fn, args))
    if not ok:
        raise value
    return value


def run_if(size: int, fn: Callable[..., _T], *args) -> _T:
    """``fn(*args)``: on the worker when ``size`` (bytes of the input) is above ``THRESHOLD_BYTES``, else here."""
    return run(fn, *args) if size > THRESHOLD_BYTES else fn(*args)


class _CollectorPause:
    """``gc.disable()`` while any worker (one per hub) runs; enabled again by the last one, unless it was off."""

    def __init__(self):
        self._lock = threading.Lock()
        self._running = 0
        self._restore = False

    def __enter__(self):
        with self._lock:
            if self._running == 0:
                self._restore = gc.isenabled()
                gc.disable()
            self._running += 1

    def __exit__(self, *exc_info):
        with self._lock:
            self._running -= 1
            if self._running == 0 and self._restore:
                gc.enable()


_collector_paused = _CollectorPause()


def _captured(fn, args) -> tuple[bool, object]:
    # Returned, not raised: gevent's pool would print the traceback of an exception raised on its thread.
    try:
        with _collector_paused:
            return True, fn(*args)
    except BaseException as exc:  # noqa: BLE001 - re-raised by run() in the calling greenlet
        return False, exc
