"""Logging: structlog configuration and the one-line-per-request WSGI middleware.

The hot path is native structlog (filtering bound logger, cached, orjson to a bytes stream:
6-8 µs a line). Stdlib loggers (gevent, urllib3, kubernetes, ...) go through structlog's
``ProcessorFormatter`` so every line has the same format and carries the request context.
"""

from __future__ import annotations

import atexit
import contextvars
import itertools
import logging
import os
import re
import sys
import threading
import time
from typing import Any, Callable, Iterable

import gevent
import gevent.hub
import orjson
import structlog
from structlog.contextvars import bind_contextvars

from server.http.audit import AuditLog
from server.http.metrics import Metrics

#: Libraries that log every HTTP request at INFO/DEBUG; only shown from this verbosity on
#: (klog's -v=6 is where client-go logs requests).
CHATTY_LIBRARY_VERBOSITY = 6
CHATTY_LIBRARIES = ("urllib3", "kubernetes", "requests")
#: Verbosity (klog-style ``-v``) from which debug lines are emitted.
DEBUG_VERBOSITY = 4
#: Verbosity from which every request gets its access line; below it only server errors (5xx) do, so a
#: developer running kcp sees the shard's own news, not kubectl's traffic (``kcp start -v 2`` for it).
ACCESS_LOG_VERBOSITY = 2


class _Access:
    """Whether every request is logged (set by ``configure``; read once per request)."""

    every_request = True  # until configured: embedders and tests that never call configure() see them all


_access = _Access()


def _level(verbosity: int) -> int:
    if verbosity < 0:
        return logging.WARNING
    return logging.DEBUG if verbosity >= DEBUG_VERBOSITY else logging.INFO


def _orjson_bytes(obj: Any, **_: Any) -> bytes:
    try:
        return orjson.dumps(obj, default=str)
    except TypeError:  # e.g. a nested dict with int keys; the option is slower, so only on demand
        return orjson.dumps(obj, default=str, option=orjson.OPT_NON_STR_KEYS)


def _orjson_str(obj: Any, **_: Any) -> str:
    return _orjson_bytes(obj).decode()


class _UTCStamper:
    """ISO-8601 UTC timestamps like ``TimeStamper(fmt="iso", utc=True)`` at a third of the cost.

    The date/time part is formatted once per second; only the microseconds change per line.
    """

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache = (-1, "")  # (second, prefix), replaced as one object so threads agree

    def __call__(self, logger: Any, method_name: str, event_dict: dict) -> dict:
        now = time.time()
        sec = int(now)
        cached_sec, prefix = self._cache
        if sec != cached_sec:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec))
            self._cache = (sec, prefix)
        event_dict["timestamp"] = f"{prefix}{int((now - sec) * 1e6):06d}Z"
        return event_dict


_NEEDS_QUOTES = re.compile("[ \t=\r\n\"']")  # ConsoleRenderer's rule for quoting a string value


_RENDERED: dict[str, str] = {}  # string value -> as the console shows it (paths, users, ids repeat)
_RENDERED_MAX = 4096


def _console_value(value: Any) -> str:
    if isinstance(value, str):
        shown = _RENDERED.get(value)
        if shown is None:
            if len(_RENDERED) >= _RENDERED_MAX:
                _RENDERED.clear()
            shown = _RENDERED[value] = repr(value) if _NEEDS_QUOTES.search(value) else value
        return shown
    return repr(value)


