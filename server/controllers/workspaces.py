"""The workspace lifecycle controller: ClusterWorkspace objects become logical clusters, and go away with them.

For ClusterWorkspace ``team`` in ``root:org`` (logical cluster ``root:org:team``):

* Scheduling: create the logical cluster, grant the owner ``admin`` on ``clusterworkspaces/content``
  for ``team`` in ``root:org`` and ``cluster-admin`` inside ``root:org:team``, then move to
  Initializing (with the WorkspaceType's initializers) or straight to Ready, with ``status.baseURL``.
  Before that, each initializer of a WorkspaceType with ``spec.initializerPermissions`` gets those rules inside
  the workspace: ClusterRole and ClusterRoleBinding ``system:kcp:initializer:<initializer>`` to the group of
  that name, which the initializingworkspaces virtual workspace adds to the initializer's requests.
* Initializing: wait until the initializers (through the initializingworkspaces virtual workspace) have emptied
  ``status.initializers``, then remove the initializer grants and move to Ready.
* Deletion (``deletionTimestamp``, held by our finalizer): delete the logical cluster's content,
  nested workspaces first, remove the owner grants, then the finalizer.

Every step is idempotent and the next step starts only after the previous one is stored, so a
restart anywhere resumes from the full list the reconcile loop starts with.
"""

from __future__ import annotations

import structlog

from kcp_virtual.framework import errors
from kcp_virtual.framework.authorization import INITIALIZER_GROUP_PREFIX, initializer_group
from kcp_virtual.initializingworkspaces.initializers import parse as parse_initializer
from server.apis import tenancy
from server.apis.tenancy import CLUSTER_WORKSPACES, FINALIZER, INITIALIZING, READY, SCHEDULING
from server.controllers.base import Reconciler
from server.registry.generic import Registry, now_rfc3339
from server.storage import Key

log = structlog.get_logger("kcp.controllers.workspaces")

RBAC_GROUP = "rbac.authorization.k8s.io"
#: Names of the owner grants: ClusterRole and ClusterRoleBinding ``workspace-owner:<name>`` in the parent,
#: ClusterRoleBinding ``workspace-owner`` (to ClusterRole ``cluster-admin``) inside the workspace.
OWNER_GRANT_PREFIX = "workspace-owner:"
OWNER_BINDING = "workspace-owner"


def owner_grant_name(workspace: str) -> str:
    return OWNER_GRANT_PREFIX + workspace


