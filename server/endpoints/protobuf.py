"""Decode Kubernetes protobuf request bodies into the JSON dicts a JSON client would have sent.

kubectl 1.32 uses typed clients for ``create namespace|configmap|secret|...``, ``auth can-i``,
``auth whoami`` and ``create token``, and those send ``application/vnd.kubernetes.protobuf``
with no JSON fallback (kubernetes/kubernetes#86253). Rather than pulling in generated Go-shaped
classes, this module reads the protobuf wire format directly and maps field numbers to the
camelCase JSON names through hand-written field maps taken from the Kubernetes
``generated.proto`` files. Only request bodies are decoded; responses stay JSON.

Wire layout: ``k8s\\0`` then a ``runtime.Unknown`` {1: TypeMeta{1 apiVersion, 2 kind}, 2: raw
object, 3: contentEncoding, 4: contentType}; the raw object is the type's own message.

JSON fidelity follows Go's ``encoding/json`` on the decoded struct, so the result equals what
kubectl 1.31 sends as JSON for the same command (the unit fixtures check exactly that): singular
scalars that are zero are dropped (``omitempty``) unless the field is a pointer (present means
set, so ``0`` and ``false`` survive) or has no ``omitempty`` in Go (filled with its zero value, or
``null`` for absent pointers and slices); nested messages that are present are emitted even when
empty (``"status": {}``); a zero ``Time`` is ``null``. Unknown field numbers are skipped, as
protobuf itself does, so fields newer than these maps are dropped rather than rejected.
"""

from __future__ import annotations

import base64
import datetime
from dataclasses import dataclass, field as dataclass_field

import orjson

MAGIC = b"k8s\x00"

# wire types
VARINT, FIXED64, LEN, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5

# scalar kinds and how they travel on the wire
_SCALAR_WIRE = {"string": LEN, "bytes": LEN, "bool": VARINT, "int32": VARINT, "int64": VARINT}
_ZERO = {"string": "", "bytes": "", "bool": False, "int32": 0, "int64": 0}

#: how a field is emitted: OMIT drops zero scalars (Go omitempty); PTR keeps whatever is present (Go
#: pointers); KEEP also fills an absent non-pointer scalar with its zero value; NULL is PTR that becomes
#: null when absent (pointers, slices and maps without omitempty)
OMIT, PTR, KEEP, NULL = "omit", "ptr", "keep", "null"


class ProtobufError(ValueError):
    """The body is not well-formed protobuf, or a field holds the wrong wire type."""


class UnknownKind(LookupError):
    """The envelope names a kind this module has no field map for."""

    def __init__(self, api_version: str, kind: str):
        super().__init__(f"{api_version}, Kind={kind}")
        self.api_version = api_version
        self.kind = kind


# --------------------------------------------------------------------------- wire format

def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    end = len(data)
    while True:
        if pos >= end:
            raise ProtobufError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ProtobufError("varint longer than 10 bytes")


def iter_fields(data: bytes):
    """Yield ``(field_number, wire_type, value)``: an int for varints, bytes for length-delimited
    fields; fixed32/fixed64 values are yielded as their raw bytes (no Kubernetes type we map uses
    them, but they must be skipped correctly)."""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtobufError("field number 0 is invalid")
        if wire == VARINT:
            value, pos = _varint(data, pos)
        elif wire == LEN:
            length, pos = _varint(data, pos)
            if length > end - pos:
                raise ProtobufError(f"field {number}: length {length} runs past the end of the message")
            value, pos = data[pos:pos + length], pos + length
        elif wire in (FIXED64, FIXED32):
            size = 8 if wire == FIXED64 else 4
            if size > end - pos:
                raise ProtobufError(f"field {number}: truncated fixed{size * 8} value")
            value, pos = data[pos:pos + size], pos + size
        else:
            raise ProtobufError(f"field {number}: unsupported wire type {wire}")
        yield number, wire, value


def _signed(value: int, bits: int = 64) -> int:
    value &= (1 << 64) - 1
    if value >= 1 << 63:
        value -= 1 << 64
    if bits == 32 and not -(1 << 31) <= value < (1 << 31):
        raise ProtobufError(f"value {value} does not fit in int32")
    return value


