"""What a new user hits first (issue #18): hostile bodies, mistyped objects, kube's answers to common mistakes."""

from __future__ import annotations

import json
import threading

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from kcp_virtual.framework.decoding import MAX_DEPTH
from tests.e2e.test_apibinding import wait_for
from tests.e2e.test_bad_input import CM, Raw, assert_status
from tests.e2e.test_crd_kubectl import Cluster, widget
from tests.unit.test_decoding import alias_bomb


@pytest.fixture(scope="module")
def shard(kcp_shard_module):
    return kcp_shard_module


@pytest.fixture(scope="module")
def raw(shard):
    return Raw(shard)


def unique(prefix: str) -> str:
    import uuid

    return f"{prefix}-{uuid.uuid4().hex[:6]}"


# ---------------------------------------------------------------------------------------------- 1: hostile bodies

def test_yaml_alias_bomb_is_refused_while_the_shard_keeps_answering(raw):
    results = {}

    def bomb():
        results["bomb"] = raw.request("POST", CM, alias_bomb(), headers={"Content-Type": "application/yaml"})

    thread = threading.Thread(target=bomb)
    thread.start()
    results["readyz"] = raw.request("GET", "/readyz")
    thread.join(60)
    status, body, _ = results["bomb"]
    assert status == 400
    assert_status(body, 400, "BadRequest")
    assert body["message"] == "error converting YAML to JSON: yaml: document contains excessive aliasing"
    assert results["readyz"][0] == 200
    assert raw.request("GET", CM + "/bomb")[0] == 404


@pytest.mark.parametrize("content_type, body", [
    ("application/json", b'{"metadata":{"name":"deep"},"x":' + b"[" * 1000 + b"]" * 1000 + b"}"),
    ("application/yaml", b"metadata: {name: deep}\nx: " + b"[" * 1000 + b"]" * 1000),
    ("application/json", b'{"metadata":{"name":"deep"},"x":' + b"[" * 200_000 + b"]" * 200_000 + b"}"),
])
def test_deeply_nested_bodies_are_400_not_500(raw, content_type, body):
    status, answer, _ = raw.request("POST", CM, body, headers={"Content-Type": content_type})
    assert status == 400, answer
    assert "depth" in answer["message"]
    assert raw.request("GET", "/readyz")[0] == 200


def test_a_deep_object_round_trips_through_every_path(shard):
    cluster = Cluster(shard).with_crd()
    nested: object = "leaf"
    for _ in range(100 - 3):  # nesting 100 deep: the object, spec and spec.extra hold the rest
        nested = {"n": nested}
    obj = widget("deep", size=1, extra={"n": nested})
    cluster.apply(obj)
    cluster.apply(obj, "--server-side", "--force-conflicts")
    cluster.kubectl("patch", "widget", "deep", "--type=merge", "-p", json.dumps({"spec": {"size": 2}}))
    assert cluster.get("widget", "deep")["spec"]["extra"] == {"n": nested}
    assert cluster.get("widgets")["items"][0]["metadata"]["name"] == "deep"
    assert "deep" in cluster.kubectl("get", "widgets").stdout  # the Table
    watched = cluster.kubectl("get", "widgets", "-w", "--request-timeout=2s", "-o", "json", check=False)
    assert '"deep"' in watched.stdout


