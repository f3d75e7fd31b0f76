"""The placement controller: a Namespace's ``workload.kcp.dev/placement`` annotation places its workloads on targets.

The annotation names SyncTargets (``kcp_virtual.syncer.placement.parse_placement``: ``name`` in the
namespace's workspace, ``<workspace>/name`` elsewhere). For every such namespace the controller keeps the
namespace itself and every Deployment, ConfigMap and Secret in it labelled ``state.workload.kcp.dev/<key>:
Sync`` for each named SyncTarget that exists and is not being deleted, and records the keys it applied in
the namespace's ``internal.workload.kcp.dev/placed``. A key that leaves the annotation (or whose SyncTarget
goes) is taken off the same objects; state labels it never applied -- an object placed by hand, on another
target -- are left alone. Removing the annotation takes back everything it placed.

One reconcile covers one namespace: its objects first, then the namespace with its record, so a failure
half-way leaves the record naming every key that may still be on an object and the retry finishes the job.
Any object written in the namespace, and any SyncTarget change, enqueues the namespaces concerned.

The namespace's condition ``WorkloadPlaced`` says whether every named SyncTarget was found (False, reason
``SyncTargetNotFound``, naming the missing ones).
"""

from __future__ import annotations

import structlog

from kcp_virtual.syncer.placement import (CONFIGMAPS, DEPLOYMENTS, NAMESPACES, PLACED_ANNOTATION,
                                          PLACEMENT_ANNOTATION, SECRETS, STATE_LABEL_PREFIX, SYNC, PlacementError,
                                          parse_placement, state_label, sync_target_key)
from server.apis.apis_kcp import set_condition
from server.apis.workload import SYNC_TARGETS
from server.controllers.base import Reconciler, TriggeredController
from server.registry.generic import Registry, cluster_of, now_rfc3339
from server.storage import Key

__all__ = ["PlacementController", "CONDITION"]

log = structlog.get_logger("kcp.controllers.placement")

CONDITION = "WorkloadPlaced"
#: The kinds inside a namespace that follow its placement.
WORKLOADS = (DEPLOYMENTS, CONFIGMAPS, SECRETS)


def _keys(value) -> set[str]:
    return {k for k in value.split(",") if k} if isinstance(value, str) else set()


