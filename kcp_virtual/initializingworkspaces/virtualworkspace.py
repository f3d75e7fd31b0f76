"""The ``initializingworkspaces`` virtual workspace: a workspace type's owner initializes new workspaces, and nothing else.

URL: ``/services/initializingworkspaces/<initializer>/clusters/<cluster|*>/...`` -- the base of it is what the
shard publishes in ``WorkspaceType.status.virtualWorkspaces[].url``. ``<initializer>`` is
``<type workspace>:<type name>`` (``initializers.py``). What it serves:

* ``clusters/*``, the **wildcard view**: list and watch of the ClusterWorkspaces, in every parent workspace, whose
  ``status.phase`` is Initializing and whose ``status.initializers`` holds ``<initializer>`` (the shard's labels
  select them, so a workspace that leaves -- its initializer removed, Ready, deleted -- arrives as DELETED).
  Objects are the shard's: ``kcp.dev/cluster`` names the parent, the workspace's own logical cluster is
  ``<kcp.dev/cluster>:<name>`` (also in ``status.baseURL``). Discovery and OpenAPI v3 show exactly this resource.
* ``clusters/<cluster>/apis/tenancy.kcp.dev/v1alpha1/clusterworkspaces/<name>[/status]``, the **workspace's own
  object**, addressed by the logical cluster it stands for (``<name>`` is its last segment): get, and get, update
  and patch (merge or JSON patch) of ``status`` -- where the only change allowed is removing ``<initializer>`` from
  ``status.initializers`` (anything else in status, spec, labels or annotations is a 422 naming the field, other
  verbs a 403). The shard moves the workspace to Ready once the last initializer is gone. A workspace outside
  the view (not Initializing, not waiting for this initializer) is a 404.
* ``clusters/<cluster>/<anything else>``, the **content proxy**: while the workspace is in the view, the request
  goes to the shard's ``/clusters/<cluster>/...`` as the caller plus the group
  ``system:kcp:initializer:<initializer>`` (any such group the caller brought is dropped first); otherwise 403.

Authorization (kcp's, with both historical holes closed), for every request but ``system:masters``'s:

1. ``<initializer>`` must parse (else 400, for everyone);
2. the caller needs verb ``initialize`` on ``workspacetypes`` (group ``tenancy.kcp.dev``) named ``<type name>``
   in ``<type workspace>``, asked of the shard as a SubjectAccessReview -- for discovery and OpenAPI too. The
   workspace is part of the name, so owning a type of the same name elsewhere grants nothing (kcp#1169);
3. the WorkspaceType must exist (else 404: an unknown or removed type initializes nothing; re-creating it
   resumes), checked after 2 so that the URL tells nobody without the grant whether a type exists;
4. a concrete cluster must be in the view before anything is read, written or forwarded there (kcp#2308, where
   any workspace's status was updatable): the object and the proxy check it, the shard's label filter for
   lists and watches.

Inside the workspace the shard decides as for any request, for that identity: the group may enter a workspace
only while it is Initializing with that initializer, and holds there what ``WorkspaceType.spec.initializerPermissions``
grants (the shard materializes those rules in each new workspace of the type); the caller keeps whatever it
holds there itself. The shard believes the group only from in-process virtual workspaces and ``system:masters``
impersonation (the external process); it strips it from every other client, by any means of authentication.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from typing import Any

from kcp_virtual.framework import errors
from kcp_virtual.framework.authorization import (Attributes, Decision, initializer_group,
                                                 without_initializer_groups)
from kcp_virtual.framework.proxy import ProxyHandler
from kcp_virtual.framework.resource import APIDefinition, ResourceHandler
from kcp_virtual.framework.shardclient import ShardClient, User
from kcp_virtual.framework.storage import READ_VERBS, ForwardingStorage, Transformation
from kcp_virtual.framework.virtualworkspace import (NOT_ACCEPTED, SERVICES_PREFIX, Context, Request, Resolution,
                                                    VirtualWorkspace, cluster_path_resolver)
from kcp_virtual.initializingworkspaces import status
from kcp_virtual.initializingworkspaces.clusterworkspaces import (CLUSTER_WORKSPACES, COLUMNS, GROUP, KIND, PLURAL,
                                                                  SCHEMA, VERSION, WORKSPACE_TYPES)
from kcp_virtual.initializingworkspaces.initializers import (INITIALIZING, PHASE_LABEL, Initializer,
                                                             initializer_label, parse)

__all__ = ["NAME", "url_path", "resolve", "initialize_attributes", "initializingworkspaces"]

NAME = "initializingworkspaces"
_resolve_shape = cluster_path_resolver(NAME, 1)
_OBJECT_VERBS = {"": ("get",), "status": ("get", "update", "patch")}
_DEFINITIONS_KEPT = 1024


def url_path(initializer: str) -> str:
    """``/services/initializingworkspaces/<initializer>``: append ``/clusters/<cluster|*>``."""
    return f"{SERVICES_PREFIX}/{NAME}/{initializer}"


def resolve(path: str) -> Resolution:
    """``.../<initializer>/clusters/<cluster|*>``; the initializer is the API-domain key, parsed (400) later."""
    accepted, prefix, context = _resolve_shape(path)
    return Resolution(True, prefix, context) if accepted else NOT_ACCEPTED


@lru_cache(maxsize=4096)
def _initializer(key: str) -> Initializer:
    return parse(key)


def initialize_attributes(initializer: Initializer) -> Attributes:
    """``initialize`` on ``workspacetypes`` named the type, in the type's workspace."""
    return Attributes(verb="initialize", cluster=initializer.type_cluster, is_resource=True, api_group=GROUP,
                      api_version=VERSION, resource=WORKSPACE_TYPES.resource, name=initializer.type_name)


