"""The root of ``/services/``: finds the virtual workspace of a path, authorizes, and hands the request over.

Resolvers are asked in registration order and the first that accepts wins (kcp's root API server);
two virtual workspaces with one name are refused at construction, and a path nobody accepts is a
404 Status. Authentication is the host's (the shard, or the external process): the dispatcher is
called with the authenticated user. Then, on the path with the resolver's prefix stripped:

* ``/healthz``, ``/livez``, ``/readyz``: always allowed, answered with this virtual workspace's health;
* ``system:masters``: always allowed;
* everyone else: the virtual workspace's own authorizer decides, a denial is the apiserver's 403.

Each virtual workspace's ``ready()`` is also a check of the host's ``/readyz`` (``readiness()``).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import structlog
from structlog.contextvars import bind_contextvars
from werkzeug.wrappers import Request as HTTPRequest, Response

from kcp_virtual.framework import errors
from kcp_virtual.framework.audit import note_decision
from kcp_virtual.framework.authorization import Attributes, forbidden, is_master
from kcp_virtual.framework.requestinfo import parse_request_info
from kcp_virtual.framework.virtualworkspace import Request, VirtualWorkspace

__all__ = ["Dispatcher", "HEALTH_PATHS", "readiness_check_name"]

HEALTH_PATHS = ("/healthz", "/livez", "/readyz")
_HEALTH = {p: p for p in HEALTH_PATHS} | {p + "/": p for p in HEALTH_PATHS}
log = structlog.get_logger("kcp.virtual")


def readiness_check_name(name: str) -> str:
    return f"virtual-workspace:{name}"


def _probe(ready: Callable[[], bool]) -> bool:
    try:
        return bool(ready())
    except Exception:  # a failing probe means "not ready", not a failed request
        log.exception("readiness check failed")
        return False


class Dispatcher:
    """``dispatcher(request, user) -> Response`` for every path under ``/services/``."""

    def __init__(self, workspaces: Iterable[VirtualWorkspace]):
        self.workspaces = tuple(workspaces)
        seen: set[str] = set()
        for vw in self.workspaces:
            if not vw.name or "/" in vw.name:
                raise ValueError(f"invalid virtual workspace name {vw.name!r}")
            if vw.name in seen:
                raise ValueError(f"duplicate virtual workspace {vw.name!r}")
            seen.add(vw.name)

    def readiness(self) -> dict[str, Callable[[], bool]]:
        """One readiness check per virtual workspace, named ``virtual-workspace:<name>``."""
        return {readiness_check_name(vw.name): vw.ready for vw in self.workspaces}

    def resolve(self, path: str):
        """``(virtual workspace, prefix, context)`` of the first resolver that accepts ``path``, else None."""
        for vw in self.workspaces:
            accepted, prefix, context = vw.resolve(path)
            if accepted:
                return vw, prefix, context
        return None

    def __call__(self, request: HTTPRequest, user: Any, fresh_as_of: int | None = None) -> Response:
        """``fresh_as_of``: the shard's resourceVersion as the host trusts it (``Request.fresh_as_of``)."""
        path = request.path
        resolved = self.resolve(path)
        if resolved is None:
            raise errors.NotFound.path()
        vw, prefix, context = resolved
        rest = path[len(prefix):] or "/"
        health = _HEALTH.get(rest)
        if health is not None:
            bind_contextvars(virtual_workspace=vw.name, cluster=context.cluster or None)
            return self._health(vw, health)
        info = parse_request_info(request.method, rest, request.args)
        bind_contextvars(virtual_workspace=vw.name, cluster=context.cluster or None, verb=info.verb,
                         resource=info.resource or None)
        if is_master(user):
            note_decision(request.environ, info, True, "system:masters")
        else:
            attributes = Attributes.from_request_info(info, context.cluster)
            allowed, reason = vw.authorize(user, attributes, context)
            note_decision(request.environ, info, allowed, reason)
            if not allowed:
                raise forbidden(user, attributes, reason)
        return vw.handler(Request(http=request, user=user, context=context, path=rest, prefix=prefix, info=info,
                                  fresh_as_of=fresh_as_of))

    @staticmethod
    def _health(vw: VirtualWorkspace, path: str) -> Response:
        if path != "/readyz" or _probe(vw.ready):
            return Response("ok", content_type="text/plain")
        return Response(f"{readiness_check_name(vw.name)} failed", status=500, content_type="text/plain")