# --------------------------------------------------------------------------- field maps

@dataclass(frozen=True)
class Field:
    """One protobuf field: its JSON name, its type (a scalar kind, a ``Message``, a ``Map`` or a
    special kind), whether it repeats, how zero values are emitted, and whether a message's
    fields are inlined into the parent (Go's embedded structs such as ``VolumeSource``)."""

    name: str
    type: object
    repeated: bool = False
    presence: str = OMIT
    inline: bool = False


@dataclass(frozen=True)
class Map:
    value: object  # a scalar kind, a special kind or a Message; keys are always strings


@dataclass(eq=False)
class Message:
    name: str
    fields: dict[int, Field] = dataclass_field(default_factory=dict)


def message(name: str, *fields: tuple[int, Field]) -> Message:
    return Message(name, dict(fields))


def f(number: int, name: str, type_: object = "string", *, repeated: bool = False, presence: str = OMIT,
      inline: bool = False) -> tuple[int, Field]:
    return number, Field(name, type_, repeated, presence, inline)


# special kinds: small messages with their own JSON form
TIME = "time"              # meta.v1.Time {1 seconds, 2 nanos} -> RFC 3339 string, zero -> null
QUANTITY = "quantity"      # resource.Quantity {1 string} -> "100m"
INT_OR_STRING = "intstr"   # intstr.IntOrString {1 type, 2 intVal, 3 strVal} -> 80 | "25%"
RAW_JSON = "rawjson"       # meta.v1.FieldsV1 / runtime.RawExtension {1 raw} -> parsed JSON
EXTRA_VALUE = "extravalue"  # ExtraValue {1 repeated items} -> ["a", "b"]
_SPECIAL = (TIME, QUANTITY, INT_OR_STRING, RAW_JSON, EXTRA_VALUE)

# ---- apimachinery meta/v1

OWNER_REFERENCE = message(
    "OwnerReference",
    f(5, "apiVersion", presence=KEEP), f(1, "kind", presence=KEEP), f(3, "name", presence=KEEP),
    f(4, "uid", presence=KEEP), f(6, "controller", "bool", presence=PTR),
    f(7, "blockOwnerDeletion", "bool", presence=PTR))
MANAGED_FIELDS_ENTRY = message(
    "ManagedFieldsEntry",
    f(1, "manager"), f(2, "operation"), f(3, "apiVersion"), f(4, "time", TIME), f(6, "fieldsType"),
    f(7, "fieldsV1", RAW_JSON), f(8, "subresource"))
OBJECT_META = message(
    "ObjectMeta",
    f(1, "name"), f(2, "generateName"), f(3, "namespace"), f(4, "selfLink"), f(5, "uid"),
    f(6, "resourceVersion"), f(7, "generation", "int64"), f(8, "creationTimestamp", TIME),
    f(9, "deletionTimestamp", TIME), f(10, "deletionGracePeriodSeconds", "int64", presence=PTR),
    f(11, "labels", Map("string")), f(12, "annotations", Map("string")),
    f(13, "ownerReferences", OWNER_REFERENCE, repeated=True), f(14, "finalizers", repeated=True),
    f(17, "managedFields", MANAGED_FIELDS_ENTRY, repeated=True))
LABEL_SELECTOR_REQUIREMENT = message(
    "LabelSelectorRequirement",
    f(1, "key", presence=KEEP), f(2, "operator", presence=KEEP), f(3, "values", repeated=True))
LABEL_SELECTOR = message(
    "LabelSelector",
    f(1, "matchLabels", Map("string")), f(2, "matchExpressions", LABEL_SELECTOR_REQUIREMENT, repeated=True))
FIELD_SELECTOR_REQUIREMENT = message(
    "FieldSelectorRequirement",
    f(1, "key", presence=KEEP), f(2, "operator", presence=KEEP), f(3, "values", repeated=True))
PRECONDITIONS = message("Preconditions", f(1, "uid", presence=PTR), f(2, "resourceVersion", presence=PTR))
DELETE_OPTIONS = message(
    "DeleteOptions",
    f(1, "gracePeriodSeconds", "int64", presence=PTR), f(2, "preconditions", PRECONDITIONS),
    f(3, "orphanDependents", "bool", presence=PTR), f(4, "propagationPolicy", presence=PTR),
    f(5, "dryRun", repeated=True))

