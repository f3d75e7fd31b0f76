"""``workload.kcp.dev/v1alpha1``: SyncTarget, a physical cluster whose syncer runs workloads; and the workload annotations.

A SyncTarget ``t`` in logical cluster ``c`` stands for one physical cluster. Its syncer reads and writes the
workloads placed on it through the syncer virtual workspace (``kcp_virtual.syncer``), at the URLs the
SyncTarget controller (``server.controllers.synctarget``) publishes in ``status.virtualWorkspaces``. What
must hold at every write lives here:

* the label ``internal.workload.kcp.dev/key`` is the target's key (``kcp_virtual.syncer.placement``), set by
  the shard on every write, so it is never missing (but for a ``generateName`` create, whose name is only
  known later: the controller then writes the object once more) and never wrong;
* the finalizer ``workload.kcp.dev/sync-target`` holds a deleted SyncTarget until the controller has taken
  its state label off every object placed on it (their other targets' shares grow at once);
* on the synced kinds, the workload annotations are checked when they are written: a Namespace's
  ``workload.kcp.dev/placement`` must name SyncTargets, a spec diff must be a JSON patch, and only kinds
  with a ``spec`` take one.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable

from kcp_virtual.framework import table
from kcp_virtual.syncer import specdiff
from kcp_virtual.syncer.placement import (GROUP, KEY_LABEL, PLACEMENT_ANNOTATION, SPEC_DIFF_ANNOTATION_PREFIX,
                                          SYNCED_RESOURCES, VERSION, PlacementError, parse_placement,
                                          sync_target_key)
from server.registry.generic import cluster_of
from server.registry.resourcetype import ResourceType
from server.registry.validation import forbidden, invalid, type_invalid

__all__ = ["SYNC_TARGETS", "TARGET_FINALIZER", "TYPES", "synced_resources", "with_workload_annotations"]

TARGET_FINALIZER = "workload.kcp.dev/sync-target"


def synced_resources() -> list[dict]:
    """``status.syncedResources``: what every SyncTarget syncs (kcp's ``ResourceToSync`` form)."""
    return [{"group": gvr.group, "resource": gvr.resource, "versions": [gvr.version], "state": "Accepted"}
            for gvr in SYNCED_RESOURCES]


def _sync_target_prepare(obj: dict, old: dict | None) -> list[dict]:
    meta = obj["metadata"]
    if obj.get("spec") is None:
        obj["spec"] = {}
    name = meta.get("name")
    if name:
        labels = meta.get("labels")
        if labels is None:
            labels = meta["labels"] = {}
        if isinstance(labels, dict):
            labels[KEY_LABEL] = sync_target_key(cluster_of(meta), name)
    if old is None:
        finalizers = meta.get("finalizers")
        if finalizers is None:
            meta["finalizers"] = [TARGET_FINALIZER]
        elif isinstance(finalizers, list) and TARGET_FINALIZER not in finalizers:
            finalizers.append(TARGET_FINALIZER)
    return []


def _sync_target_validate(obj: dict, old: dict | None) -> list[dict]:
    causes = []
    for field in ("spec", "status"):
        value = obj.get(field)
        if value is not None and not isinstance(value, dict):
            causes.append(type_invalid(field, value, "must be an object"))
    status = obj.get("status") if isinstance(obj.get("status"), dict) else {}
    urls = status.get("virtualWorkspaces")
    if urls is not None and (not isinstance(urls, list) or not all(
            isinstance(u, dict) and isinstance(u.get("url"), str) and u["url"] for u in urls)):
        causes.append(type_invalid("status.virtualWorkspaces", urls, "must be a list of {url: <URL>}"))
    return causes


def _synced(obj: dict) -> str:
    resources = (obj.get("status") or {}).get("syncedResources") or ()
    return ",".join(f'{r.get("resource")}.{r.get("group")}' if r.get("group") else str(r.get("resource"))
                    for r in resources if isinstance(r, dict)) or None


def _first_url(obj: dict) -> str | None:
    urls = (obj.get("status") or {}).get("virtualWorkspaces") or ()
    return urls[0].get("url") if urls and isinstance(urls[0], dict) else None


def _col(name: str, getter, description: str, priority: int = 0) -> table.Column:
    return table.Column(name=name, type="string", description=description, priority=priority, getter=getter)


SYNC_TARGETS = ResourceType(
    GROUP, VERSION, "SyncTarget", "synctargets", "synctarget", False, categories=("kcp",),
    subresources=("status",), prepare=_sync_target_prepare, validate=_sync_target_validate,
    columns=(_col("Key", lambda o: ((o.get("metadata") or {}).get("labels") or {}).get(KEY_LABEL),
                  "The sync target's key: workloads are placed on it by the label state.workload.kcp.dev/<key>"),
             _col("Synced Resources", _synced, "The resources its syncer syncs"),
             _col("URL", _first_url, "The URL of its syncer virtual workspace (one per shard)", priority=1)))

TYPES: tuple[ResourceType, ...] = (SYNC_TARGETS,)


# ---------------------------------------------------------------- the workload annotations of the synced kinds

def _annotation_causes(obj: dict, *, has_spec: bool, namespace: bool) -> list[dict]:
    meta = obj.get("metadata") or {}
    annotations = meta.get("annotations")
    if not isinstance(annotations, dict):
        return []
    causes = []
    for name, value in annotations.items():
        field = f"metadata.annotations[{name}]"
        if name.startswith(SPEC_DIFF_ANNOTATION_PREFIX):
            if not has_spec:
                causes.append(forbidden(field, f"a {obj.get('kind') or 'object'} has no spec for a spec diff to "
                                               "patch"))
                continue
            try:
                specdiff.parse(value)
            except specdiff.SpecDiffError as exc:
                causes.append(invalid(field, value, str(exc)))
        elif name == PLACEMENT_ANNOTATION and namespace:
            try:
                parse_placement(value, cluster_of(meta))
            except PlacementError as exc:
                causes.append(invalid(field, value, f"must list SyncTargets as <name> or <workspace>/<name>, "
                                                    f"comma-separated: {exc}"))
    return causes


def _with_annotation_checks(rt: ResourceType, *, has_spec: bool) -> ResourceType:
    validate = rt.validate
    namespace = rt.plural == "namespaces"

    def checked(obj: dict, old: dict | None) -> list[dict]:
        return validate(obj, old) + _annotation_causes(obj, has_spec=has_spec, namespace=namespace)

    return replace(rt, validate=checked)


def with_workload_annotations(types: Iterable[ResourceType]) -> list[ResourceType]:
    """``types`` with the synced kinds checking their workload annotations on every write."""
    synced = {(gvr.group, gvr.resource): gvr.resource in ("deployments", "namespaces") for gvr in SYNCED_RESOURCES}
    return [_with_annotation_checks(rt, has_spec=synced[(rt.group, rt.plural)])
            if (rt.group, rt.plural) in synced else rt for rt in types]
