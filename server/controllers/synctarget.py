"""The SyncTarget controller: where each target's syncer virtual workspace is, and taking its placements back.

For SyncTarget ``t`` in logical cluster ``c`` with UID ``u``:

* ``status.virtualWorkspaces``: one ``{url}`` per Shard, ``<shard's virtual workspace URL>/services/syncer/c/t/u``
  (``publication.virtual_workspace_urls``), kept current as Shards change; ``status.syncedResources``: what its
  syncer syncs; condition ``VirtualWorkspaceURLsReady``. A target created with ``generateName`` gets its key
  label here (the shard sets it on every write, ``server.apis.workload``; that create did not know the name);
* deletion (held by the finalizer ``workload.kcp.dev/sync-target``): the label ``state.workload.kcp.dev/<key>``
  comes off every object of every workspace that carries it -- each one then leaves the target's view (its
  watchers get DELETED) and its other targets' shares grow -- and then the finalizer goes. The workload-status
  controller drops what the target had reported (``server.controllers.workloadstatus``). A SyncTarget that
  went without its finalizer (its whole workspace deleted) is unplaced the same way when the controller hears
  of it.
"""

from __future__ import annotations

import structlog

from kcp_virtual.framework import errors
from kcp_virtual.syncer import url_path
from kcp_virtual.syncer.placement import KEY_LABEL, SYNCED_RESOURCES, state_label, sync_target_key
from server.apis.apis_kcp import set_condition
from server.apis.workload import SYNC_TARGETS, TARGET_FINALIZER, synced_resources
from server.controllers.base import Reconciler, TriggeredController
from server.controllers.publication import ShardsChanged, virtual_workspace_urls
from server.registry.generic import Registry, cluster_of, now_rfc3339
from server.storage import Key

__all__ = ["SyncTargetController"]

log = structlog.get_logger("kcp.controllers.synctarget")


class SyncTargetController(TriggeredController):
    def __init__(self, registry: Registry, *, workers: int = 2):
        self.registry = registry
        self.store = registry.store
        self.reconciler = Reconciler(self.store, SYNC_TARGETS.storage_key, self.reconcile, name="synctargets",
                                     workers=workers, backoff_max=5.0)
        # A Shard change moves every target's URLs.
        self.triggers = [ShardsChanged(registry, SYNC_TARGETS, self.reconciler, name="synctargets-shards")]

    def reconcile(self, key: Key) -> None:
        target = self.store.get(key)
        if target is None:
            # Gone without its finalizer (its whole workspace was deleted): what it left placed still goes.
            self._unplace(key.cluster, key.name)
            return
        meta = target["metadata"]
        if meta.get("deletionTimestamp"):
            self._unplace(key.cluster, key.name)
            finalizers = [f for f in meta.get("finalizers") or () if f != TARGET_FINALIZER]
            self.registry.update(SYNC_TARGETS, key.cluster, "", key.name,
                                 {**target, "metadata": {**meta, "finalizers": finalizers}})
            return
        if (meta.get("labels") or {}).get(KEY_LABEL) != sync_target_key(key.cluster, key.name):
            target = self.registry.update(SYNC_TARGETS, key.cluster, "", key.name, target)  # the shard labels it
        status = dict(target.get("status") or {})
        status["virtualWorkspaces"] = virtual_workspace_urls(self.store, url_path(key.cluster, key.name,
                                                                                  target["metadata"]["uid"]))
        status["syncedResources"] = synced_resources()
        status["conditions"] = set_condition(list(status.get("conditions") or ()), "VirtualWorkspaceURLsReady",
                                             "True", "", "", now_rfc3339())
        if status != (target.get("status") or {}):
            self.registry.update(SYNC_TARGETS, key.cluster, "", key.name, {**target, "status": status},
                                 subresource="status")

    def _unplace(self, cluster: str, name: str) -> None:
        """Take the target's state label off everything placed on it: each object leaves its view (DELETED in its
        watches) and the object's other targets' shares grow."""
        label = state_label(sync_target_key(cluster, name))
        removed = 0
        for gvr in SYNCED_RESOURCES:
            rt = self.registry.catalog.lookup(cluster, gvr.group, gvr.version, gvr.resource)
            for obj in self.store.list(rt.storage_key)[0]:
                labels = obj["metadata"].get("labels") or {}
                if label not in labels:
                    continue
                meta = obj["metadata"]
                body = {**obj, "metadata": {**meta, "labels": {k: v for k, v in labels.items() if k != label}}}
                try:
                    self.registry.update(rt, cluster_of(meta), meta.get("namespace", ""), meta["name"], body)
                except errors.NotFound:
                    continue  # gone meanwhile
                removed += 1
        if removed:
            log.info("sync target gone: its placements removed", cluster=cluster, name=name, unplaced=removed)
