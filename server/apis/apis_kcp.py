"""``apis.kcp.dev/v1alpha1``: APIResourceSchema, APIExport and APIBinding, served in every logical cluster.

A provider describes a resource once (an immutable ``APIResourceSchema``: a CRD's group, names, scope
and versions) and offers a set of them in an ``APIExport``; the shard gives the export an identity
(``status.identityHash``, the sha256 of a secret it keeps in ``kcp-system/<export>`` of the export's
cluster). A consumer creates an ``APIBinding`` to the export and the resources are served in its
workspace, stored under the export's identity (``server.apis.bound``; the controllers are in
``server.controllers.apiexport`` and ``server.controllers.apibinding``).

What must be decided at request time lives here: binding needs verb ``bind`` on the export
(``apiexports``, resourceName = the export) in the export's workspace, checked by APIBinding's
create handler against the RBAC of that workspace alone (kcp's "deep" SubjectAccessReview: a
provider hands out ``bind`` to consumers who have no access to its workspace).
"""

from __future__ import annotations

import hashlib
import re

from kcp_virtual.framework import errors, table
from server.apis.apiextensions import default_names, validate_crd
from server.auth.authz import Attributes, Decision
from server.registry.generic import cluster_of
from server.registry.resourcetype import RequestContext, ResourceType
from server.registry.schema.fieldvalidation import FieldValidation
from server.registry.validation import forbidden, invalid, is_dns1123_subdomain, required, type_invalid

GROUP = "apis.kcp.dev"
VERSION = "v1alpha1"

#: Where the shard keeps an export's identity secret (``data.key``), in the export's logical cluster.
IDENTITY_NAMESPACE = "kcp-system"
IDENTITY_SECRET_KEY = "key"
#: On every APIBinding: ``export_label_value(<export cluster>, <export name>)``, so that the bindings to one
#: export are a label selector away (the apiexport virtual workspace lists them across clusters with it).
EXPORT_LABEL = "internal.apis.kcp.dev/export"

BINDING, BOUND = "Binding", "Bound"
PHASES = ("", BINDING, BOUND)

