"""Replicas of the other shards' objects every shard needs: kcp's cache server, spread over the shards.

A consumer workspace on shard B that binds an APIExport of a provider workspace on shard A needs the export
and its schemas on B (the binding controller, the bound resource index and the apiexport virtual workspace read
them from B's store); a workspace created on B finds its WorkspaceType in ``root``; B publishes one URL per
Shard. So every shard keeps in its own store replicas of

* from the root shard: the Shard objects (cluster ``root``);
* from every other shard: APIExports, APIResourceSchemas and WorkspaceTypes of all its logical clusters.

A replica sits under the same key as on its shard (a logical cluster lives on exactly one shard, so replicas
never meet an object of this shard) and carries the label ``internal.kcp.dev/replicated-from: <shard>`` (which
also keeps replicas from being replicated again: sources are listed without that label). It is written
to the store directly: nobody can write it through the API (its logical cluster does not exist here, a 404), and
controllers that own these kinds leave alone the objects of clusters they do not hold (``cluster_exists``).
Each source is an ``Informer`` (wildcard list+watch over HTTPS); its changes enqueue keys, and a worker makes the
local replica match the informer's copy -- created, updated, or deleted once the object is gone or its shard's
Shard object is. A shard that is down keeps its replicas (its informer keeps the last copies) until it is back.
"""

from __future__ import annotations

import gevent
import structlog

from kcp_virtual.external.informer import Informer
from kcp_virtual.framework.shardclient import GroupVersionResource
from server.apis.apis_kcp import APIEXPORTS, APIRESOURCESCHEMAS
from server.apis.tenancy import ROOT, SHARDS, WORKSPACE_TYPES
from server.controllers.base import Reconciler, WorkQueue
from server.controllers.shards import ShardDirectory, root_shard_name
from server.registry.generic import Registry, cluster_of
from server.registry.resourcetype import ResourceType
from server.storage import Key, KeyExistsError, KeyNotFoundError, StorageError

log = structlog.get_logger("kcp.controllers.replication")

REPLICATED_FROM = "internal.kcp.dev/replicated-from"
FROM_EVERY_SHARD: tuple[ResourceType, ...] = (APIEXPORTS, APIRESOURCESCHEMAS, WORKSPACE_TYPES)
FROM_ROOT: tuple[ResourceType, ...] = (SHARDS,)
_TYPES = {rt.storage_key: rt for rt in (*FROM_EVERY_SHARD, *FROM_ROOT)}
#: What ``Registry.replicated_resources`` holds: reads through the in-process ShardClient see these clusters.
REPLICATED_RESOURCES = tuple(rt.storage_key for rt in FROM_EVERY_SHARD)

_Item = tuple[str, str, str, str]  # (source shard, storage key, cluster, name): every replicated kind is cluster-scoped


def replicated_from(obj: dict) -> str | None:
    """The shard an object is a replica of (None: it is this shard's own)."""
    return ((obj.get("metadata") or {}).get("labels") or {}).get(REPLICATED_FROM)


def _gvr(rt: ResourceType) -> GroupVersionResource:
    return GroupVersionResource(rt.group, rt.version, rt.plural)


class _Source:
    """The informers following one other shard."""

    def __init__(self, name: str, client, types: tuple[ResourceType, ...], on_change):
        self.name = name
        self.client = client
        self.informers: dict[str, Informer] = {}
        for rt in types:
            informer = Informer(client, _gvr(rt), label_selector=f"!{REPLICATED_FROM}",  # its own objects only
                                progress_notify=False)
            informer.add_listener(lambda address, key=rt.storage_key: on_change(self, key, address))
            self.informers[rt.storage_key] = informer

    def start(self) -> None:
        for informer in self.informers.values():
            informer.start()

    def stop(self) -> None:
        for informer in self.informers.values():
            informer.stop()

    @property
    def synced(self) -> bool:
        return all(informer.synced for informer in self.informers.values())


