"""The proxy kind of virtual workspace: after its own checks, the request goes to one logical cluster of the
shard, as an identity the virtual workspace chooses (kcp's initializingworkspaces content proxy).

The shard then serves the request as its own: discovery, OpenAPI, every verb, watches, its
authorization of the chosen identity. Nothing is buffered beyond what the ShardClient does (the
in-process one calls the shard's handler directly).
"""

from __future__ import annotations

from typing import Any, Callable

from werkzeug.wrappers import Response

from kcp_virtual.framework import errors
from kcp_virtual.framework.authorization import Decision
from kcp_virtual.framework.shardclient import ShardClient
from kcp_virtual.framework.virtualworkspace import Request, VirtualWorkspace, always_ready

__all__ = ["ProxyHandler", "proxy_virtual_workspace"]


class ProxyHandler:
    """Forwards to ``context.cluster`` as ``identity(request)`` (the caller, or someone the VW vouches for)."""

    def __init__(self, shard: ShardClient, identity: Callable[[Request], Any]):
        self.shard = shard
        self.identity = identity

    def __call__(self, request: Request) -> Response:
        cluster = request.context.cluster
        if not cluster:
            raise errors.NotFound.path()
        return self.shard.forward(request.http, self.identity(request), cluster, request.path, request.prefix)


def proxy_virtual_workspace(name: str, *, shard: ShardClient, resolve, authorize: Callable[..., Decision | tuple],
                            identity: Callable[[Request], Any] = lambda request: request.user,
                            ready: Callable[[], bool] = always_ready) -> VirtualWorkspace:
    """A virtual workspace forwarding to the logical cluster its resolver put in the context."""
    return VirtualWorkspace(name=name, resolve=resolve, authorize=authorize, ready=ready,
                            handler=ProxyHandler(shard, identity))