class _PlainConsoleRenderer:
    """``ConsoleRenderer(colors=False)``'s exact line at about a quarter of its cost (29 -> 7 µs a line,
    paid once per request): ``<timestamp> [<level>] <event padded to 30> [<logger>] key=value ...``, keys
    sorted. Lines carrying an exception or a stack go to ConsoleRenderer itself."""

    def __init__(self) -> None:
        self._full = structlog.dev.ConsoleRenderer(colors=False)
        self._order: dict[tuple, list] = {}  # the keys of a line -> sorted (every access line has the same)

    def __call__(self, logger: Any, method_name: str, event_dict: dict) -> str:
        if "exception" in event_dict or "exc_info" in event_dict or "stack" in event_dict:
            return self._full(logger, method_name, event_dict)
        timestamp = event_dict.pop("timestamp", None)
        level = event_dict.pop("level", None)
        event = str(event_dict.pop("event", ""))
        logger_name = event_dict.pop("logger", None) or event_dict.pop("logger_name", None)
        parts = []
        if timestamp is not None:
            parts.append(str(timestamp))
        if level is not None:
            parts.append(f"[{level:<9}]")
        if event_dict or logger_name is not None:
            parts.append(f"{event:<30}")
        else:
            parts.append(event)
        if logger_name is not None:
            parts.append(f"[{logger_name}]")
        if event_dict:
            keys = tuple(event_dict)
            order = self._order.get(keys)
            if order is None:
                if len(self._order) >= 256:
                    self._order.clear()
                order = self._order[keys] = sorted(keys)
            parts.append(" ".join([f"{key}={_console_value(event_dict[key])}" for key in order]))
        return " ".join(parts)


class _LoopBatchedLogger:
    """structlog's ``WriteLogger``/``BytesLogger`` (write and flush a line), except that lines logged by a greenlet
    are gathered and written once per turn of that thread's gevent loop.

    Under load many requests end in one turn, and a write plus flush per access line was a tenth of a
    forwarded request's CPU on the shard. The thread's main greenlet (start-up, shutdown, threads without
    gevent) writes at once; a turn's lines are written as soon as the loop runs its callbacks, so at most
    the lines of the current turn are lost to a ``kill -9``, and 64 KiB pending are written at once.
    """

    _MAX_PENDING = 64 * 1024

    def __init__(self, file, *, binary: bool = False):
        self._file = file
        self._newline, self._empty = (b"\n", b"") if binary else ("\n", "")
        self._lock = threading.Lock()
        self._local = threading.local()

    def msg(self, message) -> None:
        current = gevent.getcurrent()
        if current.parent is None and not isinstance(current, gevent.hub.Hub):  # a thread's main greenlet
            self._write([message, self._newline])
            return
        local = self._local
        pending = getattr(local, "pending", None)
        if pending is None:
            pending = local.pending = []
            local.size = 0
        pending.append(message)
        pending.append(self._newline)
        local.size += len(message)
        if local.size >= self._MAX_PENDING:
            self.flush()
        elif len(pending) == 2:  # the first line of this turn: write them all when the loop next runs callbacks
            gevent.get_hub().loop.run_callback(self.flush)

    log = debug = info = warn = warning = err = error = critical = exception = fatal = failure = msg

    def flush(self) -> None:
        """Write this thread's pending lines (also called at exit)."""
        pending = getattr(self._local, "pending", None)
        if pending:
            self._local.pending, self._local.size = [], 0
            self._write(pending)

    def _write(self, pieces: list) -> None:
        with self._lock:
            self._file.write(self._empty.join(pieces))
            self._file.flush()


class _LoopBatchedLoggerFactory:
    def __init__(self, file, *, binary: bool = False):
        self.logger = _LoopBatchedLogger(file, binary=binary)
        atexit.register(self.logger.flush)

    def __call__(self, *args: Any) -> _LoopBatchedLogger:
        return self.logger


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _OwnHandler(logging.StreamHandler):
    """Marks the root handler we install, so reconfiguring replaces it instead of stacking."""


