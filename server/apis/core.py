"""The core (``v1``), ``coordination.k8s.io`` and ``apps`` kinds every logical cluster serves: their defaulting,
validation and printer columns."""

from __future__ import annotations

import base64
import binascii
from typing import Callable

from kcp_virtual.framework import table
from server.registry.resourcetype import ResourceType
from server.registry.selectors import EVENT_FIELDS, NAMESPACE_FIELDS, SECRET_FIELDS


def _namespace_prepare(obj: dict, old: dict | None) -> list[dict]:
    status = obj.setdefault("status", {}) if old is None else obj.get("status") or {}
    if old is None:
        status.setdefault("phase", "Active")
    obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    return []


def _secret_prepare(obj: dict, old: dict | None) -> list[dict]:
    obj.setdefault("type", "Opaque")
    string_data = obj.pop("stringData", None)
    causes = []
    if string_data is not None:
        if not isinstance(string_data, dict):
            return [_invalid("stringData", string_data, "must be a map of strings")]
        data = obj.get("data") or {}
        for key, value in string_data.items():
            if not isinstance(value, str):
                causes.append(_invalid(f"stringData[{key}]", value, "must be a string"))
                continue
            data[key] = base64.b64encode(value.encode()).decode()
        obj["data"] = data
    return causes


def _secret_validate(obj: dict, old: dict | None) -> list[dict]:
    causes = []
    data = obj.get("data")
    if data is not None and not isinstance(data, dict):
        return [_invalid("data", data, "must be a map")]
    for key, value in (data or {}).items():
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, TypeError, ValueError):
            causes.append(_invalid(f"data[{key}]", "<value omitted>", "must be base64-encoded"))
    if old is not None and old.get("type") != obj.get("type"):
        causes.append({"type": "FieldValueInvalid", "field": "type",
                       "message": f'Invalid value: "{obj.get("type")}": field is immutable'})
    return causes


def _configmap_validate(obj: dict, old: dict | None) -> list[dict]:
    causes = []
    for fld in ("data", "binaryData"):
        value = obj.get(fld)
        if value is not None and not isinstance(value, dict):
            causes.append(_invalid(fld, value, "must be a map"))
    return causes


def _deployment_prepare(obj: dict, old: dict | None) -> list[dict]:
    spec = obj.setdefault("spec", {})
    if isinstance(spec, dict):
        spec.setdefault("replicas", 1)
        spec.setdefault("strategy", {"type": "RollingUpdate",
                                     "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
    return []


def _deployment_validate(obj: dict, old: dict | None) -> list[dict]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [{"type": "FieldValueRequired", "field": "spec", "message": "Required value"}]
    causes = []
    if not isinstance(spec.get("selector"), dict):
        causes.append({"type": "FieldValueRequired", "field": "spec.selector", "message": "Required value"})
    template = spec.get("template")
    if not isinstance(template, dict):
        causes.append({"type": "FieldValueRequired", "field": "spec.template", "message": "Required value"})
    replicas = spec.get("replicas")
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        causes.append(_invalid("spec.replicas", replicas, "must be greater than or equal to 0"))
    return causes


def _invalid(path: str, value, detail: str) -> dict:
    shown = value if isinstance(value, (int, float)) and not isinstance(value, bool) else f'"{value}"'
    return {"type": "FieldValueInvalid", "field": path, "message": f"Invalid value: {shown}: {detail}"}


# ---------------------------------------------------------------- printer columns

def _count(*fields: str) -> Callable[[dict], int]:
    return lambda obj: sum(len(obj.get(f) or {}) for f in fields)


def _deployment_ready(obj: dict) -> str:
    status = obj.get("status") or {}
    return f'{status.get("readyReplicas", 0)}/{(obj.get("spec") or {}).get("replicas", 0)}'


def _event_object(obj: dict) -> str:
    ref = obj.get("involvedObject") or {}
    return f'{(ref.get("kind") or "").lower()}/{ref.get("name", "")}'


def _col(name, getter, type="string", description="", priority=0, format=""):
    return table.Column(name=name, type=type, format=format, description=description, priority=priority,
                        getter=getter)


TYPES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "Namespace", "namespaces", "namespace", False, short_names=("ns",),
                 subresources=("status",), prepare=_namespace_prepare, name_rule="label",
                 field_selectors=NAMESPACE_FIELDS,
                 columns=(_col("Status", lambda o: (o.get("status") or {}).get("phase")),),
                 returns_deleted_object=True),
    ResourceType("", "v1", "ConfigMap", "configmaps", "configmap", True, short_names=("cm",),
                 validate=_configmap_validate,
                 columns=(_col("Data", _count("data", "binaryData"), type="integer"),)),
    ResourceType("", "v1", "Secret", "secrets", "secret", True, prepare=_secret_prepare,
                 validate=_secret_validate,
                 field_selectors=SECRET_FIELDS,
                 columns=(_col("Type", lambda o: o.get("type")),
                          _col("Data", _count("data"), type="integer"))),
    ResourceType("", "v1", "ServiceAccount", "serviceaccounts", "serviceaccount", True, short_names=("sa",),
                 columns=(_col("Secrets", _count("secrets"), type="integer"),)),
    ResourceType("", "v1", "Event", "events", "event", True, short_names=("ev",), field_selectors=EVENT_FIELDS,
                 columns=(_col("Type", lambda o: o.get("type")), _col("Reason", lambda o: o.get("reason")),
                          _col("Object", _event_object), _col("Message", lambda o: o.get("message")))),
    ResourceType("coordination.k8s.io", "v1", "Lease", "leases", "lease", True,
                 columns=(_col("Holder", lambda o: (o.get("spec") or {}).get("holderIdentity")),)),
    ResourceType("apps", "v1", "Deployment", "deployments", "deployment", True, short_names=("deploy",),
                 categories=("all",), subresources=("status",), prepare=_deployment_prepare,
                 validate=_deployment_validate,
                 columns=(_col("Ready", _deployment_ready),
                          _col("Up-to-date", lambda o: (o.get("status") or {}).get("updatedReplicas", 0),
                               type="integer"),
                          _col("Available", lambda o: (o.get("status") or {}).get("availableReplicas", 0),
                               type="integer"))),
)
