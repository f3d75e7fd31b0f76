"""The APIBinding controller: decides what each consumer cluster binds, and keeps unbound objects out of sight.

It reconciles whole consumer clusters (all APIBindings of a cluster are decided together, one
cluster at a time), so that which binding holds a resource name is never raced:

* For each binding (oldest first): the export it references must exist and have an identity
  (``APIExportValid``), its ``latestResourceSchemas`` must exist in the export's cluster, and no
  resource may clash with a built-in, a CRD in the consumer (``NamingConflicts``: not served then)
  or a resource another binding already holds (a binding that holds a name keeps it against
  newcomers). All clear: ``status.boundResources`` lists them (group, resource, schema name/UID,
  identityHash, storageVersions), ``phase`` goes ``Binding`` -> ``Bound``, and ``apiExportClusterName``
  names the export's cluster. A failure leaves what was bound served and says why in the
  conditions (``Ready``, ``APIExportValid``, ``InitialBindingCompleted``, ``BindingUpToDate``).
* Unbinding keeps the objects: the objects of a resource no longer bound in a cluster are moved
  aside ("parked", under ``unbound/<storage key>``) so that the export's wildcard view
  (``<plural>:<identity>`` in ``*``) shows exactly the clusters that bind it, and moved back before
  a new binding to the same export is marked Bound. Deleting the logical cluster deletes them.

Exports, schemas, CRDs and logical clusters trigger the clusters they concern.
"""

from __future__ import annotations

import structlog

from server.apis.apiextensions import CUSTOM_RESOURCE_DEFINITIONS
from server.apis.apis_kcp import (APIBINDINGS, APIEXPORTS, APIRESOURCESCHEMAS, BINDING, BOUND, binding_reference,
                                  set_condition, storage_version)
from server.apis.bound import BoundResourceIndex, age, bound_entries
from server.controllers.base import Reconciler, TriggeredController
from server.registry.generic import LOGICAL_CLUSTERS, Registry, cluster_of, now_rfc3339
from server.storage import Key, KeyExistsError, KeyNotFoundError

log = structlog.get_logger("kcp.controllers.apibinding")

PARKED_PREFIX = "unbound/"

GroupResource = tuple[str, str]


def bound_storage_key(group: str, resource: str, identity: str) -> str:
    """Where a bound resource's objects live (``ResourceType.storage_key`` of its type)."""
    return f"{group or 'core'}/{resource}:{identity}"


def is_bound_storage_key(resource: str) -> bool:
    return ":" in resource.rpartition("/")[2] and not resource.startswith(PARKED_PREFIX)


class _ClusterReconciler(Reconciler):
    """Keys are whole logical clusters: every key of a cluster becomes the same queue item."""

    def enqueue(self, key: Key) -> None:
        super().enqueue(Key(APIBINDINGS.storage_key, key.cluster, "", ""))


