"""``kubectl apply`` client- and server-side, ``diff``, and server-side apply from the Python client, against a
real shard: removal of fields a manager stopped applying, conflicts and ``--force-conflicts``, create on apply,
``managedFields`` of every write."""

from __future__ import annotations

import json
import uuid

import pytest
from kubernetes import client, dynamic
from kubernetes.client.rest import ApiException

APPLY = "application/apply-patch+yaml"


@pytest.fixture(scope="module")
def shard(kcp_shard_module):
    return kcp_shard_module


@pytest.fixture(scope="module")
def api(shard):
    return shard.api_client()


@pytest.fixture
def ns(shard) -> str:
    name = f"apply-{uuid.uuid4().hex[:8]}"
    shard.kubectl("create", "namespace", name)
    return name


def configmap(ns: str, data: dict, name: str = "cm", **meta) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns, **meta},
            "data": data}


def deployment(ns: str, containers: list, labels: dict | None = None) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": ns, "labels": labels or {"app": "web"}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": containers}}}}


def apply(shard, obj: dict, *args: str, check: bool = True):
    return shard.kubectl("apply", "-f", "-", *args, check=check, input=json.dumps(obj))


def get(shard, ns: str, kind: str, name: str) -> dict:
    return json.loads(shard.kubectl("get", kind, name, "-n", ns, "-o", "json", "--show-managed-fields").stdout)


def managers(obj: dict) -> dict:
    return {(e["manager"], e["operation"]): e["fieldsV1"] for e in obj["metadata"]["managedFields"]}


def raw_patch(api, ns: str, name: str, body, content_type: str, **query) -> tuple[int, dict]:
    method, url, headers, body, _ = api.param_serialize(
        "PATCH", f"/api/v1/namespaces/{ns}/configmaps/{name}", query_params=list(query.items()), body=body,
        header_params={"Content-Type": content_type, "Accept": "application/json"}, auth_settings=["BearerToken"])
    response = api.call_api(method, url, header_params=headers, body=body)
    response.read()
    return response.status, json.loads(response.data)


# ---------------------------------------------------------------------------------------------- client-side apply

def test_client_side_apply_twice_removes_a_configmap_key(shard, ns):
    apply(shard, configmap(ns, {"a": "1", "b": "2"}, labels={"keep": "yes", "drop": "yes"}))
    apply(shard, configmap(ns, {"a": "1"}, labels={"keep": "yes"}))
    obj = get(shard, ns, "configmap", "cm")
    assert obj["data"] == {"a": "1"} and obj["metadata"]["labels"] == {"keep": "yes"}
    owned = managers(obj)[("kubectl-client-side-apply", "Update")]
    assert owned["f:data"] == {".": {}, "f:a": {}}


