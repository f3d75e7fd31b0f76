"""The shard's WSGI application: routing, authentication, authorization, discovery and health.

Request flow: health/version (no credentials) -> authenticate -> split ``/clusters/<cluster>``
-> request attributes -> authorize -> discovery or ``ResourceAPI``. Errors anywhere are
``StatusError`` exceptions rendered as ``metav1.Status``; anything unexpected becomes a 500
Status and a logged traceback, never a dropped connection.
"""

from __future__ import annotations

import re
import sys
from typing import Callable

import structlog
from werkzeug.wrappers import Request, Response

from kcp_virtual.framework import discovery, errors, negotiation
from kcp_virtual.framework.audit import AUTHENTICATED_USER, note_decision
from kcp_virtual.framework.health import health_response, is_health_path
from kcp_virtual.framework.inflight import IN_FLIGHT_SLOT, InFlightLimiter, answer
from kcp_virtual.framework.httprequest import HTTPRequest
from kcp_virtual.framework.openapi import v2_document
from kcp_virtual.framework.requestinfo import RequestInfo, parse_request_info
from server.apis.logicalclusters import LOGICAL_CLUSTER
from server.auth import impersonation
from server.auth.authn import Authenticator
from server.auth.authz import Attributes, Authorizer, forbidden_message
from server.auth.user import UserInfo
from server.endpoints.openapi import OpenAPIIndex
from server.endpoints.rest import ResourceAPI, json_response
from server.http.logs import bind_user
from server.registry.generic import Registry
from server.registry.resourcetype import Catalog
from server.storage import ObjectTooLargeError, StorageUnavailableError

log = structlog.get_logger("kcp.shard")

VERSION_INFO = {"major": "1", "minor": "32", "gitVersion": "v1.32.0+kcp-virtual", "gitCommit": "kcp-virtual",
                "gitTreeState": "clean", "buildDate": "2026-11-25T00:00:00Z", "goVersion": "python3.11",
                "compiler": "cpython", "platform": "linux/amd64"}
#: Served beside a workspace's API, listed by ``GET /``.
_SHARD_PATHS = (*discovery.HEALTH_PATHS, "/metrics")
_CLUSTER_NAME = re.compile(r"^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?(:[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)$")
DEFAULT_CLUSTER = "root"

ServiceHandler = Callable[[Request, UserInfo], Response]


def _creates_logical_cluster(info: RequestInfo) -> bool:
    return (info.verb == "create" and info.group == LOGICAL_CLUSTER.group and info.resource == LOGICAL_CLUSTER.plural
            and not info.subresource)