def _own_name(cluster: str) -> tuple[str, str]:
    """``root:org:team`` -> (``root:org``, ``team``): where its ClusterWorkspace is stored, and its name."""
    parent, _, name = cluster.rpartition(":")
    return parent, name


def _is_workspace_object(request: Request) -> bool:
    info = request.info
    return info.is_resource and info.group == GROUP and info.resource == PLURAL


class _Views:
    """The storages of one initializer's view: the wildcard list/watch and the workspace's own object."""

    def __init__(self, shard: ShardClient, initializer: Initializer):
        self.initializer = initializer
        key, value = initializer_label(initializer.name)
        labels = {PHASE_LABEL: INITIALIZING, key: value}
        wildcard = ForwardingStorage(shard, CLUSTER_WORKSPACES, labels=labels, verbs=READ_VERBS)
        self.own = ForwardingStorage(
            shard, CLUSTER_WORKSPACES, labels=labels, verbs=_OBJECT_VERBS[""],
            subresources={"status": _OBJECT_VERBS["status"]},
            transform=Transformation(to_view=lambda obj, context: obj,
                                     from_view=status.only_removing(initializer.name)))
        self.wildcard_definitions = (self._definition(wildcard),)
        self.own_definitions = (self._definition(self.own),)

    @staticmethod
    def _definition(storage: ForwardingStorage) -> APIDefinition:
        return APIDefinition(GROUP, VERSION, KIND, PLURAL, "clusterworkspace", False, storage,
                             short_names=("cws",), categories=("kcp",), columns=COLUMNS, schema=SCHEMA)