# ---- core/v1

NAMESPACE_CONDITION = message(
    "NamespaceCondition",
    f(1, "type", presence=KEEP), f(2, "status", presence=KEEP), f(4, "lastTransitionTime", TIME),
    f(5, "reason"), f(6, "message"))
NAMESPACE = message(
    "Namespace",
    f(1, "metadata", OBJECT_META),
    f(2, "spec", message("NamespaceSpec", f(1, "finalizers", repeated=True))),
    f(3, "status", message("NamespaceStatus", f(1, "phase"),
                           f(2, "conditions", NAMESPACE_CONDITION, repeated=True))))
CONFIG_MAP = message(
    "ConfigMap",
    f(1, "metadata", OBJECT_META), f(4, "immutable", "bool", presence=PTR), f(2, "data", Map("string")),
    f(3, "binaryData", Map("bytes")))
SECRET = message(
    "Secret",
    f(1, "metadata", OBJECT_META), f(5, "immutable", "bool", presence=PTR), f(2, "data", Map("bytes")),
    f(4, "stringData", Map("string")), f(3, "type"))
OBJECT_REFERENCE = message(
    "ObjectReference",
    f(1, "kind"), f(2, "namespace"), f(3, "name"), f(4, "uid"), f(5, "apiVersion"), f(6, "resourceVersion"),
    f(7, "fieldPath"))
LOCAL_OBJECT_REFERENCE = message("LocalObjectReference", f(1, "name"))
SERVICE_ACCOUNT = message(
    "ServiceAccount",
    f(1, "metadata", OBJECT_META), f(2, "secrets", OBJECT_REFERENCE, repeated=True),
    f(3, "imagePullSecrets", LOCAL_OBJECT_REFERENCE, repeated=True),
    f(4, "automountServiceAccountToken", "bool", presence=PTR))

KEY_SELECTOR_FIELDS = (f(1, "localObjectReference", LOCAL_OBJECT_REFERENCE, inline=True),
                       f(2, "key", presence=KEEP), f(3, "optional", "bool", presence=PTR))
ENV_VAR_SOURCE = message(
    "EnvVarSource",
    f(1, "fieldRef", message("ObjectFieldSelector", f(1, "apiVersion"), f(2, "fieldPath", presence=KEEP))),
    f(2, "resourceFieldRef", message("ResourceFieldSelector", f(1, "containerName"),
                                     f(2, "resource", presence=KEEP), f(3, "divisor", QUANTITY))),
    f(3, "configMapKeyRef", message("ConfigMapKeySelector", *KEY_SELECTOR_FIELDS)),
    f(4, "secretKeyRef", message("SecretKeySelector", *KEY_SELECTOR_FIELDS)))
ENV_SOURCE_FIELDS = (f(1, "localObjectReference", LOCAL_OBJECT_REFERENCE, inline=True),
                     f(2, "optional", "bool", presence=PTR))
ENV_FROM_SOURCE = message(
    "EnvFromSource",
    f(1, "prefix"), f(2, "configMapRef", message("ConfigMapEnvSource", *ENV_SOURCE_FIELDS)),
    f(3, "secretRef", message("SecretEnvSource", *ENV_SOURCE_FIELDS)))
RESOURCE_REQUIREMENTS = message(
    "ResourceRequirements",
    f(1, "limits", Map(QUANTITY)), f(2, "requests", Map(QUANTITY)),
    f(3, "claims", message("ResourceClaim", f(1, "name", presence=KEEP), f(2, "request")), repeated=True))
