"""``core.kcp.dev/v1alpha1`` LogicalCluster: the record that a logical cluster lives on this shard (kcp's).

Every logical cluster holds one, named ``cluster`` (``Registry.ensure_logical_cluster`` writes it). Reading it
says that the workspace is here; creating and deleting it is how the shard that stores a ClusterWorkspace makes
or removes its logical cluster on *another* shard, the one it scheduled the workspace to
(``server.controllers.workspaces``). Both are for ``system:masters`` only, and a create is the one request a
shard takes for a logical cluster it does not hold yet. The creator names the workspace's owner in the
``kcp.dev/owner`` annotation; the owner becomes cluster-admin inside, as on a workspace created locally.
"""

from __future__ import annotations

from kcp_virtual.framework import errors, table
from server.auth.bootstrap_policy import GROUP as RBAC_GROUP, bootstrap_objects
from server.registry.generic import CLUSTER_ANNOTATION, LOGICAL_CLUSTERS, Registry
from server.registry.resourcetype import RequestContext, ResourceType
from server.storage import Key
from server.storage.templates import Template

GROUP, VERSION = "core.kcp.dev", "v1alpha1"
NAME = "cluster"
OWNER_ANNOTATION = "kcp.dev/owner"
#: On a logical cluster created by another shard: the shard holding its parent (who may enter is decided there).
PARENT_SHARD_ANNOTATION = "internal.tenancy.kcp.dev/parent-shard"
#: The field manager of the ``default`` ServiceAccount of a namespace (server.controllers.serviceaccounts).
SERVICE_ACCOUNT_MANAGER = "kcp-serviceaccount-controller"
#: The owner's ClusterRoleBinding (to ClusterRole ``cluster-admin``) inside the workspace.
OWNER_BINDING = "workspace-owner"


def ensure_fields(registry: Registry, rt: ResourceType, cluster: str, name: str, fields: dict) -> None:
    """Create or correct one cluster-scoped object so that ``fields`` have the given values (a binding whose
    ``roleRef`` differs is replaced: that field is immutable)."""
    current = registry.store.get(registry.key(rt, cluster, "", name))
    if current is not None and all(current.get(k) == v for k, v in fields.items()):
        return
    if current is not None and current.get("roleRef", fields.get("roleRef")) != fields.get("roleRef"):
        registry.delete(rt, cluster, "", name, {"preconditions": {"uid": current["metadata"]["uid"]}})
        current = None
    if current is None:
        try:
            registry.create(rt, cluster, "", {"metadata": {"name": name}, **fields})
        except errors.AlreadyExists:
            raise errors.Conflict.modified(rt.plural, rt.group, name) from None
    else:
        registry.update(rt, cluster, "", name, {**current, **fields})


def default_content(registry: Registry, cluster: str = "root", *, owned: bool = False) -> Template:
    """What every new logical cluster holds before anyone writes to it -- the ``default`` Namespace with its
    ``default`` ServiceAccount and the bootstrap policy -- as the registry would create each (``cluster``: where the
    kinds are looked up), shared by all of them (``server.storage.templates``). ``owned``: with the owner's
    ClusterRoleBinding, whose subject each instance names (``create_logical_cluster`` writes it otherwise)."""
    wanted = [("", "namespaces", "", {"metadata": {"name": "default"}}, None),
              ("", "serviceaccounts", "default", {"metadata": {"name": "default"}}, SERVICE_ACCOUNT_MANAGER),
              *((RBAC_GROUP, plural, "", obj, None) for plural, obj in bootstrap_objects())]
    if owned:  # the placeholder subject is never shown: each instance's owner replaces it
        wanted.append((RBAC_GROUP, "clusterrolebindings", "", {"metadata": {"name": OWNER_BINDING},
                                                              **owner_binding_fields("owner")}, None))
    objects = template_objects(registry, cluster, wanted)
    bindings = registry.catalog.lookup(cluster, RBAC_GROUP, "v1", "clusterrolebindings")
    owned = owned and bindings is not None
    return Template(objects, CLUSTER_ANNOTATION, (bindings.storage_key, "", OWNER_BINDING) if owned else None)


