"""The external virtual-workspace server (``kcp virtual-workspaces``): the virtual workspaces of ``kcp start``,
in their own process, reaching the shard through the remote ShardClient
(README.md, "Virtual workspaces in their own process").

``VirtualWorkspacesApp`` is the WSGI application: health and ``/version`` without credentials, then
delegated authentication (``delegated.py``), impersonation for ``system:masters``, then the same
``/services/`` dispatcher the shard embeds -- so each virtual workspace's own authorizer decides, its
SubjectAccessReviews going to the shard. What the shard's proxy vouches for besides the caller -- its
resourceVersion when it forwarded the request -- reaches them as ``Request.fresh_as_of``, so reads that
must be most recent may come from the remote ShardClient's informers. TLS serving and request logging
are the host's: the ``kcp`` command wires ``server.http.serving`` and ``server.http.logs`` around this app, since
this package never imports ``server``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import orjson
import structlog
from werkzeug.wrappers import Request, Response

from kcp_virtual.external.delegated import (DEFAULT_ALLOWED_NAMES, FRESH_AS_OF, DelegatedAuthenticator, impersonate,
                                            load_certificates)
from kcp_virtual.external.informer import BOOKMARK_INTERVAL
from kcp_virtual.external.remote import RemoteShardClient
from kcp_virtual.framework import errors
from kcp_virtual.framework.audit import AUTHENTICATED_USER
from kcp_virtual.framework.dispatcher import Dispatcher
from kcp_virtual.framework.health import health_response, is_health_path
from kcp_virtual.framework.httprequest import HTTPRequest
from kcp_virtual.framework.plugins import VirtualWorkspaceFactory
from kcp_virtual.framework.inflight import IN_FLIGHT_SLOT, InFlightLimiter, answer

__all__ = ["VirtualWorkspacesApp", "build_app"]

log = structlog.get_logger("kcp.virtual")

class VirtualWorkspacesApp:
    """WSGI app of the external process; ``readiness`` has ``ping``, ``shard`` and one check per virtual workspace."""

    def __init__(self, dispatcher: Dispatcher, authenticator: DelegatedAuthenticator, shard: RemoteShardClient, *,
                 metrics: Any = None, limiter: InFlightLimiter | None = None):
        self.dispatcher = dispatcher
        self.limiter = limiter if limiter is not None else InFlightLimiter()
        self.authenticator = authenticator
        self.shard = shard
        self.metrics = metrics
        self.readiness: dict[str, Callable[[], bool]] = {"ping": lambda: True, "shard": shard.ready,
                                                         **dispatcher.readiness()}

    def __call__(self, environ, start_response):
        return answer(environ, start_response, lambda: errors.respond(self.dispatch, HTTPRequest(environ), log))

    def dispatch(self, request: Request) -> Response:
        path = request.path
        if is_health_path(path):
            return health_response(request, path, self.readiness, log=log)
        if path in ("/version", "/version/"):
            return Response(orjson.dumps(self.shard.version()), content_type="application/json")
        environ = request.environ
        user = self.authenticator.authenticate(environ)
        if user is None:
            raise errors.Unauthorized()
        impersonated = impersonate(environ, user)
        if impersonated is not user:
            environ[AUTHENTICATED_USER] = user
            user = impersonated
        structlog.contextvars.bind_contextvars(user=user.name)
        environ["kcp.user"] = user
        environ[IN_FLIGHT_SLOT] = self.limiter.admit(environ, user.groups)
        if path == "/metrics" and self.metrics is not None:
            return self.metrics.wsgi_response(environ)
        if path.startswith("/services/"):
            return self.dispatcher(request, user, environ.get(FRESH_AS_OF))
        raise errors.NotFound.path()


def build_app(kubeconfig: str, *, factories: Iterable[VirtualWorkspaceFactory], client_ca_file: str,
              requestheader_ca_file: str, allowed_names: Iterable[str] = DEFAULT_ALLOWED_NAMES,
              context: str | None = None, metrics: Any = None, limiter: InFlightLimiter | None = None,
              bookmark_interval: float = BOOKMARK_INTERVAL) -> VirtualWorkspacesApp:
    """The app serving ``factories``' virtual workspaces (in order) against the shard of ``kubeconfig``;
    ``bookmark_interval``: of the watches served from its informers (the shard's, to look the same)."""
    shard = RemoteShardClient.from_kubeconfig(kubeconfig, context, bookmark_interval=bookmark_interval)
    dispatcher = Dispatcher(factory(shard) for factory in factories)
    authenticator = DelegatedAuthenticator(shard, client_cas=load_certificates(client_ca_file),
                                           requestheader_cas=load_certificates(requestheader_ca_file),
                                           allowed_names=allowed_names)
    return VirtualWorkspacesApp(dispatcher, authenticator, shard, metrics=metrics, limiter=limiter)
