"""One timer per gevent hub for every watch's deadline and bookmarks, so a waiting watch keeps one pointer.

Why: thousands of watches sit idle, each waiting for its next BOOKMARK (a minute) and its deadline
(``timeoutSeconds``, half an hour or more); every byte one keeps is paid once per idle watch. A libev timer
per watch costs ~250 bytes (the watcher, the bound methods it calls); here a waiting entry is one pointer in
a bucket of entries due together, plus the entry's own reference to that bucket.

How: a due time is rounded up (never early) to a resolution that grows with the delay -- 10 ms below one
second (tests and progress notifications use tens of milliseconds), 0.25 s below two minutes (bookmarks),
1 s beyond (deadlines) -- so entries armed at about the same time share a bucket. The buckets wait in a heap
(earliest first) and one libev timer is armed for the earliest. Re-arming or cancelling an entry removes it
from its bucket (buckets hold at most ``BUCKET_SIZE`` entries, so that removal stays cheap): a closed watch
is never kept alive by a bucket. A bucket emptied that way is skipped when its time comes.

An entry is an object with a ``_timer`` attribute, owned by this module (its bucket, or None), and a
``_fire()`` method, called in a hub callback (it must not block) once its time has come. An exception from
one is logged and does not keep the others of its bucket from firing.
"""

from __future__ import annotations

import heapq
import math
import time
import weakref
from typing import Any

import gevent
import structlog

__all__ = ["Timers", "of_hub", "cancel", "resolution", "BUCKET_SIZE"]

log = structlog.get_logger("kcp.timers")

#: At most this many entries share one bucket (more due at the same time start another): removing an entry
#: scans its bucket, and a watch can be closed at any time.
BUCKET_SIZE = 64


def resolution(seconds: float) -> float:
    """How late an entry due in ``seconds`` may fire: the finer, the fewer entries share a bucket."""
    if seconds < 1.0:
        return 0.01
    if seconds < 120.0:
        return 0.25
    return 1.0


class _Bucket(list):
    """The entries due at ``due`` (monotonic seconds), in the heap of their ``timers`` (None once it fires)."""

    __slots__ = ("due", "timers")

    def __init__(self, due: float, timers: "Timers | None"):
        super().__init__()
        self.due = due
        self.timers = timers

    def __lt__(self, other: "_Bucket") -> bool:  # the heap's order (a list compares its items otherwise)
        return self.due < other.due


class Timers:
    """The entries waiting in one hub (``of_hub``): ``arm(entry, seconds)``, ``cancel(entry)``."""

    def __init__(self, loop):
        self.loop = loop
        self._heap: list[_Bucket] = []
        self._open: dict[float, _Bucket] = {}  # due -> the bucket still taking entries for it
        self._waiting = 0  # entries in buckets: none, and the timer is stopped
        self._timer = None  # the libev timer, armed for ``_armed_for``
        self._armed_for: float | None = None
        self._firing = False

    def arm(self, entry: Any, seconds: float) -> float:
        """Fire ``entry`` in ``seconds`` (at most its resolution later), replacing its pending time; returns the
        monotonic time it is due at (one float shared by the entries of its bucket)."""
        cancel(entry)
        seconds = max(seconds, 0.0)
        step = resolution(seconds)
        wanted = time.monotonic() + seconds
        due = math.ceil(wanted / step) * step
        if due < wanted:  # rounding of the division
            due += step
        bucket = self._open.get(due)
        if bucket is None or len(bucket) >= BUCKET_SIZE:
            bucket = self._open[due] = _Bucket(due if bucket is None else bucket.due, self)
            heapq.heappush(self._heap, bucket)
            if not self._firing and (self._armed_for is None or bucket.due < self._armed_for):
                self._start(bucket.due)
        bucket.append(entry)
        entry._timer = bucket
        self._waiting += 1
        return bucket.due

    def _remove(self, entry: Any, bucket: _Bucket) -> None:
        bucket.remove(entry)
        entry._timer = None
        self._waiting -= 1
        if not self._waiting and not self._firing:  # nothing waits: no timer keeps the hub busy
            self._stop()
            self._heap.clear()
            self._open.clear()

    def _start(self, due: float) -> None:
        self._stop()
        self._armed_for = due
        timer = self._timer = self.loop.timer(max(due - time.monotonic(), 0.0))
        timer.start(self._run, update=True)  # from the loop's time brought up to now: not early

    def _stop(self) -> None:
        timer, self._timer = self._timer, None
        self._armed_for = None
        if timer is not None:
            timer.stop()
            timer.close()

    def _run(self) -> None:
        """The timer fired: fire every bucket whose time has come (taken out of the heap first: an entry firing
        may re-arm, into a later bucket), then arm the timer for the earliest left."""
        self._timer.close()
        self._timer = self._armed_for = None
        now = time.monotonic()
        heap, due = self._heap, []
        while heap and heap[0].due <= now:
            bucket = heapq.heappop(heap)
            if self._open.get(bucket.due) is bucket:
                del self._open[bucket.due]
            bucket.timers = None  # being fired: its entries are no longer removed from it (``cancel``)
            self._waiting -= len(bucket)
            due.append(bucket)
        self._firing = True
        try:
            for bucket in due:
                for entry in bucket:
                    if entry._timer is not bucket:  # cancelled or re-armed by an entry fired before it
                        continue
                    entry._timer = None
                    try:
                        entry._fire()
                    except Exception:  # noqa: BLE001 - the others of the bucket still fire
                        log.exception("timer callback failed", entry=type(entry).__name__)
                bucket.clear()
        finally:
            self._firing = False
            self._next()

    def _next(self) -> None:
        heap = self._heap
        if not self._waiting:
            heap.clear()
            self._open.clear()
            self._stop()
            return
        while not heap[0]:  # emptied by cancels; some bucket still has an entry
            bucket = heapq.heappop(heap)
            if self._open.get(bucket.due) is bucket:
                del self._open[bucket.due]
        if self._armed_for is None or heap[0].due < self._armed_for:
            self._start(heap[0].due)

    @property
    def waiting(self) -> int:
        """How many entries wait (in all buckets)."""
        return self._waiting


def cancel(entry: Any) -> None:
    """``entry`` no longer fires (nothing when it was not armed)."""
    bucket = entry._timer
    if bucket is None:
        return
    if bucket.timers is None:  # its bucket is being fired
        entry._timer = None
    else:
        bucket.timers._remove(entry, bucket)


_by_hub: "weakref.WeakKeyDictionary[Any, Timers]" = weakref.WeakKeyDictionary()


def of_hub(hub=None) -> Timers:
    """The ``Timers`` of ``hub`` (the current thread's by default): each hub has its loop, in its thread."""
    if hub is None:
        hub = gevent.get_hub()
    timers = _by_hub.get(hub)
    if timers is None:
        timers = _by_hub[hub] = Timers(hub.loop)
    return timers