def test_client_side_apply_twice_removes_a_container_an_env_var_and_a_label(shard, ns):
    containers = [{"name": "app", "image": "nginx:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                   "ports": [{"containerPort": 80}]},
                  {"name": "sidecar", "image": "busybox"}]
    apply(shard, deployment(ns, containers, {"app": "web", "tier": "front"}))
    apply(shard, deployment(ns, [{"name": "app", "image": "nginx:2", "env": [{"name": "B", "value": "2"}],
                                  "ports": [{"containerPort": 80}]}]))
    obj = get(shard, ns, "deployment", "web")
    assert obj["metadata"]["labels"] == {"app": "web"}
    assert obj["spec"]["template"]["spec"]["containers"] == [  # with the defaults kube fills in
        {"name": "app", "image": "nginx:2", "env": [{"name": "B", "value": "2"}],
         "ports": [{"containerPort": 80, "protocol": "TCP"}], "imagePullPolicy": "IfNotPresent", "resources": {},
         "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"}]
    spec = managers(obj)[("kubectl-client-side-apply", "Update")]["f:spec"]["f:template"]["f:spec"]
    assert list(spec["f:containers"]) == ['k:{"name":"app"}']


# ---------------------------------------------------------------------------------------------- server-side apply

def test_server_side_apply_creates_with_201_then_answers_200(api, ns):
    body = json.dumps(configmap(ns, {"a": "1"}, name="ssa"))
    status, created = raw_patch(api, ns, "ssa", body, APPLY, fieldManager="tester")
    assert status == 201, created
    entry = created["metadata"]["managedFields"][0]
    assert {k: entry[k] for k in ("manager", "operation", "apiVersion", "fieldsType", "fieldsV1")} == {
        "manager": "tester", "operation": "Apply", "apiVersion": "v1", "fieldsType": "FieldsV1",
        "fieldsV1": {"f:data": {"f:a": {}}}}
    status, again = raw_patch(api, ns, "ssa", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n"
                                               "  a: '1'\n  b: '2'\n", APPLY, fieldManager="tester")
    assert status == 200 and again["data"] == {"a": "1", "b": "2"}


def test_server_side_apply_needs_a_field_manager(api, ns):
    status, body = raw_patch(api, ns, "nope", json.dumps(configmap(ns, {})), APPLY)
    assert status == 422 and body["reason"] == "Invalid"
    assert body["message"] == \
        'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch'
    status, body = raw_patch(api, ns, "nope", json.dumps({"data": {}}), "application/merge-patch+json", force="true")
    assert status == 422 and "force: Forbidden: may not be specified for non-apply patch" in body["message"]


def test_server_side_apply_twice_removes_the_omitted_field(shard, ns):
    apply(shard, configmap(ns, {"a": "1", "b": "2"}), "--server-side")
    apply(shard, configmap(ns, {"a": "1"}), "--server-side")
    obj = get(shard, ns, "configmap", "cm")
    assert obj["data"] == {"a": "1"}
    assert managers(obj) == {("kubectl", "Apply"): {"f:data": {"f:a": {}}}}


def test_server_side_apply_conflicts_after_edit_and_patch_then_forces(shard, ns, monkeypatch):
    apply(shard, configmap(ns, {"size": "1", "color": "red"}), "--server-side")
    monkeypatch.setenv("EDITOR", 'sed -i s/size:\\ \\"1\\"/size:\\ \\"7\\"/')  # run by sh -c
    assert "configmap/cm edited" in shard.kubectl("edit", "configmap", "cm", "-n", ns).stdout
    shard.kubectl("patch", "configmap", "cm", "-n", ns, "-p", '{"data":{"color":"blue"}}')
    result = apply(shard, configmap(ns, {"size": "1", "color": "red"}), "--server-side", check=False)
    assert result.returncode == 1
    assert 'Apply failed with 2 conflicts: conflicts with "kubectl-edit" using v1:\n- .data.size\n' \
           'conflicts with "kubectl-patch" using v1:\n- .data.color' in result.stderr
    single = apply(shard, configmap(ns, {"size": "1"}), "--server-side", "--field-manager=other", check=False)
    assert 'Apply failed with 1 conflict: conflict with "kubectl-edit" using v1: .data.size' in single.stderr
    apply(shard, configmap(ns, {"size": "1", "color": "red"}), "--server-side", "--force-conflicts")
    obj = get(shard, ns, "configmap", "cm")
    assert obj["data"] == {"size": "1", "color": "red"}
    assert managers(obj) == {("kubectl", "Apply"): {"f:data": {"f:color": {}, "f:size": {}}}}


def test_server_side_apply_of_a_deployment_shares_and_removes_containers(shard, ns):
    apply(shard, deployment(ns, [{"name": "app", "image": "nginx"}]), "--server-side")
    sidecar = deployment(ns, [{"name": "sidecar", "image": "busybox"}])
    apply(shard, sidecar, "--server-side", "--field-manager=sidecar-injector")

    def names():
        return [c["name"] for c in get(shard, ns, "deployment", "web")["spec"]["template"]["spec"]["containers"]]

    assert names() == ["app", "sidecar"]
    apply(shard, deployment(ns, [{"name": "other", "image": "nginx"}]), "--server-side")
    assert names() == ["sidecar", "other"]  # the applier's "app" went, the injector's container stayed


def test_server_side_apply_takes_over_a_client_side_apply(shard, ns):
    apply(shard, configmap(ns, {"a": "1"}))
    apply(shard, configmap(ns, {"a": "2"}), "--server-side")
    obj = get(shard, ns, "configmap", "cm")
    assert obj["data"] == {"a": "2"}
    last = json.loads(obj["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"])
    assert last["data"] == {"a": "2"}


def test_server_side_apply_of_a_custom_resource_follows_its_list_types(shard):
    cluster = f"root:apply-{uuid.uuid4().hex[:8]}"
    shard.run(shard.shard.registry.ensure_logical_cluster, cluster)
    server = f"{shard.url}/clusters/{cluster}"
    schema = {"type": "object", "properties": {"spec": {"type": "object", "properties": {
        "parts": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                  "items": {"type": "object", "required": ["name"],
                            "properties": {"name": {"type": "string"}, "count": {"type": "integer"}}}},
        "args": {"type": "array", "items": {"type": "string"}}}}}}
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "gears.example.com"},
           "spec": {"group": "example.com", "scope": "Namespaced",
                    "names": {"plural": "gears", "singular": "gear", "kind": "Gear"},
                    "versions": [{"name": "v1", "served": True, "storage": True,
                                  "schema": {"openAPIV3Schema": schema}}]}}
    shard.kubectl("apply", "-f", "-", server=server, input=json.dumps(crd))

    def gear(*parts, args=()):
        return json.dumps({"apiVersion": "example.com/v1", "kind": "Gear", "metadata": {"name": "g"},
                           "spec": {"parts": [{"name": p, "count": 1} for p in parts], "args": list(args)}})

    shard.kubectl("apply", "--server-side", "-f", "-", server=server, input=gear("a", "b", args=["x"]))
    shard.kubectl("apply", "--server-side", "--field-manager=second", "-f", "-", server=server,
                  input=gear("c", args=["x"]))
    shard.kubectl("apply", "--server-side", "-f", "-", server=server, input=gear("a", args=["x"]))
    obj = json.loads(shard.kubectl("get", "gear", "g", "-o", "json", "--show-managed-fields", server=server).stdout)
    assert [p["name"] for p in obj["spec"]["parts"]] == ["a", "c"]
    owned = managers(obj)[("kubectl", "Apply")]["f:spec"]
    assert owned == {"f:args": {}, "f:parts": {'k:{"name":"a"}': {".": {}, "f:count": {}, "f:name": {}}}}


