"""Strategic merge patch against a real shard: the Python client's dict patches on a Deployment's containers
(by name, ``$patch: delete``, ``$setElementOrder``), ``kubectl patch``/``edit`` on built-ins, 415 for custom
resources."""

from __future__ import annotations

import json
import uuid

import pytest
from kubernetes import client, dynamic
from kubernetes.client.rest import ApiException


@pytest.fixture(scope="module")
def shard(kcp_shard_module):
    return kcp_shard_module


@pytest.fixture(scope="module")
def apps(shard):
    return client.AppsV1Api(shard.api_client())


@pytest.fixture
def ns(shard) -> str:
    name = f"smp-{uuid.uuid4().hex[:8]}"
    shard.kubectl("create", "namespace", name)
    return name


@pytest.fixture
def web(apps, ns) -> str:
    apps.create_namespaced_deployment(ns, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                     {"name": "app", "image": "nginx:1", "env": [{"name": "A", "value": "1"}]},
                     {"name": "sidecar", "image": "busybox:1"}]}}}})
    return "web"


def images(deployment) -> list[tuple[str, str]]:
    return [(c.name, c.image) for c in deployment.spec.template.spec.containers]


def pod_spec(**fields) -> dict:
    return {"spec": {"template": {"spec": fields}}}


def test_patch_one_container_by_name_keeps_the_other(apps, ns, web):
    sidecar = pod_spec(containers=[{"name": "sidecar", "image": "busybox:2"}])
    patched = apps.patch_namespaced_deployment(web, ns, sidecar)
    assert images(patched) == [("app", "nginx:1"), ("sidecar", "busybox:2")]
    patched = apps.patch_namespaced_deployment(web, ns, pod_spec(containers=[
        {"name": "app", "env": [{"name": "B", "value": "2"}]}]))
    assert [(e.name, e.value) for e in patched.spec.template.spec.containers[0].env] == [("B", "2"), ("A", "1")]
    assert images(patched) == [("app", "nginx:1"), ("sidecar", "busybox:2")]


def test_delete_directive_removes_a_container(apps, ns, web):
    patched = apps.patch_namespaced_deployment(web, ns, pod_spec(containers=[{"$patch": "delete", "name": "app"}]))
    assert images(patched) == [("sidecar", "busybox:1")]


def test_set_element_order_reorders_the_containers(apps, ns, web):
    patched = apps.patch_namespaced_deployment(web, ns, pod_spec(**{
        "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "app"}],
        "containers": [{"name": "app", "image": "nginx:2"}]}))
    assert images(patched) == [("sidecar", "busybox:1"), ("app", "nginx:2")]
    stored = apps.read_namespaced_deployment(web, ns)
    assert images(stored) == [("sidecar", "busybox:1"), ("app", "nginx:2")]
    managers = {e.manager for e in stored.metadata.managed_fields}
    assert managers == {"OpenAPI-Generator"}


def test_kubectl_patch_and_edit_use_strategic_merge(shard, apps, ns, web, monkeypatch):
    shard.kubectl("patch", "deployment", web, "-n", ns, "-p",
                  json.dumps(pod_spec(containers=[{"name": "app", "image": "nginx:3"}])))
    assert images(apps.read_namespaced_deployment(web, ns)) == [("app", "nginx:3"), ("sidecar", "busybox:1")]
    monkeypatch.setenv("EDITOR", "sed -i s/busybox:1/busybox:9/")
    assert "deployment.apps/web edited" in shard.kubectl("edit", "deployment", web, "-n", ns).stdout
    stored = apps.read_namespaced_deployment(web, ns)
    assert images(stored) == [("app", "nginx:3"), ("sidecar", "busybox:9")]
    assert {e.manager for e in stored.metadata.managed_fields} >= {"kubectl-patch", "kubectl-edit"}


def test_strategic_merge_on_a_custom_resource_is_415(shard):
    cluster = f"root:smp-{uuid.uuid4().hex[:8]}"
    shard.run(shard.shard.registry.ensure_logical_cluster, cluster)
    server = f"{shard.url}/clusters/{cluster}"
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "gadgets.example.com"},
           "spec": {"group": "example.com", "scope": "Namespaced",
                    "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
                    "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                        "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}
    shard.kubectl("apply", "-f", "-", server=server, input=json.dumps(crd))
    shard.kubectl("apply", "-f", "-", server=server, input=json.dumps(
        {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}, "spec": {"a": 1}}))
    api = shard.cluster_client(cluster)
    gadgets = dynamic.DynamicClient(api).resources.get(api_version="example.com/v1", kind="Gadget")
    with pytest.raises(ApiException) as caught:
        gadgets.patch(name="g", namespace="default", body={"spec": {"a": 2}})
    assert caught.value.status == 415
    assert json.loads(caught.value.body)["message"] == (
        "the body of the request was in an unknown format - accepted media types include: "
        "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml")
    merged = gadgets.patch(name="g", namespace="default", body={"spec": {"a": 2}},
                           content_type="application/merge-patch+json")
    assert merged.spec.a == 2
