"""What one APIExport offers, read from the shard on every request: its resources and the clusters binding it.

Nothing here is a cache of the shard's state that could lag behind it (kcp's informer-fed API set
served 404s until its first binding, kcp#1183, and discovery that disagreed with storage, kcp#2663).
Where the shard's resourceVersion is known for free (in-process), an answer is reused while it has not
moved: no write at all since, so the reads would return the same.

* ``definitions`` reads the export (its ``status.identityHash`` and ``spec.latestResourceSchemas``) and
  each schema, then returns API definitions built from them. Only the *building* is memoized, keyed
  by everything it depends on (identity, schema names, UIDs and resource versions), so an unchanged
  export costs a few reads, and any change is seen by the next request;
* ``binds`` asks whether one logical cluster has a Bound APIBinding to the export, by the export
  label the shard puts on every binding (``internal.apis.kcp.dev/export``);
* ``served`` is what one request needs of both, found in one step: whether its cluster may be served
  (the wildcard, or a cluster that binds the export) and the export's definitions.

Objects are stored under the export's identity (``<plural>:<identity>``): in ``*`` the shard
returns exactly the objects of the clusters that bind the export (an empty list and an open watch
before the first binding, never a 404), and same-named CRDs or other exports' objects are other
resources altogether (kcp#1038).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, Iterable

from kcp_virtual.framework import errors
from kcp_virtual.framework.negotiation import CR_PATCH_KINDS
from kcp_virtual.framework.resource import APIDefinition
from kcp_virtual.framework.shardclient import GroupVersionResource, ListQuery, ShardClient
from kcp_virtual.framework.storage import ALL_VERBS, READ_VERBS, SUBRESOURCE_VERBS, ForwardingStorage
from kcp_virtual.framework.table import jsonpath_column
from kcp_virtual.framework.virtualworkspace import WILDCARD

__all__ = ["GROUP", "VERSION", "APIEXPORTS", "APIRESOURCESCHEMAS", "APIBINDINGS", "EXPORT_LABEL",
           "export_label_value", "version_schema", "Exports"]

GROUP, VERSION = "apis.kcp.dev", "v1alpha1"
APIEXPORTS = GroupVersionResource(GROUP, VERSION, "apiexports")
APIRESOURCESCHEMAS = GroupVersionResource(GROUP, VERSION, "apiresourceschemas")
APIBINDINGS = GroupVersionResource(GROUP, VERSION, "apibindings")
#: The shard labels every APIBinding with ``export_label_value`` of the export it references.
EXPORT_LABEL = "internal.apis.kcp.dev/export"
_BOUND = "Bound"
_MEMO_SIZE = 256
_ANSWERS_KEPT = 4096


def export_label_value(export_cluster: str, export_name: str) -> str:
    """sha224 hex of ``<export cluster>:<export name>`` (the shard's ``apis_kcp.export_label_value``)."""
    return hashlib.sha224(f"{export_cluster}:{export_name}".encode()).hexdigest()


def version_schema(version: dict) -> dict | None:
    """A schema version's OpenAPI v3 schema: ``schema`` itself (kcp's form) or ``schema.openAPIV3Schema`` (CRD's)."""
    schema = version.get("schema")
    if isinstance(schema, dict) and "openAPIV3Schema" in schema:
        schema = schema["openAPIV3Schema"]
    return schema if isinstance(schema, dict) else None


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def _columns(version: dict) -> tuple:
    columns = []
    for column in version.get("additionalPrinterColumns") or ():
        if isinstance(column, dict) and isinstance(column.get("name"), str) and isinstance(column.get("jsonPath"), str):
            try:
                columns.append(jsonpath_column(column["name"], column.get("type") or "string", column["jsonPath"],
                                               column.get("description") or "", column.get("priority") or 0,
                                               column.get("format") or ""))
            except ValueError:
                continue  # a path the table cannot follow shows no column rather than failing every list
    return tuple(columns)


class Exports:
    """The APIs of exports and the clusters binding them, as the shard has them now (see the module docstring)."""

    def __init__(self, shard: ShardClient):
        self.shard = shard
        self._memo: OrderedDict[tuple, tuple[APIDefinition, ...]] = OrderedDict()
        self._current = getattr(shard, "current_resource_version", None)
        self._answers: dict[tuple, tuple[int, Any]] = {}  # (method, args) -> (the shard's rv, answer)

    def _unchanged_since(self, key: tuple, compute, *args):
        """``compute(*args)``, or its answer from when the shard's resourceVersion was what it is now."""
        rv = self._current() if self._current is not None else None
        if rv is None:
            return compute(*args)
        answer = self._answers.get(key)
        if answer is not None and answer[0] == rv:
            return answer[1]
        value = compute(*args)  # read after rv: a write meanwhile moves it, and the next call reads again
        if len(self._answers) >= _ANSWERS_KEPT:
            self._answers.clear()
        self._answers[key] = (rv, value)
        return value

    def bindings_storage(self, export_cluster: str, export_name: str) -> ForwardingStorage:
        return ForwardingStorage(self.shard, APIBINDINGS, verbs=READ_VERBS,
                                 labels={EXPORT_LABEL: export_label_value(export_cluster, export_name)})

    def definitions(self, export_cluster: str, export_name: str) -> tuple[APIDefinition, ...]:
        """The export's resources (every served version of its latest schemas) and its APIBindings, read-only;
        nothing while the export is missing or has no identity yet."""
        return self._unchanged_since(("definitions", export_cluster, export_name), self._definitions,
                                     export_cluster, export_name)

    def _definitions(self, export_cluster: str, export_name: str) -> tuple[APIDefinition, ...]:
        try:
            export = self.shard.get(APIEXPORTS, export_cluster, "", export_name)
        except errors.NotFound:
            return ()
        identity = (export.get("status") or {}).get("identityHash") or ""
        if not isinstance(identity, str) or not identity:
            return ()
        schemas = []
        for name in _strings((export.get("spec") or {}).get("latestResourceSchemas")):
            try:
                schemas.append(self.shard.get(APIRESOURCESCHEMAS, export_cluster, "", name))
            except errors.NotFound:
                continue  # the binding controller reports it; the others are served meanwhile
        key = (export_cluster, export_name, identity,
               tuple((s["metadata"].get("uid"), s["metadata"].get("resourceVersion")) for s in schemas))
        built = self._memo.get(key)
        if built is None:
            built = self._memo[key] = self._build(export_cluster, export_name, identity, schemas)
            while len(self._memo) > _MEMO_SIZE:
                self._memo.popitem(last=False)
        else:
            self._memo.move_to_end(key)
        return built

    def _build(self, export_cluster: str, export_name: str, identity: str,
               schemas: Iterable[dict]) -> tuple[APIDefinition, ...]:
        definitions: list[APIDefinition] = []
        seen: set[tuple[str, str]] = set()
        for schema in schemas:
            spec = schema.get("spec") or {}
            names = spec.get("names") or {}
            group, plural = spec.get("group") or "", names.get("plural") or ""
            if not plural or (group, plural) in seen:
                continue  # two schemas of one resource: the first one listed wins, as in the consumer
            seen.add((group, plural))
            for version in spec.get("versions") or ():
                if not isinstance(version, dict) or not version.get("served", True) or not version.get("name"):
                    continue
                has_status = isinstance((version.get("subresources") or {}).get("status"), dict)
                storage = ForwardingStorage(
                    self.shard, GroupVersionResource(group, version["name"], plural, identity), verbs=ALL_VERBS,
                    subresources={"status": SUBRESOURCE_VERBS} if has_status else None)
                definitions.append(APIDefinition(
                    group, version["name"], names.get("kind") or "", plural,
                    names.get("singular") or plural, spec.get("scope") != "Cluster", storage,
                    short_names=_strings(names.get("shortNames")), categories=_strings(names.get("categories")),
                    columns=_columns(version), schema=version_schema(version), patch_kinds=CR_PATCH_KINDS))
        definitions.append(APIDefinition(GROUP, VERSION, "APIBinding", "apibindings", "apibinding", False,
                                         self.bindings_storage(export_cluster, export_name)))
        return tuple(definitions)

    def binds(self, cluster: str, export_cluster: str, export_name: str) -> bool:
        """Whether logical cluster ``cluster`` has a Bound APIBinding to the export."""
        return self._unchanged_since(("binds", cluster, export_cluster, export_name), self._binds,
                                     cluster, export_cluster, export_name)

    def served(self, cluster: str, export_cluster: str, export_name: str) -> tuple[bool, tuple[APIDefinition, ...]]:
        """``(may be served, definitions)`` for a request to ``cluster``: the wildcard always may, a logical
        cluster when it binds the export. One answer per request, reused on the same terms as the others."""
        return self._unchanged_since(("served", cluster, export_cluster, export_name), self._served,
                                     cluster, export_cluster, export_name)

    def _served(self, cluster: str, export_cluster: str, export_name: str) -> tuple[bool, tuple[APIDefinition, ...]]:
        definitions = self.definitions(export_cluster, export_name)
        return cluster == WILDCARD or self.binds(cluster, export_cluster, export_name), definitions

    def _binds(self, cluster: str, export_cluster: str, export_name: str) -> bool:
        selector = f"{EXPORT_LABEL}={export_label_value(export_cluster, export_name)}"
        try:
            bindings = self.shard.list(APIBINDINGS, cluster, "", ListQuery(label_selector=selector))
        except errors.NotFound:
            return False  # no such logical cluster
        for binding in bindings["items"]:
            status = binding.get("status") or {}
            if status.get("phase") == _BOUND and status.get("apiExportClusterName") == export_cluster:
                return True
        return False