# ---------------------------------------------------------------------------------------------- diff, dry run

def test_diff_client_and_server_side(shard, ns):
    apply(shard, configmap(ns, {"a": "1"}))
    assert shard.kubectl("diff", "-f", "-", check=False, input=json.dumps(configmap(ns, {"a": "1"}))).returncode == 0
    for extra in ((), ("--server-side",)):
        changed = shard.kubectl("diff", *extra, "-f", "-", check=False, input=json.dumps(configmap(ns, {"a": "2"})))
        assert changed.returncode == 1, changed.stderr
        assert '-  a: "1"' in changed.stdout and '+  a: "2"' in changed.stdout
        assert not [line for line in changed.stdout.splitlines() if line[:1] in "+-" and "resourceVersion" in line]
    assert get(shard, ns, "configmap", "cm")["data"] == {"a": "1"}


def test_dynamic_client_server_side_apply(api, ns):
    configmaps = dynamic.DynamicClient(api).resources.get(api_version="v1", kind="ConfigMap")
    body = configmap(ns, {"k": "v"}, name="dyn")
    dry = configmaps.server_side_apply(body=body, namespace=ns, field_manager="kubernetes-unittests", dry_run="All")
    assert dry.metadata.managedFields[0].manager == "kubernetes-unittests"
    with pytest.raises(ApiException) as missing:
        client.CoreV1Api(api).read_namespaced_config_map("dyn", ns)
    assert missing.value.status == 404
    created = configmaps.server_side_apply(body=body, namespace=ns, field_manager="kubernetes-unittests")
    assert created.metadata.managedFields[0].manager == "kubernetes-unittests"
    assert created.metadata.managedFields[0].operation == "Apply"


def test_every_write_records_its_manager(api, shard, ns):
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map(ns, configmap(ns, {"a": "1"}, name="w"))
    core.patch_namespaced_config_map("w", ns, {"data": {"b": "2"}}, field_manager="patcher")
    obj = core.read_namespaced_config_map("w", ns)
    owners = {(e.manager, e.operation): e.fields_v1 for e in obj.metadata.managed_fields}
    assert owners == {("OpenAPI-Generator", "Update"): {"f:data": {".": {}, "f:a": {}}},
                      ("patcher", "Update"): {"f:data": {"f:b": {}}}}
    shard.kubectl("label", "configmap", "w", "-n", ns, "x=y")
    labelled = get(shard, ns, "configmap", "w")
    assert managers(labelled)[("kubectl-label", "Update")] == {"f:metadata": {"f:labels": {".": {}, "f:x": {}}}}