class InitializingWorkspaces:
    """The handler (see the module docstring); ``authorize`` is the virtual workspace's authorizer."""

    def __init__(self, shard: ShardClient):
        self.shard = shard
        self.types = ForwardingStorage(shard, WORKSPACE_TYPES, verbs=("get",))
        self.resources = ResourceHandler(self._apis, version=shard.version)
        self.proxy = ProxyHandler(shard, self._identity)
        self._views = lru_cache(maxsize=_DEFINITIONS_KEPT)(lambda initializer: _Views(shard, initializer))

    # ------------------------------------------------------------------ authorization

    def authorize(self, user: Any, attributes: Attributes, context: Context) -> Decision:
        initializer = _initializer(context.api_domain_key)
        allowed, reason = self.shard.subject_access_review(user, initialize_attributes(initializer))
        if allowed:
            return Decision(True)
        return Decision(False, reason or f'no permission to initialize workspacetypes "{initializer.type_name}" '
                                         f'in workspace "{initializer.type_cluster}"')

    # ------------------------------------------------------------------ serving

    def __call__(self, request: Request):
        initializer = _initializer(request.context.api_domain_key)
        self._require_type(request, initializer)
        if request.context.wildcard:
            return self.resources(request)
        if _is_workspace_object(request):
            return self._own_object(request, initializer)
        self._require_initializing(request, initializer)
        return self.proxy(request)

    def _apis(self, context: Context):
        views = self._views(_initializer(context.api_domain_key))
        return views.wildcard_definitions if context.wildcard else views.own_definitions

    def _require_type(self, request: Request, initializer: Initializer) -> None:
        try:
            self.types.get(replace(request, context=Context(initializer.type_cluster)), "", initializer.type_name)
        except errors.NotFound:
            raise errors.NotFound(f'initializer "{initializer.name}" is unknown: there is no WorkspaceType '
                                  f'"{initializer.type_name}" in workspace "{initializer.type_cluster}"',
                                  details={"name": initializer.type_name, "group": GROUP,
                                           "kind": WORKSPACE_TYPES.resource}) from None

    def _in_parent(self, request: Request) -> tuple[Request, str]:
        """The request as addressed to where the workspace's ClusterWorkspace is stored, and its name."""
        parent, name = _own_name(request.context.cluster)
        return replace(request, context=request.context._replace(cluster=parent)), name

    def _own_object(self, request: Request, initializer: Initializer):
        info = request.info
        verbs = _OBJECT_VERBS.get(info.subresource)
        if verbs is None:
            raise errors.NotFound.path()
        if info.verb not in verbs:
            raise errors.Forbidden(
                f'{PLURAL}.{GROUP}{"/" + info.subresource if info.subresource else ""} {info.verb} is not allowed '
                f'through the initializingworkspaces virtual workspace: initializer "{initializer.name}" may get '
                "the ClusterWorkspace of the workspace it initializes, and update its status to remove itself",
                details={"name": info.name, "group": GROUP, "kind": PLURAL})
        in_parent, name = self._in_parent(request)
        if not in_parent.context.cluster or info.name != name:
            raise errors.NotFound.for_resource(PLURAL, GROUP, info.name)
        return self.resources(in_parent)

    def _require_initializing(self, request: Request, initializer: Initializer) -> None:
        in_parent, name = self._in_parent(request)
        if in_parent.context.cluster:
            try:
                self._views(initializer).own.get(in_parent, "", name)
                return
            except errors.NotFound:
                pass
        raise errors.Forbidden(f'initializer "{initializer.name}" cannot access workspace "{request.context.cluster}": '
                               f"it is not Initializing with this initializer")

    @staticmethod
    def _identity(request: Request) -> User:
        """The caller, with exactly this initializer's group (``system:kcp:initializer:<initializer>``)."""
        user = request.user
        groups = without_initializer_groups(getattr(user, "groups", ()) or ())
        extra = {k: tuple(v) for k, v in (getattr(user, "extra", None) or {}).items()}
        return User(user.name, getattr(user, "uid", "") or "",
                    (*groups, initializer_group(request.context.api_domain_key)), extra)


def initializingworkspaces(shard: ShardClient) -> VirtualWorkspace:
    """The stock factory: an entry point of group ``kcp_virtual.virtual_workspaces`` (setup.cfg), so ``kcp start``
    and ``kcp virtual-workspaces`` serve it."""
    handler = InitializingWorkspaces(shard)
    return VirtualWorkspace(name=NAME, resolve=resolve, authorize=handler.authorize, handler=handler)
