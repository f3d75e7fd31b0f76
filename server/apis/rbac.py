"""``rbac.authorization.k8s.io/v1``: Role, ClusterRole, RoleBinding, ClusterRoleBinding.

Defaulting and validation port kube's ``pkg/apis/rbac/v1/defaults.go`` and
``pkg/apis/rbac/validation`` so that clients see the apiserver's exact 422 texts (a binding's
``roleRef`` is immutable); the table columns are kube's printers (``NAME  CREATED AT`` for roles,
``NAME  ROLE  AGE`` plus wide columns for bindings). The authorizer that reads these objects is
``server.auth.rbac``.
"""

from __future__ import annotations

from typing import Any

from kcp_virtual.framework import table
from server.registry.resourcetype import ResourceType
from server.registry.validation import (go_quote, invalid, is_dns1123_subdomain, is_valid_path_segment_name,
                                                not_supported, required, type_invalid)

GROUP = "rbac.authorization.k8s.io"
VERSION = "v1"
SUBJECT_KINDS = ("ServiceAccount", "User", "Group")
_RULE_FIELDS = ("verbs", "apiGroups", "resources", "resourceNames", "nonResourceURLs")


class _PrinterType(ResourceType):
    """A type whose ``columns`` are the whole table after NAME (kube's RBAC printers, not NAME..AGE)."""

    def table_columns(self) -> list:
        return [table.NAME_COLUMN, *self.columns]


# ---------------------------------------------------------------------------------------------------
# Defaulting


def _default_subjects(obj: dict) -> None:
    """``SetDefaults_Subject``: User and Group subjects live in the RBAC API group, ServiceAccounts in core."""
    for subject in obj.get("subjects") or ():
        if isinstance(subject, dict) and not subject.get("apiGroup") and subject.get("kind") in ("User", "Group"):
            subject["apiGroup"] = GROUP


def _binding_prepare(obj: dict, old: dict | None) -> list[dict]:
    ref = obj.get("roleRef")
    if isinstance(ref, dict) and not ref.get("apiGroup"):
        ref["apiGroup"] = GROUP
    _default_subjects(obj)
    return []


# ---------------------------------------------------------------------------------------------------
# Validation (pkg/apis/rbac/validation)


def _go_strings(values: list) -> str:
    """How Go's ``%#v`` prints a ``[]string`` in a ``field.Invalid`` message."""
    return "[]string{" + ", ".join(go_quote(str(v)) for v in values) + "}"


def _string_list(value: Any, path: str, causes: list[dict]) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        causes.append(type_invalid(path, value, "must be a list of strings"))
        return []
    return value


def validate_policy_rule(rule: Any, namespaced: bool, path: str) -> list[dict]:
    """``ValidatePolicyRule``: verbs always; either nonResourceURLs or apiGroups+resources, never both."""
    if not isinstance(rule, dict):
        return [type_invalid(path, rule, "must be an object")]
    causes: list[dict] = []
    fields = {name: _string_list(rule.get(name), f"{path}.{name}", causes) for name in _RULE_FIELDS}
    if causes:
        return causes
    if not fields["verbs"]:
        causes.append(required(f"{path}.verbs", "verbs must contain at least one value"))
    urls = fields["nonResourceURLs"]
    if urls:
        shown = _go_strings(urls)
        if namespaced:
            causes.append({"type": "FieldValueInvalid", "field": f"{path}.nonResourceURLs",
                           "message": f"Invalid value: {shown}: namespaced rules cannot apply to non-resource URLs"})
        if fields["apiGroups"] or fields["resources"] or fields["resourceNames"]:
            causes.append({"type": "FieldValueInvalid", "field": f"{path}.nonResourceURLs",
                           "message": f"Invalid value: {shown}: rules cannot apply to both regular resources and "
                                      "non-resource URLs"})
        return causes
    if not fields["apiGroups"]:
        causes.append(required(f"{path}.apiGroups", "resource rules must supply at least one api group"))
    if not fields["resources"]:
        causes.append(required(f"{path}.resources", "resource rules must supply at least one resource"))
    return causes


def _validate_rules(obj: dict, namespaced: bool) -> list[dict]:
    rules = obj.get("rules")
    if rules is None:
        return []
    if not isinstance(rules, list):
        return [type_invalid("rules", rules, "must be a list")]
    causes: list[dict] = []
    for index, rule in enumerate(rules):
        causes += validate_policy_rule(rule, namespaced, f"rules[{index}]")
    return causes


def _role_validate(obj: dict, old: dict | None) -> list[dict]:
    return _validate_rules(obj, namespaced=True)


def _cluster_role_validate(obj: dict, old: dict | None) -> list[dict]:
    causes = _validate_rules(obj, namespaced=False)
    aggregation = obj.get("aggregationRule")
    if aggregation is not None and not isinstance(aggregation, dict):
        causes.append(type_invalid("aggregationRule", aggregation, "must be an object"))
    return causes


def _validate_subject(subject: Any, namespaced: bool, path: str) -> list[dict]:
    """``ValidateRoleBindingSubject``."""
    if not isinstance(subject, dict):
        return [type_invalid(path, subject, "must be an object")]
    causes: list[dict] = []
    for name in ("kind", "apiGroup", "name", "namespace"):
        if subject.get(name) is not None and not isinstance(subject[name], str):
            causes.append(type_invalid(f"{path}.{name}", subject[name], "must be a string"))
    if causes:
        return causes
    name, kind, group = subject.get("name") or "", subject.get("kind") or "", subject.get("apiGroup") or ""
    if not name:
        causes.append(required(f"{path}.name"))
    if kind == "ServiceAccount":
        if name:
            causes.extend(invalid(f"{path}.name", name, msg) for msg in is_dns1123_subdomain(name))
        if group:
            causes.append(not_supported(f"{path}.apiGroup", group, [""]))
        if not namespaced and not subject.get("namespace"):
            causes.append(required(f"{path}.namespace"))
    elif kind in ("User", "Group"):
        if group != GROUP:
            causes.append(not_supported(f"{path}.apiGroup", group, [GROUP]))
    else:
        causes.append(not_supported(f"{path}.kind", kind, list(SUBJECT_KINDS)))
    return causes