CONTAINER = message(
    "Container",
    f(1, "name", presence=KEEP), f(2, "image"), f(3, "command", repeated=True), f(4, "args", repeated=True),
    f(5, "workingDir"),
    f(6, "ports", message("ContainerPort", f(1, "name"), f(2, "hostPort", "int32"),
                          f(3, "containerPort", "int32", presence=KEEP), f(4, "protocol"), f(5, "hostIP")),
      repeated=True),
    f(19, "envFrom", ENV_FROM_SOURCE, repeated=True),
    f(7, "env", message("EnvVar", f(1, "name", presence=KEEP), f(2, "value"), f(3, "valueFrom", ENV_VAR_SOURCE)),
      repeated=True),
    f(8, "resources", RESOURCE_REQUIREMENTS),
    f(9, "volumeMounts", message("VolumeMount", f(1, "name", presence=KEEP), f(2, "readOnly", "bool"),
                                 f(3, "mountPath", presence=KEEP), f(4, "subPath"),
                                 f(5, "mountPropagation", presence=PTR), f(6, "subPathExpr")), repeated=True),
    f(13, "terminationMessagePath"), f(20, "terminationMessagePolicy"), f(14, "imagePullPolicy"),
    f(16, "stdin", "bool"), f(17, "stdinOnce", "bool"), f(18, "tty", "bool"),
    f(24, "restartPolicy", presence=PTR))
KEY_TO_PATH = message("KeyToPath", f(1, "key", presence=KEEP), f(2, "path", presence=KEEP),
                      f(3, "mode", "int32", presence=PTR))
VOLUME_SOURCE = message(
    "VolumeSource",
    f(2, "emptyDir", message("EmptyDirVolumeSource", f(1, "medium"), f(2, "sizeLimit", QUANTITY))),
    f(6, "secret", message("SecretVolumeSource", f(1, "secretName"), f(2, "items", KEY_TO_PATH, repeated=True),
                           f(3, "defaultMode", "int32", presence=PTR), f(4, "optional", "bool", presence=PTR))),
    f(19, "configMap", message("ConfigMapVolumeSource",
                               f(1, "localObjectReference", LOCAL_OBJECT_REFERENCE, inline=True),
                               f(2, "items", KEY_TO_PATH, repeated=True), f(3, "defaultMode", "int32", presence=PTR),
                               f(4, "optional", "bool", presence=PTR))))
TOLERATION = message(
    "Toleration",
    f(1, "key"), f(2, "operator"), f(3, "value"), f(4, "effect"), f(5, "tolerationSeconds", "int64", presence=PTR))
POD_SPEC = message(
    "PodSpec",
    f(1, "volumes", message("Volume", f(1, "name", presence=KEEP), f(2, "volumeSource", VOLUME_SOURCE, inline=True)),
      repeated=True),
    f(20, "initContainers", CONTAINER, repeated=True), f(2, "containers", CONTAINER, repeated=True, presence=NULL),
    f(3, "restartPolicy"), f(4, "terminationGracePeriodSeconds", "int64", presence=PTR),
    f(5, "activeDeadlineSeconds", "int64", presence=PTR), f(6, "dnsPolicy"), f(7, "nodeSelector", Map("string")),
    f(8, "serviceAccountName"), f(9, "serviceAccount"), f(21, "automountServiceAccountToken", "bool", presence=PTR),
    f(10, "nodeName"), f(11, "hostNetwork", "bool"), f(12, "hostPID", "bool"), f(13, "hostIPC", "bool"),
    f(27, "shareProcessNamespace", "bool", presence=PTR),
    f(15, "imagePullSecrets", LOCAL_OBJECT_REFERENCE, repeated=True), f(16, "hostname"), f(17, "subdomain"),
    f(19, "schedulerName"), f(22, "tolerations", TOLERATION, repeated=True), f(24, "priorityClassName"),
    f(25, "priority", "int32", presence=PTR), f(29, "runtimeClassName", presence=PTR),
    f(30, "enableServiceLinks", "bool", presence=PTR), f(31, "preemptionPolicy", presence=PTR),
    f(32, "overhead", Map(QUANTITY)), f(35, "setHostnameAsFQDN", "bool", presence=PTR))
POD_TEMPLATE_SPEC = message("PodTemplateSpec", f(1, "metadata", OBJECT_META), f(2, "spec", POD_SPEC))

# ---- apps/v1