class WorkspaceController:
    def __init__(self, registry: Registry, *, base_url: str, virtual_workspace_url: str = "", workers: int = 4):
        self.registry = registry
        self.store = registry.store
        self.base_url = base_url.rstrip("/")
        self.virtual_workspace_url = (virtual_workspace_url or base_url).rstrip("/")
        self.reconciler = Reconciler(registry.store, CLUSTER_WORKSPACES.storage_key, self.reconcile,
                                     name="workspaces", workers=workers)

    def start(self) -> None:
        tenancy.bootstrap(self.registry, base_url=self.base_url, virtual_workspace_url=self.virtual_workspace_url)
        self.reconciler.start()

    def stop(self) -> None:
        self.reconciler.stop()

    @property
    def idle(self) -> bool:
        return self.reconciler.idle

    # ------------------------------------------------------------------ reconcile

    def reconcile(self, key: Key) -> None:
        parent, name = key.cluster, key.name
        cluster = tenancy.workspace_path(parent, name)
        obj = self.store.get(key)
        if obj is None:
            # Gone without us (a parent's deletion, or a finalizer removed by hand): nothing of it may remain.
            self._delete_tree(cluster)
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
        if phase == SCHEDULING:
            initializers = self._initializers(obj, parent)
            self._create_cluster(parent, name, cluster, owner)
            self._grant_initializers(cluster, initializers)
        else:
            initializers = list(status.get("initializers") or ())
            if not self.registry.cluster_exists(cluster):  # repair: it was removed behind our back
                self._create_cluster(parent, name, cluster, owner)
                if phase == INITIALIZING:
                    self._grant_initializers(cluster, initializers)
        desired = self._status(status, phase, initializers, cluster)
        if phase == INITIALIZING and desired["phase"] == READY:
            self._revoke_initializers(cluster)  # first: a restart in between finds it Initializing and does it again
        if desired != status:
            try:
                self.registry.update(CLUSTER_WORKSPACES, parent, "", name, {**obj, "status": desired},
                                     subresource="status")
            except errors.NotFound:
                return  # deleted meanwhile: its DELETED event brings the key back for the cleanup
            if desired["phase"] != phase:
                log.debug("workspace phase", cluster=cluster, phase=desired["phase"])

    def _initializers(self, obj: dict, parent: str) -> list[str]:
        ref = (obj.get("spec") or {}).get("type") or tenancy.DEFAULT_TYPE
        found = tenancy.resolve_type(self.store, parent, ref)
        if found is None:
            raise errors.NotFound(f'WorkspaceType "{ref.get("path") or parent}:{ref.get("name")}" of workspace '
                                  f'"{tenancy.workspace_path(parent, obj["metadata"]["name"])}" not found')
        return tenancy.type_initializers(found[1], found[0])

    def _create_cluster(self, parent: str, name: str, cluster: str, owner: dict | None) -> None:
        self.registry.ensure_logical_cluster(cluster, owner=(owner or {}).get("username", ""))
        if owner is not None:
            self._grant(parent, name, cluster, owner["username"])

    def _status(self, status: dict, phase: str, initializers: list[str], cluster: str) -> dict:
        desired = dict(status)
        desired["baseURL"] = f"{self.base_url}/clusters/{cluster}"
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

    def _grant(self, parent: str, name: str, cluster: str, username: str) -> None:
        subjects = [{"kind": "User", "apiGroup": RBAC_GROUP, "name": username}]
        grant = owner_grant_name(name)
        roles = self.registry.catalog.lookup(parent, RBAC_GROUP, "v1", "clusterroles")
        bindings = self.registry.catalog.lookup(parent, RBAC_GROUP, "v1", "clusterrolebindings")
        if roles is None or bindings is None:
            return  # RBAC is not served: there is nothing to grant with
        self._ensure(roles, parent, grant, {"rules": [
            {"apiGroups": [tenancy.GROUP], "resources": ["clusterworkspaces/content"], "resourceNames": [name],
             "verbs": ["admin", "access"]},
            {"apiGroups": [tenancy.GROUP], "resources": ["clusterworkspaces"], "resourceNames": [name],
             "verbs": ["get", "delete"]}]})
        self._ensure(bindings, parent, grant, {
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": grant}, "subjects": subjects})
        inside = self.registry.catalog.lookup(cluster, RBAC_GROUP, "v1", "clusterrolebindings")
        self._ensure(inside, cluster, OWNER_BINDING, {
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": subjects})

    def _ensure(self, rt, cluster: str, name: str, fields: dict) -> None:
        """Create or correct one cluster-scoped object so that ``fields`` have the given values."""
        current = self.store.get(self.registry.key(rt, cluster, "", name))
        if current is not None and all(current.get(k) == v for k, v in fields.items()):
            return
        if current is not None and current.get("roleRef", fields.get("roleRef")) != fields.get("roleRef"):
            # roleRef is immutable: replace the binding
            self.registry.delete(rt, cluster, "", name, {"preconditions": {"uid": current["metadata"]["uid"]}})
            current = None
        if current is None:
            try:
                self.registry.create(rt, cluster, "", {"metadata": {"name": name}, **fields})
            except errors.AlreadyExists:
                raise errors.Conflict.modified(rt.plural, rt.group, name) from None
        else:
            self.registry.update(rt, cluster, "", name, {**current, **fields})

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
            self._ensure(roles, cluster, grant, {"rules": rules})
            self._ensure(bindings, cluster, grant, {
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
        self._delete_tree(cluster)
        self._revoke(parent, name)
        finalizers = obj["metadata"].get("finalizers") or []
        if FINALIZER in finalizers:
            self._set_finalizers(obj, parent, name, [f for f in finalizers if f != FINALIZER])
            log.info("workspace deleted", cluster=cluster)

    def _delete_tree(self, cluster: str) -> None:
        """Delete a logical cluster and every workspace nested in it, deepest first, so that a
        ClusterWorkspace object outlives its cluster (a restart mid-way finds and finishes the rest)."""
        if not self.registry.cluster_exists(cluster):
            return
        children, _ = self.store.list(CLUSTER_WORKSPACES.storage_key, cluster)
        for child in children:
            self._delete_tree(tenancy.workspace_path(cluster, child["metadata"]["name"]))
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
