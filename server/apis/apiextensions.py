"""``apiextensions.k8s.io/v1`` CustomResourceDefinitions, per logical cluster, and the custom resources they serve.

Two parts, one concept:

* ``CUSTOM_RESOURCE_DEFINITIONS``: the CRD type itself (validation of names, versions and structural
  schemas; the ``customresourcecleanup`` finalizer so that deleting a CRD deletes its objects first).
* ``CustomResourceIndex``: the catalog source that serves CRDs. It follows the CRD objects through
  a storage watcher that it drains on every lookup, so a CRD is served by the very next request
  after its create returned, and decides which CRDs' names are accepted (built-ins and older CRDs
  win). Custom resource types are rebuilt only when a CRD's spec changes, so caches keyed by type
  (OpenAPI documents) survive status updates.

``server.controllers.crd`` writes what the index decided into the CRDs' ``status``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import orjson
import structlog

from kcp_virtual.framework import errors, table
from kcp_virtual.framework.negotiation import CR_PATCH_KINDS
from server.registry import patch as patches
from server.registry.generic import Registry, cluster_of
from server.apis.scale import get_path, scale_handlers
from server.registry.resourcetype import ResourceType
from server.registry.schema import structural
from server.registry.selectors import with_default_fields
from server.registry.validation import (forbidden, invalid, is_dns1123_label, is_dns1123_subdomain,
                                                not_supported, required)
from server.storage import ResourceExpiredError, Store

log = structlog.get_logger("kcp.apiextensions")

GROUP = "apiextensions.k8s.io"
VERSION = "v1"
FINALIZER = "customresourcecleanup.apiextensions.k8s.io"
# ---------------------------------------------------------------------------------------------- the CRD type

def default_names(spec: dict) -> None:
    """``spec.names`` defaults from the kind (``singular``, ``listKind``); CRDs and APIResourceSchemas alike."""
    names = spec.get("names")
    if isinstance(names, dict) and isinstance(names.get("kind"), str):
        names.setdefault("singular", names["kind"].lower())
        names.setdefault("listKind", names["kind"] + "List")


def _crd_prepare(obj: dict, old: dict | None) -> list[dict]:
    """Defaults of the CRD spec; on create, the cleanup finalizer (deleting a CRD deletes its objects) and the
    status kube's strategy gives a new CRD: no conditions, no accepted names yet, the storage version stored
    (clients check the create response for it); on update the storage version joins ``storedVersions``, as
    kube's does. The CRD controller adds the rest."""
    spec = obj.get("spec")
    if isinstance(spec, dict):
        default_names(spec)
        spec.setdefault("conversion", {"strategy": "None"})
    if old is None:
        meta = obj["metadata"]
        if FINALIZER not in (meta.get("finalizers") or ()):
            meta["finalizers"] = [*(meta.get("finalizers") or ()), FINALIZER]
        obj["status"] = {"conditions": [], "acceptedNames": {"plural": "", "kind": ""}, "storedVersions": []}
    storage = storage_version(obj)
    status = obj.get("status")
    if storage and isinstance(status, dict):
        stored = status.get("storedVersions")
        stored = list(stored) if isinstance(stored, list) else []
        if storage not in stored:
            obj["status"] = {**status, "storedVersions": [*stored, storage]}
    return []


def storage_version(crd: dict) -> str | None:
    """The name of the version marked ``storage`` (None while the spec has none: validation says so)."""
    spec = crd.get("spec")
    versions = spec.get("versions") if isinstance(spec, dict) else None
    if not isinstance(versions, list):
        return None
    return next((v.get("name") for v in versions if isinstance(v, dict) and v.get("storage")), None)


def _crd_validate(obj: dict, old: dict | None) -> list[dict]:
    return validate_crd(obj, old)