def test_json_patch_cannot_nest_an_object_past_the_bound(shard):
    cluster = Cluster(shard).with_crd()
    cluster.apply(widget("grow", size=1, extra={}))
    path = "/spec/extra"
    for _ in range(MAX_DEPTH // 64 + 1):
        nested: object = {}
        for _ in range(63):
            nested = {"n": nested}
        done = cluster.kubectl("patch", "widget", "grow", "--type=json", "-p",
                               json.dumps([{"op": "add", "path": path + "/n", "value": nested}]), check=False)
        if done.returncode:
            break
        path += "/n" * 64
    assert done.returncode and "the patched object: exceeded max depth of 128" in done.stderr, done.stderr
    assert cluster.get("widgets")["items"][0]["metadata"]["name"] == "grow"


def test_big_yaml_body_is_decoded_and_stored(raw):
    name = unique("big")
    lines = ["apiVersion: v1", "kind: ConfigMap", f"metadata: {{name: {name}}}", "data:"]
    lines += [f"  key{i}: value-{i}" for i in range(20_000)]
    status, body, _ = raw.request("POST", CM, "\n".join(lines).encode(), headers={"Content-Type": "application/yaml"})
    assert status == 201, body
    assert len(body["data"]) == 20_000


def test_duplicate_json_keys_strict_is_400_warn_warns(raw):
    body = b'{"metadata":{"name":"u3","name":"u4"}}'
    status, answer, _ = raw.request("POST", CM + "?fieldValidation=Strict", body)
    assert status == 400
    assert answer["message"] == 'strict decoding error: duplicate field "metadata.name"'
    status, answer, response = raw.request("POST", CM + "?fieldValidation=Warn", body)
    assert status == 201 and answer["metadata"]["name"] == "u4"  # the last one wins, as in Go
    assert response.headers["Warning"] == '299 - "duplicate field \\"metadata.name\\""'
    status, _, response = raw.request("POST", CM + "?fieldValidation=Ignore",
                                      b'{"metadata":{"name":"u5","name":"u5"}}')
    assert status == 201 and "Warning" not in response.headers


def test_malformed_merge_patch_says_patch(raw):
    name = unique("mp")
    assert raw.request("POST", CM, {"metadata": {"name": name}})[0] == 201
    status, body, _ = raw.request("PATCH", f"{CM}/{name}", b"{bad",
                                  headers={"Content-Type": "application/merge-patch+json"})
    assert status == 400
    assert body["message"].startswith("error decoding patch: ")


# ---------------------------------------------------------------------------------------------- 2: typed fields

CONFIGMAP_YAML = """apiVersion: v1
kind: ConfigMap
metadata:
  name: {name}
data:
  port: 8080
"""
TYPE_ERROR = ('ConfigMap in version "v1" cannot be handled as a ConfigMap: json: cannot unmarshal number into Go '
              "struct field ConfigMap.data of type string")


@pytest.mark.parametrize("command", [("apply",), ("create",), ("apply", "--server-side"), ("replace",)])
def test_kubectl_writes_of_mistyped_configmap_are_400(shard, command):
    name = unique("ports")
    if command == ("replace",):
        shard.kubectl("create", "configmap", name, "--from-literal=port=8080")
    done = shard.kubectl(*command, "-f", "-", input=CONFIGMAP_YAML.format(name=name), check=False)
    assert done.returncode != 0
    assert "Error from server (BadRequest)" in done.stderr and TYPE_ERROR in done.stderr, done.stderr


def test_every_write_path_refuses_the_mistyped_value_and_lists_stay_readable(shard, raw):
    name = unique("typed")
    status, body, _ = raw.request("POST", CM, {"metadata": {"name": name}, "data": {"a": 1}})
    assert status == 400 and body["message"] == TYPE_ERROR, body
    assert raw.request("POST", CM, {"metadata": {"name": name}, "data": {"a": "1"}})[0] == 201
    for method, content_type, patch in (
            ("PATCH", "application/merge-patch+json", {"data": {"a": 1}}),
            ("PATCH", "application/strategic-merge-patch+json", {"data": {"a": 1}}),
            ("PATCH", "application/json-patch+json", [{"op": "replace", "path": "/data/a", "value": 1}]),
            ("PATCH", "application/apply-patch+yaml", {"apiVersion": "v1", "kind": "ConfigMap",
                                                       "metadata": {"name": name}, "data": {"a": 1}}),
            ("PUT", "application/json", {"metadata": {"name": name}, "data": {"a": 1}})):
        query = "?fieldManager=test&force=true" if content_type.startswith("application/apply") else ""
        status, body, _ = raw.request(method, f"{CM}/{name}{query}", patch, headers={"Content-Type": content_type})
        assert status == 400 and body["message"] == TYPE_ERROR, (content_type, body)
    core = client.CoreV1Api(shard.api_client())
    listed = core.list_namespaced_config_map("default")  # the typed client reads every item
    assert any(cm.metadata.name == name and cm.data == {"a": "1"} for cm in listed.items)
    assert "Data\n====\na:" in shard.kubectl("describe", "configmap", name).stdout


def test_typed_errors_on_other_kinds(shard):
    body = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": unique("web")},
            "spec": {"replicas": "three", "selector": {"matchLabels": {"a": "b"}},
                     "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c"}]}}}}
    status, answer, _ = Raw(shard).request("POST", "/clusters/root/apis/apps/v1/namespaces/default/deployments",
                                           body)
    assert status == 400
    assert "cannot unmarshal string into Go struct field DeploymentSpec.spec.replicas" in answer["message"]
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
              "spec": {"resourceAttributes": {"verb": ["get"]}}}
    status, answer, _ = Raw(shard).request("POST", "/clusters/root/apis/authorization.k8s.io/v1/"
                                           "selfsubjectaccessreviews", review)
    assert status == 400 and "cannot unmarshal array into Go struct field ResourceAttributes" in answer["message"]


