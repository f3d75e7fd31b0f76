"""The CRD controller: writes what ``CustomResourceIndex`` decided into each CRD's ``status``
(``NamesAccepted``, ``Established``, ``acceptedNames``, ``storedVersions``) and finalizes deleted CRDs by
deleting their objects (honouring the objects' own finalizers) before releasing the CRD."""

from __future__ import annotations

import structlog

from kcp_virtual.framework import errors
from server.apis.apiextensions import (CUSTOM_RESOURCE_DEFINITIONS, FINALIZER, CustomResourceIndex, crd_group,
                                       crd_names, storage_version)
from server.controllers.base import Reconciler
from server.registry.generic import ListOptions, Registry, now_rfc3339
from server.storage import Key

log = structlog.get_logger("kcp.apiextensions")


class CRDController:
    """Keeps CRD status in line with the index and deletes a deleted CRD's objects before the CRD."""

    def __init__(self, registry: Registry, index: CustomResourceIndex, *, workers: int = 2):
        self.registry = registry
        self.index = index
        self.reconciler = Reconciler(registry.store, CUSTOM_RESOURCE_DEFINITIONS.storage_key, self.reconcile,
                                     name="customresourcedefinitions", workers=workers, backoff_max=2.0)

    def start(self) -> None:
        self.reconciler.start()

    def stop(self) -> None:
        self.reconciler.stop()

    @property
    def idle(self) -> bool:
        return self.reconciler.idle

    def reconcile(self, key: Key) -> None:
        crd = self.registry.store.get(key)
        group = crd_group(crd, key.name) if crd is not None else key.name.partition(".")[2]
        if crd is not None and crd["metadata"].get("deletionTimestamp"):
            self._finalize(key.cluster, crd)
        # A change to one CRD can accept or refuse the names of the others in its group.
        for other in self.index.crds(key.cluster):
            if crd_group(other, other["metadata"]["name"]) == group and not other["metadata"].get(
                    "deletionTimestamp"):
                self._update_status(key.cluster, other)

    def _update_status(self, cluster: str, crd: dict) -> None:
        name = crd["metadata"]["name"]
        decision = self.index.acceptance(cluster, name)
        if decision is None:
            return
        status = dict(crd.get("status") or {})
        now = now_rfc3339()
        conditions = list(status.get("conditions") or ())
        if decision.accepted:
            conditions = _set_condition(conditions, "NamesAccepted", "True", decision.reason, decision.message, now)
            conditions = _set_condition(conditions, "Established", "True", "InitialNamesAccepted",
                                        "the initial names have been accepted", now)
            names = crd_names(crd)
            status["acceptedNames"] = {k: v for k, v in names.items()
                                       if k in ("plural", "singular", "shortNames", "kind", "listKind",
                                                "categories")}
        else:
            conditions = _set_condition(conditions, "NamesAccepted", "False", decision.reason, decision.message,
                                        now)
            conditions = _set_condition(conditions, "Established", "False", "NotAccepted",
                                        "not all names are accepted", now)
            status.setdefault("acceptedNames", {"plural": "", "kind": ""})
        status["conditions"] = conditions
        storage = storage_version(crd)
        stored = list(status.get("storedVersions") or ())
        if storage and storage not in stored:
            stored.append(storage)
        status["storedVersions"] = stored
        if status == (crd.get("status") or {}):
            return
        self.registry.update(CUSTOM_RESOURCE_DEFINITIONS, cluster, "", name, {**crd, "status": status},
                             subresource="status")

    def _finalize(self, cluster: str, crd: dict) -> None:
        name = crd["metadata"]["name"]
        if FINALIZER not in (crd["metadata"].get("finalizers") or ()):
            return
        conditions = _set_condition(list((crd.get("status") or {}).get("conditions") or ()), "Terminating",
                                    "True", "InstanceDeletionInProgress", "CustomResource deletion is in progress",
                                    now_rfc3339())
        if conditions != (crd.get("status") or {}).get("conditions"):
            crd = self.registry.update(CUSTOM_RESOURCE_DEFINITIONS, cluster, "", name,
                                       {**crd, "status": {**(crd.get("status") or {}), "conditions": conditions}},
                                       subresource="status")
        types = self.index.served_types(cluster, name)
        remaining = 0
        if types:
            rt = types[0]
            for obj in self.registry.list(rt, cluster, "", ListOptions())["items"]:
                meta = obj["metadata"]
                if meta.get("deletionTimestamp"):
                    remaining += 1
                    continue
                try:
                    result = self.registry.delete(rt, cluster, meta.get("namespace", ""), meta["name"])
                except errors.NotFound:
                    continue
                remaining += result.get("kind") != "Status"
        else:
            remaining = self._delete_unserved(cluster, crd)
        if remaining:
            raise errors.Conflict(f'customresourcedefinition "{name}": waiting for {remaining} object(s) with '
                                  "finalizers to be deleted")
        meta = dict(crd["metadata"])
        meta["finalizers"] = [f for f in meta.get("finalizers") or () if f != FINALIZER]
        self.registry.update(CUSTOM_RESOURCE_DEFINITIONS, cluster, "", name, {**crd, "metadata": meta})
        log.info("customresourcedefinition deleted", cluster=cluster, name=name)

    def _delete_unserved(self, cluster: str, crd: dict) -> int:
        """A CRD whose names were never accepted has no types; its storage key may still hold objects."""
        resource = f"{crd['spec']['group']}/{crd['spec']['names']['plural']}"
        items, _ = self.registry.store.list(resource, cluster)
        for obj in items:
            try:
                self.registry.store.delete(Key(resource, cluster, obj["metadata"].get("namespace", ""),
                                               obj["metadata"]["name"]))
            except Exception:  # noqa: BLE001 - already gone
                pass
        return 0


def _set_condition(conditions: list[dict], type_: str, status: str, reason: str, message: str,
                   now: str) -> list[dict]:
    out = []
    found = False
    for condition in conditions:
        if condition.get("type") == type_:
            found = True
            if condition.get("status") == status and condition.get("reason") == reason and \
                    condition.get("message") == message:
                out.append(condition)
                continue
            transition = condition.get("lastTransitionTime") if condition.get("status") == status else now
            out.append({"type": type_, "status": status, "lastTransitionTime": transition or now,
                        "reason": reason, "message": message})
        else:
            out.append(condition)
    if not found:
        out.append({"type": type_, "status": status, "lastTransitionTime": now, "reason": reason,
                    "message": message})
    return out
