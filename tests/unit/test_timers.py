"""The hub's shared timer (kcp_virtual.framework.timers) as watches use it (``Watch._after``/``_timer_fired``):
never early, at most its resolution late, one pending time per watch, nothing kept after close, one failure
not stopping the others, one scheduler per hub."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import gevent
import pytest

from kcp_virtual.framework import timers
from kcp_virtual.framework.watchstream import Watch


class Timed(Watch):
    """A watch that notes when its timer fired; ``then`` (if set) runs in ``_timer_fired``."""

    __slots__ = ("fired", "then")

    def __init__(self, then=None):
        super().__init__()
        self.fired: list[float] = []
        self.then = then

    def _timer_fired(self) -> None:
        self.fired.append(time.monotonic())
        if self.then is not None:
            self.then(self)


class Sink:
    def __init__(self):
        self.ends = 0

    def events(self, events) -> None:
        pass

    def ended(self) -> None:
        self.ends += 1


def _until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        gevent.sleep(0.005)


@pytest.mark.parametrize("seconds", [0.0, 0.03, 0.3, 1.5, 200.0])
def test_the_due_time_is_never_early_and_within_the_delays_resolution(seconds):
    watch = Timed()
    before = time.monotonic()
    due = watch._after(seconds)
    after = time.monotonic()
    try:
        assert before + seconds <= due <= after + seconds + timers.resolution(seconds)
    finally:
        watch.close()


@pytest.mark.parametrize("seconds", [0.0, 0.03, 0.12])
def test_a_watch_fires_once_not_before_its_time(seconds):
    watch = Timed()
    asked = time.monotonic()
    due = watch._after(seconds)
    _until(lambda: watch.fired)
    gevent.sleep(seconds + 0.05)
    assert len(watch.fired) == 1
    assert watch.fired[0] >= due >= asked + seconds
    assert watch._timer is None


def test_re_arming_replaces_the_pending_time_later_or_sooner():
    later, sooner = Timed(), Timed()
    later._after(0.01)
    later_due = later._after(0.15)
    sooner._after(30)
    sooner_due = sooner._after(0.02)
    _until(lambda: later.fired and sooner.fired)
    gevent.sleep(0.05)
    assert later.fired == [later.fired[0]] and later.fired[0] >= later_due
    assert sooner.fired == [sooner.fired[0]] and sooner.fired[0] >= sooner_due
    assert timers.of_hub().waiting == 0


def test_a_closed_watch_leaves_its_bucket_and_can_be_collected():
    scheduler = timers.of_hub()
    waiting = scheduler.waiting
    kept = [Timed() for _ in range(3)]
    watch = Timed()
    for each in kept:
        each._after(60)
    watch._after(60)
    assert scheduler.waiting == waiting + 4
    bucket = watch._timer
    assert watch in bucket
    ref = weakref.ref(watch)
    watch.close()
    assert watch not in bucket and watch._timer is None and scheduler.waiting == waiting + 3
    del watch
    gc.collect()
    assert ref() is None, "the bucket (or something else) still holds a closed watch"
    closed_later = Timed()
    closed_later._after(0.02)
    closed_later.close()
    closed_later._after(0.01)  # arming a closed watch keeps nothing either
    assert closed_later._timer is None
    gevent.sleep(0.08)
    assert closed_later.fired == []
    for w in kept:
        w.close()
    assert scheduler.waiting == waiting


def test_many_watches_with_the_same_and_different_delays_each_fire_once_in_their_time():
    n = 5 * timers.BUCKET_SIZE  # the same due time spills into several buckets
    delays = [0.02, 0.05, 0.05, 0.1]
    watches = [(Timed(), delays[i % len(delays)]) for i in range(n)]
    dues = [w._after(d) for w, d in watches]
    closed = [w for i, (w, _) in enumerate(watches) if i % 7 == 0]
    for w in closed:
        w.close()
    _until(lambda: all(w.fired for w, _ in watches if not w.closed))
    gevent.sleep(0.12)
    for (w, _), due in zip(watches, dues):
        if w.closed:
            assert w.fired == []
        else:
            assert len(w.fired) == 1 and w.fired[0] >= due
    assert timers.of_hub().waiting == 0


def test_a_watch_re_arming_itself_fires_again_like_bookmarks_do():
    watch = Timed(then=lambda w: w._after(0.02) if len(w.fired) < 4 else None)
    watch._after(0.02)
    _until(lambda: len(watch.fired) == 4)
    gevent.sleep(0.06)
    assert len(watch.fired) == 4
    assert all(b - a >= 0.02 for a, b in zip(watch.fired, watch.fired[1:]))


def test_a_watch_re_armed_by_one_fired_before_it_waits_for_its_new_time():
    late = Timed()
    early = Timed(then=lambda w: late._after(0.3))
    early._after(0.02)
    late._after(0.02)
    assert early._timer is late._timer  # one bucket, fired in order
    _until(lambda: early.fired)
    gevent.sleep(0.05)
    assert late.fired == []
    _until(lambda: late.fired)
    assert late.fired[0] - early.fired[0] >= 0.3 - 0.01
    late.close()


def test_a_raising_timer_ends_its_watch_and_the_others_still_fire():
    def fail(w):
        raise RuntimeError("boom")

    first, failing, last = Timed(), Timed(then=fail), Timed()
    sink = Sink()
    failing.start(sink)
    for w in (first, failing, last):
        w._after(0.02)
    assert first._timer is failing._timer is last._timer
    _until(lambda: last.fired)
    assert first.fired and failing.fired
    assert failing.closed and sink.ends == 1
    assert not first.closed and not last.closed


def test_each_hub_has_its_own_timer_and_a_hub_with_nothing_waiting_has_none():
    main = timers.of_hub()
    result = {}

    def run():
        own = timers.of_hub()
        watch = Timed()
        watch._after(0.02)
        _until(lambda: watch.fired)
        parked = Timed()
        parked._after(3600)
        parked.close()
        # nothing waits any more: the loop has nothing left to run (no timer of ours keeps it alive)
        result.update(own=own, fired=len(watch.fired), idle=gevent.wait(timeout=5))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    assert result["own"] is not main and result["own"].loop is not main.loop
    assert result["fired"] == 1 and result["idle"] is True