DEPLOYMENT = message(
    "Deployment",
    f(1, "metadata", OBJECT_META),
    f(2, "spec", message(
        "DeploymentSpec",
        f(1, "replicas", "int32", presence=PTR), f(2, "selector", LABEL_SELECTOR, presence=NULL),
        f(3, "template", POD_TEMPLATE_SPEC),
        f(4, "strategy", message("DeploymentStrategy", f(1, "type"), f(2, "rollingUpdate", message(
            "RollingUpdateDeployment", f(1, "maxUnavailable", INT_OR_STRING), f(2, "maxSurge", INT_OR_STRING))))),
        f(5, "minReadySeconds", "int32"), f(6, "revisionHistoryLimit", "int32", presence=PTR),
        f(7, "paused", "bool"), f(9, "progressDeadlineSeconds", "int32", presence=PTR))),
    f(3, "status", message(
        "DeploymentStatus",
        f(1, "observedGeneration", "int64"), f(2, "replicas", "int32"), f(3, "updatedReplicas", "int32"),
        f(7, "readyReplicas", "int32"), f(4, "availableReplicas", "int32"), f(5, "unavailableReplicas", "int32"),
        f(6, "conditions", message("DeploymentCondition", f(1, "type", presence=KEEP), f(2, "status", presence=KEEP),
                                   f(6, "lastUpdateTime", TIME), f(7, "lastTransitionTime", TIME),
                                   f(4, "reason"), f(5, "message")), repeated=True),
        f(8, "collisionCount", "int32", presence=PTR))))

# ---- rbac.authorization.k8s.io/v1

POLICY_RULE = message(
    "PolicyRule",
    f(1, "verbs", repeated=True, presence=NULL), f(2, "apiGroups", repeated=True), f(3, "resources", repeated=True),
    f(4, "resourceNames", repeated=True), f(5, "nonResourceURLs", repeated=True))
ROLE = message("Role", f(1, "metadata", OBJECT_META), f(2, "rules", POLICY_RULE, repeated=True, presence=NULL))
CLUSTER_ROLE = message(
    "ClusterRole",
    f(1, "metadata", OBJECT_META), f(2, "rules", POLICY_RULE, repeated=True, presence=NULL),
    f(3, "aggregationRule", message("AggregationRule",
                                    f(1, "clusterRoleSelectors", LABEL_SELECTOR, repeated=True))))
SUBJECT = message("Subject", f(1, "kind", presence=KEEP), f(2, "apiGroup"), f(3, "name", presence=KEEP),
                  f(4, "namespace"))
ROLE_REF = message("RoleRef", f(1, "apiGroup", presence=KEEP), f(2, "kind", presence=KEEP),
                   f(3, "name", presence=KEEP))
ROLE_BINDING = message("RoleBinding", f(1, "metadata", OBJECT_META), f(2, "subjects", SUBJECT, repeated=True),
                       f(3, "roleRef", ROLE_REF))
CLUSTER_ROLE_BINDING = message("ClusterRoleBinding", *ROLE_BINDING.fields.items())

# ---- authorization.k8s.io/v1

RESOURCE_ATTRIBUTES = message(
    "ResourceAttributes",
    f(1, "namespace"), f(2, "verb"), f(3, "group"), f(4, "version"), f(5, "resource"), f(6, "subresource"),
    f(7, "name"),
    f(8, "fieldSelector", message("FieldSelectorAttributes", f(1, "rawSelector"),
                                  f(2, "requirements", FIELD_SELECTOR_REQUIREMENT, repeated=True))),
    f(9, "labelSelector", message("LabelSelectorAttributes", f(1, "rawSelector"),
                                  f(2, "requirements", LABEL_SELECTOR_REQUIREMENT, repeated=True))))
NON_RESOURCE_ATTRIBUTES = message("NonResourceAttributes", f(1, "path"), f(2, "verb"))
SUBJECT_ACCESS_REVIEW_STATUS = message(
    "SubjectAccessReviewStatus",
    f(1, "allowed", "bool", presence=KEEP), f(4, "denied", "bool"), f(2, "reason"), f(3, "evaluationError"))
SUBJECT_ACCESS_REVIEW_SPEC = message(
    "SubjectAccessReviewSpec",
    f(1, "resourceAttributes", RESOURCE_ATTRIBUTES), f(2, "nonResourceAttributes", NON_RESOURCE_ATTRIBUTES),
    f(3, "user"), f(4, "groups", repeated=True), f(5, "extra", Map(EXTRA_VALUE)), f(6, "uid"))
