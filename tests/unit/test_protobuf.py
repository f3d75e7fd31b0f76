"""The protobuf body decoder: captured kubectl 1.32 bodies against kubectl 1.31's JSON, hand-built
messages for fields kubectl does not set, and malformed input."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from kcp_virtual.framework import errors
from server.endpoints import protobuf
from server.endpoints.rest import _decode

FIXTURES = Path(__file__).parent / "fixtures" / "protobuf"
CASES = sorted(p.stem for p in FIXTURES.glob("*.json"))


def load(case: str) -> dict:
    return json.loads((FIXTURES / f"{case}.json").read_text())


# --------------------------------------------------------------------------- a tiny encoder for test messages

def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def tag(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def ln(number: int, payload: bytes | str) -> bytes:
    payload = payload.encode() if isinstance(payload, str) else payload
    return tag(number, 2) + varint(len(payload)) + payload


def vi(number: int, value: int) -> bytes:
    return tag(number, 0) + varint(value)


def msg(*parts: bytes) -> bytes:
    return b"".join(parts)


def entry(number: int, key: str, value: bytes | str) -> bytes:
    return ln(number, ln(1, key) + ln(2, value))


def envelope(api_version: str, kind: str, raw: bytes) -> bytes:
    return protobuf.MAGIC + ln(1, ln(1, api_version) + ln(2, kind)) + ln(2, raw)


# --------------------------------------------------------------------------- captured bodies

def test_fixtures_cover_every_kubectl_command_in_the_brief():
    kinds = {load(case)["expected"]["kind"] for case in CASES}
    assert kinds >= {"Namespace", "ConfigMap", "Secret", "ServiceAccount", "Role", "RoleBinding", "ClusterRole",
                     "ClusterRoleBinding", "Deployment", "SelfSubjectAccessReview", "SelfSubjectRulesReview",
                     "SelfSubjectReview", "TokenRequest"}


@pytest.mark.parametrize("case", CASES)
def test_captured_kubectl_132_body_decodes_to_kubectl_131_json(case):
    fixture = load(case)
    assert fixture["content_type"] == "application/vnd.kubernetes.protobuf"
    assert protobuf.decode(bytes.fromhex(fixture["protobuf_hex"])) == fixture["expected"]


def test_secret_bytes_become_base64_and_binary_configmap_data_too():
    secret = protobuf.decode(bytes.fromhex(load("secret_typed")["protobuf_hex"]))
    assert base64.b64decode(secret["data"]["bin.dat"]) == bytes(range(256))
    configmap = protobuf.decode(bytes.fromhex(load("configmap_files")["protobuf_hex"]))
    assert configmap["data"] == {"text.txt": "hello\nworld\n"}
    assert base64.b64decode(configmap["binaryData"]["bin.dat"]) == bytes(range(256))


def test_rest_decode_accepts_protobuf():
    body = _decode(bytes.fromhex(load("namespace")["protobuf_hex"]), "protobuf").value
    assert body["metadata"]["name"] == "x" and body["kind"] == "Namespace"


# --------------------------------------------------------------------------- fields kubectl does not set

TIME_2024 = msg(vi(1, 1704067200), vi(2, 5))  # 2024-01-01T00:00:00Z, nanos are dropped as in metav1.Time JSON


def test_object_meta_maps_references_finalizers_and_times():
    meta = msg(
        ln(1, "cm"), ln(3, "ns"), ln(5, "uid-1"), ln(6, "42"), vi(7, 3), ln(8, TIME_2024), ln(9, TIME_2024),
        vi(10, 0), entry(11, "app", "web"), entry(11, "tier", "front"), entry(12, "note", ""),
        ln(13, msg(ln(5, "apps/v1"), ln(1, "Deployment"), ln(3, "d"), ln(4, "u"), vi(6, 1), vi(7, 0))),
        ln(14, "example.com/f"), ln(14, "other"),
        ln(17, msg(ln(1, "kubectl"), ln(2, "Apply"), ln(3, "v1"), ln(4, TIME_2024), ln(6, "FieldsV1"),
                   ln(7, ln(1, b'{"f:data":{}}')))))
    body = protobuf.decode(envelope("v1", "ConfigMap", msg(ln(1, meta), vi(4, 0))))
    assert body["immutable"] is False  # a pointer that is present keeps its zero value
    assert body["metadata"] == {
        "name": "cm", "namespace": "ns", "uid": "uid-1", "resourceVersion": "42", "generation": 3,
        "creationTimestamp": "2024-01-01T00:00:00Z", "deletionTimestamp": "2024-01-01T00:00:00Z",
        "deletionGracePeriodSeconds": 0, "labels": {"app": "web", "tier": "front"}, "annotations": {"note": ""},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "d", "uid": "u",
                             "controller": True, "blockOwnerDeletion": False}],
        "finalizers": ["example.com/f", "other"],
        "managedFields": [{"manager": "kubectl", "operation": "Apply", "apiVersion": "v1",
                           "time": "2024-01-01T00:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {}}}]}


def test_namespace_finalizers_secret_string_data_and_service_account():
    ns = protobuf.decode(envelope("v1", "Namespace", msg(ln(1, ln(1, "n")), ln(2, ln(1, "kubernetes")),
                                                         ln(3, ln(1, "Active")))))
    assert ns["spec"] == {"finalizers": ["kubernetes"]} and ns["status"] == {"phase": "Active"}
    secret = protobuf.decode(envelope("v1", "Secret", msg(ln(1, ln(1, "s")), entry(4, "user", "admin"),
                                                          vi(5, 1), ln(3, "kubernetes.io/basic-auth"))))
    assert secret["stringData"] == {"user": "admin"} and secret["immutable"] is True
    assert secret["type"] == "kubernetes.io/basic-auth"
    sa = protobuf.decode(envelope("v1", "ServiceAccount", msg(
        ln(1, ln(1, "sa")), ln(2, msg(ln(1, "Secret"), ln(3, "tok"))), ln(3, ln(1, "pull")), vi(4, 0))))
    assert sa["secrets"] == [{"kind": "Secret", "name": "tok"}]
    assert sa["imagePullSecrets"] == [{"name": "pull"}] and sa["automountServiceAccountToken"] is False


def test_deployment_strategy_selector_expressions_and_pod_spec():
    container = msg(
        ln(1, "app"), ln(2, "img:1"), ln(4, "--flag"), ln(5, "/work"),
        ln(6, msg(ln(1, "http"), vi(3, 8080), ln(4, "TCP"))),
        ln(7, msg(ln(1, "PLAIN"), ln(2, "v"))),
        ln(7, msg(ln(1, "FROM_CM"), ln(3, ln(3, msg(ln(1, ln(1, "cfg")), ln(2, "key"), vi(3, 1)))))),
        ln(7, msg(ln(1, "POD"), ln(3, ln(1, msg(ln(1, "v1"), ln(2, "metadata.name")))))),
        ln(19, msg(ln(1, "P_"), ln(3, msg(ln(1, ln(1, "sec")))))),
        ln(8, msg(entry(1, "cpu", ln(1, "500m")), entry(2, "memory", ln(1, "64Mi")))),
        ln(9, msg(ln(1, "data"), ln(3, "/data"), vi(2, 1))),
        ln(14, "IfNotPresent"),
        ln(15, ln(2, b"\x01")),  # securityContext: not mapped, skipped like any unknown field
    )
    pod_spec = msg(
        ln(1, msg(ln(1, "data"), ln(2, ln(19, msg(ln(1, ln(1, "cfg")), ln(2, msg(ln(1, "k"), ln(2, "p"))),
                                                 vi(3, 420)))))),
        ln(1, msg(ln(1, "scratch"), ln(2, ln(2, msg(ln(1, "Memory"), ln(2, ln(1, "1Gi"))))))),
        ln(2, container), ln(3, "Always"), vi(4, 30), entry(7, "disk", "ssd"), ln(8, "runner"),
        ln(22, msg(ln(1, "k"), ln(2, "Exists"), ln(4, "NoExecute"), vi(5, 60))), vi(21, 0))
    spec = msg(
        vi(1, 0),
        ln(2, msg(entry(1, "app", "a"), ln(2, msg(ln(1, "tier"), ln(2, "In"), ln(3, "x"), ln(3, "y"))))),
        ln(3, msg(ln(1, entry(11, "app", "a")), ln(2, pod_spec))),
        ln(4, msg(ln(1, "RollingUpdate"),
                  ln(2, msg(ln(1, msg(vi(1, 0), vi(2, 1))), ln(2, msg(vi(1, 1), ln(3, "25%"))))))),
        vi(6, 5), vi(7, 1), vi(9, 600))
    body = protobuf.decode(envelope("apps/v1", "Deployment", msg(ln(1, ln(1, "d")), ln(2, spec))))
    got = body["spec"]
    assert got["replicas"] == 0 and got["revisionHistoryLimit"] == 5 and got["paused"] is True
    assert got["progressDeadlineSeconds"] == 600
    assert got["selector"] == {"matchLabels": {"app": "a"},
                               "matchExpressions": [{"key": "tier", "operator": "In", "values": ["x", "y"]}]}
    assert got["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": "25%"}}
    pod = got["template"]["spec"]
    assert got["template"]["metadata"] == {"labels": {"app": "a"}}
    assert pod["volumes"] == [
        {"name": "data", "configMap": {"name": "cfg", "items": [{"key": "k", "path": "p"}], "defaultMode": 420}},
        {"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}]
    assert pod["restartPolicy"] == "Always" and pod["terminationGracePeriodSeconds"] == 30
    assert pod["nodeSelector"] == {"disk": "ssd"} and pod["serviceAccountName"] == "runner"
    assert pod["automountServiceAccountToken"] is False
    assert pod["tolerations"] == [{"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}]
    assert pod["containers"] == [{
        "name": "app", "image": "img:1", "args": ["--flag"], "workingDir": "/work",
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
        "envFrom": [{"prefix": "P_", "secretRef": {"name": "sec"}}],
        "env": [{"name": "PLAIN", "value": "v"},
                {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "key", "optional": True}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}],
        "resources": {"limits": {"cpu": "500m"}, "requests": {"memory": "64Mi"}},
        "volumeMounts": [{"name": "data", "readOnly": True, "mountPath": "/data"}],
        "imagePullPolicy": "IfNotPresent"}]


def test_review_and_token_kinds():
    sar = protobuf.decode(envelope("authorization.k8s.io/v1", "SubjectAccessReview", msg(ln(2, msg(
        ln(1, msg(ln(2, "list"), ln(5, "pods"), ln(9, msg(ln(2, msg(ln(1, "app"), ln(2, "Exists"))))))),
        ln(3, "alice"), ln(4, "devs"), ln(5, ln(1, "scopes") + ln(2, ln(1, "a") + ln(1, "b"))), ln(6, "u1"))))))
    assert sar["spec"] == {"resourceAttributes": {"verb": "list", "resource": "pods", "labelSelector": {
        "requirements": [{"key": "app", "operator": "Exists"}]}}, "user": "alice", "groups": ["devs"],
        "extra": {"scopes": ["a", "b"]}, "uid": "u1"}
    local = protobuf.decode(envelope("authorization.k8s.io/v1", "LocalSubjectAccessReview",
                                     msg(ln(2, msg(ln(1, msg(ln(1, "ns"), ln(2, "get"))), ln(3, "bob"))))))
    assert local["spec"] == {"resourceAttributes": {"namespace": "ns", "verb": "get"}, "user": "bob"}
    review = protobuf.decode(envelope("authentication.k8s.io/v1", "TokenReview",
                                      msg(ln(2, msg(ln(1, "tok"), ln(2, "api"))))))
    assert review["spec"] == {"token": "tok", "audiences": ["api"]}


def test_delete_options_are_accepted_under_any_group_version():
    body = protobuf.decode(envelope("apps/v1", "DeleteOptions", msg(
        vi(1, 0), ln(2, ln(1, "uid-1")), ln(4, "Foreground"), ln(5, "All"))))
    assert body == {"apiVersion": "apps/v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                    "preconditions": {"uid": "uid-1"}, "propagationPolicy": "Foreground", "dryRun": ["All"]}


def test_protobuf_semantics_unknown_fields_negative_ints_and_merged_messages():
    unknown = tag(99, 5) + b"\x00\x00\x80\x3f" + tag(98, 1) + b"\x00" * 8 + vi(97, 5) + ln(96, "x")
    raw = msg(unknown, ln(1, ln(1, "a")), ln(1, entry(11, "k", "v")), ln(2, vi(1, -1)))
    body = protobuf.decode(envelope("apps/v1", "Deployment", raw))
    assert body["metadata"] == {"name": "a", "labels": {"k": "v"}}  # two metadata chunks merge
    assert body["spec"]["replicas"] == -1  # sign-extended 10-byte varint, left for validation to reject
    assert "x" not in json.dumps(body)


def test_empty_raw_object_and_missing_api_version():
    assert protobuf.decode(protobuf.MAGIC + ln(1, ln(1, "v1") + ln(2, "ConfigMap"))) == {
        "apiVersion": "v1", "kind": "ConfigMap"}


# --------------------------------------------------------------------------- malformed input

@pytest.mark.parametrize("body, message", [
    (b"\x0a\x02{}", "envelope prefix"),
    (protobuf.MAGIC + b"\x0a", "truncated varint"),
    (protobuf.MAGIC + b"\x0a\x05ab", "runs past the end"),
    (protobuf.MAGIC + b"\x0b", "wire type 3"),
    (protobuf.MAGIC + b"\x08" + b"\xff" * 11, "longer than 10 bytes"),
    (protobuf.MAGIC + b"\x00\x00", "field number 0"),
    (protobuf.MAGIC + ln(1, ln(1, "v1")), "does not name the object's kind"),
    (protobuf.MAGIC + ln(1, ln(1, "v1") + ln(2, "ConfigMap")) + ln(3, "gzip"), "content encoding"),
    (envelope("v1", "ConfigMap", ln(1, vi(1, 5))), "metadata: field name has wire type 0"),
    (envelope("v1", "ConfigMap", ln(1, ln(1, b"\xff\xfe"))), "metadata.name: string is not valid UTF-8"),
    (envelope("v1", "ConfigMap", entry(2, "k", b"\xc3")), "data[k]: string is not valid UTF-8"),
    (envelope("v1", "ConfigMap", ln(2, ln(1, "k") + vi(2, 1))), "data[k]: map value has wire type 0"),
    (envelope("v1", "ConfigMap", ln(1, ln(17, ln(7, ln(1, b"{nope"))))), "fieldsV1: embedded JSON is invalid"),
    (envelope("v1", "ConfigMap", ln(1, ln(8, vi(1, 1 << 60)))), "out of range"),
    (envelope("apps/v1", "Deployment", ln(2, vi(1, 1 << 40))), "does not fit in int32"),
])
def test_malformed_bodies_are_protobuf_errors(body, message):
    with pytest.raises(protobuf.ProtobufError, match=message.replace("[", r"\[").replace("]", r"\]")):
        protobuf.decode(body)


def test_unknown_kind_names_the_kind():
    with pytest.raises(protobuf.UnknownKind) as info:
        protobuf.decode(envelope("batch/v1", "Job", b""))
    assert (info.value.api_version, info.value.kind) == ("batch/v1", "Job")


def test_rest_decode_maps_errors_to_400_and_415():
    with pytest.raises(errors.BadRequest) as bad:
        _decode(protobuf.MAGIC + b"\x0a\x05ab", "protobuf")
    assert bad.value.code == 400 and "protobuf request body could not be decoded" in bad.value.message
    with pytest.raises(errors.UnsupportedMediaType) as unsupported:
        _decode(envelope("batch/v1", "Job", b""), "protobuf")
    assert unsupported.value.code == 415 and '"Job"' in unsupported.value.message
    assert "batch/v1" in unsupported.value.message


@settings(max_examples=300, deadline=None)
@given(case=st.sampled_from(CASES), data=st.data())
def test_mutated_bodies_fail_only_with_decoder_errors(case, data):
    body = bytearray(bytes.fromhex(load(case)["protobuf_hex"]))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, len(body) - 1)) if body else 0
        if op == "flip" and body:
            body[at] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del body[at:]
        else:
            body[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    try:
        result = protobuf.decode(bytes(body))
    except (protobuf.ProtobufError, protobuf.UnknownKind):
        return
    json.dumps(result)  # whatever decodes is plain JSON


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_fail_only_with_decoder_errors(raw):
    try:
        protobuf.decode(protobuf.MAGIC + raw)
    except (protobuf.ProtobufError, protobuf.UnknownKind):
        pass
