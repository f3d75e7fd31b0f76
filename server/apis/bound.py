"""Bound resources: the catalog source that serves what APIBindings bind, stored under their export's identity.

In a consumer cluster, every resource in the ``status.boundResources`` of a ``Bound`` APIBinding is
served like a CRD (discovery, OpenAPI, validation, Table, status/scale) from its APIResourceSchema,
as ``<plural>`` and as ``<plural>:<identityHash>``. Its ResourceType carries the export's identity,
so its objects live under ``<group>/<plural>:<identityHash>``: two exports of the same
group/resource never share storage. In the wildcard cluster ``*`` the identity-qualified name is
served for every export known by that identity (even before anything binds it: an empty list,
never a 404), which lists and watches that export's objects in every cluster that bound it
(``server.controllers.apibinding`` parks the objects of a cluster that unbinds elsewhere, so this
view never shows them).

Like ``CustomResourceIndex``, the index follows storage through watchers drained (without
blocking) at every call, so a binding is served by the very next request after its status
write. A bound resource is trusted only when it checks out against the binding's own (immutable,
bind-checked) reference: the schema lives in the export's cluster with the recorded UID, and the
identity is the export's. Resource types are built once per (export, schema, identity) and shared
by every consumer cluster, so a thousand bindings of one export cost one set of types.
"""

from __future__ import annotations

from typing import Iterable

import structlog

from server.apis.apiextensions import custom_resource_types, version_priority
from server.apis.apis_kcp import APIBINDINGS, APIEXPORTS, APIRESOURCESCHEMAS, BOUND, binding_reference, schema_as_crd
from server.registry.generic import cluster_of
from server.registry.resourcetype import ResourceType
from server.storage import ResourceExpiredError, Store

log = structlog.get_logger("kcp.apis.bound")

_FOLLOWED = (APIBINDINGS.storage_key, APIEXPORTS.storage_key, APIRESOURCESCHEMAS.storage_key)

ExportRef = tuple[str, str]         # (export cluster, export name)


def age(obj: dict) -> tuple:
    """Older first: who keeps a resource name two bindings claim."""
    meta = obj["metadata"]
    return (meta.get("creationTimestamp", ""), meta["name"])


def bound_entries(binding: dict) -> list[tuple[str, str, str, str, str]]:
    """``(group, resource, schema name, schema UID, identity)`` of each well-formed ``status.boundResources``."""
    out = []
    for entry in (binding.get("status") or {}).get("boundResources") or ():
        if not isinstance(entry, dict) or not isinstance(entry.get("schema"), dict):
            continue
        schema = entry["schema"]
        fields = (entry.get("group"), entry.get("resource"), schema.get("name"), schema.get("UID"),
                  schema.get("identityHash"))
        if all(isinstance(f, str) for f in fields) and all(fields[1:]):
            out.append(fields)
    return out