def configure(format: str = "text", verbosity: int = 0, *, stream=None) -> None:  # noqa: A002 - CLI flag name
    """Configure structlog and stdlib logging for the process.

    ``format`` is ``"text"`` (console renderer, colours only on a tty) or ``"json"`` (one orjson
    object per line). ``verbosity`` is klog-like: <0 warnings only, 0-3 info (from 2 with an access
    line per request, below it only for 5xx answers), >=4 debug, >=6 also HTTP chatter from
    urllib3/kubernetes. ``stream`` defaults to stderr (like kube components); JSON goes to its
    binary buffer when it has one.
    """
    if format not in ("text", "json"):
        raise ValueError(f"unknown log format {format!r} (want text or json)")
    stream = stream if stream is not None else sys.stderr
    level = _level(verbosity)
    _access.every_request = verbosity >= ACCESS_LOG_VERBOSITY
    timestamper = _UTCStamper()
    shared = [structlog.contextvars.merge_contextvars, structlog.processors.add_log_level, timestamper]

    if format == "json":
        tail = [structlog.processors.StackInfoRenderer(), structlog.processors.format_exc_info]
        buffer = getattr(stream, "buffer", None)
        if buffer is not None:
            renderer = structlog.processors.JSONRenderer(serializer=_orjson_bytes)
            factory = _LoopBatchedLoggerFactory(buffer, binary=True)
        else:
            renderer = structlog.processors.JSONRenderer(serializer=_orjson_str)
            factory = _LoopBatchedLoggerFactory(stream)
        stdlib_renderer = structlog.processors.JSONRenderer(serializer=_orjson_str)
        stdlib_tail = tail
    else:
        # ConsoleRenderer formats exc_info itself; format_exc_info before it would double it.
        colors = _isatty(stream)
        renderer = stdlib_renderer = structlog.dev.ConsoleRenderer(colors=True) if colors else _PlainConsoleRenderer()
        tail = stdlib_tail = [structlog.processors.StackInfoRenderer()]
        factory = _LoopBatchedLoggerFactory(stream)

    structlog.configure(
        processors=[*shared, *tail, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
        context_class=dict,
        cache_logger_on_first_use=True,
    )

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *stdlib_tail, stdlib_renderer],
    )
    handler = _OwnHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _OwnHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    chatty = level if verbosity >= CHATTY_LIBRARY_VERBOSITY else max(level, logging.WARNING)
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(chatty)


def route_to_stdlib(verbosity: int = 0) -> None:
    """Send every structlog line through the stdlib ``logging`` module, rendered as ``configure`` renders
    text, and add no handler: whoever owns logging decides where lines go. The test harness uses it, so
    pytest captures a shard's lines with each test (shown when it fails) instead of their leaking into
    its output from the shard's threads."""
    level = _level(verbosity)
    _access.every_request = verbosity >= ACCESS_LOG_VERBOSITY
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level, _UTCStamper(),
                    structlog.processors.StackInfoRenderer(), _PlainConsoleRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.stdlib.LoggerFactory(),
        context_class=dict,
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _OwnHandler)]:
        root.removeHandler(old)
    root.setLevel(level)


# A random per-process prefix plus a counter: unique across restarts, ~10x cheaper than uuid4.
_ID_PREFIX = os.urandom(6).hex()
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}-{next(_ID_COUNTER):x}"


_PATH_CONTEXTS: dict[str, tuple[str | None, str | None]] = {}  # paths repeat (a hot object, a controller's lists)
_PATH_CONTEXTS_KEPT = 4096


def _path_context(path: str) -> tuple[str | None, str | None]:
    """``(cluster, virtual_workspace)`` from ``/clusters/<c>/...`` or ``/services/<vw>/.../clusters/<c>/...``."""
    context = _PATH_CONTEXTS.get(path)
    if context is None:
        if len(_PATH_CONTEXTS) >= _PATH_CONTEXTS_KEPT:
            _PATH_CONTEXTS.clear()
        context = _PATH_CONTEXTS[path] = _parse_path_context(path)
    return context


def _parse_path_context(path: str) -> tuple[str | None, str | None]:
    vw = None
    if path.startswith("/clusters/"):
        i = 10
    elif path.startswith("/services/"):
        end = path.find("/", 10)
        vw = path[10:end] if end >= 0 else path[10:]
        i = path.find("/clusters/", 10)
        if i < 0:
            return None, vw or None
        i += 10
    else:
        return None, None
    end = path.find("/", i)
    cluster = path[i:end] if end >= 0 else path[i:]
    return cluster or None, vw or None


#: Keys the middleware binds for every request (None until inner code fills them in).
REQUEST_KEYS = ("request_id", "user", "cluster", "virtual_workspace", "verb", "resource")
# structlog keeps one ContextVar per key for the process; bind_contextvars' tokens hand them
# out publicly. Binding in a throwaway Context leaves no trace in the importing context.
_VARS = {k: t.var for k, t in contextvars.Context().run(
    bind_contextvars, **dict.fromkeys(REQUEST_KEYS)).items()}
