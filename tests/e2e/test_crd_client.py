"""Custom resources through the kubernetes Python client: the dynamic client discovers a new CRD's kind, and the
wire details clients depend on (422 causes, 415 for strategic merge, resourceVersion required on update,
``Warning`` headers under ``fieldValidation=Warn``)."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient

from tests.e2e.test_crd_kubectl import GROUP, crd, widget


@pytest.fixture(scope="module")
def shard(kcp_shard_module):
    return kcp_shard_module


@pytest.fixture
def api(shard):
    """An admin ApiClient for a fresh logical cluster holding the Widget CRD, created with the typed client."""
    cluster = f"root:crdc-{uuid.uuid4().hex[:8]}"
    shard.run(shard.shard.registry.ensure_logical_cluster, cluster)
    api_client = shard.cluster_client(cluster)
    client.ApiextensionsV1Api(api_client).create_custom_resource_definition(crd())
    return api_client


def widgets(api_client):
    return DynamicClient(api_client).resources.get(api_version=f"{GROUP}/v1", kind="Widget")


def test_dynamic_client_discovers_and_uses_the_new_kind(api):
    resource = widgets(api)
    assert resource.namespaced and resource.name == "widgets" and resource.short_names == ["wd"]
    created = resource.create(body=widget("w1", size=2), namespace="default")
    assert created.spec.color == "red" and created.metadata.generation == 1
    patched = resource.patch(name="w1", namespace="default", body={"spec": {"size": 5}},
                             content_type="application/merge-patch+json")
    assert patched.spec.size == 5 and patched.metadata.generation == 2
    status = resource.subresources["status"].patch(name="w1", namespace="default", body={"status": {"seen": 1}},
                                                   content_type="application/merge-patch+json")
    assert status.status.seen == 1
    listed = resource.get(namespace="default")
    assert [item.metadata.name for item in listed.items] == ["w1"]
    assert resource.get(namespace="default", field_selector="spec.color=blue").items == []


def test_dynamic_patch_defaults_to_strategic_merge_which_is_415(api):
    resource = widgets(api)
    resource.create(body=widget("w1"), namespace="default")
    with pytest.raises(ApiException) as exc:
        resource.patch(name="w1", namespace="default", body={"spec": {"size": 3}})
    assert exc.value.status == 415
    assert json.loads(exc.value.body)["reason"] == "UnsupportedMediaType"


def test_invalid_custom_resource_is_422_with_causes(api):
    with pytest.raises(ApiException) as exc:
        widgets(api).create(body=widget("bad", size=500, parts=[{"name": 3}]), namespace="default")
    status = json.loads(exc.value.body)
    assert exc.value.status == 422 and status["reason"] == "Invalid"
    assert {c["field"] for c in status["details"]["causes"]} == {"spec.size", "spec.parts[0].name"}
    assert status["details"]["kind"] == "Widget" and status["details"]["group"] == GROUP


def test_update_without_resource_version_is_422(api):
    resource = widgets(api)
    resource.create(body=widget("w1"), namespace="default")
    with pytest.raises(ApiException) as exc:
        resource.replace(body=widget("w1", size=4), namespace="default")
    assert exc.value.status == 422
    assert "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update" in \
        json.loads(exc.value.body)["message"]


def test_warn_adds_warning_headers(api):
    body = widget("w1", size=1, foo=1)
    body["metadata"]["junk"] = True
    method, url, headers, data, _ = api.param_serialize(
        "POST", f"/apis/{GROUP}/v1/namespaces/default/widgets", query_params=[("fieldValidation", "Warn")],
        header_params={"Content-Type": "application/json", "Accept": "application/json"}, body=body,
        auth_settings=["BearerToken"])
    raw = api.call_api(method, url, header_params=headers, body=data)
    raw.read()
    warnings = raw.response.headers.getlist("Warning")
    assert sorted(warnings) == ['299 - "unknown field \\"metadata.junk\\""', '299 - "unknown field \\"spec.foo\\""']
    stored = json.loads(raw.data)
    assert "foo" not in stored["spec"] and "junk" not in stored["metadata"]


def test_watch_sees_custom_resources(api):
    resource = widgets(api)
    resource.create(body=widget("w1"), namespace="default")
    seen = []
    deadline = time.monotonic() + 10
    for event in resource.watch(namespace="default", timeout=2):
        seen.append((event["type"], event["object"].metadata.name))
        if seen or time.monotonic() > deadline:
            break
    assert seen == [("ADDED", "w1")]
