"""The workload-status controller: each placed Deployment's status is the summary of what its sync targets report.

A syncer writes the status of its share through the syncer virtual workspace, which keeps it per target in
the object's annotation ``experimental.status.workload.kcp.dev/<key>`` (``kcp_virtual.syncer.transformation``).
For every object of the synced kinds this controller keeps:

* a Deployment's ``status`` = ``kcp_virtual.syncer.summary.summarize`` of the reports of the targets it is
  synced to now (its ``state.workload.kcp.dev/<key>: Sync`` labels, in key order) -- on one target that
  target's status unchanged, on none an empty status -- whenever it is placed or was until now;
* nothing of a target it is no longer synced to: that target's status report and its syncer finalizer go
  (so a removed target neither counts in the summary nor holds the object's deletion).

Status first, then the clean-up: a retry after a failure in between still sees the leftover report and so
still knows the object was placed. The view never shows the summary to a syncer (each sees its own report),
so the summary is written here alone, once per change of the reports (queued changes of one object coalesce).
"""

from __future__ import annotations

from kcp_virtual.syncer.placement import (DEPLOYMENTS, STATUS_ANNOTATION_PREFIX, SYNCED_RESOURCES,
                                          SYNCER_FINALIZER_PREFIX, placed_keys, status_annotation)
from kcp_virtual.syncer.summary import summarize
from kcp_virtual.syncer.transformation import decoded_status
from server.controllers.base import Reconciler, TriggeredController
from server.registry.generic import Registry
from server.storage import Key

__all__ = ["WorkloadStatusController"]


class WorkloadStatusController(TriggeredController):
    def __init__(self, registry: Registry, *, workers: int = 2):
        self.registry = registry
        self.store = registry.store
        catalog = registry.catalog
        self.types = {}
        for gvr in SYNCED_RESOURCES:  # Deployments first: their loop is the reconciler, the others its triggers
            rt = catalog.lookup("root", gvr.group, gvr.version, gvr.resource)
            self.types[rt.storage_key] = (rt, gvr == DEPLOYMENTS)
        self.reconciler, *self.triggers = [
            Reconciler(self.store, storage_key, self.reconcile, name=f"workload-status-{rt.plural}", workers=workers,
                       backoff_max=5.0) for storage_key, (rt, _) in self.types.items()]

    def reconcile(self, key: Key) -> None:
        obj = self.store.get(key)
        if obj is None:
            return
        rt, summarized = self.types[key.resource]
        meta = obj["metadata"]
        keys = placed_keys(meta.get("labels"))
        annotations = meta.get("annotations") or {}
        kept = {f"{STATUS_ANNOTATION_PREFIX}{k}" for k in keys}
        stale_reports = [name for name in annotations
                         if name.startswith(STATUS_ANNOTATION_PREFIX) and name not in kept]
        finalizers = meta.get("finalizers") or []
        stale_finalizers = [f for f in finalizers if f.startswith(SYNCER_FINALIZER_PREFIX)
                            and f[len(SYNCER_FINALIZER_PREFIX):] not in keys]
        if summarized and (keys or stale_reports):
            reports = [annotations.get(status_annotation(k)) for k in keys]
            summary = summarize(decoded_status(r) if isinstance(r, str) else None for r in reports)
            if (obj.get("status") or {}) != summary:
                obj = self.registry.update(rt, key.cluster, key.namespace, key.name, {**obj, "status": summary},
                                           subresource="status")
                meta = obj["metadata"]
        if stale_reports or stale_finalizers:
            new_meta = {**meta, "annotations": {k: v for k, v in (meta.get("annotations") or {}).items()
                                                if k not in stale_reports}}
            remaining = [f for f in meta.get("finalizers") or () if f not in stale_finalizers]
            if remaining:
                new_meta["finalizers"] = remaining
            else:
                new_meta.pop("finalizers", None)
            self.registry.update(rt, key.cluster, key.namespace, key.name, {**obj, "metadata": new_meta})
