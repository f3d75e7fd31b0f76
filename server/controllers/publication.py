"""Where a virtual workspace is published: one URL per Shard object (``tenancy.kcp.dev`` ``shards`` in ``root``).

A publishing controller (APIExport, WorkspaceType, SyncTarget...) writes ``status.virtualWorkspaces`` as
``[{"url": <Shard spec.virtualWorkspaceURL, else spec.baseURL> + /services/<name>/<segments>}, ...]`` and must
rewrite it whenever a Shard comes, goes or moves: ``ShardsChanged`` re-enqueues every published object then.
``URLPublisher`` is the whole controller for kinds whose status holds nothing else of ours (WorkspaceType).
"""

from __future__ import annotations

from typing import Callable

from kcp_virtual.framework import errors
from server.apis.apis_kcp import set_condition
from server.apis.tenancy import ROOT, SHARDS
from server.controllers.base import Reconciler, TriggeredController
from server.registry.generic import Registry, cluster_of, now_rfc3339
from server.registry.resourcetype import ResourceType
from server.storage import Key, Store

URLS_READY = "VirtualWorkspaceURLsReady"


def _base(shard: dict | None) -> str | None:
    spec = (shard or {}).get("spec") or {}
    base = spec.get("virtualWorkspaceURL") or spec.get("baseURL")
    return base.rstrip("/") if isinstance(base, str) and base else None


def virtual_workspace_urls(store: Store, path: str) -> list[dict]:
    """``status.virtualWorkspaces`` for a virtual workspace at ``path`` (``/services/<name>/...``)."""
    return [{"url": base + path} for shard in store.list(SHARDS.storage_key, ROOT)[0]
            if (base := _base(shard)) is not None]


class ShardsChanged(Reconciler):
    """When a Shard comes, goes or moves, enqueue every object of ``published`` into ``target`` (its publishing
    reconciler); a Shard's status (its load, reported every second under churn) changes no URL and enqueues
    nothing."""

    def __init__(self, registry: Registry, published: ResourceType, target: Reconciler, *, name: str):
        self.registry = registry
        self.published = published
        self.target = target
        self._published: dict[str, str | None] = {}  # Shard name -> the base URL last acted on
        super().__init__(registry.store, SHARDS.storage_key, self._requeue, name=name, workers=1)

    def _requeue(self, key: Key) -> None:
        base = _base(self.registry.store.get(key)) if key.cluster == ROOT else None
        if key.name in self._published and self._published[key.name] == base:
            return
        self._published[key.name] = base
        for obj in self.registry.store.list(self.published.storage_key)[0]:
            meta = obj["metadata"]
            self.target.enqueue(self.registry.key(self.published, cluster_of(meta), "", meta["name"]))


class URLPublisher(TriggeredController):
    """Keeps ``status.virtualWorkspaces`` (and condition ``VirtualWorkspaceURLsReady``) of every object of
    ``published`` at ``path_of(cluster, name)`` on every Shard."""

    def __init__(self, registry: Registry, published: ResourceType, path_of: Callable[[str, str], str], *,
                 name: str, workers: int = 2):
        self.registry = registry
        self.published = published
        self.path_of = path_of
        self.reconciler = Reconciler(registry.store, published.storage_key, self.reconcile, name=name,
                                     workers=workers, backoff_max=5.0)
        self.triggers = [ShardsChanged(registry, published, self.reconciler, name=f"{name}-shards")]

    def reconcile(self, key: Key) -> None:
        if not self.registry.cluster_exists(key.cluster):
            return  # a replica of another shard's object (server.controllers.replication): that shard publishes it
        obj = self.registry.store.get(key)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return
        status = dict(obj.get("status") or {})
        status["virtualWorkspaces"] = virtual_workspace_urls(self.registry.store, self.path_of(key.cluster, key.name))
        status["conditions"] = set_condition(list(status.get("conditions") or ()), URLS_READY, "True", "", "",
                                             now_rfc3339())
        if status == (obj.get("status") or {}):
            return
        try:
            self.registry.update(self.published, key.cluster, "", key.name, {**obj, "status": status},
                                 subresource="status")
        except errors.NotFound:
            return  # deleted meanwhile
