"""kube's max-in-flight filter (``--max-requests-inflight``, ``--max-mutating-requests-inflight``).

Why: without a cap, a burst of requests queues in the server's greenlets until every client times out
at once; with one, what is past the cap is answered at once with a 429 Status and ``Retry-After: 1``,
which client-go and the kubernetes Python client retry, and the requests admitted keep their latency.
As in kube-apiserver: read-only (GET, HEAD, OPTIONS) and mutating requests have separate limits,
long-running requests (watches) are exempt and counted apart (``apiserver_open_watches``), members of
``system:masters`` are exempt, and a limit of 0 means no limit. The shard and the external
virtual-workspace process use the same class; it costs two integer updates per request. Under gevent a
request is in flight only while it waits -- for its body, a backend (a forwarded request, a review), or
a slow reader of its answer -- so that is what the limits bound.
"""

from __future__ import annotations

from typing import Callable, Iterable

from kcp_virtual.framework.errors import TooManyRequests

__all__ = ["InFlightLimiter", "is_watch", "READ_ONLY", "MUTATING", "REQUEST_KINDS", "IN_FLIGHT_SLOT",
           "answer"]

#: Where an app keeps a request's slot in the environ between admitting it and sending its answer.
IN_FLIGHT_SLOT = "kcp.in_flight_slot"

READ_ONLY, MUTATING = "readOnly", "mutating"  # kube's request_kind label values
REQUEST_KINDS = (READ_ONLY, MUTATING)
_READ_ONLY_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))
_PRIVILEGED_GROUP = "system:masters"


def is_watch(environ: dict) -> bool:
    """A watch (``?watch=true|1`` or a legacy ``/watch/`` path): long-running, never limited."""
    query = environ.get("QUERY_STRING", "")
    if "watch=" in query and any(part in ("watch=true", "watch=1") for part in query.split("&")):
        return True
    return "/watch/" in environ.get("PATH_INFO", "")


class _Slot:
    """A request's place under its limit, given back once (``release``, or leaving a ``with``)."""

    __slots__ = ("_limiter", "_kind")

    def __init__(self, limiter: "InFlightLimiter", kind: str | None):
        self._limiter, self._kind = limiter, kind

    def __enter__(self) -> "_Slot":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        if self._kind is not None:
            self._limiter.in_flight[self._kind] -= 1
            self._kind = None

    def held_until_sent(self, body: Iterable[bytes]) -> Iterable[bytes]:
        """``body`` (a WSGI response iterable) releasing this slot when the server closes it: as in kube, a
        request holds its slot until its response is written, so slow readers of big answers count too."""
        if self._kind is None:
            return body
        return _Releasing(body, self)


class _Releasing:
    __slots__ = ("_body", "_slot")

    def __init__(self, body: Iterable[bytes], slot: _Slot):
        self._body, self._slot = body, slot

    def __iter__(self):
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._slot.release()


class InFlightLimiter:
    """``admit(environ, groups)`` holds a slot for a request's duration (``with``), or raises 429
    (``try_admit``: None instead, for a caller that leaves the answer to someone else).

    ``in_flight`` and ``rejected`` are per request kind, for the host's metrics.
    """

    def __init__(self, max_read_only: int = 400, max_mutating: int = 200):
        self.limits = {READ_ONLY: max_read_only, MUTATING: max_mutating}
        self.in_flight = dict.fromkeys(REQUEST_KINDS, 0)
        self.rejected = dict.fromkeys(REQUEST_KINDS, 0)
        self._exempt = _Slot(self, None)

    def admit(self, environ: dict, groups) -> _Slot:
        slot = self.try_admit(environ, groups)
        if slot is None:
            self.rejected[self._kind(environ)] += 1
            raise TooManyRequests()
        return slot

    def try_admit(self, environ: dict, groups) -> _Slot | None:
        """A slot, or None (nothing counted) when the request's kind is at its limit."""
        kind = self._kind(environ)
        limit = self.limits[kind]
        if limit <= 0 or (kind == READ_ONLY and is_watch(environ)) or _PRIVILEGED_GROUP in groups:
            return self._exempt
        if self.in_flight[kind] >= limit:
            return None
        self.in_flight[kind] += 1
        return _Slot(self, kind)

    @staticmethod
    def _kind(environ: dict) -> str:
        return READ_ONLY if environ.get("REQUEST_METHOD", "GET") in _READ_ONLY_METHODS else MUTATING


def answer(environ: dict, start_response: Callable, respond: Callable[[], Callable]) -> Iterable[bytes]:
    """A WSGI app's answer: ``respond()`` (which may admit the request, leaving its slot at ``IN_FLIGHT_SLOT``) as
    a response iterable that holds the slot until sent; a BaseException (the body timed out, the server
    stopping) gives the slot back at once."""
    try:
        response = respond()
    except BaseException:
        slot = environ.pop(IN_FLIGHT_SLOT, None)
        if slot is not None:
            slot.release()
        raise
    slot = environ.pop(IN_FLIGHT_SLOT, None)
    body = response(environ, start_response)
    return body if slot is None else slot.held_until_sent(body)
