"""The workspace lifecycle controller: ClusterWorkspace objects become logical clusters, and go away with them.

For ClusterWorkspace ``team`` in ``root:org`` (logical cluster ``root:org:team``):

* Scheduling: choose a shard -- the one ``spec.shard.name`` names, else the least loaded of those
  ``spec.shard.selector`` selects (all by default; load = the Shard's reported ``status.logicalClusters`` plus
  what this controller placed there since), this very shard while its reported load is within 50% (+10) of the
  lowest report (a child next to its parent costs no cross-shard calls; reports lag alike for every shard,
  so its own fresh placements are not held against it) -- and, for another shard, record it in
  ``status.location.current`` first, so a restart never places a workspace twice (one placed here is known by
  its logical cluster). Then create the logical cluster there (here: directly; on another
  shard: by creating its LogicalCluster through that shard's API, ``server.apis.logicalclusters``), grant the
  owner ``admin`` on ``clusterworkspaces/content`` for ``team`` in ``root:org`` (here, where the object is) and
  ``cluster-admin`` inside, and move to Initializing (with the WorkspaceType's initializers) or straight to
  Ready, with ``status.baseURL`` on the chosen shard. No shard matching: ``WorkspaceScheduled`` is False
  (``Unschedulable``) until a Shard changes. Before that, on this shard, each initializer of a WorkspaceType with
  ``spec.initializerPermissions`` gets those rules inside the workspace: ClusterRole and ClusterRoleBinding
  ``system:kcp:initializer:<initializer>`` to the group of that name, which the initializingworkspaces virtual
  workspace adds to the initializer's requests (a workspace placed on another shard than its parent gets none:
  that shard cannot see the parent's ClusterWorkspace, so it would not let the group in anyway).
* Initializing: wait until the initializers (through the initializingworkspaces virtual workspace) have emptied
  ``status.initializers``, then remove the initializer grants and move to Ready.
* Deletion (``deletionTimestamp``, held by our finalizer): delete the logical cluster's content, nested
  workspaces first (each on its own shard), remove the owner grants, then the finalizer.

Every step is idempotent and the next step starts only after the previous one is stored, so a
restart anywhere resumes from the full list the reconcile loop starts with.
"""

from __future__ import annotations

import uuid

import structlog

from kcp_virtual.framework import errors
from kcp_virtual.framework.authorization import INITIALIZER_GROUP_PREFIX, initializer_group
from kcp_virtual.initializingworkspaces.initializers import parse as parse_initializer
from kcp_virtual.framework.shardclient import GroupVersionResource
from server.apis import tenancy
from server.apis.logicalclusters import (LOGICAL_CLUSTER, NAME as LOGICAL_CLUSTER_NAME, OWNER_ANNOTATION as
                                        CLUSTER_OWNER, PARENT_SHARD_ANNOTATION, create_logical_cluster, ensure_fields,
                                        template_objects)
from server.apis.tenancy import CLUSTER_WORKSPACES, FINALIZER, INITIALIZING, READY, SCHEDULING, SHARDS
from server.controllers.base import Reconciler, TriggeredController
from server.controllers.shards import ShardDirectory, shard_base_url
from server.registry.generic import CLUSTER_ANNOTATION, Registry, cluster_of, now_rfc3339
from server.registry.selectors import LabelSelector
from server.storage import Key, KeyExistsError
from server.storage.templates import NAME, OWNER, Template

log = structlog.get_logger("kcp.controllers.workspaces")

RBAC_GROUP = "rbac.authorization.k8s.io"
#: Names of the owner grants: ClusterRole and ClusterRoleBinding ``workspace-owner:<name>`` in the parent
#: (the ClusterRoleBinding ``workspace-owner`` inside the workspace: ``server.apis.logicalclusters``).
OWNER_GRANT_PREFIX = "workspace-owner:"
LOGICAL_CLUSTERS_GVR = GroupVersionResource(LOGICAL_CLUSTER.group, LOGICAL_CLUSTER.version, LOGICAL_CLUSTER.plural)