SUBJECT_ACCESS_REVIEW = message(
    "SubjectAccessReview",
    f(1, "metadata", OBJECT_META), f(2, "spec", SUBJECT_ACCESS_REVIEW_SPEC),
    f(3, "status", SUBJECT_ACCESS_REVIEW_STATUS))
LOCAL_SUBJECT_ACCESS_REVIEW = message("LocalSubjectAccessReview", *SUBJECT_ACCESS_REVIEW.fields.items())
SELF_SUBJECT_ACCESS_REVIEW = message(
    "SelfSubjectAccessReview",
    f(1, "metadata", OBJECT_META),
    f(2, "spec", message("SelfSubjectAccessReviewSpec", f(1, "resourceAttributes", RESOURCE_ATTRIBUTES),
                         f(2, "nonResourceAttributes", NON_RESOURCE_ATTRIBUTES))),
    f(3, "status", SUBJECT_ACCESS_REVIEW_STATUS))
SELF_SUBJECT_RULES_REVIEW = message(
    "SelfSubjectRulesReview",
    f(1, "metadata", OBJECT_META), f(2, "spec", message("SelfSubjectRulesReviewSpec", f(1, "namespace"))),
    f(3, "status", message(
        "SubjectRulesReviewStatus",
        f(1, "resourceRules", message("ResourceRule", f(1, "verbs", repeated=True, presence=NULL),
                                      f(2, "apiGroups", repeated=True), f(3, "resources", repeated=True),
                                      f(4, "resourceNames", repeated=True)), repeated=True, presence=NULL),
        f(2, "nonResourceRules", message("NonResourceRule", f(1, "verbs", repeated=True, presence=NULL),
                                         f(2, "nonResourceURLs", repeated=True)), repeated=True, presence=NULL),
        f(3, "incomplete", "bool", presence=KEEP), f(4, "evaluationError"))))

# ---- authentication.k8s.io/v1

USER_INFO = message("UserInfo", f(1, "username"), f(2, "uid"), f(3, "groups", repeated=True),
                    f(4, "extra", Map(EXTRA_VALUE)))
TOKEN_REVIEW = message(
    "TokenReview",
    f(1, "metadata", OBJECT_META),
    f(2, "spec", message("TokenReviewSpec", f(1, "token"), f(2, "audiences", repeated=True))),
    f(3, "status", message("TokenReviewStatus", f(1, "authenticated", "bool"), f(2, "user", USER_INFO),
                           f(4, "audiences", repeated=True), f(3, "error"))))
TOKEN_REQUEST = message(
    "TokenRequest",
    f(1, "metadata", OBJECT_META),
    f(2, "spec", message("TokenRequestSpec", f(1, "audiences", repeated=True, presence=NULL),
                         f(4, "expirationSeconds", "int64", presence=NULL),
                         f(3, "boundObjectRef", message("BoundObjectReference", f(1, "kind"), f(2, "apiVersion"),
                                                        f(3, "name"), f(4, "uid")), presence=NULL))),
    f(3, "status", message("TokenRequestStatus", f(1, "token", presence=KEEP),
                           f(2, "expirationTimestamp", TIME, presence=KEEP))))
SELF_SUBJECT_REVIEW = message(
    "SelfSubjectReview",
    f(1, "metadata", OBJECT_META),
    f(2, "status", message("SelfSubjectReviewStatus", f(1, "userInfo", USER_INFO))))

#: (apiVersion, kind) -> message. ``None`` as apiVersion: any version (option kinds client-go may
#: stamp with the target group's version).
KINDS: dict[tuple[str | None, str], Message] = {
    ("v1", "Namespace"): NAMESPACE,
    ("v1", "ConfigMap"): CONFIG_MAP,
    ("v1", "Secret"): SECRET,
    ("v1", "ServiceAccount"): SERVICE_ACCOUNT,
    ("apps/v1", "Deployment"): DEPLOYMENT,
    ("rbac.authorization.k8s.io/v1", "Role"): ROLE,
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): CLUSTER_ROLE,
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): ROLE_BINDING,
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): CLUSTER_ROLE_BINDING,
    ("authorization.k8s.io/v1", "SelfSubjectAccessReview"): SELF_SUBJECT_ACCESS_REVIEW,
    ("authorization.k8s.io/v1", "SelfSubjectRulesReview"): SELF_SUBJECT_RULES_REVIEW,
    ("authorization.k8s.io/v1", "SubjectAccessReview"): SUBJECT_ACCESS_REVIEW,
    ("authorization.k8s.io/v1", "LocalSubjectAccessReview"): LOCAL_SUBJECT_ACCESS_REVIEW,
    ("authentication.k8s.io/v1", "TokenReview"): TOKEN_REVIEW,
    ("authentication.k8s.io/v1", "TokenRequest"): TOKEN_REQUEST,
    ("authentication.k8s.io/v1", "SelfSubjectReview"): SELF_SUBJECT_REVIEW,
    (None, "DeleteOptions"): DELETE_OPTIONS,
}