def validate_crd(obj: dict, old: dict | None = None) -> list[dict]:
    """Why a CRD is invalid (kube's field paths and messages), or nothing."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec")]
    causes: list[dict] = []
    group = spec.get("group")
    names = spec.get("names") if isinstance(spec.get("names"), dict) else {}
    name = obj["metadata"].get("name", "")
    if not group or not isinstance(group, str):
        causes.append(required("spec.group"))
    elif "." not in group:
        causes.append(invalid("spec.group", group, "should be a domain with at least one dot"))
    else:
        causes += [invalid("spec.group", group, m) for m in is_dns1123_subdomain(group)]
    if isinstance(names.get("plural"), str) and isinstance(group, str) and name != f"{names['plural']}.{group}":
        causes.append(invalid("metadata.name", name, 'must be spec.names.plural+"."+spec.group'))
    causes += _validate_names(names, "spec.names")
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        causes.append(required("spec.scope") if not spec.get("scope") else
                      not_supported("spec.scope", spec["scope"], ["Cluster", "Namespaced"]))
    elif old is not None and (old.get("spec") or {}).get("scope") != spec["scope"]:
        causes.append(invalid("spec.scope", spec["scope"], "field is immutable"))
    causes += _validate_versions(spec.get("versions"))
    strategy = (spec.get("conversion") or {}).get("strategy", "None")
    if strategy not in ("None", "Webhook"):
        causes.append(not_supported("spec.conversion.strategy", strategy, ["None", "Webhook"]))
    elif strategy == "Webhook":
        causes.append(forbidden("spec.conversion.strategy", "conversion webhooks are not supported by this server"))
    return causes


def _validate_names(names: dict, path: str) -> list[dict]:
    causes = []
    for field in ("plural", "singular"):
        value = names.get(field)
        if field == "plural" and not value:
            causes.append(required(f"{path}.plural"))
        elif value:
            causes += [invalid(f"{path}.{field}", value, m) for m in is_dns1123_label(value)]
    for i, short in enumerate(names.get("shortNames") or ()):
        causes += [invalid(f"{path}.shortNames[{i}]", short, m) for m in is_dns1123_label(short)]
    for field in ("kind", "listKind"):
        value = names.get(field)
        if field == "kind" and not value:
            causes.append(required(f"{path}.kind"))
        elif value and not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", str(value)):
            causes.append(invalid(f"{path}.{field}", value, "may have mixed case, but should otherwise match: "
                                                            "[a-z]([-a-z0-9]*[a-z0-9])?"))
    if names.get("kind") and names.get("kind") == names.get("listKind"):
        causes.append(invalid(f"{path}.listKind", names["listKind"], "kind and listKind cannot be the same"))
    return causes


def _validate_versions(versions) -> list[dict]:
    if not isinstance(versions, list) or not versions:
        return [invalid("spec.versions", versions or [], "must have exactly one version marked as storage "
                                                         "version")]
    causes: list[dict] = []
    seen: set[str] = set()
    storage = 0
    for i, version in enumerate(versions):
        path = f"spec.versions[{i}]"
        if not isinstance(version, dict):
            causes.append(invalid(path, version, "must be an object"))
            continue
        vname = version.get("name")
        if not vname:
            causes.append(required(f"{path}.name"))
        else:
            causes += [invalid(f"{path}.name", vname, m) for m in is_dns1123_label(vname)]
            if vname in seen:
                causes.append({"type": "FieldValueDuplicate", "field": f"{path}.name",
                               "message": f'Duplicate value: "{vname}"'})
            seen.add(vname)
        storage += bool(version.get("storage"))
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        if schema is None:
            causes.append(required(f"{path}.schema.openAPIV3Schema", "schemas are required"))
        else:
            causes += structural.check_structural(schema, f"{path}.schema.openAPIV3Schema")
        scale = ((version.get("subresources") or {}).get("scale"))
        if scale is not None:
            for field in ("specReplicasPath", "statusReplicasPath"):
                if not isinstance(scale, dict) or not scale.get(field):
                    causes.append(required(f"{path}.subresources.scale.{field}"))
        for j, column in enumerate(version.get("additionalPrinterColumns") or ()):
            for field in ("name", "type", "jsonPath"):
                if not isinstance(column, dict) or not column.get(field):
                    causes.append(required(f"{path}.additionalPrinterColumns[{j}].{field}"))
        for j, selectable in enumerate(version.get("selectableFields") or ()):
            json_path = selectable.get("jsonPath") if isinstance(selectable, dict) else None
            if not json_path:
                causes.append(required(f"{path}.selectableFields[{j}].jsonPath"))
            elif not re.fullmatch(r"(\.[A-Za-z0-9_-]+)+", json_path):
                causes.append(invalid(f"{path}.selectableFields[{j}].jsonPath", json_path,
                                      "must be a simple path of field names, such as .spec.color"))
    if storage != 1:
        causes.append(invalid("spec.versions", [v.get("name") for v in versions if isinstance(v, dict)],
                              "must have exactly one version marked as storage version"))
    if not any(isinstance(v, dict) and v.get("served") for v in versions) and not causes:
        causes.append(invalid("spec.versions", [v.get("name") for v in versions],
                              "must have at least one served version"))
    return causes


CUSTOM_RESOURCE_DEFINITIONS = ResourceType(
    GROUP, VERSION, "CustomResourceDefinition", "customresourcedefinitions", "customresourcedefinition", False,
    short_names=("crd", "crds"), categories=("api-extensions",), subresources=("status",),
    prepare=_crd_prepare, validate=_crd_validate,
    table=(table.NAME_COLUMN, table.Column("Created At", type="date", description="", getter=lambda o: (
        o.get("metadata") or {}).get("creationTimestamp"))))

TYPES: tuple[ResourceType, ...] = (CUSTOM_RESOURCE_DEFINITIONS,)


# ---------------------------------------------------------------------------------------------- versions

_KUBE_VERSION = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def version_priority(version: str) -> tuple:
    """kube's version order: GA before beta before alpha, higher first, then other names alphabetically."""
    m = _KUBE_VERSION.match(version)
    if not m:
        return (3, 0, 0, version)
    major, stage, minor = int(m.group(1)), m.group(2), int(m.group(3) or 0)
    return ({None: 0, "beta": 1, "alpha": 2}[stage], -major, -minor, version)