# ---------------------------------------------------------------------------------------------- 3: data keys and size

SECRETS = "/clusters/root/api/v1/namespaces/default/secrets"


@pytest.mark.parametrize("path, body, field", [
    (CM, {"data": {"bad key!": "x"}}, "data[bad key!]"),
    (CM, {"binaryData": {"..hidden": "eA=="}}, "binaryData[..hidden]"),
    (SECRETS, {"stringData": {"bad key!": "x"}}, "data[bad key!]"),
    (SECRETS, {"data": {"a/b": "eA=="}}, "data[a/b]"),
])
def test_data_keys_must_be_file_names(raw, path, body, field):
    status, answer, _ = raw.request("POST", path, {"metadata": {"name": unique("keys")}, **body})
    assert status == 422, answer
    cause = answer["details"]["causes"][0]
    assert cause["field"] == field and cause["reason"] == "FieldValueInvalid"
    assert "a valid config key must consist of alphanumeric characters, '-', '_' or '.'" in cause["message"] \
        or "must not start with '..'" in cause["message"]


def test_configmap_and_secret_data_is_at_most_1_mib(raw):
    name = unique("big")
    two_mib = "x" * (2 * 1024 * 1024)
    status, answer, _ = raw.request("POST", CM, {"metadata": {"name": name}, "data": {"a": two_mib}})
    assert status == 422
    assert answer["message"] == f'ConfigMap "{name}" is invalid: []: Too long: may not be more than 1048576 bytes'
    status, answer, _ = raw.request("POST", SECRETS, {"metadata": {"name": name}, "stringData": {"a": two_mib}})
    assert status == 422
    assert answer["message"] == f'Secret "{name}" is invalid: data: Too long: may not be more than 1048576 bytes'
    exactly = {"a": "x" * (1024 * 1024 - 1), "b": "y"}
    assert raw.request("POST", CM, {"metadata": {"name": name}, "data": exactly})[0] == 201


# ---------------------------------------------------------------------------------------------- 5: kube's answers

def test_put_and_patch_on_a_collection_are_405(raw):
    for method, content_type in (("PUT", "application/json"), ("PATCH", "application/merge-patch+json")):
        status, body, _ = raw.request(method, CM, {"metadata": {"name": "x"}}, headers={"Content-Type": content_type})
        assert status == 405, body
        assert_status(body, 405, "MethodNotAllowed")
        assert body["message"] == "the server does not allow this method on the requested resource"


def test_writes_through_the_wildcard_cluster_say_what_to_do(raw):
    status, body, _ = raw.request("POST", "/clusters/*/api/v1/namespaces/default/configmaps",
                                  {"metadata": {"name": "x"}})
    assert status == 405
    assert body["message"] == ('create is not supported on resources of kind "configmaps" through /clusters/*, which '
                               "serves list and watch across workspaces: name one workspace, /clusters/<workspace>, "
                               "to read one object or write")


# ---------------------------------------------------------------------------------------------- 8: / and /openapi/v2

def test_root_lists_the_paths(raw):
    status, body, _ = raw.request("GET", "/clusters/root/")
    assert status == 200
    for path in ("/api", "/api/v1", "/apis", "/apis/apps/v1", "/healthz", "/openapi/v2", "/openapi/v3", "/version"):
        assert path in body["paths"]
    assert raw.request("GET", "/")[1] == body  # the default workspace's


def test_openapi_v2_is_a_document_client_go_parses(raw):
    status, body, response = raw.request("GET", "/clusters/root/openapi/v2",
                                         headers={"Accept": "application/com.github.proto-openapi.spec.v2@v1.0"
                                                            "+protobuf"})
    assert status == 200 and response.headers["Content-Type"].startswith("application/com.github.proto-openapi")
    # swagger (1) "2.0", info (2) {title (1), version (2)}, paths (8): the wire format, field by field
    assert body[:5] == b"\x0a\x032.0" and b"\x0aKubernetes\x12" in body and body.endswith(b"\x42\x00")
    status, body, _ = raw.request("GET", "/clusters/root/openapi/v2")
    assert status == 200 and body["swagger"] == "2.0" and body["definitions"] == {}


def test_kubectl_says_what_users_know_for_a_kind_not_installed(shard):
    done = shard.kubectl("apply", "-f", "-", check=False,
                         input="apiVersion: nothere.example.com/v1\nkind: Foo\nmetadata:\n  name: f\n")
    assert done.returncode != 0
    assert 'no matches for kind "Foo" in version "nothere.example.com/v1"' in done.stderr, done.stderr
    assert "ensure CRDs are installed first" in done.stderr


# ---------------------------------------------------------------------------------------------- 9, 13: deployments

DEPLOYMENT = """apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: 2
  strategy: {{}}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: web
        image: nginx:1.25
        ports: [{{containerPort: 80}}]
      - name: sidecar
        image: busybox
"""


def test_deployments_get_kube_defaults_scale_and_wide_columns(shard):
    name = unique("web")
    shard.kubectl("apply", "-f", "-", input=DEPLOYMENT.format(name=name))
    described = shard.kubectl("describe", "deployment", name).stdout
    assert "StrategyType:           RollingUpdate" in described
    assert "RollingUpdateStrategy:  25% max unavailable, 25% max surge" in described
    spec = json.loads(shard.kubectl("get", "deployment", name, "-o", "json").stdout)["spec"]
    assert (spec["revisionHistoryLimit"], spec["progressDeadlineSeconds"]) == (10, 600)
    pod = spec["template"]["spec"]
    assert (pod["restartPolicy"], pod["dnsPolicy"], pod["schedulerName"], pod["terminationGracePeriodSeconds"]) == (
        "Always", "ClusterFirst", "default-scheduler", 30)
    web, sidecar = pod["containers"]
    assert (web["imagePullPolicy"], sidecar["imagePullPolicy"]) == ("IfNotPresent", "Always")  # busybox: :latest
    assert web["ports"] == [{"containerPort": 80, "protocol": "TCP"}]
    assert shard.kubectl("scale", "deployment", name, "--replicas=5").stdout.strip() == \
        f"deployment.apps/{name} scaled"
    scale = json.loads(shard.kubectl("get", "--raw", f"/clusters/root/apis/apps/v1/namespaces/default/deployments/"
                                                      f"{name}/scale").stdout)
    assert (scale["kind"], scale["apiVersion"], scale["spec"]["replicas"], scale["status"]["selector"]) == (
        "Scale", "autoscaling/v1", 5, f"app={name}")
    wide = shard.kubectl("get", "deployment", name, "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "CONTAINERS", "IMAGES", "SELECTOR"]
    assert wide[1].split()[5:] == ["web,sidecar", "nginx:1.25,busybox", f"app={name}"]
    assert shard.kubectl("get", "deployment", name).stdout.splitlines()[0].split() == [
        "NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]


def test_every_namespace_gets_a_default_service_account_back_even_after_deletion(shard):
    core = client.CoreV1Api(shard.api_client())
    name = unique("ns")
    core.create_namespace({"metadata": {"name": name}})
    def accounts():
        return [sa.metadata.name for sa in core.list_namespaced_service_account(name).items]

    wait_for(accounts, lambda names: "default" in names)
    core.delete_namespaced_service_account("default", name)
    wait_for(accounts, lambda names: "default" in names)
    token = shard.kubectl("create", "token", "default", "-n", name).stdout.strip()
    assert token.count(".") == 2  # a JWT: the tools that assume "default" work


# ---------------------------------------------------------------------------------------------- 10: namespaces

@pytest.mark.parametrize("namespace", ["default", "kube-system", "kube-public"])
def test_the_system_namespaces_cannot_be_deleted(shard, raw, namespace):
    status, body, _ = raw.request("DELETE", f"/clusters/root/api/v1/namespaces/{namespace}")
    assert status == 403
    assert body["message"] == f'namespaces "{namespace}" is forbidden: this namespace may not be deleted'
    assert raw.request("GET", "/clusters/root/api/v1/namespaces/default")[0] == 200


def test_kubectl_delete_namespace_default_is_refused(shard):
    done = shard.kubectl("delete", "namespace", "default", check=False)
    assert done.returncode != 0
    assert 'Error from server (Forbidden): namespaces "default" is forbidden: this namespace may not be deleted' \
        in done.stderr
    assert "created" in shard.kubectl("create", "configmap", unique("after"), "--from-literal=a=b").stdout


# ---------------------------------------------------------------------------------------------- 12: plain HTTP

def test_plain_http_to_the_tls_port_is_told_so(shard):
    import socket

    with socket.create_connection(("127.0.0.1", shard.shard.port), timeout=10) as sock:
        sock.sendall(b"GET /api HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while piece := sock.recv(4096):
            answer += piece
    assert answer == b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
    done = shard.kubectl("--server", f"http://127.0.0.1:{shard.shard.port}", "get", "namespaces", check=False)
    assert done.returncode != 0 and "the server rejected our request for an unknown reason" in done.stderr
    assert Raw(shard).request("GET", "/readyz")[0] == 200