_TYPE_META = message("TypeMeta", f(1, "apiVersion"), f(2, "kind"))
_UNKNOWN = message("Unknown", f(1, "typeMeta", _TYPE_META), f(2, "raw", "bytes"), f(3, "contentEncoding"),
                   f(4, "contentType"))


# --------------------------------------------------------------------------- decoding

def decode(data: bytes) -> dict:
    """The JSON form of a ``k8s\\0``-enveloped protobuf object, with apiVersion/kind from the envelope.

    Raises ``ProtobufError`` for malformed input and ``UnknownKind`` for kinds without a field map.
    """
    if not data.startswith(MAGIC):
        raise ProtobufError("the body does not start with the Kubernetes protobuf envelope prefix k8s\\x00")
    envelope = _raw_fields(data[len(MAGIC):], _UNKNOWN, "envelope")
    type_meta = _decode_message(b"".join(envelope.get(1, [])), _TYPE_META, "envelope.typeMeta")
    api_version, kind = type_meta.get("apiVersion", ""), type_meta.get("kind", "")
    encoding = _text(envelope[3][-1], "envelope.contentEncoding") if 3 in envelope else ""
    if encoding:
        raise ProtobufError(f'content encoding "{encoding}" is not supported')
    if not kind:
        raise ProtobufError("the envelope does not name the object's kind")
    schema = KINDS.get((api_version, kind)) or KINDS.get((None, kind))
    if schema is None:
        raise UnknownKind(api_version, kind)
    raw = envelope[2][-1] if 2 in envelope else b""
    body = {"apiVersion": api_version, "kind": kind} if api_version else {"kind": kind}
    body.update(_decode_message(raw, schema, ""))
    return body


def _raw_fields(data: bytes, schema: Message, path: str) -> dict[int, list]:
    """Group a message's wire values by field number, checking the wire types of known fields."""
    grouped: dict[int, list] = {}
    try:
        for number, wire, value in iter_fields(data):
            spec = schema.fields.get(number)
            if spec is None:
                continue  # unknown fields are skipped, as protobuf does
            expected = _SCALAR_WIRE.get(spec.type, LEN) if isinstance(spec.type, str) else LEN
            if wire != expected:
                raise ProtobufError(f"field {spec.name} has wire type {wire} (want {expected})")
            grouped.setdefault(number, []).append(value)
    except ProtobufError as exc:
        raise ProtobufError(f"{path}: {exc}" if path else str(exc)) from None
    return grouped


def _decode_message(data: bytes, schema: Message, path: str) -> dict:
    grouped = _raw_fields(data, schema, path)
    out: dict = {}
    for number, spec in schema.fields.items():
        values = grouped.get(number)
        where = _join(path, spec.name)
        if values is None:
            if spec.presence == NULL or (spec.presence == KEEP and spec.type not in _ZERO):
                out[spec.name] = None
            elif spec.presence == KEEP:
                out[spec.name] = _ZERO[spec.type]
            continue
        if isinstance(spec.type, Map):
            out[spec.name] = {k: v for k, v in (_map_entry(raw, spec.type, where) for raw in values)}
        elif spec.repeated:
            out[spec.name] = _repeated(values, spec.type, where)
        elif isinstance(spec.type, Message):
            # a message field seen more than once merges, which on the wire is concatenation
            value = _decode_message(b"".join(values), spec.type, where)
            if spec.inline:
                out.update(value)
            else:
                out[spec.name] = value
        elif spec.type in _SPECIAL:
            out[spec.name] = _special(b"".join(values), spec.type, where)
        else:
            value = _scalar(values[-1], spec.type, where)
            if spec.presence != OMIT or value != _ZERO[spec.type]:
                out[spec.name] = value
    return out