class APIBindingController(TriggeredController):
    def __init__(self, registry: Registry, index: BoundResourceIndex, *, workers: int = 4):
        self.registry = registry
        self.store = registry.store
        self.index = index
        self.reconciler = _ClusterReconciler(self.store, APIBINDINGS.storage_key, self.reconcile, name="apibindings",
                                             workers=workers, backoff_max=5.0)
        self.triggers = [
            Reconciler(self.store, APIEXPORTS.storage_key, self._export_changed, name="apibindings-exports",
                       workers=1),
            Reconciler(self.store, APIRESOURCESCHEMAS.storage_key, self._schema_changed,
                       name="apibindings-schemas", workers=1),
            Reconciler(self.store, CUSTOM_RESOURCE_DEFINITIONS.storage_key, self.reconciler.enqueue,
                       name="apibindings-crds", workers=1),
            Reconciler(self.store, LOGICAL_CLUSTERS, self.reconciler.enqueue, name="apibindings-clusters", workers=1),
        ]

    def start(self) -> None:
        super().start()
        # Clusters deleted while we were not running may still hold bound objects.
        for resource in self.store.counts():
            if is_bound_storage_key(resource) or resource.startswith(PARKED_PREFIX):
                for cluster in {cluster_of(obj["metadata"]) for obj in self.store.list(resource)[0]}:
                    if not self.registry.cluster_exists(cluster):
                        self.reconciler.enqueue(Key(resource, cluster, "", ""))

    # ------------------------------------------------------------------ triggers

    def _export_changed(self, key: Key) -> None:
        for cluster in self.index.referencing(key.cluster, key.name):
            self.reconciler.enqueue(Key(APIBINDINGS.storage_key, cluster, "", ""))

    def _schema_changed(self, key: Key) -> None:
        for export in self.store.list(APIEXPORTS.storage_key, key.cluster)[0]:
            if key.name in ((export.get("spec") or {}).get("latestResourceSchemas") or ()):
                self._export_changed(Key(APIEXPORTS.storage_key, key.cluster, "", export["metadata"]["name"]))

    # ------------------------------------------------------------------ reconcile

    def reconcile(self, key: Key) -> None:
        cluster = key.cluster
        if not self.registry.cluster_exists(cluster):
            self._purge(cluster)
            return
        bindings = sorted(self.store.list(APIBINDINGS.storage_key, cluster)[0], key=age)
        held: dict[GroupResource, str] = {}  # resource name -> the binding holding it (already bound ones first)
        for binding in bindings:
            if (binding.get("status") or {}).get("phase") == BOUND:
                for group, resource, *_ in bound_entries(binding):
                    held.setdefault((group, resource), binding["metadata"]["name"])
        crds = [crd for crd in self.store.list(CUSTOM_RESOURCE_DEFINITIONS.storage_key, cluster)[0]
                if not crd["metadata"].get("deletionTimestamp")]
        served: set[str] = set()
        for binding in bindings:
            name = binding["metadata"]["name"]
            if binding["metadata"].get("deletionTimestamp"):
                continue
            status = self._desired(cluster, binding, held, crds)
            for group, resource, _, _, identity in bound_entries({"status": status}):
                served.add(bound_storage_key(group, resource, identity))
            current = binding.get("status") or {}
            if status == current:
                continue
            if not current.get("phase") and status.get("phase") == BOUND:  # Binding first, as kcp shows it
                binding = self.registry.update(APIBINDINGS, cluster, "", name, {
                    **binding, "status": {**current, "phase": BINDING}}, subresource="status")
                current = binding["status"]
            for group, resource, _, _, identity in bound_entries({"status": status}):
                if status.get("phase") == BOUND:
                    self._move(cluster, PARKED_PREFIX + bound_storage_key(group, resource, identity),
                               bound_storage_key(group, resource, identity), restore=True)
            self.registry.update(APIBINDINGS, cluster, "", name, {**binding, "status": status},
                                 subresource="status")
            if status.get("phase") == BOUND and current.get("phase") != BOUND:
                log.info("apibinding bound", cluster=cluster, name=name,
                         resources=[f"{r}.{g}" for g, r, *_ in bound_entries({"status": status})])
        for resource in self.store.counts():
            if is_bound_storage_key(resource) and resource not in served:
                self._move(cluster, resource, PARKED_PREFIX + resource)

    def _desired(self, cluster: str, binding: dict, held: dict[GroupResource, str], crds: list[dict]) -> dict:
        """The status ``binding`` should have; updates ``held`` with what it holds afterwards."""
        name = binding["metadata"]["name"]
        status = dict(binding.get("status") or {})
        was_bound = status.get("phase") == BOUND
        now = now_rfc3339()
        conditions = list(status.get("conditions") or ())
        ref = binding_reference(binding, cluster)
        problem: tuple[str, str] | None = None
        export_problem: tuple[str, str] | None = None
        entries: list[dict] = []
        if ref is None:
            export_problem = ("APIExportInvalidReference", "spec.reference.workspace.exportName is required")
        else:
            export = self.store.get(Key(APIEXPORTS.storage_key, ref[0], "", ref[1]))
            identity = ((export or {}).get("status") or {}).get("identityHash")
            if export is None:
                export_problem = ("APIExportNotFound", f"APIExport {ref[0]}:{ref[1]} not found")
            elif not identity:
                export_problem = ("APIExportNotReady", f"APIExport {ref[0]}:{ref[1]} has no identity yet")
            else:
                entries, problem = self._resolve(cluster, name, ref, export, identity, held, crds, status)
        if export_problem is not None:
            problem = export_problem
            conditions = set_condition(conditions, "APIExportValid", "False", *export_problem, now)
        else:
            conditions = set_condition(conditions, "APIExportValid", "True", "", "", now)
        mine = {gr for gr, holder in held.items() if holder == name}
        if problem is None:
            status["boundResources"] = entries
            status["phase"] = BOUND
            status["apiExportClusterName"] = ref[0]
            keep = {(e["group"], e["resource"]) for e in entries}
            for gr in mine - keep:
                del held[gr]
            for gr in keep:
                held[gr] = name
            conditions = set_condition(conditions, "InitialBindingCompleted", "True", "", "", now)
            conditions = set_condition(conditions, "BindingUpToDate", "True", "", "", now)
            conditions = set_condition(conditions, "Ready", "True", "", "", now)
        else:
            # What this binding held stays served; what someone else holds is not its own any more.
            previous = status.get("boundResources") or []
            status["boundResources"] = [e for e in previous if isinstance(e, dict)
                                        and held.get((e.get("group"), e.get("resource"))) == name]
            if not status["boundResources"]:
                status.pop("boundResources")
            status["phase"] = BOUND if was_bound else BINDING
            if not was_bound:
                conditions = set_condition(conditions, "InitialBindingCompleted", "False", *problem, now)
            conditions = set_condition(conditions, "BindingUpToDate", "False", *problem, now)
            conditions = set_condition(conditions, "Ready", "False", *problem, now)
        status["conditions"] = conditions
        return status

    def _resolve(self, cluster: str, name: str, ref: tuple[str, str], export: dict, identity: str,
                 held: dict[GroupResource, str], crds: list[dict],
                 status: dict) -> tuple[list[dict], tuple[str, str] | None]:
        """The boundResources entries of the export's latest schemas, or why they cannot all be bound."""
        previous = {(e.get("group"), e.get("resource")): e for e in status.get("boundResources") or ()
                    if isinstance(e, dict)}
        entries: list[dict] = []
        seen: set[GroupResource] = set()
        for schema_name in (export.get("spec") or {}).get("latestResourceSchemas") or ():
            schema = self.store.get(Key(APIRESOURCESCHEMAS.storage_key, ref[0], "", schema_name))
            if schema is None:
                return [], ("APIResourceSchemaNotFound", f"APIResourceSchema {ref[0]}:{schema_name} not found")
            spec = schema["spec"]
            gr = (spec["group"], spec["names"]["plural"])
            uid = schema["metadata"]["uid"]
            if not self.index.types_for(ref, schema_name, uid, identity):
                return [], ("APIResourceSchemaInvalid", f"APIResourceSchema {ref[0]}:{schema_name} cannot be served")
            conflict = self._conflict(gr, name, held, crds, seen)
            if conflict is not None:
                return [], ("NamingConflicts", f"APIResourceSchema {ref[0]}:{schema_name} conflicts with {conflict}")
            seen.add(gr)
            versions = list((previous.get(gr) or {}).get("storageVersions") or ())
            stored = storage_version(schema)
            if stored and stored not in versions:
                versions.append(stored)
            entries.append({"group": gr[0], "resource": gr[1],
                            "schema": {"name": schema_name, "UID": uid, "identityHash": identity},
                            "storageVersions": versions})
        return entries, None

    def _conflict(self, gr: GroupResource, name: str, held: dict[GroupResource, str], crds: list[dict],
                  seen: set[GroupResource]) -> str | None:
        group, resource = gr
        holder = held.get(gr)
        if holder == name:
            return None  # already ours: whatever appeared since is the newcomer
        if holder is not None:
            return f'the resource "{resource}.{group}" of APIBinding "{holder}"'
        if gr in seen:
            return f'another schema of the same export for "{resource}.{group}"'
        if any(rt.group == group and rt.plural == resource for rt in self.registry.catalog.builtin_types()):
            return f'the built-in resource "{resource}.{group}"'
        for crd in crds:
            spec = crd.get("spec") or {}
            if spec.get("group") == group and (spec.get("names") or {}).get("plural") == resource:
                return f'CustomResourceDefinition "{crd["metadata"]["name"]}"'
        return None

    # ------------------------------------------------------------------ objects of unbound resources

    def _move(self, cluster: str, source: str, target: str, *, restore: bool = False) -> None:
        """Move ``cluster``'s objects from one storage key to another, as they are (uid, metadata, status).
        Idempotent and restartable: a copy already at the target is overwritten by the source. Restoring
        drops the objects of namespaces deleted meanwhile (their content went with them)."""
        items, _ = self.store.list(source, cluster)
        for obj in items:
            meta = obj["metadata"]
            namespace, name = meta.get("namespace", ""), meta["name"]
            gone = restore and namespace and self.store.get(Key("core/namespaces", cluster, "", namespace)) is None
            if not gone:
                try:
                    self.store.create(Key(target, cluster, namespace, name), obj)
                except KeyExistsError:
                    self.store.update(Key(target, cluster, namespace, name), obj)
            try:
                self.store.delete(Key(source, cluster, namespace, name))
            except KeyNotFoundError:
                pass
        if items:
            log.info("bound objects moved", cluster=cluster, source=source, target=target, count=len(items))

    def _purge(self, cluster: str) -> None:
        for resource in self.store.counts():
            if not (is_bound_storage_key(resource) or resource.startswith(PARKED_PREFIX)):
                continue
            for obj in self.store.list(resource, cluster)[0]:
                try:
                    self.store.delete(Key(resource, cluster, obj["metadata"].get("namespace", ""),
                                          obj["metadata"]["name"]))
                except KeyNotFoundError:
                    pass


__all__ = ["APIBindingController", "PARKED_PREFIX", "bound_storage_key", "is_bound_storage_key"]