#: The family of the template the owner grants are instances of (``server.storage.templates``).
OWNER_GRANTS = "workspace-owner-grants"


def owner_grant_name(workspace: str) -> str:
    return OWNER_GRANT_PREFIX + workspace


def owner_grant_fields(workspace: str, username: str) -> tuple[dict, dict]:
    """The owner's ClusterRole and ClusterRoleBinding in the parent: ``admin``/``access`` on the workspace's content,
    ``get``/``delete`` on the ClusterWorkspace."""
    grant = owner_grant_name(workspace)
    return ({"rules": [
        {"apiGroups": [tenancy.GROUP], "resources": ["clusterworkspaces/content"], "resourceNames": [workspace],
         "verbs": ["admin", "access"]},
        {"apiGroups": [tenancy.GROUP], "resources": ["clusterworkspaces"], "resourceNames": [workspace],
         "verbs": ["get", "delete"]}]},
        {"roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": grant},
         "subjects": [{"kind": "User", "apiGroup": RBAC_GROUP, "name": username}]})


def owner_grants_template(registry: Registry, cluster: str) -> Template | None:
    """The owner grants as one named template (one instance per workspace, naming its owner), so that a parent of
    100,000 workspaces stores no two rows and dicts for each; None without RBAC."""
    role, binding = owner_grant_fields(NAME, OWNER)
    grant = owner_grant_name(NAME)
    objects = template_objects(registry, cluster, [
        (RBAC_GROUP, "clusterroles", "", {"metadata": {"name": grant}, **role}, None),
        (RBAC_GROUP, "clusterrolebindings", "", {"metadata": {"name": grant}, **binding}, None)])
    return Template(objects, CLUSTER_ANNOTATION, named=OWNER_GRANTS) if len(objects) == 2 else None


def location_of(workspace: dict) -> str:
    """The shard a ClusterWorkspace was scheduled to ("" while it is not)."""
    location = (workspace.get("status") or {}).get("location")
    current = location.get("current") if isinstance(location, dict) else None
    return current if isinstance(current, str) else ""


#: A workspace stays on its parent's shard while that shard's load is within this of the least loaded one's.
LOCALITY_SLACK, LOCALITY_MARGIN = 1.5, 10


class Unschedulable(Exception):
    """No shard matches the workspace's ``spec.shard``."""


