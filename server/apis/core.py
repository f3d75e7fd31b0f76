"""The core (``v1``), ``coordination.k8s.io`` and ``apps`` kinds every logical cluster serves: their defaulting,
validation and printer columns."""

from __future__ import annotations

import base64
from typing import Callable

from kcp_virtual.framework import errors, table
from server.apis.scale import scale_handlers
from server.registry.resourcetype import ResourceType
from server.registry.validation import invalid, is_config_map_key, too_long
from server.registry.selectors import EVENT_FIELDS, NAMESPACE_FIELDS, SECRET_FIELDS, LabelSelector


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


#: kube's ``MaxSecretSize``: the data of one ConfigMap or Secret (it is mounted into pods as files).
MAX_DATA_BYTES = 1024 * 1024


def _data_keys(data: dict, field: str) -> list[dict]:
    return [invalid(f"{field}[{key}]", key, msg) for key in data for msg in is_config_map_key(key)]


def _decoded_len(encoded: str) -> int:
    encoded = encoded.replace("\r", "").replace("\n", "")
    return len(encoded) * 3 // 4 - encoded[-2:].count("=")


def _secret_validate(obj: dict, old: dict | None) -> list[dict]:
    causes = []
    data = obj.get("data")
    if data is not None and not isinstance(data, dict):
        return [_invalid("data", data, "must be a map")]
    causes += _data_keys(data or {}, "data")
    if sum(_decoded_len(value) for value in (data or {}).values() if isinstance(value, str)) > MAX_DATA_BYTES:
        causes.append(too_long("data", MAX_DATA_BYTES))
    if old is not None and old.get("type") != obj.get("type"):
        causes.append({"type": "FieldValueInvalid", "field": "type",
                       "message": f'Invalid value: "{obj.get("type")}": field is immutable'})
    return causes


def _configmap_validate(obj: dict, old: dict | None) -> list[dict]:
    """``ValidateConfigMap``: keys usable as file names, none in both maps, at most 1 MiB in all."""
    causes = []
    for fld in ("data", "binaryData"):
        value = obj.get(fld)
        if value is not None and not isinstance(value, dict):
            causes.append(_invalid(fld, value, "must be a map"))
    if causes:
        return causes
    data, binary = obj.get("data") or {}, obj.get("binaryData") or {}
    causes += _data_keys(data, "data")
    causes += [invalid(f"data[{key}]", key, "duplicate of key present in binaryData") for key in data if key in binary]
    causes += _data_keys(binary, "binaryData")
    total = sum(len(v.encode()) for v in data.values() if isinstance(v, str)) + \
        sum(_decoded_len(v) for v in binary.values() if isinstance(v, str))
    if total > MAX_DATA_BYTES:
        causes.append(too_long("[]", MAX_DATA_BYTES))
    return causes


def _deployment_prepare(obj: dict, old: dict | None) -> list[dict]:
    """``SetDefaults_Deployment`` and the pod template's ``SetDefaults_PodSpec``/``_Container`` (what
    ``kubectl describe`` shows: strategy, history limit, deadline, restart and DNS policy, pull policy...)."""
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        return []
    spec.setdefault("replicas", 1)
    strategy = spec.get("strategy")
    if not isinstance(strategy, dict):
        strategy = spec["strategy"] = {}
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        rolling = strategy.setdefault("rollingUpdate", {})
        if isinstance(rolling, dict):
            rolling.setdefault("maxUnavailable", "25%")
            rolling.setdefault("maxSurge", "25%")
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    template = spec.get("template")
    pod = template.get("spec") if isinstance(template, dict) else None
    if isinstance(pod, dict):
        _pod_spec_defaults(pod)
    return []


def _pod_spec_defaults(pod: dict) -> None:
    for name, value in (("restartPolicy", "Always"), ("terminationGracePeriodSeconds", 30),
                        ("dnsPolicy", "ClusterFirst"), ("schedulerName", "default-scheduler")):
        pod.setdefault(name, value)
    pod.setdefault("securityContext", {})
    for field in ("initContainers", "containers"):
        for container in pod.get(field) or ():
            if isinstance(container, dict):
                _container_defaults(container)


def _container_defaults(container: dict) -> None:
    image = container.get("image")
    if isinstance(image, str):
        tag = image.rpartition("/")[2].partition("@")[0]
        latest = "@" not in image and (":" not in tag or tag.endswith(":latest"))
        container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    container.setdefault("resources", {})
    for port in container.get("ports") or ():
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")


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


def _deployment_selector(obj: dict) -> str | None:
    """``spec.selector`` as a label selector string (``app=web``), as the Scale and ``-o wide`` show it."""
    selector = (obj.get("spec") or {}).get("selector")
    if not isinstance(selector, dict):
        return None
    try:
        return str(LabelSelector.from_label_selector_object(selector))
    except errors.BadRequest:
        return None


def _containers(field: str) -> Callable[[dict], str]:
    def get(obj: dict) -> str:
        pod = ((((obj.get("spec") or {}).get("template") or {}).get("spec")) or {})
        return ",".join(str(c.get(field, "")) for c in pod.get("containers") or () if isinstance(c, dict))
    return get


def _deployment_ready(obj: dict) -> str:
    status = obj.get("status") or {}
    return f'{status.get("readyReplicas", 0)}/{(obj.get("spec") or {}).get("replicas", 0)}'


def _event_object(obj: dict) -> str:
    ref = obj.get("involvedObject") or {}
    return f'{(ref.get("kind") or "").lower()}/{ref.get("name", "")}'


def _col(name, getter, type="string", description="", priority=0, format=""):
    return table.Column(name=name, type=type, format=format, description=description, priority=priority,
                        getter=getter)


_deployments: list[ResourceType] = []  # the type itself, for its scale handlers
DEPLOYMENTS = ResourceType(
    "apps", "v1", "Deployment", "deployments", "deployment", True, short_names=("deploy",), categories=("all",),
    subresources=("status", "scale"), prepare=_deployment_prepare, validate=_deployment_validate,
    handlers=scale_handlers(_deployments, ["spec", "replicas"], ["status", "replicas"], _deployment_selector),
    columns=(_col("Ready", _deployment_ready),
             _col("Up-to-date", lambda o: (o.get("status") or {}).get("updatedReplicas", 0), type="integer"),
             _col("Available", lambda o: (o.get("status") or {}).get("availableReplicas", 0), type="integer"),
             _col("Containers", _containers("name"), priority=1,
                  description="Names of each container in the template."),
             _col("Images", _containers("image"), priority=1,
                  description="Images referenced by each container in the template."),
             _col("Selector", lambda o: _deployment_selector(o) or "", priority=1,
                  description="Label selector for pods. Existing ReplicaSets whose pods are selected by this "
                              "will be the ones affected by this deployment.")))
_deployments.append(DEPLOYMENTS)

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
    DEPLOYMENTS,
)