def _role_ref_text(ref: dict) -> str:
    """Go's ``%#v`` of the internal ``rbac.RoleRef``, as kube prints it in the immutability error."""
    return (f'rbac.RoleRef{{APIGroup:{go_quote(ref.get("apiGroup") or "")}, Kind:{go_quote(ref.get("kind") or "")}, '
            f'Name:{go_quote(ref.get("name") or "")}}}')


def _validate_binding(obj: dict, old: dict | None, role_kinds: list[str], namespaced: bool) -> list[dict]:
    """``ValidateRoleBinding``/``ValidateClusterRoleBinding`` plus the update rule: roleRef cannot change."""
    ref = obj.get("roleRef")
    if not isinstance(ref, dict):
        return [required("roleRef") if ref is None else type_invalid("roleRef", ref, "must be an object")]
    causes: list[dict] = []
    for name in ("apiGroup", "kind", "name"):
        if ref.get(name) is not None and not isinstance(ref[name], str):
            causes.append(type_invalid(f"roleRef.{name}", ref[name], "must be a string"))
    if causes:
        return causes
    if (ref.get("apiGroup") or "") != GROUP:
        causes.append(not_supported("roleRef.apiGroup", ref.get("apiGroup") or "", [GROUP]))
    if (ref.get("kind") or "") not in role_kinds:
        causes.append(not_supported("roleRef.kind", ref.get("kind") or "", role_kinds))
    if not ref.get("name"):
        causes.append(required("roleRef.name"))
    else:
        causes.extend(invalid("roleRef.name", ref["name"], msg) for msg in is_valid_path_segment_name(ref["name"]))
    subjects = obj.get("subjects")
    if subjects is not None and not isinstance(subjects, list):
        causes.append(type_invalid("subjects", subjects, "must be a list"))
    else:
        for index, subject in enumerate(subjects or ()):
            causes += _validate_subject(subject, namespaced, f"subjects[{index}]")
    if old is not None and _ref_key(ref) != _ref_key(old.get("roleRef")):
        causes.append({"type": "FieldValueInvalid", "field": "roleRef",
                       "message": f"Invalid value: {_role_ref_text(ref)}: cannot change roleRef"})
    return causes


def _ref_key(ref: Any) -> tuple:
    ref = ref if isinstance(ref, dict) else {}
    return tuple(ref.get(k) or "" for k in ("apiGroup", "kind", "name"))


def _role_binding_validate(obj: dict, old: dict | None) -> list[dict]:
    return _validate_binding(obj, old, ["Role", "ClusterRole"], namespaced=True)


def _cluster_role_binding_validate(obj: dict, old: dict | None) -> list[dict]:
    return _validate_binding(obj, old, ["ClusterRole"], namespaced=False)


# ---------------------------------------------------------------------------------------------------
# Printer columns (pkg/printers/internalversion: roleBindingsColumnDefinitions and friends)


def _subjects(kind: str):
    def cell(obj: dict) -> str:
        names = []
        for subject in obj.get("subjects") or ():
            if isinstance(subject, dict) and subject.get("kind") == kind:
                name = subject.get("name") or ""
                if kind == "ServiceAccount":
                    name = f'{subject.get("namespace") or ""}:{name}'
                names.append(name)
        return ", ".join(names)
    return cell


def _role_cell(obj: dict) -> str:
    ref = obj.get("roleRef") or {}
    return f'{ref.get("kind", "")}/{ref.get("name", "")}' if isinstance(ref, dict) else ""


_ROLE_COLUMNS = (table.CREATED_AT_COLUMN,)
_BINDING_COLUMNS = (
    table.Column("Role", "string", "", "RoleRef can reference a Role in the current namespace or a ClusterRole in "
                 "the global namespace. If the RoleRef cannot be resolved, the Authorizer must return an error. "
                 "This field is immutable.", 0, _role_cell),
    table.AGE_COLUMN,
    table.Column("Users", "string", "", "Users in the roleBinding", 1, _subjects("User")),
    table.Column("Groups", "string", "", "Groups in the roleBinding", 1, _subjects("Group")),
    table.Column("ServiceAccounts", "string", "", "ServiceAccounts in the roleBinding", 1,
                 _subjects("ServiceAccount")),
)

RBAC_TYPES: tuple[ResourceType, ...] = (
    _PrinterType(GROUP, VERSION, "ClusterRoleBinding", "clusterrolebindings", "clusterrolebinding", False,
                 prepare=_binding_prepare, validate=_cluster_role_binding_validate, name_rule="path",
                 columns=_BINDING_COLUMNS),
    _PrinterType(GROUP, VERSION, "ClusterRole", "clusterroles", "clusterrole", False,
                 validate=_cluster_role_validate, name_rule="path", columns=_ROLE_COLUMNS),
    _PrinterType(GROUP, VERSION, "RoleBinding", "rolebindings", "rolebinding", True,
                 prepare=_binding_prepare, validate=_role_binding_validate, name_rule="path",
                 columns=_BINDING_COLUMNS),
    _PrinterType(GROUP, VERSION, "Role", "roles", "role", True, validate=_role_validate, name_rule="path",
                 columns=_ROLE_COLUMNS),
)