def template_objects(registry: Registry, cluster: str,
                     wanted: list[tuple[str, str, str, dict, str | None]]) -> list[tuple[str, str, str, dict]]:
    """Each ``(group, plural, namespace, body, field manager)`` as the registry would create it, without what is each
    instance's own (uid, creationTimestamp, managedFields times), for a :class:`Template`; kinds ``cluster`` does
    not serve are left out (a catalog without RBAC: a bare test registry)."""
    objects = []
    for group, plural, namespace, body, manager in wanted:
        rt = registry.catalog.lookup(cluster, group, "v1", plural)
        if rt is None:
            continue
        obj = registry.new_object(rt, cluster, namespace, body, field_manager=manager, in_namespace=False)
        md = obj["metadata"]
        md["uid"] = md["creationTimestamp"] = ""  # each cluster's own (and the template's name a hash of the rest)
        if md.get("managedFields"):  # none: no key at all, as kube omits an empty list
            md["managedFields"] = [{**e, "time": ""} if "time" in e else e for e in md["managedFields"]]
        md.pop("resourceVersion", None)
        objects.append((rt.storage_key, namespace if rt.namespaced else "", md["name"], obj))
    return objects


def owner_binding_fields(owner: str) -> dict:
    """The owner's ClusterRoleBinding inside a workspace: ``cluster-admin`` for user ``owner``."""
    return {"roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"kind": "User", "apiGroup": RBAC_GROUP, "name": owner}]}


def create_logical_cluster(registry: Registry, cluster: str, owner: str = "", parent_shard: str = "") -> None:
    """The logical cluster with its default content, and ``owner`` (a user name) as its cluster-admin
    (idempotent: a retry after a partial failure completes it); ``parent_shard``: where its parent lives, when
    that is another shard."""
    def grant_owner() -> None:
        bindings = registry.catalog.lookup(cluster, RBAC_GROUP, "v1", "clusterrolebindings")
        if owner and bindings is not None:  # without RBAC there is nothing to grant with
            ensure_fields(registry, bindings, cluster, OWNER_BINDING, owner_binding_fields(owner))

    registry.ensure_logical_cluster(cluster, owner=owner, prepare=grant_owner,
                                    annotations={PARENT_SHARD_ANNOTATION: parent_shard} if parent_shard else None)


def _masters_only(ctx: RequestContext, verb: str) -> None:
    if not ctx.user.is_master:
        raise errors.Forbidden.for_resource(LOGICAL_CLUSTER.plural, GROUP, ctx.name or None,
                                            f"only system:masters may {verb} logical clusters")


def _create(ctx: RequestContext) -> tuple[int, dict]:
    _masters_only(ctx, "create")
    if ctx.cluster == "*":
        raise errors.MethodNotAllowed.for_verb("create", LOGICAL_CLUSTER.plural)
    body = ctx.body
    if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
        raise errors.BadRequest("the body of the request is not a LogicalCluster object")
    meta = body.get("metadata") or {}
    if meta.get("name") != NAME:
        raise errors.Invalid.for_fields(LOGICAL_CLUSTER.kind, GROUP, meta.get("name") or "", [{
            "type": "FieldValueInvalid", "field": "metadata.name",
            "message": f'Invalid value: {meta.get("name")!r}: a logical cluster\'s record is named "{NAME}"'}])
    registry = ctx.services.registry
    if registry.cluster_exists(ctx.cluster):
        raise errors.AlreadyExists.for_resource(LOGICAL_CLUSTER.plural, GROUP, NAME)
    annotations = meta.get("annotations") if isinstance(meta.get("annotations"), dict) else {}
    owner, parent_shard = annotations.get(OWNER_ANNOTATION) or "", annotations.get(PARENT_SHARD_ANNOTATION) or ""
    create_logical_cluster(registry, ctx.cluster, owner if isinstance(owner, str) else "",
                           parent_shard if isinstance(parent_shard, str) else "")
    return 201, registry.store.get(Key(LOGICAL_CLUSTERS, ctx.cluster, "", NAME))


def _delete(ctx: RequestContext) -> tuple[int, dict]:
    """Delete the logical cluster with its whole content (nested workspaces first, wherever they live)."""
    _masters_only(ctx, "delete")
    registry = ctx.services.registry
    if ctx.cluster == "*" or ctx.name != NAME or not registry.cluster_exists(ctx.cluster):
        raise errors.NotFound.for_resource(LOGICAL_CLUSTER.plural, GROUP, ctx.name)
    delete_tree = getattr(ctx.services, "delete_logical_cluster", None) or registry.delete_logical_cluster
    delete_tree(ctx.cluster)
    return 200, errors.status_success(NAME, GROUP, LOGICAL_CLUSTER.plural)


LOGICAL_CLUSTER = ResourceType(
    GROUP, VERSION, "LogicalCluster", "logicalclusters", "logicalcluster", False,
    verbs=("create", "delete", "get", "list", "watch"),
    handlers={("create", ""): _create, ("delete", ""): _delete},
    columns=(table.Column(name="Phase", type="string", description="Whether the logical cluster is ready",
                          getter=table.field_getter("status", "phase")),))

TYPES: tuple[ResourceType, ...] = (LOGICAL_CLUSTER,)