class ShardApp:
    def __init__(self, registry: Registry, catalog: Catalog, authenticator: Authenticator, authorizer: Authorizer,
                 *, metrics=None, server_address: str = "127.0.0.1:6443", limiter: InFlightLimiter | None = None,
                 bookmark_interval: float = 60.0):
        self.registry = registry
        self.catalog = catalog
        self.authenticator = authenticator
        self.authorizer = authorizer
        self.metrics = metrics
        self.server_address = server_address
        self.api = ResourceAPI(registry, bookmark_interval=bookmark_interval)
        self.limiter = limiter if limiter is not None else InFlightLimiter()
        self.readiness: dict[str, Callable[[], bool]] = {"ping": lambda: True, "storage": self._storage_ready}
        self.services: ServiceHandler | None = None
        self.token_issuer = None  # server.auth.serviceaccounts.ServiceAccountTokens (TokenRequest, TokenReview)
        # fn(cluster): delete a logical cluster and its nested workspaces wherever they live (the workspace
        # controller's; DELETE of its LogicalCluster calls it); None: the registry's, this shard only
        self.delete_logical_cluster = None

    # ------------------------------------------------------------------ WSGI

    def __call__(self, environ, start_response):
        return answer(environ, start_response, lambda: errors.respond(self._dispatch, HTTPRequest(environ), log))

    def _dispatch(self, request: Request) -> Response:
        """``dispatch``, with the storage's own failures answered as the Status a client can act on."""
        try:
            return self.dispatch(request)
        except StorageUnavailableError as exc:
            raise errors.ServiceUnavailable(f"storage unavailable: {exc}",
                                            details={"retryAfterSeconds": 1}, headers={"Retry-After": "1"}) from None
        except ObjectTooLargeError as exc:
            raise errors.RequestEntityTooLarge(f"the object is too large to store: {exc}") from None

    def dispatch(self, request: Request) -> Response:
        path = request.path
        if is_health_path(path):
            return health_response(request, path, self.readiness)
        if path == "/version" or path == "/version/":
            return json_response(VERSION_INFO)
        cluster, rest, prefix = DEFAULT_CLUSTER, path, ""
        if path.startswith("/clusters/"):
            cluster, _, rest = path[len("/clusters/"):].partition("/")
            rest = "/" + rest
            prefix = f"/clusters/{cluster}"
            if not _CLUSTER_NAME.match(cluster):
                raise errors.BadRequest(f'invalid logical cluster name "{cluster}"')
            cluster = sys.intern(cluster)  # kept by every watch of the cluster (its log context, its store cursor)
            structlog.contextvars.bind_contextvars(cluster=cluster)
        elif path.startswith("/services/") or path == "/services":
            cluster = ""
        request.environ["kcp.cluster"] = cluster  # service-account tokens are only valid in their cluster
        user = self.authenticate(request)
        request.environ[IN_FLIGHT_SLOT] = self.limiter.admit(request.environ, user.groups)
        if path == "/metrics" and self.metrics is not None:
            return self.metrics.wsgi_response(request.environ)
        if path.startswith("/services/") or path == "/services":
            if self.services is None:
                raise errors.NotFound.path()
            return self.services(request, user)
        return self.serve_cluster(request, user, cluster, rest, prefix)

    def intercept(self, environ: dict, exchange) -> bool:
        """``/services/*`` straight to a raw-capable services handler (the forwarder), before WSGI, when the
        caller authenticates as itself and the in-flight limit admits it; everything else (no or bad
        credentials, impersonation, a 429) is left to ``dispatch``, which answers it the usual way."""
        forward_raw = getattr(self.services, "forward_raw", None)
        if forward_raw is None or not environ.get("PATH_INFO", "").startswith("/services/"):
            return False
        if impersonation.requested(environ):
            return False
        environ["kcp.cluster"] = ""
        try:
            user = self.authenticator.authenticate(environ)
        except errors.StatusError:
            return False
        if user is None:
            return False
        slot = self.limiter.try_admit(environ, user.groups)
        if slot is None:
            return False  # dispatch answers the 429
        bind_user(user.name)
        environ["kcp.user"] = user
        with slot:
            return forward_raw(environ, exchange, user)

    def authenticate(self, request: Request) -> UserInfo:
        """The caller's identity (impersonated, if asked and allowed), or 401. ``environ["kcp.user"]`` carries it."""
        user = self.authenticator.authenticate(request.environ)
        if user is None:
            raise errors.Unauthorized()
        cluster = request.environ.get("kcp.cluster", "")
        impersonated = impersonation.impersonate(request.environ, user, self.authorizer, cluster)
        if impersonated is not user:
            request.environ[AUTHENTICATED_USER] = user
            user = impersonated
        structlog.contextvars.bind_contextvars(user=user.name)
        request.environ["kcp.user"] = user
        return user

    # ------------------------------------------------------------------ one logical cluster

    def serve_cluster(self, request: Request, user: UserInfo, cluster: str, path: str, prefix: str = "") -> Response:
        info = parse_request_info(request.method, path, request.args)
        structlog.contextvars.bind_contextvars(verb=info.verb, resource=info.resource)
        resource = info.resource
        if ":" in resource:  # <resource>:<identity>, an APIExport's copy (server.apis.bound): RBAC names <resource>
            info.resource = resource.partition(":")[0]
        self._authorize(request.environ, user, cluster, info)  # every path of a workspace, /version and /openapi too
        if path in ("/version", "/version/"):
            return json_response(VERSION_INFO)
        if path.startswith("/openapi/"):
            self.registry.require_cluster(cluster)
            return self._openapi(request, cluster, path, prefix)
        if not _creates_logical_cluster(info):  # the one request for a logical cluster that does not exist yet
            self.registry.require_cluster(cluster)
        if not info.is_resource:
            if request.method not in ("GET", "HEAD"):
                raise errors.MethodNotAllowed(f"{request.method} is not supported on {path}")
            if path in ("", "/"):
                return json_response({"paths": discovery.root_paths(self.catalog.types(cluster), _SHARD_PATHS)})
            return self._discovery(request, cluster, info)
        rt = self.catalog.lookup(cluster, info.group, info.version, resource)
        if rt is None:
            raise errors.NotFound.path()
        if rt.namespaced is False and info.namespace and info.resource != "namespaces":
            raise errors.NotFound.path()
        return self.api.handle(request, cluster, info, rt, user, self)

    def _authorize(self, environ: dict, user: UserInfo, cluster: str, info: RequestInfo) -> None:
        attributes = Attributes(user=user, verb=info.verb, cluster=cluster, is_resource=info.is_resource,
                                path=info.path, api_group=info.group, api_version=info.version,
                                namespace=info.namespace, resource=info.resource, subresource=info.subresource,
                                name=info.authorized_name)
        decision = self.authorizer.authorize(attributes)
        note_decision(environ, info, decision.allowed, decision.reason)
        if not decision.allowed:
            message, details = forbidden_message(attributes, decision.reason)
            raise errors.Forbidden(message, details=details or None)

    def _discovery(self, request: Request, cluster: str, info: RequestInfo) -> Response:
        types = self.catalog.types(cluster)
        accept = request.headers.get("Accept", "")
        if info.api_prefix == "api" and not info.version:
            aggregated = negotiation.wants_aggregated_discovery(accept)
            if aggregated:
                return json_response(discovery.aggregated(types, core=True, version=aggregated),
                                     content_type=discovery.AGGREGATED_CONTENT_TYPE.format(v=aggregated))
            return json_response(discovery.api_versions(types, self.server_address))
        if info.api_prefix == "apis" and not info.parts and not info.group:
            aggregated = negotiation.wants_aggregated_discovery(accept)
            if aggregated:
                return json_response(discovery.aggregated(types, core=False, version=aggregated),
                                     content_type=discovery.AGGREGATED_CONTENT_TYPE.format(v=aggregated))
            return json_response(discovery.api_group_list(types))
        if info.api_prefix == "apis" and info.group and not info.version:
            body = discovery.api_group(types, info.group)
        elif info.version and not info.resource:
            body = discovery.api_resource_list(types, info.group, info.version)
        else:
            body = None
        if body is None:
            raise errors.NotFound.path()
        return json_response(body)

    def _openapi(self, request: Request, cluster: str, path: str, prefix: str) -> Response:
        """``/openapi/v3[/<gv>]``, and ``/openapi/v2`` without definitions (``openapi.v2_document`` says why)."""
        if path.rstrip("/") == "/openapi/v2":
            body, content_type = v2_document(request.headers.get("Accept"), VERSION_INFO["gitVersion"])
            return Response(body, content_type=content_type)
        index = OpenAPIIndex(self.catalog.types(cluster))  # documents are memoized per group/version
        if path.rstrip("/") == "/openapi/v3":
            return Response(index.root(prefix), content_type="application/json")
        document = index.documents.get(path[len("/openapi/v3/"):]) if path.startswith("/openapi/v3/") else None
        if document is None:
            raise errors.NotFound.path()
        return Response(document[0], content_type="application/json",
                        headers={"Cache-Control": "public, immutable", "Etag": f'"{document[1]}"'})

    # ------------------------------------------------------------------ health

    def _storage_ready(self) -> bool:
        store = self.registry.store
        return store is not None and store.healthy()