class BoundResourceIndex:
    """The catalog source (``lookup``/``types``) of bound resources; see the module docstring."""

    def __init__(self, store: Store):
        self.store = store
        self._built: dict[tuple, list[ResourceType]] = {}  # (export ref, schema name, uid, identity) -> types
        self._watchers: list = []
        self._relist()

    # ---- catalog source

    def lookup(self, cluster: str, group: str, version: str, plural: str) -> ResourceType | None:
        self.sync()
        if cluster == "*":
            resource, _, identity = plural.partition(":")
            return self._wildcard(group, version, resource, identity) if identity else None
        types = self._lookup.get(cluster)
        return types.get((group, version, plural)) if types else None

    def types(self, cluster: str) -> list[ResourceType]:
        self.sync()
        return self._ordered.get(cluster, [])

    # ---- for the controllers

    def referencing(self, export_cluster: str, export_name: str) -> set[str]:
        """The consumer clusters with an APIBinding (bound or not) that points at this export."""
        self.sync()
        return set(self._referencing.get((export_cluster, export_name), ()))

    def types_for(self, export: ExportRef, schema_name: str, uid: str, identity: str) -> list[ResourceType]:
        """The served versions of one schema of ``export``, stored under ``identity`` ([] if it does not check out)."""
        self.sync()
        return self._types(export, schema_name, uid, identity)

    # ---- following storage

    def sync(self) -> None:
        rv = self.store.current_rv()
        if rv == self._seen_rv:
            return
        try:
            events = [event for watcher in self._watchers for event in watcher.next(0)]
        except ResourceExpiredError:
            self._relist()
            return
        self._seen_rv = rv
        touched: set[str] = set()
        for event in sorted(events, key=lambda e: e.rv):
            resource, cluster, name = event.key.resource, event.key.cluster, event.key.name
            obj = None if event.type == "DELETED" else event.obj
            if resource == APIBINDINGS.storage_key:
                self._put_binding(cluster, name, obj)
                touched.add(cluster)
            elif resource == APIEXPORTS.storage_key:
                self._put_export(cluster, name, obj)
            else:
                self._put_schema(cluster, name, obj)
        for cluster in touched:
            self._recompute(cluster)

    def _relist(self) -> None:
        for watcher in self._watchers:
            watcher.close()
        self._bindings: dict[str, dict[str, dict]] = {}     # consumer cluster -> name -> APIBinding
        self._exports: dict[ExportRef, dict] = {}
        self._by_identity: dict[str, set[ExportRef]] = {}
        self._schemas: dict[tuple[str, str], dict] = {}
        self._referencing: dict[ExportRef, set[str]] = {}
        self._lookup: dict[str, dict[tuple[str, str, str], ResourceType]] = {}
        self._ordered: dict[str, list[ResourceType]] = {}
        rv = self.store.current_rv()
        self._seen_rv = rv
        listed = {resource: self.store.list(resource)[0] for resource in _FOLLOWED}
        self._watchers = [self.store.watch(resource, None, None, rv) for resource in _FOLLOWED]
        for obj in listed[APIEXPORTS.storage_key]:
            self._put_export(cluster_of(obj["metadata"]), obj["metadata"]["name"], obj)
        for obj in listed[APIRESOURCESCHEMAS.storage_key]:
            self._put_schema(cluster_of(obj["metadata"]), obj["metadata"]["name"], obj)
        for obj in listed[APIBINDINGS.storage_key]:
            self._put_binding(cluster_of(obj["metadata"]), obj["metadata"]["name"], obj)
        for cluster in list(self._bindings):
            self._recompute(cluster)

    def _put_binding(self, cluster: str, name: str, obj: dict | None) -> None:
        bindings = self._bindings.setdefault(cluster, {})
        old = bindings.pop(name, None)
        if old is not None:
            ref = binding_reference(old, cluster)
            if ref is not None:
                clusters = self._referencing.get(ref)
                if clusters is not None and not any(binding_reference(b, cluster) == ref for b in bindings.values()):
                    clusters.discard(cluster)
                    if not clusters:
                        del self._referencing[ref]
        if obj is not None:
            bindings[name] = obj
            ref = binding_reference(obj, cluster)
            if ref is not None:
                self._referencing.setdefault(ref, set()).add(cluster)
        elif not bindings:
            del self._bindings[cluster]

    def _put_export(self, cluster: str, name: str, obj: dict | None) -> None:
        ref = (cluster, name)
        old = self._exports.pop(ref, None)
        if old is not None:
            identity = (old.get("status") or {}).get("identityHash")
            holders = self._by_identity.get(identity) if isinstance(identity, str) else None
            if holders is not None:
                holders.discard(ref)
                if not holders:
                    del self._by_identity[identity]
        if obj is not None:
            self._exports[ref] = obj
            identity = (obj.get("status") or {}).get("identityHash")
            if isinstance(identity, str) and identity:
                self._by_identity.setdefault(identity, set()).add(ref)

    def _put_schema(self, cluster: str, name: str, obj: dict | None) -> None:
        if obj is None:
            self._schemas.pop((cluster, name), None)
        else:
            self._schemas[(cluster, name)] = obj

    # ---- what is served

    def _types(self, export: ExportRef, schema_name: str, uid: str, identity: str) -> list[ResourceType]:
        key = (export, schema_name, uid, identity)
        types = self._built.get(key)
        if types is not None:
            return types
        live = self._exports.get(export)
        schema = self._schemas.get((export[0], schema_name))
        if live is None or schema is None or schema["metadata"].get("uid") != uid or \
                (live.get("status") or {}).get("identityHash") != identity:
            return []
        try:
            types = custom_resource_types(schema_as_crd(schema), identity=identity)
        except (KeyError, TypeError, ValueError, AttributeError, StopIteration):
            log.warning("malformed APIResourceSchema", cluster=export[0], name=schema_name)
            return []
        self._built[key] = types
        return types

    def _recompute(self, cluster: str) -> None:
        claimed: dict[tuple[str, str], list[ResourceType]] = {}
        for binding in sorted(self._bindings.get(cluster, {}).values(), key=age):
            status = binding.get("status") or {}
            ref = binding_reference(binding, cluster)
            if status.get("phase") != BOUND or ref is None:
                continue
            for group, resource, schema_name, uid, identity in bound_entries(binding):
                if (group, resource) in claimed:
                    continue  # the oldest binding holds a name; the controller never lets two hold one
                types = [rt for rt in self._types(ref, schema_name, uid, identity)
                         if rt.group == group and rt.plural == resource]
                if types:
                    claimed[(group, resource)] = types
        ordered = sorted((rt for types in claimed.values() for rt in types),
                         key=lambda rt: (rt.group, version_priority(rt.version)))
        if not ordered:
            self._ordered.pop(cluster, None)
            self._lookup.pop(cluster, None)
            return
        self._ordered[cluster] = ordered
        lookup = {}
        for rt in ordered:
            lookup[(rt.group, rt.version, rt.plural)] = rt
            lookup[(rt.group, rt.version, f"{rt.plural}:{rt.identity}")] = rt
        self._lookup[cluster] = lookup

    def _wildcard(self, group: str, version: str, resource: str, identity: str) -> ResourceType | None:
        """``<resource>:<identity>`` across clusters: from the exports with that identity, else what was bound."""
        for export in sorted(self._by_identity.get(identity, ())):
            live = self._exports[export]
            for schema_name in (live.get("spec") or {}).get("latestResourceSchemas") or ():
                schema = self._schemas.get((export[0], schema_name)) if isinstance(schema_name, str) else None
                if schema is None:
                    continue
                found = _pick(self._types(export, schema_name, schema["metadata"].get("uid", ""), identity),
                              group, version, resource)
                if found is not None:
                    return found
        for key, types in self._built.items():
            if key[3] == identity:
                found = _pick(types, group, version, resource)
                if found is not None:
                    return found
        return None


def _pick(types: Iterable[ResourceType], group: str, version: str, resource: str) -> ResourceType | None:
    return next((rt for rt in types if rt.group == group and rt.version == version and rt.plural == resource), None)


__all__ = ["BoundResourceIndex", "bound_entries", "age"]