_REQUEST_VARS = tuple(_VARS[k] for k in REQUEST_KEYS)
_REQUEST_VAR_SET = frozenset(_REQUEST_VARS)
_REQUEST_ID, _USER, _CLUSTER, _VW, _VERB, _RESOURCE = _REQUEST_VARS
_STRUCTLOG_VAR = _REQUEST_ID.name[:-len("request_id")]  # the prefix of structlog's ContextVars: "structlog_"
_END = object()


def bind_user(name: str) -> None:
    """``bind_contextvars(user=name)`` for the request being served, without its general machinery."""
    _USER.set(name)


def current_request_id() -> str | None:
    """The id of the request being served (what ``request_id`` is bound to), without copying the context."""
    return _REQUEST_ID.get(None)


class RequestLogMiddleware:
    """Bind per-request log context, emit one access line per request, record metrics.

    Binds ``request_id`` (from ``X-Request-Id`` or generated), ``cluster`` and
    ``virtual_workspace`` (from the path) and placeholders for ``user``, ``verb`` and
    ``resource``, which inner code fills with ``structlog.contextvars.bind_contextvars``. Bind
    ``verb="watch"`` before returning the response iterable so the request counts as an open
    watch rather than in-flight. The line is logged when the server closes the response
    iterable, i.e. after the last byte of a streamed watch, not when the app returns.
    """

    def __init__(self, app: Callable, metrics: Metrics | None = None, *, logger=None,
                 event: str = "request", audit: AuditLog | None = None):
        self.app = app
        self.metrics = metrics
        self.audit = audit
        self.event = event
        self._proxy = logger if logger is not None else structlog.get_logger()
        self._log = None  # resolved on first use, after configure() has run

    def _logger(self):
        # A lazy proxy pays a __getattr__ + bind() per call; resolve it once.
        log = self._log
        if log is None:
            bind = getattr(self._proxy, "bind", None)
            log = self._log = bind() if bind is not None else self._proxy
        return log

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        # Each request runs in a fresh, empty Context rather than clear_contextvars() on the
        # connection greenlet's (reused across keep-alive requests): nothing can leak from the
        # previous request, and it is ~1 µs cheaper. Iteration and close() re-enter it.
        ctx = contextvars.Context()
        return ctx.run(self._call, ctx, environ, start_response)

    def _begin(self, environ: dict) -> tuple[float, str | None]:
        """Bind the request's context (in the current, fresh Context) and count it in flight."""
        start = time.perf_counter()
        cluster, vw = _path_context(environ.get("PATH_INFO", ""))
        _REQUEST_ID.set(environ.get("HTTP_X_REQUEST_ID") or new_request_id())
        _USER.set(None)
        _CLUSTER.set(cluster)
        _VW.set(vw)
        _VERB.set(None)
        _RESOURCE.set(None)
        if self.metrics is not None:
            self.metrics.inflight_requests += 1
        return start, vw

    def _streaming(self) -> bool:
        """A response starts streaming: a watch moves from the in-flight gauge to the open-watches one."""
        metrics = self.metrics
        if metrics is None or _VERB.get() != "watch":
            return False
        metrics.inflight_requests -= 1
        metrics.open_watches += 1
        return True

    def _record(self, environ: dict, start: float, code: int, nbytes: int, vw: str | None, watch: bool) -> None:
        """The access line and the metrics of a finished request."""
        elapsed = time.perf_counter() - start
        if _access.every_request or code >= 500:
            self._logger().info(self.event, method=environ.get("REQUEST_METHOD"), path=environ.get("PATH_INFO"),
                                code=code, latency_ms=round(elapsed * 1000.0, 3), bytes=nbytes)
        if self.audit is not None:
            self._audit(environ, "ResponseComplete", code, elapsed, vw)
        metrics = self.metrics
        if metrics is not None:
            verb = _VERB.get()
            metrics.observe_request(verb.upper() if verb else environ.get("REQUEST_METHOD", ""),
                                    _RESOURCE.get() or "", code, vw or "", elapsed, watch=watch)
            if watch:
                metrics.open_watches -= 1
            else:
                metrics.inflight_requests -= 1

    def _audit(self, environ: dict, stage: str, code: int, elapsed: float, vw: str | None) -> None:
        audit = self.audit
        if audit.audited(environ):
            audit.write(audit.event(environ, stage, code, time.time() - elapsed, request_id=_REQUEST_ID.get(None),
                                    cluster=_CLUSTER.get(None), virtual_workspace=vw))

    def intercepting(self, intercept: Callable) -> Callable:
        """``intercept`` (a ``server.http.serving.Server`` interceptor) in a request's own log context, with the
        same access line and metrics as a request through the app; a request it declines leaves no trace
        (the app serves and logs it)."""
        def run(environ: dict, exchange) -> bool:
            return contextvars.Context().run(self._intercept, intercept, environ, exchange)

        return run

    def _intercept(self, intercept: Callable, environ: dict, exchange) -> bool:
        start, vw = self._begin(environ)
        kept = None  # what the audit needs of the environ, if there is an audit log
        if self.audit is None:
            exchange.on_stream = self._streaming
        else:  # a stream lets go of the request's headers (RawExchange.start_stream): keep what the audit needs
            kept = self.audit.kept(environ)

            def on_stream() -> bool:
                watch = self._streaming()
                kept.update(self.audit.kept(environ))
                if watch:
                    self._audit(kept, "ResponseStarted", exchange.status, time.perf_counter() - start, vw)
                return watch

            exchange.on_stream = on_stream
        try:
            handled = intercept(environ, exchange)
        except BaseException:
            self._record(environ, start, exchange.status or 500, exchange.bytes, vw, exchange.counted_as_watch)
            raise
        if handled:
            parked = exchange.parked
            if kept is not None:
                kept.update(self.audit.kept(environ))
            if parked is None:
                self._record(kept if kept is not None else environ, start, exchange.status, exchange.bytes, vw,
                             exchange.counted_as_watch)
            else:  # the stream goes on without this greenlet: its line when it ends, in this request's context
                parked.when_done(_ParkedLine(self, environ, kept, start, exchange.status, exchange.bytes, vw,
                                             exchange.counted_as_watch, parked))
        elif self.metrics is not None:
            self.metrics.inflight_requests -= 1
        return handled

    def _call(self, ctx: contextvars.Context, environ: dict, start_response: Callable) -> "_Request":
        start, vw = self._begin(environ)
        metrics = self.metrics
        state = _Request(self, environ, start, vw)
        state.ctx = ctx

        def capture(status, headers, exc_info=None):
            state.status = sys.intern(status)  # kept through a watch: one "200 OK" for all of them
            return start_response(status, headers, exc_info)

        try:
            state.result = self.app(environ, capture)
        except BaseException as exc:
            if state.status is None:  # what the server answers for it (server.http.serving.BodyTimeout: 408)
                state.status = getattr(exc, "http_status", "500")
            state.finish()
            raise
        if metrics is not None:
            state.watch = self._streaming()
            if state.watch and self.audit is not None:
                self._audit(environ, "ResponseStarted", int(state.status[:3]), time.perf_counter() - start, vw)
        return state


