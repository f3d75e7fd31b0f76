"""Generate ``builtin_schemas.json``: OpenAPI v3 schemas of the built-in kinds, from the kubernetes client's models.

The client's generated models carry the upstream API structure (field names, types, descriptions,
required fields) of the Kubernetes release they were built from, so the schemas we serve for
``kubectl explain`` and judge unknown fields against are upstream's, not a hand-copied subset.
Importing the client takes ~0.5 s, too slow for every shard start, hence a checked-in file.

Run after upgrading the ``kubernetes`` package::

    python -m server.registry.schema.generate
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import orjson

OUTPUT = Path(__file__).with_name("builtin_schemas.json")
META = "io.k8s.apimachinery.pkg.apis.meta.v1"
META_KINDS = {"ObjectMeta", "ListMeta", "LabelSelector", "LabelSelectorRequirement", "ManagedFieldsEntry",
              "OwnerReference", "Status", "StatusDetails", "StatusCause", "DeleteOptions", "Preconditions",
              "Condition"}
# Fields the client types as ``object`` that upstream declares IntOrString (everything else ``object`` is free JSON).
INT_OR_STRING = {"maxSurge", "maxUnavailable", "port", "targetPort"}
# Fields the client types as ``str`` (or maps of it) that upstream declares a resource.Quantity, which
# takes a JSON string or number (``cpu: 1``); (model, attribute) pairs of the kinds we serve.
QUANTITY_FIELDS = {("V1ResourceRequirements", "limits"), ("V1ResourceRequirements", "requests"),
                   ("V1VolumeResourceRequirements", "limits"), ("V1VolumeResourceRequirements", "requests"),
                   ("V1EmptyDirVolumeSource", "size_limit"), ("V1PodSpec", "overhead"),
                   ("V1ResourceFieldSelector", "divisor")}
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
# Upstream's OpenAPI v3 form of a Quantity (kube-openapi's OpenAPIV3OneOfTypes: string or number).
QUANTITY_SCHEMA = {"description": "Quantity is a fixed-point representation of a number: a string such as "
                                  "\"100m\", \"1.5Gi\" or \"2\", or a JSON number.",
                   "oneOf": [{"type": "string"}, {"type": "number"}]}

# (group, version, kind) -> client model, for every built-in kind we serve, plus the Scale of scale subresources.
ROOTS = {
    ("", "v1", "Namespace"): "V1Namespace",
    ("", "v1", "ConfigMap"): "V1ConfigMap",
    ("", "v1", "Secret"): "V1Secret",
    ("", "v1", "ServiceAccount"): "V1ServiceAccount",
    ("", "v1", "Event"): "CoreV1Event",
    ("coordination.k8s.io", "v1", "Lease"): "V1Lease",
    ("apps", "v1", "Deployment"): "V1Deployment",
    ("rbac.authorization.k8s.io", "v1", "Role"): "V1Role",
    ("rbac.authorization.k8s.io", "v1", "RoleBinding"): "V1RoleBinding",
    ("rbac.authorization.k8s.io", "v1", "ClusterRole"): "V1ClusterRole",
    ("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding"): "V1ClusterRoleBinding",
    ("authorization.k8s.io", "v1", "SubjectAccessReview"): "V1SubjectAccessReview",
    ("authorization.k8s.io", "v1", "LocalSubjectAccessReview"): "V1LocalSubjectAccessReview",
    ("authorization.k8s.io", "v1", "SelfSubjectAccessReview"): "V1SelfSubjectAccessReview",
    ("authorization.k8s.io", "v1", "SelfSubjectRulesReview"): "V1SelfSubjectRulesReview",
    ("authentication.k8s.io", "v1", "TokenReview"): "V1TokenReview",
    ("authentication.k8s.io", "v1", "SelfSubjectReview"): "V1SelfSubjectReview",
    ("authentication.k8s.io", "v1", "TokenRequest"): "AuthenticationV1TokenRequest",
    ("apiextensions.k8s.io", "v1", "CustomResourceDefinition"): "V1CustomResourceDefinition",
    ("autoscaling", "v1", "Scale"): "V1Scale",
}
PACKAGES = {
    "": "io.k8s.api.core", "apps": "io.k8s.api.apps", "coordination.k8s.io": "io.k8s.api.coordination",
    "rbac.authorization.k8s.io": "io.k8s.api.rbac", "authorization.k8s.io": "io.k8s.api.authorization",
    "authentication.k8s.io": "io.k8s.api.authentication", "autoscaling": "io.k8s.api.autoscaling",
    "apiextensions.k8s.io": "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions",
}
_CLASS = re.compile(r"^(?:[A-Z][a-z]+)?(V\d+(?:(?:alpha|beta)\d+)?)([A-Z]\w*)$")
_LIST = re.compile(r"^List\[(.+)\]$")
_DICT = re.compile(r"^Dict\[str, (.+)\]$")
_SCALARS = {"str": {"type": "string"}, "int": {"type": "integer", "format": "int64"},
            "float": {"type": "number", "format": "double"}, "bool": {"type": "boolean"},
            "datetime": {"type": "string", "format": "date-time"}, "date": {"type": "string", "format": "date"},
            "bytearray": {"type": "string", "format": "byte"},
            "bytes": {"type": "string", "format": "byte"}}


class Generator:
    def __init__(self, models):
        self.models = models
        self.schemas: dict[str, dict] = {}
        self.names: dict[str, str] = {}

    def name(self, cls_name: str, group: str) -> str:
        if cls_name in self.names:
            return self.names[cls_name]
        match = _CLASS.match(cls_name)
        version, kind = (match.group(1).lower(), match.group(2)) if match else ("v1", cls_name)
        if kind in META_KINDS:
            package = META
        elif group == "apps" and not kind.startswith(("Deployment", "RollingUpdateDeployment")):
            package = f"{PACKAGES['']}.{version}"
        else:
            package = f"{PACKAGES[group]}.{version}"
        self.names[cls_name] = name = f"{package}.{kind}"
        return name

    def ref(self, cls_name: str, group: str) -> dict:
        name = self.name(cls_name, group)
        if name not in self.schemas:
            self.schemas[name] = {}  # placeholder: recursion (JSONSchemaProps) stops here
            self.schemas[name] = self.model(getattr(self.models, cls_name), group)
        return {"$ref": f"#/components/schemas/{name}"}

    def type_schema(self, type_name: str, field: str, group: str, quantity: bool = False) -> dict:
        if quantity and type_name == "str":
            self.schemas[QUANTITY] = QUANTITY_SCHEMA
            return {"$ref": f"#/components/schemas/{QUANTITY}"}
        if type_name in _SCALARS:
            return dict(_SCALARS[type_name])
        if type_name == "object":
            return {"x-kubernetes-int-or-string": True} if field in INT_OR_STRING else \
                {"x-kubernetes-preserve-unknown-fields": True}
        if m := _LIST.match(type_name):
            return {"type": "array", "items": self.type_schema(m.group(1), field, group, quantity)}
        if m := _DICT.match(type_name):
            return {"type": "object", "additionalProperties": self.type_schema(m.group(1), field, group, quantity)}
        return self.ref(type_name, group)

    def model(self, cls, group: str) -> dict:
        properties = {}
        required = []
        for attr, type_name in cls.openapi_types.items():
            json_name = cls.attribute_map[attr]
            info = cls.model_fields.get(attr)
            schema = self.type_schema(type_name, json_name, group, (cls.__name__, attr) in QUANTITY_FIELDS)
            description = info.description if info is not None else None
            if description:
                schema = {"allOf": [schema], "description": description} if "$ref" in schema else \
                    {**schema, "description": description}
            properties[json_name] = schema
            if info is not None and info.is_required():
                required.append(json_name)
        out = {"type": "object", "description": _doc(cls), "properties": properties}
        if required:
            out["required"] = required
        return out


def _doc(cls) -> str:
    text = (cls.__doc__ or "").split("Attributes:")[0]
    return " ".join(text.split())


def generate() -> dict:
    from kubernetes.client import models

    gen = Generator(models)
    kinds = {}
    for (group, version, kind), cls_name in ROOTS.items():
        ref = gen.ref(cls_name, group)
        name = ref["$ref"].rsplit("/", 1)[1]
        gen.schemas[name]["x-kubernetes-group-version-kind"] = [{"group": group, "version": version, "kind": kind}]
        kinds[f"{group}/{version}/{kind}"] = name
    return {"kinds": kinds, "schemas": dict(sorted(gen.schemas.items()))}


def main() -> int:
    data = generate()
    OUTPUT.write_bytes(orjson.dumps(data, option=orjson.OPT_SORT_KEYS))
    print(f"wrote {OUTPUT} ({len(data['schemas'])} schemas, {OUTPUT.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
