"""What a virtual workspace is: a name, a root path resolver, an authorizer, a readiness check and a handler.

A virtual workspace is a proxy-like API server under ``/services/<name>/...`` that serves a computed
view of real workspaces (README.md lists the stock ones). The dispatcher (``dispatcher.py``) asks each one's
resolver whether it serves a path; the winner's authorizer decides, then its handler answers the
request with the resolver's prefix stripped. Plain functions are enough::

    VirtualWorkspace(
        name="demo",
        resolve=cluster_path_resolver("demo"),
        authorize=lambda user, attributes, context: (True, ""),
        ready=lambda: True,
        handler=lambda request: Response("hello"))

The resource kind (``resource.py``) and the proxy kind (``proxy.py``) build the handler for you.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Callable, Mapping, NamedTuple

from werkzeug.wrappers import Request as HTTPRequest, Response

from kcp_virtual.framework.authorization import Attributes, Decision
from kcp_virtual.framework.requestinfo import RequestInfo

__all__ = ["Context", "Resolution", "NOT_ACCEPTED", "Request", "VirtualWorkspace", "cluster_path_resolver",
           "always_ready", "SERVICES_PREFIX", "WILDCARD", "is_cluster_name"]

SERVICES_PREFIX = "/services"
WILDCARD = "*"
_CLUSTER_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(:[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@lru_cache(maxsize=4096)
def is_cluster_name(value: str) -> bool:
    """A logical cluster path such as ``root`` or ``root:org:team`` (not the wildcard)."""
    return _CLUSTER_NAME.fullmatch(value) is not None


class Context(NamedTuple):
    """What a resolver parsed from the URL: the logical cluster (or ``*``) and the API-domain key.

    The API-domain key says which API surface the request sees, e.g. ``<export-cluster>/<export-name>``
    for the apiexport virtual workspace; ``values`` carries anything else a resolver wants its handler
    to know (the workspaces virtual workspace's org and scope, for instance). Immutable (one is made
    per request, so a tuple rather than a frozen dataclass).
    """

    cluster: str = ""
    api_domain_key: str = ""
    values: Mapping[str, Any] = MappingProxyType({})

    @property
    def wildcard(self) -> bool:
        return self.cluster == WILDCARD


class Resolution(NamedTuple):
    """A resolver's answer; a plain ``(accepted, prefix_to_strip, context)`` tuple works as well."""

    accepted: bool
    prefix: str = ""
    context: Context | None = None


NOT_ACCEPTED = Resolution(False)


@dataclass(slots=True)
class Request:
    """What a handler gets: the HTTP request, who sent it, what the resolver parsed, and the stripped path.

    ``info`` is computed once from ``path`` (the Kubernetes-like path after ``prefix``) and is what
    the authorizer saw. ``prefix`` is the part of the URL the client thinks of as its server
    (needed wherever a response names URLs, e.g. OpenAPI's ``serverRelativeURL``). Treat it as read-only.

    ``fresh_as_of`` is the shard's resourceVersion when it forwarded the request: every write it had
    acknowledged by then has one at most this high, so a cache that has seen that far may answer a
    read that must be most recent. None when nobody trustworthy vouched for it (embedded, or a client
    calling the external process directly): then only the shard itself may answer such reads.
    """

    http: HTTPRequest
    user: Any                # the authenticated caller (name, uid, groups, extra)
    context: Context
    path: str
    prefix: str
    info: RequestInfo
    fresh_as_of: int | None = None


Resolver = Callable[[str], "Resolution | tuple[bool, str, Context | None]"]
Authorize = Callable[[Any, Attributes, Context], "Decision | tuple[bool, str]"]
Handler = Callable[[Request], Response]


def always_ready() -> bool:
    return True


@dataclass(frozen=True)
class VirtualWorkspace:
    """A virtual workspace: plain callables, so a small one needs no class of its own.

    * ``resolve(path) -> (accepted, prefix_to_strip, context)``, called with the decoded request path
      (``/services/<name>/...``) in registration order until one accepts;
    * ``authorize(user, attributes, context) -> (allowed, reason)``, called for every request except
      those of ``system:masters`` and the health paths; ``attributes`` come from the stripped path;
    * ``ready() -> bool``, the virtual workspace's ``/readyz`` check;
    * ``handler(request) -> Response``, given the request with the prefix stripped.
    """

    name: str
    resolve: Resolver
    authorize: Authorize
    handler: Handler
    ready: Callable[[], bool] = always_ready


def _dot_segment(path: str) -> bool:
    """Whether ``path`` has a ``.`` or ``..`` segment (cheap for the common case of no dot after a slash)."""
    if "/." not in path and not path.startswith("."):
        return False
    return any(s in (".", "..") for s in path.split("/"))


def cluster_path_resolver(name: str, segments: int = 0, *,
                          api_domain_key: Callable[[list[str]], str] | None = None,
                          values: Callable[[list[str]], Mapping[str, Any] | None] | None = None,
                          keep_cluster_in_path: bool = False) -> Resolver:
    """The resolver of the common URL shape ``/services/<name>/<segments...>/clusters/<cluster|*>/...``.

    ``segments`` is how many virtual-workspace-specific segments come before ``/clusters/``; they
    become the API-domain key (joined with ``/``, as kcp does) unless ``api_domain_key`` maps them
    otherwise, and ``values(segments)`` becomes the context's ``values`` (None rejects the path: the
    virtual workspace's own checks of its segments). Rejected: a missing or empty segment, ``.`` or
    ``..`` anywhere in the path, and a cluster that is neither ``*`` nor a logical cluster path. The
    prefix stripped ends after the cluster, so the handler sees ``/api/...`` or ``/apis/...``; with
    ``keep_cluster_in_path`` it ends before ``/clusters/`` (a proxy that forwards
    ``/clusters/<name>/...`` as it came).

    ``api_domain_key`` and ``values`` must be pure functions of the segments: the resolutions are
    memoized per (segments, cluster), since every request of a virtual workspace is resolved first
    (the objects returned are immutable, so requests may share them).
    """
    base = f"{SERVICES_PREFIX}/{name}/"
    start = len(base)

    @lru_cache(maxsize=4096)
    def resolution(own: tuple[str, ...], cluster: str) -> Resolution:
        if not all(own) or (cluster != WILDCARD and not is_cluster_name(cluster)):
            return NOT_ACCEPTED
        key = api_domain_key(list(own)) if api_domain_key is not None else "/".join(own)
        if values is None:
            context = Context(cluster, key)
        else:
            extra = values(list(own))
            if extra is None:
                return NOT_ACCEPTED
            context = Context(cluster, key, MappingProxyType(dict(extra)))
        own_path = base + "".join(s + "/" for s in own)   # "/services/<name>/<segments>/"
        prefix = own_path[:-1] if keep_cluster_in_path else f"{own_path}clusters/{cluster}"
        return Resolution(True, prefix, context)

    def resolve(path: str) -> Resolution:
        if not path.startswith(base) or ("/." in path and _dot_segment(path)):  # a dot segment follows a slash
            return NOT_ACCEPTED
        parts = path[start:].split("/", segments + 2)
        # parts: <segments...>, "clusters", <cluster>[, <rest>]
        if len(parts) < segments + 2 or parts[segments] != "clusters":
            return NOT_ACCEPTED
        return resolution(tuple(parts[:segments]), parts[segments + 1])

    return resolve