class _Request:
    """The response iterable: counts bytes, and logs + records metrics on ``close()``.

    Every ``next()`` runs in the request's Context so a streaming generator's log lines (and
    its bind_contextvars calls) carry the request context.
    """

    __slots__ = ("mw", "environ", "start", "vw", "status", "result", "bytes", "watch", "done", "ctx")

    def __init__(self, mw: RequestLogMiddleware, environ: dict, start: float, vw: str | None):
        self.mw = mw
        self.environ = environ
        self.start = start
        self.vw = vw
        self.status = None
        self.result = ()
        self.bytes = 0
        self.watch = False
        self.done = False

    def __iter__(self):
        run = self.ctx.run
        it = iter(self.result)
        while True:
            # next() with a default: no StopIteration raised through Context.run per response.
            chunk = run(next, it, _END)
            if chunk is _END:
                return
            self.bytes += len(chunk)
            yield chunk

    @property
    def park(self):
        """The app's ``park(outlet)`` when its response can go on without the greenlet (a watch), else None.
        The access line is then logged when the parked stream ends, with the bytes it wrote."""
        return self._park if getattr(self.result, "park", None) is not None else None

    def _park(self, outlet) -> None:
        self.ctx.run(self._park_in_context, outlet)

    def _park_in_context(self, outlet) -> None:
        # An idle watch may go on for an hour: from now on only a ``_ParkedLine`` is kept for its line, not this
        # object, its environ or its Context (the outlet ends the response; its on_gone closes the watch).
        environ, self.environ = self.environ, None
        self.done = True  # the line is the _ParkedLine's now
        audit = self.mw.audit
        outlet.when_done(_ParkedLine(self.mw, environ, audit.kept(environ) if audit is not None else None,
                                     self.start, _code(self.status), self.bytes, self.vw, self.watch, outlet))
        result, self.result = self.result, ()
        result.park(outlet)

    def close(self) -> None:
        self.ctx.run(self._close)

    def _close(self) -> None:
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            self.finish()

    def finish(self) -> None:
        if self.done:
            return
        self.done = True
        self.mw._record(self.environ, self.start, _code(self.status), self.bytes, self.vw, self.watch)