# ---------------------------------------------------------------------------------------------- names

@dataclass(frozen=True)
class Acceptance:
    accepted: bool
    reason: str = "NoConflicts"
    message: str = "no conflicts found"


def crd_names(crd: dict) -> dict:
    names = dict((crd.get("spec") or {}).get("names") or {})
    kind = names.get("kind") or ""
    names.setdefault("singular", kind.lower())
    names.setdefault("listKind", kind + "List")
    return names


def decide_names(crds: list[dict], builtins: list[ResourceType], seen: dict | None = None) -> dict[str, Acceptance]:
    """Which CRDs of one group in one cluster get their names: built-ins first, then CRDs that already had
    them accepted, then the older ones (``seen``: name -> arrival order, finer than creationTimestamp's
    seconds); a CRD whose plural, singular, short names, kind or list kind are in
    use is refused with kube's reason (``PluralConflict``...) and message (``"widgets" is already in use``)."""
    used = {"plural": set(), "singular": set(), "shortNames": set(), "kind": set(), "listKind": set()}
    for rt in builtins:
        used["plural"].add(rt.plural)
        used["singular"].add(rt.singular)
        used["shortNames"].update(rt.short_names)
        used["kind"].add(rt.kind)
        used["listKind"].add(rt.list_kind)

    def rank(crd: dict) -> tuple:
        had = any(c.get("type") == "NamesAccepted" and c.get("status") == "True"
                  for c in (crd.get("status") or {}).get("conditions") or ())
        name = crd["metadata"]["name"]
        return (not had, crd["metadata"].get("creationTimestamp", ""), (seen or {}).get(name, 0), name)

    decisions: dict[str, Acceptance] = {}
    for crd in sorted(crds, key=rank):
        names = crd_names(crd)
        conflict = None
        for field, reason in (("plural", "PluralConflict"), ("singular", "SingularConflict"),
                              ("shortNames", "ShortNamesConflict"), ("kind", "KindConflict"),
                              ("listKind", "ListKindConflict")):
            values = names.get(field) or ()
            for value in ([values] if isinstance(values, str) else values):
                if value and value in used[field]:
                    conflict = Acceptance(False, reason, f'"{value}" is already in use')
                    break
            if conflict:
                break
        if conflict:
            decisions[crd["metadata"]["name"]] = conflict
            continue
        decisions[crd["metadata"]["name"]] = Acceptance(True)
        for field in used:
            values = names.get(field) or ()
            used[field].update([values] if isinstance(values, str) else values)
    return decisions


# ---------------------------------------------------------------------------------------------- custom resources

def _path_steps(json_path: str) -> list[str]:
    return [step for step in json_path.strip().lstrip(".").split(".") if step]


