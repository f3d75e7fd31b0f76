"""``tenancy.kcp.dev/v1alpha1``: ClusterWorkspace, WorkspaceType and Shard, served in every logical cluster.

A ClusterWorkspace ``team`` in logical cluster ``root:org`` stands for the logical cluster
``root:org:team``; the lifecycle controller (``server.controllers.workspaces``) creates it and
moves ``status.phase`` from Scheduling through Initializing to Ready. What must be decided at
request time lives here: the creator is only known then, so ``create`` is a custom handler that
records the owner annotation and resolves the WorkspaceType reference (422 if it does not exist)
before the ordinary registry create.
"""

from __future__ import annotations

import re

import orjson

from kcp_virtual.framework import errors, table
from kcp_virtual.initializingworkspaces import clusterworkspaces
from kcp_virtual.initializingworkspaces.initializers import derived_labels, initializer_name, is_derived_label
from server.apis.rbac import validate_policy_rule
from server.registry.resourcetype import RequestContext, ResourceType
from server.registry.selectors import LabelSelector
from server.registry.validation import forbidden, invalid, is_dns1123_label, not_supported, required, type_invalid
from server.storage import Key

GROUP = "tenancy.kcp.dev"
VERSION = "v1alpha1"

#: The creator of a workspace, as JSON ``{"username": ..., "uid": ..., "groups": [...]}`` (plus ``extra``
#: when the user has any), which is how kcp v0.x stored ``authenticationv1.UserInfo`` there. A plain user
#: name (not JSON) is also understood when reading.
OWNER_ANNOTATION = "experimental.tenancy.kcp.dev/owner"
#: Held by every ClusterWorkspace until the controller has deleted its logical cluster and owner grants.
FINALIZER = "tenancy.kcp.dev/workspace-deletion"

SCHEDULING, INITIALIZING, READY = "Scheduling", "Initializing", "Ready"
PHASES = (SCHEDULING, INITIALIZING, READY)

ROOT = "root"
DEFAULT_TYPE_NAME = "universal"
DEFAULT_TYPE = {"name": DEFAULT_TYPE_NAME, "path": ROOT}
#: The default name of a shard, its ``Shard`` object (in cluster ``root``).
SHARD_NAME = "root"

