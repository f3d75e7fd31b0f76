"""Resource types: what the shard serves, described once and used by discovery, REST and Table output.

A ``ResourceType`` is the analogue of an apiserver storage strategy plus its discovery entry:
names, scope, verbs, subresources, field selectors, printer columns and the type-specific
defaulting/validation hooks. A ``Catalog`` answers which types a logical cluster serves; the
built-ins are served everywhere, later issues add CRDs and bound APIs per cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Iterable, Mapping, Protocol

from kcp_virtual.framework import table
from kcp_virtual.framework.negotiation import PATCH_KINDS
from server.registry.schema import builtins as builtin_schemas
from server.registry.selectors import DEFAULT_FIELDS

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")

Hook = Callable[[dict, "dict | None"], "list[dict]"]  # (new object, old object or None) -> causes
Derive = Callable[[dict], None]  # the object about to be stored -> None (sets fields computed from others)


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What a custom verb handler gets: who asks, where, with which body, and the shard's services."""

    user: object            # server.auth.user.UserInfo
    cluster: str
    namespace: str
    name: str
    subresource: str
    body: object            # the decoded request body (None for reads)
    request: object         # werkzeug Request (query parameters, headers)
    services: object        # the shard's services (registry, authorizer, token issuer...), see server.app


# A custom handler answers (status code, body) for one (verb, subresource) of a type, e.g.
# ("create", "") for SubjectAccessReview (nothing is stored) or ("create", "token") for TokenRequest.
Handler = Callable[[RequestContext], "tuple[int, dict]"]


def _no_hook(obj: dict, old: dict | None) -> list[dict]:
    return []


def _no_derive(obj: dict) -> None:
    return None


