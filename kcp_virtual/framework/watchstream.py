"""Watches whose events are pushed, and a watch as an HTTP stream that no greenlet waits through.

Why push: a watch pulled by a greenlet holds that greenlet (its C stack, frames, the request) for as long
as the watch is idle -- most of what a shard with thousands of watches holds. A ``Watch`` instead hands
its events to a ``Sink`` from whoever produced them (the store's fan-out, an upstream HTTP/2 reader, an
informer), and a ``WatchBody`` writes them, encoded, into the client connection once the server has
*parked* it (``server.http.parking``): an idle watch is then its socket, an io watcher and a few objects.
The client leaving is noticed by that io watcher at once and ends the watch (``close()``).

For a virtual workspace author the contract stays small:

* a storage's ``watch`` returns a ``Watch``: the shard client's (``ShardClient.watch``), or one derived
  from it with ``watch.map(fn)``, where ``fn(event)`` returns the event to send (the same, a new
  ``WatchEvent``, a list of events, or None to drop it). ``fn`` runs in whatever context delivers the
  event and must not block (no I/O);
* a watch whose handling needs I/O (the workspaces view recomputes itself from a rules review) subclasses
  ``Watch`` and uses ``Watch.call_soon``: its handler then runs in a greenlet that exists only while it
  works;
* a plain iterator or generator of events still works (``as_watch`` wraps it): it is pulled by a
  greenlet of its own, i.e. the watch then holds one while idle, as before.

Every ``Watch`` can also be iterated (a greenlet then waits on it): how in-process consumers and tests
read a watch. Events are objects with ``type`` and ``object`` and optionally ``encoded()``, their stream
line serialized once for all watchers of the same write.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable, Iterable, Protocol, Sequence

import gevent
import gevent.event
import orjson
import structlog
from werkzeug.wrappers import Response

from kcp_virtual.framework import table, timers

__all__ = ["Sink", "Watch", "as_watch", "WatchBody", "json_line", "TableLines", "Outlet", "WatchResponse"]

log = structlog.get_logger("kcp.watch")
_READ = 1  # libev/libuv READ event


class Sink(Protocol):
    """Where a ``Watch`` delivers: ``events`` (a batch, in order) and, once, ``ended``. Neither may block."""

    def events(self, events: Sequence[Any]) -> None: ...

    def ended(self) -> None: ...


def _report(what: str) -> None:
    log.exception(what)


class Watch:
    """A watch that pushes its events into one sink; see the module docstring.

    Producers (subclasses) override ``_run`` (start producing: called by ``start``) and ``_stop`` (release
    upstream resources: called once, by ``close`` or when the watch ends by itself), and call ``_emit`` and
    ``_end``; ``_after`` schedules their deadline or next bookmark (``_timer_fired`` then runs), ``call_soon``
    work that may block. Consumers call ``start(sink)`` once and ``close()`` when they stop listening.
    """

    __slots__ = ("_sink", "_state", "_pull", "_calls", "_timer", "__weakref__")

    _NEW, _RUNNING, _DONE = 0, 1, 2

    def __init__(self):
        self._sink: Sink | None = None
        self._state = Watch._NEW
        self._pull: _Pull | None = None
        self._calls: deque | None = None
        self._timer = None  # the bucket it waits in (framework.timers), while ``_after`` is pending

    # ------------------------------------------------------------------ consumer side

    def start(self, sink: Sink) -> None:
        if self._state != Watch._NEW:
            raise RuntimeError("a watch is started once")
        self._sink = sink
        self._state = Watch._RUNNING
        try:
            self._run()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop listening: no more events, upstream released. ``ended`` is not called."""
        if self._state == Watch._DONE:
            return
        self._state = Watch._DONE
        self._sink = None
        self._cancel_timer()
        self._stop()

    @property
    def closed(self) -> bool:
        return self._state == Watch._DONE

    def map(self, fn: Callable[[Any], Any]) -> "Watch":
        """This watch with ``fn`` applied to each event: it returns an event, a list of them, or None (dropped)."""
        return _Mapped(self, fn)

    # ------------------------------------------------------------------ producer side

    def _run(self) -> None:
        pass

    def _stop(self) -> None:
        pass

    def _emit(self, events: Sequence[Any]) -> None:
        sink = self._sink
        if sink is not None and events:
            sink.events(events)

    def _end(self) -> None:
        """The watch ended by itself (deadline, error sent, upstream gone): tell the sink, release upstream."""
        if self._state == Watch._DONE:
            return
        sink = self._sink
        self.close()
        if sink is not None:
            sink.ended()

    def _after(self, seconds: float) -> float:
        """Call ``_timer_fired()`` (in a hub callback: it must not block) in ``seconds`` (at most its resolution
        later, ``framework.timers``), unless the watch is closed first; one pending per watch (a new one
        replaces it). What deadlines and bookmarks use: no greenlet waits, and the watch keeps one pointer.
        Returns the monotonic time it is due at, a float shared by the watches due with it."""
        if self.closed:
            return time.monotonic() + seconds
        return timers.of_hub().arm(self, seconds)

    def _timer_fired(self) -> None:
        """The time asked for with ``_after`` has come (subclasses: not blocking)."""

    def _fire(self) -> None:
        # called by the hub's Timers; a failing handler ends this watch, not the others due with it
        if self.closed:
            return
        try:
            self._timer_fired()
        except Exception:  # noqa: BLE001 - the client gets an end, not a stream that never ends
            _report("watch timer failed")
            self._end()

    def _cancel_timer(self) -> None:
        timers.cancel(self)

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` (which may block) after those already queued, in a greenlet that exists while there is work."""
        queue = self._calls
        if queue is None:
            queue = self._calls = deque()
        queue.append(fn)
        if len(queue) == 1:
            gevent.spawn(self._work, queue)

    def _work(self, queue: deque) -> None:
        while queue and not self.closed:
            try:
                queue[0]()
            except Exception:  # noqa: BLE001 - the client gets an end, not a hung stream
                _report("watch handler failed")
                self._end()
            finally:
                if queue:
                    queue.popleft()
        queue.clear()

    # ------------------------------------------------------------------ pulling (a greenlet waits)

    def __iter__(self):
        return self

    def __next__(self):
        pull = self._pull
        if pull is None:
            pull = self._pull = _Pull()
            self.start(pull)
        return pull.next(self)


class _Pull:
    """The sink of an iterated watch: a queue the iterating greenlet waits on."""

    __slots__ = ("queue", "done", "signal")

    def __init__(self):
        self.queue: deque = deque()
        self.done = False
        self.signal = gevent.event.Event()

    def events(self, events: Sequence[Any]) -> None:
        self.queue.extend(events)
        self.signal.set()

    def ended(self) -> None:
        self.done = True
        self.signal.set()

    def next(self, watch: Watch):
        while True:
            if self.queue:
                return self.queue.popleft()
            if self.done or watch.closed:
                raise StopIteration
            self.signal.clear()
            self.signal.wait()


class _Mapped(Watch):
    """``upstream.map(fn)``."""

    def __init__(self, upstream: Watch, fn: Callable[[Any], Any]):
        super().__init__()
        self.upstream = upstream
        self.fn = fn

    def _run(self) -> None:
        self.upstream.start(self)

    def _stop(self) -> None:
        self.upstream.close()

    # as the upstream's sink
    def events(self, events: Sequence[Any]) -> None:
        fn = self.fn
        out = []
        for event in events:
            result = fn(event)
            if result is None:
                continue
            if isinstance(result, list):
                out.extend(result)
            else:
                out.append(result)
        self._emit(out)

    def ended(self) -> None:
        self._end()


class _Pulled(Watch):
    """An iterator of events as a ``Watch``: pulled by a greenlet of its own (the generator storages' way)."""

    def __init__(self, iterator):
        super().__init__()
        self.iterator = iterator
        self.greenlet: gevent.Greenlet | None = None

    def _run(self) -> None:
        self.greenlet = gevent.spawn(self._pump)

    def _pump(self) -> None:
        try:
            for event in self.iterator:
                if self.closed:
                    return
                self._emit((event,))
        except Exception:  # noqa: BLE001 - the stream ends; the client watches again
            _report("watch iterator failed")
        finally:
            self.greenlet = None
            self._end()

    def _stop(self) -> None:
        greenlet = self.greenlet
        if greenlet is not None and greenlet is not gevent.getcurrent():
            greenlet.kill(block=False)
        close = getattr(self.iterator, "close", None)
        if close is not None and greenlet is None:
            close()


def as_watch(events: Watch | Iterable) -> Watch:
    """``events`` as a ``Watch``: itself, or an iterator pulled by its own greenlet."""
    return events if isinstance(events, Watch) else _Pulled(events)


# ---------------------------------------------------------------------- encodings

def json_line(event) -> bytes:
    """An event's stream line; the one its producer serialized for every watcher when it has ``encoded``."""
    encoded = getattr(event, "encoded", None)
    return encoded() if encoded is not None else orjson.dumps({"type": event.type, "object": event.object}) + b"\n"


class TableLines:
    """Events as ``meta.k8s.io`` Tables (``kubectl get -w``): column definitions only in the first one."""

    __slots__ = ("columns", "include_object", "version", "first")

    def __init__(self, columns: Sequence[table.Column], include_object: str, version: str):
        self.columns = columns
        self.include_object = include_object
        self.version = version
        self.first = True

    def __call__(self, event) -> bytes:
        if event.type in ("ADDED", "MODIFIED", "DELETED"):
            obj = table.to_table([event.object], self.columns, list_meta={
                "resourceVersion": event.object["metadata"].get("resourceVersion", "")},
                include_object=self.include_object, no_headers=not self.first, version=self.version)
            self.first = False
        else:
            obj = event.object
        return orjson.dumps({"type": event.type, "object": obj}) + b"\n"


# ---------------------------------------------------------------------- the HTTP side

class Outlet(Protocol):
    """A parked response body as the server offers it (``server.http.parking``): ``send`` frames and writes
    bytes without blocking (queued while the client is slow; a client too far behind is dropped), ``end`` ends
    the body normally; the server calls ``on_gone`` when the client left (or was dropped)."""

    on_gone: Callable[[], None] | None

    def send(self, data: bytes) -> None: ...

    def end(self) -> None: ...


class WatchBody:
    """The body of a watch response: ``watch``'s events, each encoded by ``encode`` into one line.

    A server that can park the connection calls ``park(outlet)`` (and iterates nothing); any other WSGI
    server iterates it (a greenlet then waits through the watch; the client leaving is still noticed at
    once when the environ names the socket, ``kcp.socket``). ``close()`` ends the watch.
    """

    __slots__ = ("watch", "encode", "environ", "_outlet")

    def __init__(self, watch: Watch, encode: Callable[[Any], bytes] = json_line, environ: dict | None = None):
        self.watch = watch
        self.encode = encode
        self.environ = environ
        self._outlet: Outlet | None = None

    def park(self, outlet: Outlet) -> None:
        """Write the events into ``outlet`` from now on, from whoever delivers them."""
        self.environ = None  # nothing of the request is kept for the watch's lifetime
        self._outlet = outlet
        outlet.on_gone = self  # calling it closes the watch: no bound method kept per idle watch
        self.watch.start(self)

    # as the watch's sink (parked)
    def events(self, events: Sequence[Any]) -> None:
        outlet = self._outlet
        if outlet is None:
            return
        encode = self.encode
        try:
            data = encode(events[0]) if len(events) == 1 else b"".join(map(encode, events))
        except Exception:  # noqa: BLE001 - one bad object must not take the connection down silently
            _report("watch event could not be encoded")
            self.watch.close()
            outlet.end()
            return
        outlet.send(data)

    def ended(self) -> None:
        outlet, self._outlet = self._outlet, None
        if outlet is not None:
            outlet.end()

    def close(self) -> None:
        self.watch.close()

    __call__ = close  # as the outlet's on_gone

    # pulled by a WSGI server that cannot park
    def __iter__(self):
        pull = _Pull()
        watcher = None
        sock = (self.environ or {}).get("kcp.socket")
        if sock is not None:
            try:
                watcher = gevent.get_hub().loop.io(sock.fileno(), _READ)
            except (OSError, ValueError):
                watcher = None
            else:  # a watch client sends nothing more: readable means it left
                watcher.start(lambda: (watcher.stop(), self.watch.close(), pull.ended()))
        self.environ = None
        try:
            self.watch.start(pull)
            encode = self.encode
            while True:
                try:
                    event = pull.next(self.watch)
                except StopIteration:
                    return
                yield encode(event)
        finally:
            if watcher is not None:
                watcher.stop()
                watcher.close()
            self.watch.close()


class WatchResponse(Response):
    """A streaming response whose status and headers go out at once, before the first event.

    pywsgi sends headers with the first non-empty chunk, but client-go (``kubectl wait``, informers)
    waits for the headers before it considers a watch established, so an idle watch must not hold
    them back. Writing an empty string through the WSGI ``write`` callable flushes them. A server that
    parks connections (``server.http.serving``) then parks a ``WatchBody`` (it has ``park``).
    """

    def __call__(self, environ, start_response):
        app_iter, status, headers = self.get_wsgi_response(environ)
        write = start_response(status, headers)
        if callable(write):
            write(b"")
        return app_iter

    @classmethod
    def of(cls, watch: Watch, encode: Callable[[Any], bytes], environ: dict, content_type: str) -> "WatchResponse":
        """The response of a watch: its events as lines, parked where the server can."""
        response = cls(WatchBody(watch, encode, environ), status=200, content_type=content_type,
                       direct_passthrough=True)
        response.headers["Cache-Control"] = "no-cache, private"
        return response