_PREFIX = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_CLUSTER_PATH = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(:[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def export_label_value(export_cluster: str, export_name: str) -> str:
    """The ``EXPORT_LABEL`` value of the bindings to one export: sha224 hex of ``<cluster>:<name>`` (56 chars)."""
    return hashlib.sha224(f"{export_cluster}:{export_name}".encode()).hexdigest()


def identity_hash(key: bytes) -> str:
    """An export's ``status.identityHash``: sha256 hex of its secret key (non-sensitive, never changes)."""
    return hashlib.sha256(key).hexdigest()


def binding_reference(binding: dict, cluster: str = "") -> tuple[str, str] | None:
    """``(export cluster, export name)`` an APIBinding (in ``cluster``, default: the one it names) points at;
    an empty path means the binding's own cluster. None for a malformed reference."""
    spec = binding.get("spec") if isinstance(binding.get("spec"), dict) else {}
    reference = spec.get("reference") if isinstance(spec.get("reference"), dict) else {}
    ref = reference.get("workspace")
    if not isinstance(ref, dict) or not isinstance(ref.get("exportName"), str) or not ref["exportName"]:
        return None
    path = ref.get("path") or cluster or cluster_of(binding.get("metadata") or {})
    return (path, ref["exportName"]) if isinstance(path, str) and path else None


def version_schema(version: dict):
    """A schema version's OpenAPI v3 schema: ``schema.openAPIV3Schema`` (CRD form) or ``schema`` itself (kcp's)."""
    schema = version.get("schema")
    if isinstance(schema, dict) and "openAPIV3Schema" in schema:
        return schema["openAPIV3Schema"]
    return schema


def schema_as_crd(schema: dict) -> dict:
    """The CustomResourceDefinition an APIResourceSchema stands for (what CRD validation and serving take)."""
    spec = schema.get("spec") or {}
    names = spec.get("names") if isinstance(spec.get("names"), dict) else {}
    versions = spec.get("versions")
    if isinstance(versions, list):
        versions = [{**v, "schema": {"openAPIV3Schema": version_schema(v)}} if isinstance(v, dict) else v
                    for v in versions]
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{names.get('plural')}.{spec.get('group')}"},
            "spec": {"group": spec.get("group"), "names": names, "scope": spec.get("scope"), "versions": versions}}


def set_condition(conditions: list[dict], type_: str, status: str, reason: str, message: str,
                  now: str) -> list[dict]:
    """``conditions`` with ``type_`` set (kcp's condition form: a True one carries no reason or message);
    ``lastTransitionTime`` moves only when the status does."""
    wanted = {"type": type_, "status": status}
    if reason:
        wanted["reason"] = reason
    if message:
        wanted["message"] = message
    out, found = [], False
    for condition in conditions:
        if not isinstance(condition, dict) or condition.get("type") != type_:
            out.append(condition)
            continue
        found = True
        transition = condition.get("lastTransitionTime") if condition.get("status") == status else None
        out.append({**wanted, "lastTransitionTime": transition or now})
    if not found:
        out.append({**wanted, "lastTransitionTime": now})
    return out


def storage_version(schema: dict) -> str:
    return next((v["name"] for v in (schema.get("spec") or {}).get("versions") or ()
                 if isinstance(v, dict) and v.get("storage")), "")


# ---------------------------------------------------------------------------------------------- APIResourceSchema

def _schema_prepare(obj: dict, old: dict | None) -> list[dict]:
    spec = obj.get("spec")
    if isinstance(spec, dict):
        default_names(spec)
        versions = spec.get("versions")
        for version in versions if isinstance(versions, list) else ():
            if isinstance(version, dict):
                version.setdefault("served", True)
    return []


def _schema_validate(obj: dict, old: dict | None) -> list[dict]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec")]
    causes: list[dict] = []
    names = spec.get("names") if isinstance(spec.get("names"), dict) else {}
    plural, group, name = names.get("plural"), spec.get("group"), obj["metadata"].get("name", "")
    if isinstance(plural, str) and plural and isinstance(group, str):
        suffix = f".{plural}.{group or 'core'}"
        if not name.endswith(suffix):
            causes.append(invalid("metadata.name", name, f"must end in {suffix}"))
        elif not _PREFIX.match(name[:-len(suffix)]):
            causes.append(invalid("metadata.name", name, f"must match ^[a-z]([-a-z0-9]*[a-z0-9])?$ in front of "
                                                         f"{suffix}"))
    kcp_form = {i for i, v in enumerate(spec.get("versions") or ()) if isinstance(v, dict)
                and not (isinstance(v.get("schema"), dict) and "openAPIV3Schema" in v["schema"])} \
        if isinstance(spec.get("versions"), list) else set()
    for cause in validate_crd(schema_as_crd(obj)):
        field = cause.get("field", "")
        if field.startswith("metadata.name"):
            continue  # a schema's name is <prefix>.<plural>.<group>, checked above
        for i in kcp_form:  # report paths as the client wrote them
            field = field.replace(f"spec.versions[{i}].schema.openAPIV3Schema", f"spec.versions[{i}].schema")
        causes.append({**cause, "field": field})
    if old is not None and (old.get("spec") or {}) != spec:
        causes.append(forbidden("spec", "APIResourceSchema spec is immutable"))
    return causes


# ---------------------------------------------------------------------------------------------- APIExport

def _export_prepare(obj: dict, old: dict | None) -> list[dict]:
    """The identity secret defaults to ``kcp-system/<export name>`` (kcp's default)."""
    spec = obj.get("spec")
    if spec is None:
        spec = obj["spec"] = {}
    if isinstance(spec, dict) and spec.get("identity") is None:
        previous = ((old or {}).get("spec") or {}).get("identity")
        spec["identity"] = previous if previous is not None else {
            "secretRef": {"namespace": IDENTITY_NAMESPACE, "name": obj["metadata"].get("name", "")}}
    return []


def _export_validate(obj: dict, old: dict | None) -> list[dict]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [type_invalid("spec", spec, "must be an object")]
    causes: list[dict] = []
    schemas = spec.get("latestResourceSchemas")
    if schemas is not None:
        if not isinstance(schemas, list):
            causes.append(type_invalid("spec.latestResourceSchemas", schemas, "must be a list of names"))
        else:
            seen = set()
            for i, name in enumerate(schemas):
                field = f"spec.latestResourceSchemas[{i}]"
                if not isinstance(name, str) or not name:
                    causes.append(invalid(field, name, "must be the name of an APIResourceSchema"))
                elif name in seen:
                    causes.append({"type": "FieldValueDuplicate", "field": field,
                                   "message": f'Duplicate value: "{name}"'})
                else:
                    causes += [invalid(field, name, m) for m in is_dns1123_subdomain(name)]
                    seen.add(name)
    ref = (spec.get("identity") or {}).get("secretRef") if isinstance(spec.get("identity"), dict) else None
    if not isinstance(ref, dict) or not all(isinstance(ref.get(k), str) and ref.get(k) for k in ("namespace", "name")):
        causes.append(required("spec.identity.secretRef", "namespace and name of the identity secret"))
    if old is not None and (old.get("spec") or {}).get("identity") not in (None, spec.get("identity")):
        causes.append(invalid("spec.identity", spec.get("identity"), "field is immutable"))
    status = obj.get("status")
    if status is not None and not isinstance(status, dict):
        return causes + [type_invalid("status", status, "must be an object")]
    old_hash = ((old or {}).get("status") or {}).get("identityHash")
    if old_hash and (status or {}).get("identityHash") != old_hash:
        causes.append(invalid("status.identityHash", (status or {}).get("identityHash"), "field is immutable"))
    return causes


# ---------------------------------------------------------------------------------------------- APIBinding

def _binding_prepare(obj: dict, old: dict | None) -> list[dict]:
    """The export label follows the reference (and cannot be set to anything else)."""
    meta = obj["metadata"]
    labels = meta.get("labels")
    if labels is None:
        labels = meta["labels"] = {}
    ref = binding_reference(obj)
    if isinstance(labels, dict):
        if ref is not None:
            labels[EXPORT_LABEL] = export_label_value(*ref)
        else:
            labels.pop(EXPORT_LABEL, None)
    return []


def _binding_validate(obj: dict, old: dict | None) -> list[dict]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec")]
    reference = spec.get("reference")
    workspace = reference.get("workspace") if isinstance(reference, dict) else None
    causes: list[dict] = []
    if not isinstance(workspace, dict):
        causes.append(required("spec.reference.workspace"))
    else:
        export, path = workspace.get("exportName"), workspace.get("path")
        if not export:
            causes.append(required("spec.reference.workspace.exportName"))
        elif not isinstance(export, str):
            causes.append(type_invalid("spec.reference.workspace.exportName", export, "must be a string"))
        else:
            causes += [invalid("spec.reference.workspace.exportName", export, m) for m in is_dns1123_subdomain(export)]
        if path not in (None, "") and (not isinstance(path, str) or not _CLUSTER_PATH.match(path)):
            causes.append(invalid("spec.reference.workspace.path", path,
                                  "must be a logical cluster path such as root:org:ws"))
    if old is not None and (old.get("spec") or {}).get("reference") != reference:
        causes.append(invalid("spec.reference", reference, "field is immutable"))
    status = obj.get("status")
    if status is not None:
        if not isinstance(status, dict):
            causes.append(type_invalid("status", status, "must be an object"))
        elif status.get("phase") not in (None, *PHASES):
            causes.append({"type": "FieldValueNotSupported", "field": "status.phase",
                           "message": f'Unsupported value: "{status.get("phase")}": supported values: "", '
                                      '"Binding", "Bound"'})
    return causes


def _bind_allowed(ctx: RequestContext, export_cluster: str, export_name: str) -> Decision:
    """``bind`` on the export, by the RBAC of the export's workspace alone (no workspace access needed)."""
    if ctx.user.is_master:
        return Decision(True, "system:masters")
    authorizer = ctx.services.authorizer
    attributes = Attributes(user=ctx.user, verb="bind", cluster=export_cluster, is_resource=True, api_group=GROUP,
                            api_version=VERSION, resource="apiexports", name=export_name)
    evaluate = getattr(authorizer, "evaluate", None)  # RBACAuthorizer: RBAC inside one cluster, no tenancy rule
    return evaluate(attributes) if evaluate is not None else authorizer.authorize(attributes)


def _create_binding(ctx: RequestContext) -> tuple[int, dict]:
    """Refuse (403) unless the caller may ``bind`` the export, then create as the registry always does."""
    if ctx.name or ctx.cluster == "*":
        raise errors.MethodNotAllowed.for_verb("create", APIBINDINGS.plural)
    body = ctx.body
    if not isinstance(body, dict):
        raise errors.BadRequest("the body of the request is not an APIBinding object")
    meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    ref = binding_reference(body, ctx.cluster)
    if ref is not None and not _bind_allowed(ctx, *ref).allowed:
        name = meta.get("name") or meta.get("generateName") or ""
        raise errors.Forbidden.for_resource(APIBINDINGS.plural, GROUP, name or None,
                                            f"unable to create APIBinding: no permission to bind to export "
                                            f"{ref[0]}:{ref[1]}")
    args = ctx.request.args if ctx.request is not None else {}
    dry_run = args.getlist("dryRun") if args else []
    for value in dry_run:
        if value != "All":
            raise errors.BadRequest(f'dryRun: Unsupported value: "{value}": supported values: "All"')
    fields = FieldValidation.from_query(args.get("fieldValidation") if args else None)
    return 201, ctx.services.registry.create(APIBINDINGS, ctx.cluster, "", body, dry_run=bool(dry_run),
                                             field_validation=fields)


# ---------------------------------------------------------------------------------------------- types

def _export_reference(obj: dict) -> str:
    ref = binding_reference(obj)
    return f"{ref[0]}:{ref[1]}" if ref else ""


def _col(name: str, getter, description: str = "") -> table.Column:
    return table.Column(name=name, type="string", format="", description=description, priority=0, getter=getter)


APIRESOURCESCHEMAS = ResourceType(
    GROUP, VERSION, "APIResourceSchema", "apiresourceschemas", "apiresourceschema", False,
    categories=("kcp",), prepare=_schema_prepare, validate=_schema_validate,
    columns=(_col("Group", table.field_getter("spec", "group")),
             _col("Kind", table.field_getter("spec", "names", "kind"))))

APIEXPORTS = ResourceType(
    GROUP, VERSION, "APIExport", "apiexports", "apiexport", False,
    categories=("kcp",), subresources=("status",), prepare=_export_prepare, validate=_export_validate,
    columns=(_col("Identity", table.field_getter("status", "identityHash"), "The identity hash of the export"),))

APIBINDINGS = ResourceType(
    GROUP, VERSION, "APIBinding", "apibindings", "apibinding", False,
    categories=("kcp",), subresources=("status",), prepare=_binding_prepare, validate=_binding_validate,
    handlers={("create", ""): _create_binding},
    columns=(_col("Export", _export_reference, "The APIExport bound (<workspace>:<name>)"),
             _col("Phase", table.field_getter("status", "phase"), "Binding or Bound")))

TYPES: tuple[ResourceType, ...] = (APIRESOURCESCHEMAS, APIEXPORTS, APIBINDINGS)

__all__ = ["GROUP", "VERSION", "TYPES", "APIRESOURCESCHEMAS", "APIEXPORTS", "APIBINDINGS", "IDENTITY_NAMESPACE",
           "IDENTITY_SECRET_KEY", "EXPORT_LABEL", "BINDING", "BOUND", "export_label_value", "identity_hash",
           "binding_reference", "version_schema", "schema_as_crd", "storage_version", "set_condition"]