class Replicator:
    """Keeps this shard's replicas of the other shards' objects; see the module docstring."""

    def __init__(self, registry: Registry, directory: ShardDirectory, *, workers: int = 2):
        self.registry = registry
        self.store = registry.store
        self.directory = directory
        self.sources: dict[str, _Source] = {}
        self.queue = WorkQueue()
        self._workers = workers
        self._greenlets: list[gevent.Greenlet] = []
        self._root_name: str | None = None  # this shard is not the root: the root shard's name, once known
        self.shards = Reconciler(self.store, SHARDS.storage_key, lambda key: self._sync_sources(),
                                 name="replication-shards", workers=1)

    def start(self) -> None:
        self._greenlets = [gevent.spawn(self._work) for _ in range(self._workers)]
        self._sync_sources()
        self.shards.start()

    def stop(self) -> None:
        self.shards.stop()
        for source in self.sources.values():
            source.stop()
        self.sources.clear()
        gevent.killall(self._greenlets, block=False)
        self._greenlets = []

    @property
    def idle(self) -> bool:
        return self.shards.idle and self.queue.idle and all(source.synced for source in self.sources.values())

    # ------------------------------------------------------------------ sources

    def _root_source_name(self) -> str:
        """The root shard's name: its Shard object is the one at the root kubeconfig's URL."""
        if self._root_name is None:
            self._root_name = root_shard_name(self.directory.shards(), self.directory.root.url)
        return self._root_name or ROOT

    def _sync_sources(self) -> None:
        wanted: dict[str, tuple] = {}
        root = None if self.directory.is_root else self._root_source_name()
        for shard in self.directory.shards():
            name = shard["metadata"]["name"]
            if name != self.directory.name and name != root:
                wanted[name] = (self.directory.client(name), FROM_EVERY_SHARD)
        if root is not None:  # the root shard, through the root kubeconfig, also for the Shard objects
            wanted[root] = (self.directory.root, (*FROM_ROOT, *FROM_EVERY_SHARD))
        for name in list(self.sources):
            source = self.sources[name]
            if name not in wanted or wanted[name][0] is not source.client:
                source.stop()
                del self.sources[name]
                log.info("no longer replicating", shard=name)
                self._enqueue_replicas(name)
        for name, (client, types) in wanted.items():
            if name not in self.sources and client is not None:
                source = self.sources[name] = _Source(name, client, types, self._changed)
                source.start()
                log.info("replicating", shard=name, resources=[rt.plural for rt in types])
        for key in _TYPES:  # replicas of shards no longer there (removed while this shard was down, too)
            for obj in self.store.list(key)[0]:
                origin = replicated_from(obj)
                if origin is not None and origin not in self.sources:
                    self.queue.add((origin, key, _cluster(obj), obj["metadata"]["name"]))

    def _enqueue_replicas(self, source: str, key: str | None = None) -> None:
        for storage_key in [key] if key else list(_TYPES):
            for obj in self.store.list(storage_key)[0]:
                if replicated_from(obj) == source:
                    self.queue.add((source, storage_key, _cluster(obj), obj["metadata"]["name"]))

    def _changed(self, source: _Source, key: str, address: tuple[str, str, str] | None) -> None:
        if address is not None:
            self.queue.add((source.name, key, address[0], address[2]))
            return
        # relisted: every object it has, and every replica it may no longer have
        for cluster, _, name in source.informers[key].addresses():
            self.queue.add((source.name, key, cluster, name))
        self._enqueue_replicas(source.name, key)

    # ------------------------------------------------------------------ workers

    def _work(self) -> None:
        while True:
            item = self.queue.get()
            try:
                self._reconcile(item)
            except (StorageError, KeyExistsError, KeyNotFoundError) as exc:
                log.warning("replication failed, retrying", item=item, error=str(exc))
                gevent.spawn_later(1.0, self.queue.add, item)
            except Exception:  # noqa: BLE001 - never let a worker die
                log.exception("replication failed", item=item)
            finally:
                self.queue.done(item)

    def _reconcile(self, item: _Item) -> None:
        origin, storage_key, cluster, name = item
        key = Key(storage_key, cluster, "", name)
        source = self.sources.get(origin)
        remote = source.informers[storage_key].peek(cluster, "", name) if source is not None and \
            storage_key in source.informers else None
        local = self.store.get(key)
        if local is not None and replicated_from(local) is None:
            if remote is not None:
                log.error("object of another shard clashes with one of this shard", shard=origin,
                          resource=storage_key, cluster=cluster, name=name)
            return
        if remote is None:
            if local is not None and replicated_from(local) == origin:
                self.store.delete(key)
            return
        meta = dict(remote["metadata"])
        meta.pop("resourceVersion", None)
        meta["labels"] = {**(meta.get("labels") or {}), REPLICATED_FROM: origin}
        desired = {**remote, "metadata": meta}
        if local is None:
            self.store.create(key, desired)
        elif _without_version(local) != desired:
            self.store.update(key, desired)


def _cluster(obj: dict) -> str:
    return cluster_of(obj["metadata"])


def _without_version(obj: dict) -> dict:
    meta = dict(obj["metadata"])
    meta.pop("resourceVersion", None)
    return {**obj, "metadata": meta}