def custom_resource_types(crd: dict, *, terminating: bool = False, identity: str = "") -> list[ResourceType]:
    """The served versions of a CRD as resource types, in kube's version priority (the first is preferred).
    ``identity``: stored under an APIExport's identity (a bound resource, ``server.apis.bound``)."""
    spec = crd["spec"]
    names = crd_names(crd)
    group = spec["group"]
    versions = [v for v in spec["versions"] if v.get("served")]
    versions.sort(key=lambda v: version_priority(v["name"]))
    storage = next(v["name"] for v in spec["versions"] if v.get("storage"))
    storage_api_version = f"{group}/{storage}"
    several = len(spec["versions"]) > 1
    out = []
    for version in versions:
        api_version = f"{group}/{version['name']}"
        schema = (version.get("schema") or {}).get("openAPIV3Schema") or {"type": "object",
                                                                            structural.PRESERVE: True}
        subresources = version.get("subresources") or {}
        present = tuple(s for s in ("status", "scale") if subresources.get(s) is not None)
        rt_holder: list[ResourceType] = []

        def prepare(obj: dict, old: dict | None, _storage=storage_api_version) -> list[dict]:
            if old is None and terminating:
                raise errors.MethodNotAllowed("create not allowed while custom resource definition is terminating")
            obj["apiVersion"] = _storage
            return []

        def validate(obj: dict, old: dict | None, _schema=schema) -> list[dict]:
            return structural.validate(_schema, obj)

        def convert(obj: dict, _api_version=api_version) -> dict:
            return obj if obj.get("apiVersion") == _api_version else {**obj, "apiVersion": _api_version}

        selectable = [_path_steps(f["jsonPath"]) for f in version.get("selectableFields") or ()]
        handlers = {}
        if "scale" in present:
            scale = subresources["scale"]
            selector_path = _path_steps(scale.get("labelSelectorPath") or "")
            handlers = scale_handlers(rt_holder, _path_steps(scale["specReplicasPath"]),
                                      _path_steps(scale["statusReplicasPath"]),
                                      (lambda obj, _p=selector_path: get_path(obj, _p)) if selector_path else None)
        rt = ResourceType(
            group, version["name"], names["kind"], names["plural"], names["singular"],
            spec["scope"] == "Namespaced", short_names=tuple(names.get("shortNames") or ()),
            categories=tuple(names.get("categories") or ()), subresources=present,
            field_selectors=with_default_fields([".".join(s) for s in selectable]),
            prepare=prepare, validate=validate, allow_unconditional_update=False, handlers=handlers,
            schema=schema, patch_kinds=CR_PATCH_KINDS,
            table=tuple(table.crd_columns(version.get("additionalPrinterColumns"))),
            convert=convert if several else None, identity=identity)
        rt_holder.append(rt)
        out.append(rt)
    return out


# ---------------------------------------------------------------------------------------------- the index

@dataclass
class _Served:
    """One CRD as served: the types of its served versions, rebuilt only when the spec changes."""
    fingerprint: bytes
    types: list[ResourceType]