def _code(status: str | None) -> int:
    """The code of a WSGI status line ("200 OK"), 0 if there is none."""
    try:
        return int(status[:3]) if status else 0
    except ValueError:
        return 0


class _ParkedLine:
    """What the access line of a parked stream needs, in place of its request, environ and Context: an idle
    watch may go on for an hour and every byte here is paid once per idle watch (a request's Context with its
    six bound values is a ~260-byte HAMT; these are slots). Built in the request's Context, whose bound values
    it keeps; called when the stream ends (it is the outlet's ``when_done`` callback: an object, not a bound
    method, which would be one more object per watch) and logs the line in a Context rebuilt from them."""

    __slots__ = ("mw", "method", "path", "kept", "start", "code", "bytes", "vw", "watch", "outlet", "request_id",
                 "user", "cluster", "virtual_workspace", "verb", "resource", "extra")

    def __init__(self, mw: RequestLogMiddleware, environ: dict, kept: dict | None, start: float, code: int,
                 nbytes: int, vw: str | None, watch: bool, outlet):
        self.mw = mw
        self.method = sys.intern(environ.get("REQUEST_METHOD") or "")
        self.path = sys.intern(environ.get("PATH_INFO") or "")  # watchers of one URL share it
        self.kept = kept  # what the audit needs of the environ (None without an audit log)
        self.start = start
        self.code = code
        self.bytes = nbytes
        self.vw = vw
        self.watch = watch
        self.outlet = outlet
        (self.request_id, self.user, self.cluster, self.virtual_workspace, self.verb,
         self.resource) = (var.get(None) for var in _REQUEST_VARS)
        extra = ()  # what else inner code bound for the log (an impersonator): rare
        for var, value in contextvars.copy_context().items():
            if var not in _REQUEST_VAR_SET and value is not Ellipsis and var.name.startswith(_STRUCTLOG_VAR):
                extra += (var, value)
        self.extra = extra

    def __call__(self) -> None:
        contextvars.Context().run(self._record)

    def _record(self) -> None:
        for var, value in zip(_REQUEST_VARS, (self.request_id, self.user, self.cluster, self.virtual_workspace,
                                              self.verb, self.resource)):
            var.set(value)
        extra = self.extra
        for i in range(0, len(extra), 2):
            extra[i].set(extra[i + 1])
        outlet, self.outlet = self.outlet, None
        environ = self.kept if self.kept is not None else {"REQUEST_METHOD": self.method, "PATH_INFO": self.path}
        self.mw._record(environ, self.start, self.code, self.bytes + (outlet.bytes if outlet is not None else 0),
                        self.vw, self.watch)
