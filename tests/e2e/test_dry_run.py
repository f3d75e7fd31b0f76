"""dryRun=All: every step runs (defaulting, validation, conflicts), nothing persists, no watch event fires."""

from __future__ import annotations

import uuid

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException


@pytest.fixture(scope="module")
def core(kcp_shard_module):
    return client.CoreV1Api(kcp_shard_module.api_client())


def test_dry_run_writes_persist_nothing_and_emit_no_events(core):
    ns = f"dry-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    start = core.list_namespaced_config_map(ns).metadata.resource_version

    # create: answered like a real create, but nothing is stored
    dry = core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c"),
                                                                  data={"a": "1"}), dry_run="All")
    assert dry.metadata.uid and dry.data == {"a": "1"}
    with pytest.raises(ApiException) as exc:
        core.read_namespaced_config_map("c", ns)
    assert exc.value.status == 404

    # validation still runs under dry-run
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="Bad_Name")),
                                          dry_run="All")
    assert exc.value.status == 422

    real = core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c"),
                                                                    data={"a": "1"}))
    after_create = real.metadata.resource_version

    # update and patch: the answer shows the change, the stored object keeps the old data
    real.data = {"a": "2"}
    assert core.replace_namespaced_config_map("c", ns, real, dry_run="All").data == {"a": "2"}
    assert core.patch_namespaced_config_map("c", ns, {"data": {"a": "3"}}, dry_run="All").data == {"a": "3"}
    stored = core.read_namespaced_config_map("c", ns)
    assert stored.data == {"a": "1"} and stored.metadata.resource_version == after_create

    # delete: DeleteOptions.dryRun in the body
    core.delete_namespaced_config_map("c", ns, body=client.V1DeleteOptions(dry_run=["All"]))
    assert core.read_namespaced_config_map("c", ns).metadata.resource_version == after_create

    events = [(e["type"], e["object"].metadata.name) for e in watch.Watch().stream(
        core.list_namespaced_config_map, ns, resource_version=start, timeout_seconds=1)]
    assert events == [("ADDED", "c")]  # only the real create


def test_dry_run_rejects_unknown_values(kcp_shard_module):
    core = client.CoreV1Api(kcp_shard_module.api_client())
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="x")),
                                          dry_run="Some")
    assert exc.value.status == 400
