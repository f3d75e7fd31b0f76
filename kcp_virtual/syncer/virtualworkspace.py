"""The ``syncer`` virtual workspace: each sync target's syncer sees exactly its transformed share of the workloads.

URL: ``/services/syncer/<target-cluster>/<target-name>/<target-uid>/clusters/<cluster|*>/...`` -- the base of it
is what the shard publishes in ``SyncTarget.status.virtualWorkspaces[].url``, one per Shard. A syncer lists
and watches ``clusters/*`` and writes back through ``clusters/<the object's workspace>`` (``kcp.dev/cluster``).

**What it serves.** Deployments (apps/v1), ConfigMaps, Secrets and Namespaces (v1) -- ``SYNCED_RESOURCES``,
what every SyncTarget syncs -- restricted to the objects labelled ``state.workload.kcp.dev/<key>: Sync``
for the target's key, in every workspace; each one as ``transformation.TargetView`` shows it to that target
(the deployment splitter, the spec diff, the target's own status). Verbs: get, list, watch, update, patch,
and ``status`` get/update/patch for Deployments and Namespaces; no create, delete or deletecollection (405):
placement, not the syncer, decides what exists. ``clusters/*`` serves list and watch. An object that loses
the label (unplaced, or its target removed) reaches the target's watchers as DELETED, one that gains it as
ADDED; a change of the object or of its set of targets (its labels) as MODIFIED, with the new share.

**Authorization** (kcp's, for #16's oracle): every request but ``system:masters``' -- discovery, OpenAPI and
``/version`` included -- needs verb ``sync`` on ``synctargets`` (group ``workload.kcp.dev``) named
``<target-name>`` in ``<target-cluster>``, asked of the shard as a SubjectAccessReview for the caller (a user,
or a service account of that workspace with its own token). Then the SyncTarget must exist in
``<target-cluster>`` with UID ``<target-uid>``, else 404 -- a SyncTarget deleted and created again under the
same name has a new UID, so the old URL never shows the new target's view. Once both pass, the virtual
workspace acts with its own identity: the grant is the gate, and the view's label restriction is the whole
of what the target can read or write. There is no per-workspace check beyond the label: whoever can label an
object in a workspace can place it on any target whose key they know (see the README).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import replace
from typing import Any

from kcp_virtual.framework import errors, table
from kcp_virtual.framework.authorization import Attributes, Decision
from kcp_virtual.framework.resource import APIDefinition, ResourceHandler
from kcp_virtual.framework.shardclient import GroupVersionResource, ShardClient
from kcp_virtual.framework.storage import READ_VERBS, SUBRESOURCE_VERBS, ForwardingStorage
from kcp_virtual.framework.virtualworkspace import (SERVICES_PREFIX, Context, Request,
                                                    VirtualWorkspace, cluster_path_resolver, is_cluster_name)
from kcp_virtual.syncer.placement import (CONFIGMAPS, DEPLOYMENTS, GROUP, NAMESPACES, SECRETS, SYNC, SYNC_TARGETS,
                                          VERSION, state_label, sync_target_key)
from kcp_virtual.syncer.transformation import WITH_STATUS, TargetView

__all__ = ["NAME", "VERBS", "url_path", "resolve", "sync_attributes", "syncer"]

NAME = "syncer"
VERBS = ("get", "list", "patch", "update", "watch")
_TARGET_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_UID = re.compile(r"[0-9A-Za-z-]{1,64}")
_DEFINITIONS_KEPT = 1024


def _target_values(segments: list[str]) -> dict[str, str] | None:
    """A valid target cluster, name and UID, else None (the path is not this virtual workspace's)."""
    cluster, name, uid = segments
    if not is_cluster_name(cluster) or len(name) > 253 or not _TARGET_NAME.fullmatch(name) or not _UID.fullmatch(uid):
        return None
    return {"target_cluster": cluster, "target_name": name, "target_uid": uid, "key": sync_target_key(cluster, name)}


#: The common ``.../clusters/<cluster|*>`` shape after a valid target cluster, name and UID.
resolve = cluster_path_resolver(NAME, 3, values=_target_values)


def url_path(cluster: str, name: str, uid: str) -> str:
    """``/services/syncer/<cluster>/<name>/<uid>``: append ``/clusters/<cluster|*>``."""
    return f"{SERVICES_PREFIX}/{NAME}/{cluster}/{name}/{uid}"


def sync_attributes(cluster: str, name: str) -> Attributes:
    """``sync`` on ``synctargets`` named the target, in the target's workspace."""
    return Attributes(verb="sync", cluster=cluster, is_resource=True, api_group=GROUP, api_version=VERSION,
                      resource="synctargets", name=name)


def _column(name: str, type_: str, path: str, description: str) -> table.Column:
    return table.jsonpath_column(name, type_, path, description)


_KINDS = {
    DEPLOYMENTS: ("Deployment", "deployment", True, ("deploy",), (
        _column("Replicas", "integer", ".spec.replicas", "This sync target's share of the replicas."),
        _column("Ready", "integer", ".status.readyReplicas", "Ready replicas this sync target reported."),
        _column("Available", "integer", ".status.availableReplicas",
                "Available replicas this sync target reported."))),
    CONFIGMAPS: ("ConfigMap", "configmap", True, ("cm",), ()),
    SECRETS: ("Secret", "secret", True, (), (_column("Type", "string", ".type", "The type of the secret."),)),
    NAMESPACES: ("Namespace", "namespace", False, ("ns",), (
        _column("Status", "string", ".status.phase", "The phase this sync target reported."),)),
}


class _Targets:
    """The SyncTargets a request names, and the API definitions of each target's view (kept per key)."""

    def __init__(self, shard: ShardClient):
        self.shard = shard
        self.sync_targets = ForwardingStorage(shard, SYNC_TARGETS, verbs=READ_VERBS)
        self._definitions: OrderedDict[str, tuple[APIDefinition, ...]] = OrderedDict()

    def require(self, request: Request) -> None:
        """404 unless the SyncTarget of the URL exists with the URL's UID."""
        values = request.context.values
        cluster, name, uid = values["target_cluster"], values["target_name"], values["target_uid"]
        try:
            target = self.sync_targets.get(replace(request, context=Context(cluster)), "", name)
        except errors.NotFound:
            target = None
        if target is None or target["metadata"].get("uid") != uid:
            raise errors.NotFound(f'synctargets.{GROUP} "{name}" with UID "{uid}" not found in workspace "{cluster}"',
                                  details={"name": name, "group": GROUP, "kind": "synctargets", "uid": uid})

    def definitions(self, context: Context) -> tuple[APIDefinition, ...]:
        key = context.values["key"]
        built = self._definitions.get(key)
        if built is None:
            built = self._definitions[key] = tuple(self._build(key))
            while len(self._definitions) > _DEFINITIONS_KEPT:
                self._definitions.popitem(last=False)
        else:
            self._definitions.move_to_end(key)
        return built

    def _build(self, key: str):
        for gvr, (kind, singular, namespaced, short_names, columns) in _KINDS.items():
            storage = ForwardingStorage(
                self.shard, gvr, labels={state_label(key): SYNC}, transform=TargetView(key, gvr).transformation(),
                verbs=VERBS, subresources={"status": SUBRESOURCE_VERBS} if gvr in WITH_STATUS else None)
            yield APIDefinition(gvr.group, gvr.version, kind, gvr.resource, singular, namespaced, storage,
                                short_names=short_names, columns=columns)


class _ExistingTargetOnly:
    """The resource handler behind the UID check (after the authorizer: nobody learns about targets unasked)."""

    def __init__(self, targets: _Targets, handler: ResourceHandler):
        self.targets = targets
        self.handler = handler

    def __call__(self, request: Request):
        self.targets.require(request)
        return self.handler(request)


def syncer(shard: ShardClient) -> VirtualWorkspace:
    """The stock factory (``server.shard.STOCK_VIRTUAL_WORKSPACES``; ``kcp virtual-workspaces`` serves it too)."""
    targets = _Targets(shard)

    def authorize(user: Any, attributes: Attributes, context: Context) -> Decision:
        cluster, name = context.values["target_cluster"], context.values["target_name"]
        allowed, reason = shard.subject_access_review(user, sync_attributes(cluster, name))
        if allowed:
            return Decision(True)
        return Decision(False, reason or f'no permission to sync synctargets "{name}" in workspace "{cluster}"')

    handler = ResourceHandler(targets.definitions, version=shard.version)
    return VirtualWorkspace(name=NAME, resolve=resolve, authorize=authorize, handler=_ExistingTargetOnly(targets,
                                                                                                       handler))