class PlacementController(TriggeredController):
    def __init__(self, registry: Registry, *, workers: int = 2):
        self.registry = registry
        self.store = registry.store
        catalog = registry.catalog
        self.namespaces = catalog.lookup("root", NAMESPACES.group, NAMESPACES.version, NAMESPACES.resource)
        self.workloads = [catalog.lookup("root", g.group, g.version, g.resource) for g in WORKLOADS]
        self.reconciler = Reconciler(self.store, self.namespaces.storage_key, self.reconcile, name="placement",
                                     workers=workers, backoff_max=5.0)
        self.triggers = [Reconciler(self.store, rt.storage_key, self._workload_changed, name=f"placement-{rt.plural}",
                                    workers=1) for rt in self.workloads]
        self.triggers.append(Reconciler(self.store, SYNC_TARGETS.storage_key, self._target_changed,
                                        name="placement-synctargets", workers=1))

    # ------------------------------------------------------------------ triggers

    def _namespace_key(self, cluster: str, name: str) -> Key:
        return Key(self.namespaces.storage_key, cluster, "", name)

    def _managed(self, namespace: dict | None) -> bool:
        annotations = ((namespace or {}).get("metadata") or {}).get("annotations") or {}
        return PLACEMENT_ANNOTATION in annotations or PLACED_ANNOTATION in annotations

    def _workload_changed(self, key: Key) -> None:
        namespace_key = self._namespace_key(key.cluster, key.namespace)
        if self._managed(self.store.get(namespace_key)):
            self.reconciler.enqueue(namespace_key)

    def _target_changed(self, key: Key) -> None:
        for namespace in self.store.list(self.namespaces.storage_key)[0]:
            if self._managed(namespace):
                meta = namespace["metadata"]
                self.reconciler.enqueue(self._namespace_key(cluster_of(meta), meta["name"]))

    # ------------------------------------------------------------------ reconcile

    def _resolve(self, cluster: str, value: str) -> tuple[set[str] | None, list[str]]:
        """The keys of the existing SyncTargets ``value`` names, and the entries naming none (None: malformed)."""
        try:
            targets = parse_placement(value, cluster)
        except PlacementError as exc:
            return None, [str(exc)]
        keys, missing = set(), []
        for workspace, name in targets:
            target = self.store.get(Key(SYNC_TARGETS.storage_key, workspace, "", name))
            if target is None or target["metadata"].get("deletionTimestamp"):
                missing.append(f"{workspace}/{name}")
            else:
                keys.add(sync_target_key(workspace, name))
        return keys, missing

    def reconcile(self, key: Key) -> None:
        namespace = self.store.get(key)
        if namespace is None or not self._managed(namespace):
            return
        cluster, meta = key.cluster, namespace["metadata"]
        annotations = meta.get("annotations") or {}
        applied = _keys(annotations.get(PLACED_ANNOTATION))
        value = annotations.get(PLACEMENT_ANNOTATION)
        missing: list[str] = []
        if value is None:
            desired: set[str] = set()
        else:
            desired, missing = self._resolve(cluster, value)
            if desired is None:  # not written through the API's check: change nothing until it is corrected
                desired = applied
        managed = applied | desired
        for rt in self.workloads:
            for obj in self.store.list(rt.storage_key, cluster, meta["name"])[0]:
                relabelled = _relabelled(obj, desired, managed)
                if relabelled is not None:
                    self.registry.update(rt, cluster, meta["name"], obj["metadata"]["name"], relabelled)
        body = _relabelled(namespace, desired, managed) or namespace
        record = ",".join(sorted(desired))
        if annotations.get(PLACED_ANNOTATION, "") != record or (not record and PLACED_ANNOTATION in annotations):
            new_annotations = {k: v for k, v in annotations.items() if k != PLACED_ANNOTATION}
            if record:
                new_annotations[PLACED_ANNOTATION] = record
            body = {**body, "metadata": {**body["metadata"], "annotations": new_annotations}}
        if body is not namespace:
            namespace = self.registry.update(self.namespaces, cluster, "", meta["name"], body)
        self._report(cluster, namespace, value, missing)

    def _report(self, cluster: str, namespace: dict, value, missing: list[str]) -> None:
        status = namespace.get("status") or {}
        conditions = list(status.get("conditions") or ())
        if value is None:
            wanted = [c for c in conditions if not (isinstance(c, dict) and c.get("type") == CONDITION)]
        elif missing:
            wanted = set_condition(conditions, CONDITION, "False", "SyncTargetNotFound",
                                   "no such SyncTarget (or being deleted): " + ", ".join(missing), now_rfc3339())
        else:
            wanted = set_condition(conditions, CONDITION, "True", "", "", now_rfc3339())
        if wanted == conditions:
            return
        new_status = {**status, "conditions": wanted} if wanted else {k: v for k, v in status.items()
                                                                      if k != "conditions"}
        self.registry.update(self.namespaces, cluster, "", namespace["metadata"]["name"],
                             {**namespace, "status": new_status}, subresource="status")
        if missing:
            log.info("placement names missing sync targets", cluster=cluster, namespace=namespace["metadata"]["name"],
                     missing=missing)


def _relabelled(obj: dict, desired: set[str], managed: set[str]) -> dict | None:
    """``obj`` with the state labels of ``managed`` keys exactly ``desired`` (None: already so)."""
    meta = obj["metadata"]
    labels = meta.get("labels") or {}
    wanted = {k: v for k, v in labels.items()
              if not (k.startswith(STATE_LABEL_PREFIX) and k[len(STATE_LABEL_PREFIX):] in managed)}
    wanted.update({state_label(key): SYNC for key in desired})
    if wanted == labels:
        return None
    return {**obj, "metadata": {**meta, "labels": wanted}}