def _repeated(values: list, type_: object, path: str) -> list:
    if isinstance(type_, Message):
        return [_decode_message(raw, type_, f"{path}[{i}]") for i, raw in enumerate(values)]
    if type_ in _SPECIAL:
        return [_special(raw, type_, f"{path}[{i}]") for i, raw in enumerate(values)]
    return [_scalar(raw, type_, f"{path}[{i}]") for i, raw in enumerate(values)]  # proto2: never packed


def _map_entry(data: bytes, map_type: Map, path: str) -> tuple[str, object]:
    key, value, value_wire = b"", None, None
    for number, wire, raw in _checked(data, path, {1: LEN, 2: None}):
        if number == 1:
            key = raw
        else:
            value, value_wire = raw, wire
    name = _text(key, path)
    where = f"{path}[{name}]"
    vtype = map_type.value
    if isinstance(vtype, Message) or vtype in _SPECIAL:
        if value is not None and value_wire != LEN:
            raise ProtobufError(f"{where}: map value has wire type {value_wire} (want {LEN})")
        raw = value or b""
        return name, _decode_message(raw, vtype, where) if isinstance(vtype, Message) else _special(raw, vtype, where)
    if value is None:
        return name, _ZERO[vtype]
    if value_wire != _SCALAR_WIRE[vtype]:
        raise ProtobufError(f"{where}: map value has wire type {value_wire} (want {_SCALAR_WIRE[vtype]})")
    return name, _scalar(value, vtype, where)


def _scalar(value, type_: str, path: str):
    if type_ == "string":
        return _text(value, path)
    if type_ == "bytes":
        return base64.b64encode(value).decode("ascii")
    if type_ == "bool":
        return value != 0
    if type_ == "int32":
        return _signed(value, 32)
    if type_ == "int64":
        return _signed(value)
    raise AssertionError(type_)


def _text(value: bytes, path: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtobufError(f"{path or 'value'}: string is not valid UTF-8") from None


def _special(data: bytes, kind: str, path: str):
    if kind == TIME:
        seconds = nanos = 0
        for number, wire, value in _checked(data, path, {1: VARINT, 2: VARINT}):
            if number == 1:
                seconds = _signed(value)
            else:
                nanos = _signed(value, 32)
        if seconds == 0 and nanos == 0:
            return None
        try:
            moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise ProtobufError(f"{path}: timestamp {seconds} is out of range") from None
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    if kind == QUANTITY:
        text = ""
        for _, _, value in _checked(data, path, {1: LEN}):
            text = _text(value, path)
        return text
    if kind == INT_OR_STRING:
        is_string, number, text = 0, 0, ""
        for field_number, _, value in _checked(data, path, {1: VARINT, 2: VARINT, 3: LEN}):
            if field_number == 1:
                is_string = value
            elif field_number == 2:
                number = _signed(value, 32)
            else:
                text = _text(value, path)
        return text if is_string == 1 else number
    if kind == RAW_JSON:
        raw = b""
        for _, _, value in _checked(data, path, {1: LEN}):
            raw = value
        if not raw:
            return {}
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ProtobufError(f"{path}: embedded JSON is invalid: {exc}") from None
    if kind == EXTRA_VALUE:
        return [_text(value, path) for _, _, value in _checked(data, path, {1: LEN})]
    raise AssertionError(kind)


def _checked(data: bytes, path: str, wires: dict[int, int | None]):
    """Fields of a small fixed message; numbers outside ``wires`` are skipped, ``None`` accepts any wire type."""
    try:
        for number, wire, value in iter_fields(data):
            if number not in wires:
                continue
            expected = wires[number]
            if expected is not None and wire != expected:
                raise ProtobufError(f"field {number} has wire type {wire} (want {expected})")
            yield number, wire, value
    except ProtobufError as exc:
        raise ProtobufError(f"{path}: {exc}") from None


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


__all__ = ["MAGIC", "ProtobufError", "UnknownKind", "KINDS", "decode", "iter_fields"]
