"""A watch of the registry as a push ``Watch``: the store's fan-out hands it events, no greenlet waits.

``Registry.watch`` builds one. Started, it sends the initial events (the list, as ADDED, for a watch from
resourceVersion "" or "0" or with ``sendInitialEvents``) from the starting greenlet, then subscribes its
``Watcher`` to the store's fan-out (``storage.Watcher.subscribe``): each write reaches it in a hub callback,
where it turns what the watcher saw into what the client sees (a selector's filter: entering is ADDED,
leaving is DELETED; the watched version of a CRD's objects) and hands that to its sink. The hub's shared
timer (``kcp_virtual.framework.timers``) brings the deadline (``timeoutSeconds``), the BOOKMARKs and the
progress notifications. An event passed on unchanged is the storage's own ``Event``, whose stream line is
serialized once for every watcher.
"""

from __future__ import annotations

import time
from typing import Callable

from kcp_virtual.framework import errors
from kcp_virtual.framework.shardclient import WatchEvent
from kcp_virtual.framework.watchstream import Watch
from server.storage import ResourceExpiredError

__all__ = ["RegistryWatch", "PROGRESS_NOTIFY_INTERVAL"]

#: How often a ``progress_notify`` watch reports progress (a BOOKMARK, only when it advanced).
PROGRESS_NOTIFY_INTERVAL = 0.02
_OBJECT_EVENTS = ("ADDED", "MODIFIED", "DELETED")


def _translate(event, options) -> tuple[str, dict] | None:
    """Map a storage event onto what a filtered watcher sees: entering is ADDED, leaving is DELETED."""
    now = options.matches(event.obj)
    if event.type == "DELETED":
        return ("DELETED", event.obj) if now else None
    before = event.prev is not None and options.matches(event.prev)
    if now and before:
        return ("MODIFIED", event.obj)
    if now:
        return ("ADDED", event.obj)
    if before:
        return ("DELETED", event.obj)
    return None


class RegistryWatch(Watch):
    """See the module docstring. ``bookmark(rv, initial_events_end=False)`` makes a BOOKMARK's object."""

    __slots__ = ("watcher", "options", "items", "error", "send_initial", "allow_bookmarks", "progress",
                 "bookmark_interval", "deadline", "convert", "bookmark", "last_rv", "told_rv", "next_bookmark",
                 "next_progress")

    def __init__(self, watcher, options, items, since: int, *, bookmark: Callable[..., dict],
                 send_initial: bool = False, allow_bookmarks: bool = False, progress: bool = False,
                 bookmark_interval: float = 60.0, deadline: float | None = None,
                 convert: Callable[[dict], dict] | None = None, error: dict | None = None):
        super().__init__()
        self.watcher = watcher
        self.options = options if options is not None and options.filtered else None  # kept only to filter
        self.items = items
        self.error = error
        self.send_initial = send_initial
        self.allow_bookmarks = allow_bookmarks
        self.progress = allow_bookmarks and progress
        self.bookmark_interval = bookmark_interval
        self.deadline = deadline
        self.convert = convert
        self.bookmark = bookmark
        self.last_rv = self.told_rv = since  # told: the highest resourceVersion the client has had
        now = time.monotonic()
        self.next_bookmark = now + bookmark_interval
        self.next_progress = now + PROGRESS_NOTIFY_INTERVAL if self.progress else 0.0

    @classmethod
    def failed(cls, status: dict, bookmark: Callable[..., dict]) -> "RegistryWatch":
        """A watch that sends one ERROR event (the Status) and ends, as the apiserver's watch cache does."""
        return cls(None, None, (), 0, bookmark=bookmark, error=status)

    # ------------------------------------------------------------------ the stream

    def _run(self) -> None:
        if self.error is not None:
            self._emit((WatchEvent("ERROR", self.error),))
            self._end()
            return
        items, self.items = self.items, ()
        options, convert = self.options, self.convert
        if options is not None:
            items = [obj for obj in items if options.matches(obj)]
        initial = [WatchEvent("ADDED", obj if convert is None else convert(obj)) for obj in items]
        if self.send_initial:
            initial.append(WatchEvent("BOOKMARK", self.bookmark(self.told_rv, initial_events_end=True)))
        self._emit(initial)
        if self.closed:
            return
        self.watcher.subscribe(self)
        self._arm()

    # as the store watcher's subscriber
    def store_events(self, events) -> None:
        options, convert = self.options, self.convert
        filtered = options is not None
        out = []
        told = 0
        for event in events:
            if filtered:
                translated = _translate(event, options)
                if translated is None:
                    continue
                if translated[0] != event.type:
                    obj = translated[1] if convert is None else convert(translated[1])
                    out.append(WatchEvent(translated[0], obj))
                    told = event.rv
                    continue
            if convert is not None:
                obj = convert(event.obj)
                if obj is not event.obj:
                    out.append(WatchEvent(event.type, obj))
                    told = event.rv
                    continue
            out.append(event)
            told = event.rv
        self.last_rv = events[-1].rv
        if out:
            self.told_rv = told
            self._emit(out)

    def store_ended(self, error: BaseException | None) -> None:
        if isinstance(error, ResourceExpiredError):
            self._emit((WatchEvent("ERROR", errors.Gone(str(error)).status()),))
        self._end()

    # ------------------------------------------------------------------ time: deadline, bookmarks, progress

    def _arm(self) -> None:
        due = self.deadline
        if self.allow_bookmarks:
            due = self.next_bookmark if due is None else min(due, self.next_bookmark)
        if self.progress:
            due = min(due, self.next_progress)
        if due is not None:
            at = self._after(due - time.monotonic())
            if due is self.next_bookmark:  # the float its timer's bucket keeps, shared: none of this watch's own
                self.next_bookmark = at

    def _timer_fired(self) -> None:
        now = time.monotonic()
        if self.deadline is not None and now >= self.deadline:
            self._end()
            return
        watcher = self.watcher
        if self.progress and now >= self.next_progress:
            rv = watcher.progress_rv()
            if rv > self.told_rv:
                self.told_rv = rv
                self._emit((WatchEvent("BOOKMARK", self.bookmark(rv)),))
            self.next_progress = now + PROGRESS_NOTIFY_INTERVAL
        if self.allow_bookmarks and now >= self.next_bookmark:
            rv = max(self.last_rv, watcher.progress_rv())
            self.told_rv = max(self.told_rv, rv)
            self._emit((WatchEvent("BOOKMARK", self.bookmark(rv)),))
            self.next_bookmark = now + self.bookmark_interval
        if not self.closed:
            self._arm()

    def _stop(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