class WorkspaceController(TriggeredController):
    """``directory`` (``server.controllers.shards``): the shards to schedule to; without one every workspace is
    placed on this shard, as a single shard does. Sixteen workers (greenlets): a reconcile that makes a logical
    cluster on another shard waits for that shard's answer, and must not hold up the local ones meanwhile."""

    def __init__(self, registry: Registry, *, base_url: str, virtual_workspace_url: str = "", workers: int = 16,
                 shard_name: str = tenancy.SHARD_NAME, directory: ShardDirectory | None = None):
        self.registry = registry
        self.store = registry.store
        self.base_url = base_url.rstrip("/")
        self.virtual_workspace_url = (virtual_workspace_url or base_url).rstrip("/")
        self.name = shard_name
        self.directory = directory
        self._placed: dict[str, tuple[int | None, int]] = {}  # shard -> (its reported load, placed here since)
        self._finalized: dict[str, None] = {}  # clusters deleted by a finalizer here, whose object is going now
        self._shards_seen: dict[str, tuple] = {}  # Shard name -> (spec, labels) last acted on
        self._grants_template: Template | None = None  # made on first use (``owner_grants_template``)
        self.reconciler = Reconciler(registry.store, CLUSTER_WORKSPACES.storage_key, self.reconcile,
                                     name="workspaces", workers=workers)
        # A Shard that comes or changes may take the workspaces no shard matched so far.
        self.triggers = [Reconciler(registry.store, SHARDS.storage_key, self._shard_changed,
                                    name="workspaces-shards", workers=1)]

    def start(self) -> None:
        if self.directory is None or self.directory.is_root:
            tenancy.bootstrap(self.registry, base_url=self.base_url, virtual_workspace_url=self.virtual_workspace_url,
                              name=self.name)
        super().start()

    def _shard_changed(self, key: Key) -> None:
        """A Shard that came, went or was relabelled may take what no shard matched (its load reports, every
        second under churn, change nothing there)."""
        shard = self.store.get(key)
        seen = (shard or {}).get("spec"), ((shard or {}).get("metadata") or {}).get("labels")
        if self._shards_seen.get(key.name) == seen and shard is not None:
            return
        self._shards_seen[key.name] = seen
        for obj in self.store.list(CLUSTER_WORKSPACES.storage_key)[0]:
            conditions = (obj.get("status") or {}).get("conditions") or ()
            if not location_of(obj) and any(c.get("reason") == "Unschedulable" for c in conditions
                                            if isinstance(c, dict)):
                self.reconciler.enqueue(Key(CLUSTER_WORKSPACES.storage_key, cluster_of(obj["metadata"]), "",
                                            obj["metadata"]["name"]))

    # ------------------------------------------------------------------ reconcile

    def reconcile(self, key: Key) -> None:
        parent, name = key.cluster, key.name
        cluster = tenancy.workspace_path(parent, name)
        obj = self.store.get(key)
        if obj is None:
            # Gone without us (a parent's deletion, or a finalizer removed by hand): nothing of it may remain.
            if self._finalized.pop(cluster, None) is None:
                self.delete_logical_cluster(cluster, None)
            self._revoke(parent, name)
            return
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            self._finalize(obj, parent, name, cluster)
            return
        if not self.registry.cluster_exists(parent) or tenancy.terminating(self.store, parent):
            return  # the parent is being deleted: this object goes with its content (and so comes back here)
        if FINALIZER not in (meta.get("finalizers") or ()):
            obj = self._set_finalizers(obj, parent, name, [*(meta.get("finalizers") or ()), FINALIZER])
        status = obj.get("status") or {}
        phase = status.get("phase") or SCHEDULING
        owner = tenancy.owner_of(obj)
        shard = location_of(obj)
        if not shard and (phase != SCHEDULING or self.registry.cluster_exists(cluster)):
            shard = self.name  # placed here before the location was recorded (or before there were shards)
        if not shard:
            try:
                shard = self._schedule(obj)
            except Unschedulable as exc:
                self._update_status(obj, parent, name, self._unschedulable(status, str(exc)))
                return
            if shard != self.name:  # stored first: a restart must not place the workspace on a second shard
                self._update_status(obj, parent, name, {**status, "phase": SCHEDULING,
                                                        "location": {"current": shard}})
                return
        if phase == SCHEDULING:
            initializers = self._initializers(obj, parent)
            self._grant(parent, name, owner)
            self._create_cluster(cluster, shard, owner)
            if shard == self.name:
                self._grant_initializers(cluster, initializers)
        else:
            initializers = list(status.get("initializers") or ())
            if not self._cluster_exists(cluster, shard):  # repair: it was removed behind our back
                self._create_cluster(cluster, shard, owner)
                if phase == INITIALIZING and shard == self.name:
                    self._grant_initializers(cluster, initializers)
        desired = self._status(status, phase, initializers, cluster, shard)
        if phase == INITIALIZING and desired["phase"] == READY and shard == self.name:
            self._revoke_initializers(cluster)  # first: a restart in between finds it Initializing and does it again
        if desired != status and self._update_status(obj, parent, name, desired) and desired["phase"] != phase:
            log.debug("workspace phase", cluster=cluster, phase=desired["phase"], shard=shard)

    def _update_status(self, obj: dict, parent: str, name: str, status: dict) -> bool:
        if status == (obj.get("status") or {}):
            return False
        try:
            self.registry.update(CLUSTER_WORKSPACES, parent, "", name, {**obj, "status": status}, subresource="status")
        except errors.NotFound:
            return False  # deleted meanwhile: its DELETED event brings the key back for the cleanup
        return True

    def _initializers(self, obj: dict, parent: str) -> list[str]:
        ref = (obj.get("spec") or {}).get("type") or tenancy.DEFAULT_TYPE
        found = tenancy.resolve_type(self.store, parent, ref)
        if found is None:
            raise errors.NotFound(f'WorkspaceType "{ref.get("path") or parent}:{ref.get("name")}" of workspace '
                                  f'"{tenancy.workspace_path(parent, obj["metadata"]["name"])}" not found')
        return tenancy.type_initializers(found[1], found[0])

    # ------------------------------------------------------------------ scheduling

    def _schedule(self, obj: dict) -> str:
        """The shard for a new workspace (see the module docstring)."""
        if self.directory is None:
            return self.name
        constraint = (obj.get("spec") or {}).get("shard") or {}
        shards = [s for s in self.directory.shards() if shard_base_url(s)]
        if constraint.get("name"):
            shards = [s for s in shards if s["metadata"]["name"] == constraint["name"]]
            if not shards:
                raise Unschedulable(f'no shard named "{constraint["name"]}"')
        elif constraint.get("selector") is not None:
            selector = LabelSelector.from_label_selector_object(constraint["selector"])
            shards = [s for s in shards if selector.matches(s["metadata"].get("labels"))]
            if not shards:
                raise Unschedulable("no shard matches spec.shard.selector")
        if not shards:
            raise Unschedulable("no shard is registered")
        loads = {s["metadata"]["name"]: self._load(s) for s in shards}
        # Whether to stay is judged on the reports alone: every shard's lag the same, this one's own recent
        # placements (which the others' reports do not show yet) not held against it.
        reports = {n: self._placed[n][0] or 0 for n in loads}
        if self.name in reports and reports[self.name] <= min(reports.values()) * LOCALITY_SLACK + LOCALITY_MARGIN:
            name = self.name  # about as loaded as the least: stay with the parent (no cross-shard calls)
        else:
            name = min(loads, key=lambda n: (loads[n], n))  # what it placed since counts: no herd on one shard
        reported, placed = self._placed.get(name, (None, 0))
        self._placed[name] = (reported, placed + 1)
        return name

    def _load(self, shard: dict) -> int:
        """The shard's reported logical clusters, plus those placed there since that report."""
        name = shard["metadata"]["name"]
        value = (shard.get("status") or {}).get("logicalClusters")
        reported = value if isinstance(value, int) else 0
        previous, placed = self._placed.get(name, (None, 0))
        if previous != reported:  # a new report counts what was placed before it
            self._placed[name] = (reported, 0)
            placed = 0
        return reported + placed

    @staticmethod
    def _unschedulable(status: dict, message: str) -> dict:
        previous = {c.get("type"): c for c in status.get("conditions") or () if isinstance(c, dict)}
        return {**status, "phase": SCHEDULING,
                "conditions": [_condition(previous, "WorkspaceScheduled", "False", "Unschedulable", message)]}

    def _shard_url(self, shard: str) -> str:
        if shard == self.name or self.directory is None:
            return self.base_url
        found = self.directory.get(shard)
        url = shard_base_url(found) if found is not None else ""
        if not url:
            raise errors.ServiceUnavailable(f'shard "{shard}" is not registered')
        return url

    def _remote(self, shard: str):
        client = self.directory.client(shard) if self.directory is not None else None
        if client is None:
            raise errors.ServiceUnavailable(f'shard "{shard}" is not registered')
        return client

    # ------------------------------------------------------------------ the logical cluster, wherever it lives

    def _create_cluster(self, cluster: str, shard: str, owner: dict | None) -> None:
        username = (owner or {}).get("username", "")
        if shard == self.name:
            create_logical_cluster(self.registry, cluster, username)
            return
        annotations = {PARENT_SHARD_ANNOTATION: self.name, **({CLUSTER_OWNER: username} if username else {})}
        body = {"apiVersion": LOGICAL_CLUSTER.api_version, "kind": LOGICAL_CLUSTER.kind,
                "metadata": {"name": LOGICAL_CLUSTER_NAME, "annotations": annotations}}
        try:
            self._remote(shard).create(LOGICAL_CLUSTERS_GVR, cluster, "", body)
        except errors.AlreadyExists:
            pass  # created by an earlier attempt (a record exists only once the cluster is complete)

    def _cluster_exists(self, cluster: str, shard: str) -> bool:
        if shard == self.name:
            return self.registry.cluster_exists(cluster)
        try:
            self._remote(shard).get(LOGICAL_CLUSTERS_GVR, cluster, "", LOGICAL_CLUSTER_NAME)
        except errors.NotFound:
            return False
        return True

    def _status(self, status: dict, phase: str, initializers: list[str], cluster: str, shard: str) -> dict:
        desired = dict(status)
        desired["baseURL"] = f"{self._shard_url(shard)}/clusters/{cluster}"
        desired["location"] = {"current": shard}
        if phase == SCHEDULING:
            phase = INITIALIZING if initializers else READY
        elif phase == INITIALIZING and not initializers:
            phase = READY
        desired["phase"] = phase
        if initializers:
            desired["initializers"] = initializers
        else:
            desired.pop("initializers", None)
        previous = {c.get("type"): c for c in status.get("conditions") or () if isinstance(c, dict)}
        desired["conditions"] = [
            _condition(previous, "WorkspaceScheduled", "True"),
            _condition(previous, "WorkspaceInitialized", "False" if initializers else "True",
                       *(("InitializerExists", f"Initializers still exist: {initializers}") if initializers else ())),
        ]
        return desired

    # ------------------------------------------------------------------ owner grants

    def _grant(self, parent: str, name: str, owner: dict | None) -> None:
        """The owner's grants in the parent (those inside come with the logical cluster)."""
        if owner is None:
            return
        grant = owner_grant_name(name)
        roles = self.registry.catalog.lookup(parent, RBAC_GROUP, "v1", "clusterroles")
        bindings = self.registry.catalog.lookup(parent, RBAC_GROUP, "v1", "clusterrolebindings")
        if roles is None or bindings is None:
            return  # RBAC is not served: there is nothing to grant with
        if (self.store.supports_templates and not self.store.has_instance(parent, OWNER_GRANTS, name)
                and self.store.get(self.registry.key(roles, parent, "", grant)) is None
                and self.store.get(self.registry.key(bindings, parent, "", grant)) is None):
            if self._grants_template is None:
                self._grants_template = owner_grants_template(self.registry, parent)
            try:  # both in one write; a grant written before (or a tenant's) is corrected below instead
                if self._grants_template is not None:
                    self.store.instantiate(parent, self._grants_template, str(uuid.uuid4()), now_rfc3339(),
                                           owner["username"], name)
            except KeyExistsError:
                pass
        role, binding = owner_grant_fields(name, owner["username"])
        ensure_fields(self.registry, roles, parent, grant, role)
        ensure_fields(self.registry, bindings, parent, grant, binding)

    # ------------------------------------------------------------------ initializer grants

    def _grant_initializers(self, cluster: str, initializers: list[str]) -> None:
        """For each initializer naming a WorkspaceType with ``spec.initializerPermissions``: those rules as ClusterRole
        ``system:kcp:initializer:<initializer>``, bound to the group of that name, inside the new workspace."""
        roles = self.registry.catalog.lookup(cluster, RBAC_GROUP, "v1", "clusterroles")
        bindings = self.registry.catalog.lookup(cluster, RBAC_GROUP, "v1", "clusterrolebindings")
        for initializer in initializers:
            rules = self._initializer_permissions(initializer)
            if not rules:
                continue
            grant = initializer_group(initializer)
            ensure_fields(self.registry, roles, cluster, grant, {"rules": rules})
            ensure_fields(self.registry, bindings, cluster, grant, {
                "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": grant},
                "subjects": [{"kind": "Group", "apiGroup": RBAC_GROUP, "name": grant}]})

    def _initializer_permissions(self, initializer: str) -> list:
        try:
            parsed = parse_initializer(initializer)
        except errors.BadRequest:
            return []  # not a WorkspaceType's initializer (a name listed verbatim in spec.initializers)
        found = tenancy.resolve_type(self.store, parsed.type_cluster,
                                     {"name": parsed.type_name, "path": parsed.type_cluster})
        rules = ((found[1].get("spec") or {}).get("initializerPermissions") if found else None) or []
        return rules if isinstance(rules, list) else []

    def _revoke_initializers(self, cluster: str) -> None:
        """The workspace is initialized: its initializer grants go (the groups could no longer enter anyway)."""
        for plural in ("clusterrolebindings", "clusterroles"):
            rt = self.registry.catalog.lookup(cluster, RBAC_GROUP, "v1", plural)
            for obj in self.store.list(rt.storage_key, cluster)[0]:
                if obj["metadata"]["name"].startswith(INITIALIZER_GROUP_PREFIX):
                    try:
                        self.registry.delete(rt, cluster, "", obj["metadata"]["name"])
                    except errors.NotFound:
                        pass

    def _revoke(self, parent: str, name: str) -> None:
        if not self.registry.cluster_exists(parent):
            return
        self.store.drop_instance(parent, OWNER_GRANTS, name)  # then the rows a tenant's writes made, if any
        for plural in ("clusterrolebindings", "clusterroles"):
            rt = self.registry.catalog.lookup(parent, RBAC_GROUP, "v1", plural)
            if rt is None:
                continue
            try:
                self.registry.delete(rt, parent, "", owner_grant_name(name))
            except errors.NotFound:
                pass

    # ------------------------------------------------------------------ deletion

    def _finalize(self, obj: dict, parent: str, name: str, cluster: str) -> None:
        shard = location_of(obj)
        if shard:
            self.delete_logical_cluster(cluster, shard)
        self._revoke(parent, name)
        finalizers = obj["metadata"].get("finalizers") or []
        if FINALIZER in finalizers:
            if len(self._finalized) > 10_000:
                self._finalized.clear()
            self._finalized[cluster] = None
            self._set_finalizers(obj, parent, name, [f for f in finalizers if f != FINALIZER])
            log.info("workspace deleted", cluster=cluster, shard=shard or None)

    def delete_logical_cluster(self, cluster: str, shard: str | None = "") -> None:
        """Delete a logical cluster and every workspace nested in it, deepest first, so that a ClusterWorkspace
        object outlives its cluster (a restart mid-way finds and finishes the rest). ``shard``: where it lives
        ("": here; None: not known, so wherever it is found). Also what DELETE of a LogicalCluster does."""
        if shard and shard != self.name:
            try:
                self._remote(shard).delete(LOGICAL_CLUSTERS_GVR, cluster, "", LOGICAL_CLUSTER_NAME)
            except errors.NotFound:
                pass
            return
        if shard is None and not self.registry.cluster_exists(cluster) and self.directory is not None:
            for other in self.directory.shards():
                if other["metadata"]["name"] != self.name:
                    self.delete_logical_cluster(cluster, other["metadata"]["name"])
            return
        if not self.registry.cluster_exists(cluster):
            return
        children, _ = self.store.list(CLUSTER_WORKSPACES.storage_key, cluster)
        for child in children:
            self.delete_logical_cluster(tenancy.workspace_path(cluster, child["metadata"]["name"]),
                                        location_of(child) or None)
        self.registry.delete_logical_cluster(cluster)

    def _set_finalizers(self, obj: dict, parent: str, name: str, finalizers: list[str]) -> dict:
        body = {**obj, "metadata": {**obj["metadata"], "finalizers": finalizers}}
        return self.registry.update(CLUSTER_WORKSPACES, parent, "", name, body)


def _condition(previous: dict, type_: str, status: str, reason: str = "", message: str = "") -> dict:
    old = previous.get(type_) or {}
    condition = {"type": type_, "status": status,
                 "lastTransitionTime": old.get("lastTransitionTime") if old.get("status") == status
                 else now_rfc3339()}
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition
