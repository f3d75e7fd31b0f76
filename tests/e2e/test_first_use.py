"""What a new user hits first (issue #18): hostile bodies, mistyped objects, kube's answers to common mistakes."""

from __future__ import annotations

import json
import threading

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from kcp_virtual.framework.decoding import MAX_DEPTH
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