_CLUSTER_PATH = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(:[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def workspace_path(parent: str, name: str) -> str:
    """The logical cluster of ClusterWorkspace ``name`` in ``parent``: ``root:org`` + ``team``."""
    return f"{parent}:{name}"


def owner_annotation_value(user) -> str:
    """The owner annotation for a ``UserInfo``."""
    owner = {"username": user.name, "uid": user.uid, "groups": list(user.groups)}
    if user.extra:
        owner["extra"] = {k: list(v) for k, v in user.extra.items()}
    return orjson.dumps(owner).decode()


def owner_of(workspace: dict) -> dict | None:
    """The owner recorded on a ClusterWorkspace as ``{"username", "uid", "groups"}``, or None."""
    value = ((workspace.get("metadata") or {}).get("annotations") or {}).get(OWNER_ANNOTATION)
    if not value or not isinstance(value, str):
        return None
    try:
        owner = orjson.loads(value)
    except orjson.JSONDecodeError:
        return {"username": value, "uid": "", "groups": []}
    if not isinstance(owner, dict) or not isinstance(owner.get("username"), str) or not owner["username"]:
        return None
    return owner


def ancestry(cluster: str) -> list[str]:
    """``root:org:team`` -> ``["root:org:team", "root:org", "root"]``: where an unqualified type is looked up."""
    parts = cluster.split(":")
    return [":".join(parts[:i]) for i in range(len(parts), 0, -1)]


def resolve_type(store, cluster: str, ref: dict) -> tuple[str, dict] | None:
    """Find the WorkspaceType ``ref`` names for a workspace created in ``cluster``: ``(its cluster, object)``.

    A reference with a ``path`` is exact; one without is looked up in ``cluster`` and then its ancestors.
    """
    name = ref.get("name") or ""
    path = ref.get("path") or ""
    for candidate in [path] if path else ancestry(cluster):
        obj = store.get(Key(WORKSPACE_TYPES.storage_key, candidate, "", name))
        if obj is not None:
            return candidate, obj
    return None


def type_initializers(workspace_type: dict, type_cluster: str) -> list[str]:
    """The initializers a workspace of this type starts with.

    ``spec.initializers`` lists names verbatim; ``spec.initializer: true`` (kcp's form) adds the type's own
    initializer ``<type cluster>:<type name>``, the name the initializingworkspaces virtual workspace
    authorizes against (``initialize`` on that WorkspaceType).
    """
    spec = workspace_type.get("spec") or {}
    names = list(spec.get("initializers") or [])
    if spec.get("initializer") is True:
        own = initializer_name(type_cluster, workspace_type["metadata"]["name"])
        if own not in names:
            names.append(own)
    return names


# ---------------------------------------------------------------- ClusterWorkspace hooks

def _type_reference_causes(ref, field: str) -> list[dict]:
    if not isinstance(ref, dict):
        return [type_invalid(field, ref, "must be an object")]
    causes = []
    name, path = ref.get("name"), ref.get("path")
    if not name:
        causes.append(required(f"{field}.name"))
    elif not isinstance(name, str):
        causes.append(type_invalid(f"{field}.name", name, "must be a string"))
    else:
        causes.extend(invalid(f"{field}.name", name, m) for m in is_dns1123_label(name))
    if path not in (None, "") and (not isinstance(path, str) or not _CLUSTER_PATH.match(path)):
        causes.append(invalid(f"{field}.path", path, "must be a logical cluster path such as root:org"))
    return causes


def _workspace_prepare(obj: dict, old: dict | None) -> list[dict]:
    meta = obj["metadata"]
    spec = obj.get("spec")
    if spec is None:
        spec = obj["spec"] = {}
    if old is None:
        if isinstance(spec, dict) and spec.get("type") is None:
            spec["type"] = dict(DEFAULT_TYPE)
        finalizers = meta.get("finalizers")
        if finalizers is None:
            meta["finalizers"] = [FINALIZER]
        elif isinstance(finalizers, list) and FINALIZER not in finalizers:
            finalizers.append(FINALIZER)
        obj["status"] = {"phase": SCHEDULING}
        return []
    # Updates: a client that leaves out server-filled fields (type path, owner) keeps them.
    old_ref = (old.get("spec") or {}).get("type")
    if isinstance(spec, dict) and isinstance(old_ref, dict):
        ref = spec.get("type")
        if ref is None:
            spec["type"] = old_ref
        elif isinstance(ref, dict) and not ref.get("path") and ref.get("name") == old_ref.get("name"):
            spec["type"] = {**ref, "path": old_ref.get("path")}
    old_owner = (old["metadata"].get("annotations") or {}).get(OWNER_ANNOTATION)
    annotations = meta.get("annotations")
    if old_owner is not None and isinstance(annotations, dict) and OWNER_ANNOTATION not in annotations:
        annotations[OWNER_ANNOTATION] = old_owner
    return []


def _shard_constraint_causes(constraint, field: str) -> list[dict]:
    """``spec.shard``: ``{"name": <a Shard>}`` or ``{"selector": <a label selector of Shards>}``."""
    if constraint is None:
        return []
    if not isinstance(constraint, dict):
        return [type_invalid(field, constraint, "must be an object")]
    unknown = sorted(set(constraint) - {"name", "selector"})
    if unknown:
        return [{"type": "FieldValueNotSupported", "field": f"{field}.{unknown[0]}",
                 "message": f'Unsupported value: "{unknown[0]}": supported values: "name", "selector"'}]
    name, selector = constraint.get("name"), constraint.get("selector")
    if name is not None and selector is not None:
        return [forbidden(field, "name and selector are mutually exclusive")]
    if name is not None:
        if not isinstance(name, str):
            return [type_invalid(f"{field}.name", name, "must be a string")]
        return [invalid(f"{field}.name", name, m) for m in is_dns1123_label(name)]
    if selector is not None:
        if not isinstance(selector, dict):
            return [type_invalid(f"{field}.selector", selector, "must be an object")]
        try:
            LabelSelector.from_label_selector_object(selector)
        except errors.BadRequest as exc:
            return [invalid(f"{field}.selector", selector, exc.message)]
        except (ValueError, TypeError, AttributeError):
            return [invalid(f"{field}.selector", selector, "must be a label selector (matchLabels, matchExpressions)")]
    return []


def _workspace_validate(obj: dict, old: dict | None) -> list[dict]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [type_invalid("spec", spec, "must be an object")]
    causes = _type_reference_causes(spec.get("type"), "spec.type")
    causes += _shard_constraint_causes(spec.get("shard"), "spec.shard")
    if old is not None:
        if spec.get("type") != (old.get("spec") or {}).get("type"):
            causes.append(invalid("spec.type", spec.get("type"), "field is immutable"))
        if spec.get("shard") != (old.get("spec") or {}).get("shard"):
            causes.append(invalid("spec.shard", spec.get("shard"), "field is immutable"))
        new_owner = (obj["metadata"].get("annotations") or {}).get(OWNER_ANNOTATION)
        if new_owner != (old["metadata"].get("annotations") or {}).get(OWNER_ANNOTATION):
            causes.append(forbidden(f"metadata.annotations[{OWNER_ANNOTATION}]",
                                    "the owner of a workspace cannot be changed"))
    status = obj.get("status")
    if status is None:
        return causes
    if not isinstance(status, dict):
        return causes + [type_invalid("status", status, "must be an object")]
    phase = status.get("phase")
    if phase not in (None, "", *PHASES):
        causes.append(not_supported("status.phase", phase, list(PHASES)))
    initializers = status.get("initializers")
    if initializers is not None and (not isinstance(initializers, list)
                                     or not all(isinstance(i, str) and i for i in initializers)):
        causes.append(type_invalid("status.initializers", initializers, "must be a list of names"))
    return causes


def _workspace_derive(obj: dict) -> None:
    """The phase and initializer labels follow ``status`` (``kcp_virtual.initializingworkspaces.initializers``)."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return
    labels = meta.get("labels")
    if labels is not None and not isinstance(labels, dict):
        return  # validation answers the 422
    kept = {k: v for k, v in (labels or {}).items() if not is_derived_label(k)}
    kept.update(derived_labels(obj.get("status")))
    if kept:
        meta["labels"] = kept
    else:
        meta.pop("labels", None)


# ---------------------------------------------------------------- ClusterWorkspace create (owner, type)

def _create_workspace(ctx: RequestContext) -> tuple[int, dict]:
    """Record the caller as owner and resolve ``spec.type``, then create as the registry always does.

    ``system:masters`` callers may name another owner in the annotation (a privileged client creating
    on someone's behalf); anyone else's annotation is replaced by their own identity.
    """
    if ctx.name or ctx.cluster == "*":
        raise errors.MethodNotAllowed.for_verb("create", CLUSTER_WORKSPACES.plural)
    registry = ctx.services.registry
    body = ctx.body
    if not isinstance(body, dict):
        raise errors.BadRequest("the body of the request is not a ClusterWorkspace object")
    meta = body.get("metadata")
    if meta is None:
        meta = body["metadata"] = {}
    if isinstance(meta, dict):
        annotations = meta.get("annotations")
        if annotations is None:
            annotations = meta["annotations"] = {}
        if isinstance(annotations, dict) and not (ctx.user.is_master and annotations.get(OWNER_ANNOTATION)):
            annotations[OWNER_ANNOTATION] = owner_annotation_value(ctx.user)
        _refuse_terminating_parent(registry, ctx.cluster, meta.get("name") or "")
    spec = body.get("spec")
    if spec is None:
        spec = body["spec"] = {}
    if isinstance(spec, dict):
        ref = spec.get("type")
        if ref is None:
            ref = spec["type"] = dict(DEFAULT_TYPE)
        if not _type_reference_causes(ref, "spec.type"):
            found = resolve_type(registry.store, ctx.cluster, ref)
            if found is None:
                shown = f'{ref.get("path")}:{ref["name"]}' if ref.get("path") else ref["name"]
                name = (meta.get("name") or meta.get("generateName") or "") if isinstance(meta, dict) else ""
                raise errors.Invalid.for_fields(CLUSTER_WORKSPACES.kind, GROUP, name, [{
                    "type": "FieldValueNotFound", "field": "spec.type",
                    "message": f'Not found: "{shown}": no such WorkspaceType'}])
            spec["type"] = {**ref, "path": found[0]}
    obj = registry.create(CLUSTER_WORKSPACES, ctx.cluster, "", body, dry_run=_dry_run(ctx.request))
    return 201, obj


def terminating(store, cluster: str) -> bool:
    """Whether the ClusterWorkspace that stands for ``cluster`` is being deleted (``root`` never is)."""
    parent, _, own = cluster.rpartition(":")
    if not parent:
        return False
    holder = store.get(Key(CLUSTER_WORKSPACES.storage_key, parent, "", own))
    return holder is not None and bool(holder["metadata"].get("deletionTimestamp"))


def _refuse_terminating_parent(registry, cluster: str, name: str) -> None:
    if terminating(registry.store, cluster):
        raise errors.Forbidden.for_resource(CLUSTER_WORKSPACES.plural, GROUP, name or None,
                                            f"unable to create new content in workspace {cluster} because it is "
                                            "being terminated")


def _dry_run(request) -> bool:
    values = request.args.getlist("dryRun") if request is not None else []
    for value in values:
        if value != "All":
            raise errors.BadRequest(f'dryRun: Unsupported value: "{value}": supported values: "All"')
    return bool(values)


# ---------------------------------------------------------------- WorkspaceType and Shard hooks

def _object_spec(obj: dict, old: dict | None) -> list[dict]:
    if obj.get("spec") is None:
        obj["spec"] = {}
    return []


def _workspace_type_validate(obj: dict, old: dict | None) -> list[dict]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [type_invalid("spec", spec, "must be an object")]
    causes = []
    initializers = spec.get("initializers")
    if initializers is not None:
        if not isinstance(initializers, list):
            return [type_invalid("spec.initializers", initializers, "must be a list of names")]
        seen = set()
        for i, name in enumerate(initializers):
            field = f"spec.initializers[{i}]"
            if not isinstance(name, str) or not name:
                causes.append(invalid(field, name, "must be a non-empty string"))
            elif "/" in name or "%" in name:
                causes.append(invalid(field, name, "may not contain '/' or '%' (it is a URL path segment)"))
            elif name in seen:
                causes.append({"type": "FieldValueDuplicate", "field": field, "message": f'Duplicate value: "{name}"'})
            else:
                seen.add(name)
    if "initializer" in spec and not isinstance(spec["initializer"], bool):
        causes.append(type_invalid("spec.initializer", spec["initializer"], "must be a boolean"))
    permissions = spec.get("initializerPermissions")
    if permissions is not None:
        if not isinstance(permissions, list):
            causes.append(type_invalid("spec.initializerPermissions", permissions, "must be a list of PolicyRules"))
        else:
            for i, rule in enumerate(permissions):
                causes += validate_policy_rule(rule, False, f"spec.initializerPermissions[{i}]")
    return causes


def _url_causes(value, field: str, needed: bool) -> list[dict]:
    if value in (None, ""):
        return [required(field)] if needed else []
    if not isinstance(value, str) or not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
        return [invalid(field, value, "must be an http(s) URL")]
    return []


def _shard_prepare(obj: dict, old: dict | None) -> list[dict]:
    spec = obj.get("spec")
    if isinstance(spec, dict) and spec.get("baseURL") and not spec.get("virtualWorkspaceURL"):
        spec["virtualWorkspaceURL"] = spec["baseURL"]
    return []


def _shard_validate(obj: dict, old: dict | None) -> list[dict]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec")] if spec is None else [type_invalid("spec", spec, "must be an object")]
    return (_url_causes(spec.get("baseURL"), "spec.baseURL", True)
            + _url_causes(spec.get("virtualWorkspaceURL"), "spec.virtualWorkspaceURL", False))


# ---------------------------------------------------------------- types

def _col(name: str, getter, description: str = "") -> table.Column:
    return table.Column(name=name, type="string", description=description, getter=getter)


CLUSTER_WORKSPACES = ResourceType(
    GROUP, VERSION, "ClusterWorkspace", "clusterworkspaces", "clusterworkspace", False,
    short_names=("cws",), subresources=("status",), name_rule="label",
    prepare=_workspace_prepare, validate=_workspace_validate, derive=_workspace_derive,
    handlers={("create", ""): _create_workspace}, columns=clusterworkspaces.COLUMNS)

WORKSPACE_TYPES = ResourceType(
    GROUP, VERSION, "WorkspaceType", "workspacetypes", "workspacetype", False,
    subresources=("status",), name_rule="label", prepare=_object_spec, validate=_workspace_type_validate)

SHARDS = ResourceType(
    GROUP, VERSION, "Shard", "shards", "shard", False,
    subresources=("status",), name_rule="label", prepare=_shard_prepare, validate=_shard_validate,
    columns=(_col("URL", table.field_getter("spec", "baseURL"), "Base URL of the shard"),
             _col("Virtual Workspace URL", table.field_getter("spec", "virtualWorkspaceURL"),
                  "URL of the virtual workspaces of the shard")))

TYPES: tuple[ResourceType, ...] = (CLUSTER_WORKSPACES, WORKSPACE_TYPES, SHARDS)


# ---------------------------------------------------------------- built-in objects

def bootstrap(registry, *, base_url: str, virtual_workspace_url: str = "", name: str = SHARD_NAME) -> None:
    """Create (or correct) the built-in objects in ``root`` (on the root shard): WorkspaceType ``universal`` and
    this shard's ``Shard`` ``name``, whose URLs follow the running configuration (the port may change between
    starts)."""
    if registry.store.get(Key(WORKSPACE_TYPES.storage_key, ROOT, "", DEFAULT_TYPE_NAME)) is None:
        try:
            registry.create(WORKSPACE_TYPES, ROOT, "", {"metadata": {"name": DEFAULT_TYPE_NAME}, "spec": {}})
        except errors.AlreadyExists:
            pass
    spec = {"baseURL": base_url, "virtualWorkspaceURL": virtual_workspace_url or base_url}
    current = registry.store.get(Key(SHARDS.storage_key, ROOT, "", name))
    if current is None:
        registry.create(SHARDS, ROOT, "", {"metadata": {"name": name}, "spec": spec})
    elif current.get("spec") != spec:
        registry.update(SHARDS, ROOT, "", name, {**current, "spec": spec})
