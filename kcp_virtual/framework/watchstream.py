"""A watch as an HTTP stream: one JSON line per event (plain or as Table rows), ended when the client leaves.

Shared by the shard's REST layer and the virtual workspaces so both stream watches identically.
"""

from __future__ import annotations

import select
from typing import Callable, Sequence

import orjson
from werkzeug.wrappers import Response

from kcp_virtual.framework import table

__all__ = ["json_lines", "table_lines", "peer_gone_check", "WatchResponse"]


def json_lines(events):
    """One JSON line per event; the generator's close() (client gone) closes the storage watcher.

    An event that carries its pre-serialized line (``encoded``: the same bytes for every watcher of a
    write) is not serialized again: fan-out to N watchers then costs one serialization, not N.
    """
    try:
        for event in events:
            encoded = getattr(event, "encoded", None)
            yield encoded() if encoded is not None else orjson.dumps({"type": event.type, "object": event.object}) + b"\n"
    finally:
        events.close()


def table_lines(events, columns: Sequence[table.Column], include_object: str, version: str):
    """Events as ``meta.k8s.io`` Tables (``kubectl get -w``): column definitions only in the first one."""
    first = True
    try:
        for event in events:
            if event.type in ("ADDED", "MODIFIED", "DELETED"):
                obj = table.to_table([event.object], columns, list_meta={
                    "resourceVersion": event.object["metadata"].get("resourceVersion", "")},
                    include_object=include_object, no_headers=not first, version=version)
                first = False
            else:
                obj = event.object
            yield orjson.dumps({"type": event.type, "object": obj}) + b"\n"
    finally:
        events.close()


def peer_gone_check(environ) -> Callable[[], bool] | None:
    """A cheap non-blocking check, run while a watch is idle, that the client closed its connection.

    pywsgi only notices a disconnect when it writes; an idle watch would otherwise hold its greenlet
    until the next event or bookmark. A watch client never sends anything after its request, so a
    readable socket means EOF (or a TLS close_notify).
    """
    client_gone = environ.get("kcp.client_gone")  # an HTTP/2 stream: the server knows (server.http.serving_h2)
    if client_gone is not None:
        return client_gone
    sock = environ.get("kcp.socket")
    if sock is None:
        return None

    def gone() -> bool:
        try:
            fd = sock.fileno()
            if fd < 0:
                return True
            poller = select.poll()  # not select(): watch sockets have descriptors above FD_SETSIZE
            poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True

    return gone


class WatchResponse(Response):
    """A streaming response whose status and headers go out at once, before the first event.

    pywsgi sends headers with the first non-empty chunk, but client-go (``kubectl wait``, informers)
    waits for the headers before it considers a watch established, so an idle watch must not hold
    them back. Writing an empty string through the WSGI ``write`` callable flushes them.
    """

    def __call__(self, environ, start_response):
        app_iter, status, headers = self.get_wsgi_response(environ)
        write = start_response(status, headers)
        if callable(write):
            write(b"")
        return app_iter