@dataclass(frozen=True, eq=False)
class ResourceType:
    group: str
    version: str
    kind: str
    plural: str
    singular: str
    namespaced: bool
    short_names: tuple = ()
    categories: tuple = ()
    verbs: tuple = ALL_VERBS
    subresources: tuple = ()               # e.g. ("status",)
    field_selectors: Mapping = field(default_factory=lambda: DEFAULT_FIELDS)
    columns: tuple = ()                    # table.Column, after the NAME column
    prepare: Hook = _no_hook               # defaulting; may mutate the new object; returns causes
    validate: Hook = _no_hook              # type-specific validation; returns causes; pure (may run off the hub)
    # Fields computed from others on every write, the status subresource's included (a ClusterWorkspace's phase
    # and initializer labels): whatever a client sent for them is replaced, so they always agree with the rest.
    derive: Derive = _no_derive
    allow_unconditional_update: bool = True  # built-ins: True; custom resources: False
    name_rule: str = "subdomain"
    returns_deleted_object: bool = False   # DELETE answers the object instead of a Status
    handlers: Mapping = field(default_factory=dict)  # {(verb, subresource): Handler}, served instead of storage
    # Custom resources (server.apis.apiextensions) set these; built-ins keep the defaults.
    schema: Mapping | None = None          # linked OpenAPI v3 schema; None: the kind's built-in schema, if any
    patch_kinds: tuple = PATCH_KINDS       # PATCH content kinds accepted (custom resources: no strategic merge)
    table: tuple = ()                      # the whole Table column list when set (CRD printer columns)
    convert: Callable[[dict], dict] | None = None  # stored object -> this version (CRDs served in several)
    # Bound resources (server.apis.bound) set this: the APIExport identity hash their objects are stored under,
    # so that two exports of the same group/resource never share storage.
    identity: str = ""

    def subresource_verbs(self, subresource: str) -> list[str]:
        """Verbs of a subresource in discovery: its custom handlers' verbs, else get/patch/update (status)."""
        custom = sorted(verb for verb, sub in self.handlers if sub == subresource)
        return custom or ["get", "patch", "update"]

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> str:
        return self.api_version

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    @cached_property
    def storage_key(self) -> str:
        """Storage is keyed by group/resource (not version), like etcd's /registry/<group>/<resource>; a bound
        resource's key adds its export's identity: ``<group>/<plural>:<identity>``. Computed once: every watch
        of the type keeps it, so one string per type rather than one per watch."""
        key = f"{self.group or 'core'}/{self.plural}"
        return f"{key}:{self.identity}" if self.identity else key

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    @property
    def tracks_generation(self) -> bool:
        """Kube keeps ``metadata.generation`` for spec/status types (Deployments...) and every custom
        resource; ConfigMaps, Secrets, RBAC objects and Namespaces have none."""
        return (self.has_status and self.plural != "namespaces") or not self.allow_unconditional_update

    @property
    def qualified(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def table_columns(self) -> list:
        """Name, the type's columns, Age, then the ``-o wide`` ones (priority > 0), as kube's printers order them."""
        if self.table:
            return list(self.table)
        return [table.NAME_COLUMN, *(c for c in self.columns if not c.priority), table.AGE_COLUMN,
                *(c for c in self.columns if c.priority)]

    def structural_schema(self) -> Mapping | None:
        """The schema writes are pruned and judged against: a custom resource's, else the built-in kind's."""
        return self.schema if self.schema is not None else builtin_schemas.resource_schema(
            self.group, self.version, self.kind)


# The preferred order of groups in discovery, as kube-apiserver lists them.
GROUP_ORDER = ("", "apps", "events.k8s.io", "authentication.k8s.io", "authorization.k8s.io",
               "coordination.k8s.io", "rbac.authorization.k8s.io", "apiextensions.k8s.io")


class ClusterTypes(Protocol):
    """Types some logical clusters serve beyond the built-ins (CRDs, bound APIs): O(1) lookups."""

    def lookup(self, cluster: str, group: str, version: str, plural: str) -> ResourceType | None: ...

    def types(self, cluster: str) -> Iterable[ResourceType]: ...


class Catalog:
    """The resource types a logical cluster serves: built-ins everywhere, plus what its sources add there.

    Built-ins win over anything a source offers under the same group/version/resource, and an earlier
    source over a later one. The wildcard cluster ``*`` serves built-ins, plus identity-qualified resources
    (``widgets:<identity>``: an APIExport's objects in every cluster, see ``server.apis.bound``).
    """

    def __init__(self, builtins: Iterable[ResourceType]):
        self._builtins: dict[tuple[str, str, str], ResourceType] = {}
        self._sorted: list[ResourceType] | None = None
        self._sources: list[ClusterTypes] = []
        for rt in builtins:
            self.add_builtin(rt)

    def add_builtin(self, rt: ResourceType) -> None:
        key = (rt.group, rt.version, rt.plural)
        if key in self._builtins:
            raise ValueError(f"duplicate resource type {rt.qualified}/{rt.version}")
        self._builtins[key] = rt
        self._sorted = None

    def add_source(self, source: ClusterTypes) -> None:
        self._sources.append(source)

    def builtin_types(self) -> list[ResourceType]:
        if self._sorted is None:
            self._sorted = sorted(self._builtins.values(), key=_discovery_order)
        return self._sorted

    def lookup(self, cluster: str, group: str, version: str, plural: str) -> ResourceType | None:
        rt = self._builtins.get((group, version, plural))
        if rt is not None or (cluster == "*" and ":" not in plural):
            return rt
        for source in self._sources:
            rt = source.lookup(cluster, group, version, plural)
            if rt is not None:
                return rt
        return None

    def types(self, cluster: str) -> list[ResourceType]:
        """All types served in ``cluster`` (``*`` for the wildcard view), grouped in discovery order."""
        builtins = self.builtin_types()
        if cluster == "*" or not self._sources:
            return list(builtins)
        extra = [rt for source in self._sources for rt in source.types(cluster)]
        if not extra:
            return list(builtins)
        if len(self._sources) > 1:  # a name an earlier source serves is not served by a later one
            first: dict[tuple[str, str, str], ResourceType] = {}
            for rt in extra:
                first.setdefault((rt.group, rt.version, rt.plural), rt)
            extra = list(first.values())
        return sorted([*builtins, *extra], key=_discovery_order)  # stable: a group's versions keep their order


_GROUP_RANK = {g: i for i, g in enumerate(GROUP_ORDER)}


def _discovery_order(rt: ResourceType) -> tuple:
    return (_GROUP_RANK.get(rt.group, len(_GROUP_RANK)), rt.group)