class CustomResourceIndex:
    """The catalog source of CRDs: ``lookup``/``types`` per logical cluster, always current.

    A storage watcher on the CRD resource is drained (without blocking) at every call, so the index
    changes in the same greenlet turn as the write that changed a CRD; each change recomputes only
    its cluster's group.
    """

    def __init__(self, store: Store, builtins):
        self.store = store
        self._builtins = builtins          # callable: the built-in types (for name conflicts)
        self._crds: dict[str, dict[str, dict]] = {}           # cluster -> name -> CRD object
        self._served: dict[str, dict[str, _Served]] = {}      # cluster -> name -> what it serves
        self._decisions: dict[str, dict[str, Acceptance]] = {}  # cluster -> name -> names accepted?
        self._lookup: dict[str, dict[tuple[str, str, str], ResourceType]] = {}
        self._ordered: dict[str, list[ResourceType]] = {}
        self._seen: dict[tuple[str, str], int] = {}           # arrival order of CRDs, for name precedence
        self._watcher = None
        self._relist()

    # ---- catalog source

    def lookup(self, cluster: str, group: str, version: str, plural: str) -> ResourceType | None:
        self.sync()
        types = self._lookup.get(cluster)
        return types.get((group, version, plural)) if types else None

    def types(self, cluster: str) -> list[ResourceType]:
        self.sync()
        return self._ordered.get(cluster, [])

    # ---- for the controller

    def acceptance(self, cluster: str, name: str) -> Acceptance | None:
        self.sync()
        return self._decisions.get(cluster, {}).get(name)

    def served_types(self, cluster: str, name: str) -> list[ResourceType]:
        self.sync()
        served = self._served.get(cluster, {}).get(name)
        return served.types if served else []

    def crds(self, cluster: str) -> list[dict]:
        self.sync()
        return list(self._crds.get(cluster, {}).values())

    # ---- following storage

    def sync(self) -> None:
        if self._watcher is None:
            self._relist()
            return
        try:
            events = self._watcher.next(0)
        except ResourceExpiredError:
            self._relist()
            return
        touched: set[tuple[str, str]] = set()
        for event in events:
            cluster, name = event.key.cluster, event.key.name
            if event.type == "DELETED":
                self._crds.get(cluster, {}).pop(name, None)
                self._seen.pop((cluster, name), None)
            else:
                self._crds.setdefault(cluster, {})[name] = event.obj
                self._seen.setdefault((cluster, name), event.rv)   # first seen: its creation
            touched.add((cluster, crd_group(event.obj, name)))
        for cluster, group in touched:
            self._recompute(cluster, group)

    def _relist(self) -> None:
        items, rv = self.store.list(CUSTOM_RESOURCE_DEFINITIONS.storage_key)
        self._crds = {}
        self._served, self._decisions, self._lookup, self._ordered = {}, {}, {}, {}
        groups: set[tuple[str, str]] = set()
        for crd in items:
            cluster = cluster_of(crd["metadata"])
            self._crds.setdefault(cluster, {})[crd["metadata"]["name"]] = crd
            self._seen.setdefault((cluster, crd["metadata"]["name"]), 0)
            groups.add((cluster, crd_group(crd, crd["metadata"]["name"])))
        self._watcher = self.store.watch(CUSTOM_RESOURCE_DEFINITIONS.storage_key, None, None, rv)
        for cluster, group in groups:
            self._recompute(cluster, group)

    def _recompute(self, cluster: str, group: str) -> None:
        in_cluster = self._crds.get(cluster, {})
        in_group = {name: crd for name, crd in in_cluster.items() if crd_group(crd, name) == group}
        served = self._served.setdefault(cluster, {})
        decided = self._decisions.setdefault(cluster, {})
        for name in [n for n in decided if n not in in_cluster or (n in in_group and not _servable(in_group[n]))]:
            del decided[name]
            served.pop(name, None)
        members = [crd for crd in in_group.values() if _servable(crd)]
        decisions = decide_names(members, [rt for rt in self._builtins() if rt.group == group],
                                 {name: self._seen.get((cluster, name), 0) for name in in_group})
        for crd in members:
            name = crd["metadata"]["name"]
            decided[name] = decision = decisions[name]
            if not decision.accepted:
                served.pop(name, None)
                continue
            terminating = bool(crd["metadata"].get("deletionTimestamp"))
            fingerprint = hashlib.sha256(orjson.dumps([crd["spec"], terminating],
                                                      option=orjson.OPT_SORT_KEYS)).digest()
            current = served.get(name)
            if current is None or current.fingerprint != fingerprint:
                served[name] = _Served(fingerprint, custom_resource_types(crd, terminating=terminating))
        ordered = [rt for name in sorted(served) for rt in served[name].types]
        ordered.sort(key=lambda rt: (rt.group, version_priority(rt.version)))  # discovery: preferred first
        if ordered:
            self._ordered[cluster] = ordered
            self._lookup[cluster] = {(rt.group, rt.version, rt.plural): rt for rt in ordered}
        else:
            self._ordered.pop(cluster, None)
            self._lookup.pop(cluster, None)
        for mapping in (self._served, self._decisions):
            if not mapping.get(cluster):
                mapping.pop(cluster, None)


def crd_group(crd: dict, name: str) -> str:
    group = (crd.get("spec") or {}).get("group")
    return group if isinstance(group, str) else name.partition(".")[2]


def _servable(crd: dict) -> bool:
    """Stored CRDs passed validation; this guards against data written by older code."""
    try:
        spec = crd["spec"]
        return bool(spec["group"] and spec["names"]["plural"] and spec["names"]["kind"] and
                    any(v.get("storage") for v in spec["versions"]))
    except (KeyError, TypeError, AttributeError):
        return False


__all__ = ["CUSTOM_RESOURCE_DEFINITIONS", "TYPES", "CustomResourceIndex", "Acceptance",
           "decide_names", "default_names", "validate_crd", "custom_resource_types", "version_priority",
           "storage_version"]
