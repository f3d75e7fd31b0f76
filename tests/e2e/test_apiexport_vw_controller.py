"""The example Widget controller (``examples/widget_controller``) against the apiexport virtual workspace, in every
topology: it finds the URL in ``APIExport.status``, reconciles Widgets in two bound consumer workspaces as a
provider service account, and never receives an object from a workspace that does not bind the export."""

from __future__ import annotations

import threading
import uuid

import pytest
from kubernetes import client

from examples.widget_controller import WidgetController
from server.shard import ShardConfig
from tests.e2e.test_apibinding import GROUP, api, bind, provide, resource_schema, wait_bound, wait_for, widget
from tests.e2e.test_apiexport_vw import crd, workspace
from tests.topologies import TOPOLOGIES, running_topology

RBAC = "rbac.authorization.k8s.io"


@pytest.fixture(scope="module", params=TOPOLOGIES)
def topology(request):
    with running_topology(request.param, ShardConfig(bookmark_interval=1.0)) as (vw, shard, _):
        yield vw, shard


def controller_credentials(shard, provider: str) -> client.Configuration:
    """A service account of the provider workspace holding what the controller needs on the export."""
    name = f"widget-controller-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(shard.cluster_client(provider))
    core.create_namespaced_service_account("default", client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name)))
    token = core.create_namespaced_service_account_token(name, "default", client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[]))).status.token
    rbac = client.RbacAuthorizationV1Api(shard.cluster_client(provider))
    rbac.create_cluster_role({"metadata": {"name": name}, "rules": [
        {"apiGroups": [GROUP], "resources": ["apiexports/content"], "verbs": ["get", "list", "watch", "patch"],
         "resourceNames": ["widgets"]},
        {"apiGroups": [GROUP], "resources": ["apiexports"], "verbs": ["get", "list", "watch"]}]})
    rbac.create_cluster_role_binding({"metadata": {"name": name},
                                      "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": name},
                                      "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": "default"}]})
    configuration = client.Configuration()
    configuration.host = f"{shard.url}/clusters/{provider}"
    configuration.ssl_ca_cert = shard.ca_file
    configuration.api_key = {"authorization": f"Bearer {token}"}
    return configuration


def observed(shard, cluster: str, name: str) -> bool:
    obj = api(shard, cluster).get_namespaced_custom_object("example.io", "v1", "default", "widgets", name)
    return (obj.get("status") or {}).get("observed") is True


def test_controller_reconciles_bound_workspaces_only(topology):
    vw, shard = topology
    provider = workspace(shard, "provider")
    provide(shard, provider)
    consumers = [workspace(shard, "consumer"), workspace(shard, "consumer")]
    for consumer in consumers:
        bind(shard, consumer, provider)
        wait_bound(shard, consumer)
    # not bound: a CRD of the same name, and another export of the same resource
    unbound, other_consumer = workspace(shard, "unbound"), workspace(shard, "other")
    crd(shard, unbound)
    other_provider = workspace(shard, "other-provider")
    provide(shard, other_provider)
    bind(shard, other_consumer, other_provider)
    wait_bound(shard, other_consumer)
    api(shard, other_consumer).create_namespaced_custom_object("example.io", "v1", "default", "widgets",
                                                               widget("other-export"))
    api(shard, consumers[0]).create_namespaced_custom_object("example.io", "v1", "default", "widgets",
                                                             widget("before"))

    received: list[tuple[str, str, str]] = []
    lock = threading.Lock()

    def record(url, cluster, kind, obj):
        with lock:
            received.append((url, cluster, obj["metadata"]["name"]))

    controller = WidgetController(controller_credentials(shard, provider), provider, "widgets",
                                  on_widget=record).start()
    try:
        wait_for(lambda: observed(shard, consumers[0], "before"), bool, timeout=20)
        api(shard, consumers[1]).create_namespaced_custom_object("example.io", "v1", "default", "widgets",
                                                                 widget("after"))
        wait_for(lambda: observed(shard, consumers[1], "after"), bool, timeout=20)
        # one watcher, on the URL the shard published
        assert list(controller.workers) == [
            api(shard, provider).get_cluster_custom_object(GROUP, "v1alpha1", "apiexports", "widgets")
            ["status"]["virtualWorkspaces"][0]["url"]]
    finally:
        controller.stop()
        controller.join(10)
    with lock:
        clusters = {cluster for _, cluster, _ in received}
        names = {name for _, _, name in received}
    assert clusters == set(consumers)
    assert {"before", "after"} <= names and "other-export" not in names and "crd-object" not in names
    assert not observed(shard, other_consumer, "other-export")
    assert not observed(shard, unbound, "crd-object")
