"""Several shards of one deployment: a root shard, a second shard joined to it (``--root-shard-kubeconfig``) and
``kcp front-proxy`` in front of both, all real servers; the Kubernetes client and kubectl as clients.

Shards register, workspaces are scheduled (by name, by selector, by load), the front-proxy routes by path and
passes every kind of identity on, publishers write one URL per shard and each shard's virtual workspace shows
that shard's workspaces only, the example controller follows the URL list as shards come and go, and the
faults: an unknown path, a shard that is down."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from examples.widget_controller import WidgetController
from server.shard import ShardConfig
from server.testing import join_shard, running_shard, start_front_proxy
from tests.e2e.test_apibinding import GROUP, VERSION, bind, provide, status_of, widget
from tests.e2e.test_authn import raw, whoami

TENANCY = ("tenancy.kcp.dev", "v1alpha1")
TOKENS = "bob-token,bob,2,team\n"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    tokens = tmp_path_factory.mktemp("tokens") / "tokens.csv"
    tokens.write_text(TOKENS)
    config = ShardConfig(token_auth_file=str(tokens), bookmark_interval=1.0)
    with running_shard(config) as root:
        two = join_shard(root, "two", config)
        proxy = start_front_proxy(root)
        try:
            wait_for(lambda: {s["metadata"]["name"] for s in shards(root)} == {"root", "two"})
            wait_for(lambda: proxy.proxy.index.resolve("root") == "root")
            yield root, two, proxy
        finally:
            proxy.stop()
            two.stop()


def wait_for(condition, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except ApiException:
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def objects(server, cluster: str = "root") -> client.CustomObjectsApi:
    return client.CustomObjectsApi(server.cluster_client(cluster))


def shards(server) -> list[dict]:
    return objects(server).list_cluster_custom_object(*TENANCY, "shards")["items"]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def create_workspace(proxy, name: str, parent: str = "root", wait: bool = True, **spec) -> dict:
    api = objects(proxy, parent)
    api.create_cluster_custom_object(*TENANCY, "clusterworkspaces", {"metadata": {"name": name}, "spec": spec})
    if not wait:
        return api.get_cluster_custom_object(*TENANCY, "clusterworkspaces", name)
    return wait_for(lambda: (ws := api.get_cluster_custom_object(*TENANCY, "clusterworkspaces", name))
                    .get("status", {}).get("phase") == "Ready" and ws)


# ---------------------------------------------------------------------------------------------- shards

def test_every_shard_registers_with_its_urls_and_load(deployment):
    root, two, _ = deployment
    by_name = {s["metadata"]["name"]: s for s in shards(root)}
    assert by_name["root"]["spec"] == {"baseURL": root.url, "virtualWorkspaceURL": root.url}
    assert by_name["two"]["spec"] == {"baseURL": two.url, "virtualWorkspaceURL": two.url}
    assert wait_for(lambda: {s["metadata"]["name"]: s.get("status", {}).get("logicalClusters") for s in
                             shards(root)}["root"])
    # the second shard knows the list too (replicas of root's), and holds no root of its own
    assert wait_for(lambda: sorted(s["metadata"]["name"] for s in two.run(two.shard.directory.shards))
                    == ["root", "two"])
    assert status_of(lambda: client.CoreV1Api(two.cluster_client("root")).list_namespace()) == 404


# ---------------------------------------------------------------------------------------------- scheduling

def test_a_workspace_goes_to_the_shard_it_names(deployment):
    root, two, proxy = deployment
    name = unique("named")
    ws = create_workspace(proxy, name, shard={"name": "two"})
    assert ws["status"]["location"] == {"current": "two"}
    assert ws["status"]["baseURL"] == f"{two.url}/clusters/root:{name}"
    # it lives on shard two, with its default content and its owner's grant inside
    assert [n.metadata.name for n in client.CoreV1Api(two.cluster_client(f"root:{name}")).list_namespace().items] \
        == ["default"]
    assert client.RbacAuthorizationV1Api(two.cluster_client(f"root:{name}")).read_cluster_role_binding(
        "workspace-owner").subjects[0].name == "kcp-admin"
    record = objects(two, f"root:{name}").get_cluster_custom_object("core.kcp.dev", "v1alpha1", "logicalclusters",
                                                                    "cluster")
    assert record["status"]["phase"] == "Ready"
    assert status_of(lambda: client.CoreV1Api(root.cluster_client(f"root:{name}")).list_namespace()) == 404
    # deleting the workspace deletes its logical cluster on shard two
    objects(proxy).delete_cluster_custom_object(*TENANCY, "clusterworkspaces", name)
    wait_for(lambda: status_of(lambda: client.CoreV1Api(two.cluster_client(f"root:{name}")).list_namespace())
             == 404)


def test_a_workspace_goes_to_a_shard_its_selector_matches_or_waits_for_one(deployment):
    root, two, proxy = deployment
    label = unique("zone")
    name = unique("selected")
    ws = create_workspace(proxy, name, wait=False, shard={"selector": {"matchLabels": {"zone": label}}})
    waiting = wait_for(lambda: (o := objects(proxy).get_cluster_custom_object(*TENANCY, "clusterworkspaces", name))
                       .get("status", {}).get("conditions") and o)
    assert waiting["status"]["phase"] == "Scheduling"
    assert waiting["status"]["conditions"][0] == {**waiting["status"]["conditions"][0], "type": "WorkspaceScheduled",
                                                  "status": "False", "reason": "Unschedulable"}
    objects(root).patch_cluster_custom_object(*TENANCY, "shards", "two", {"metadata": {"labels": {"zone": label}}})
    ws = wait_for(lambda: (o := objects(proxy).get_cluster_custom_object(*TENANCY, "clusterworkspaces", name))
                  .get("status", {}).get("phase") == "Ready" and o)
    assert ws["status"]["location"] == {"current": "two"}
    # the label survives the shard's own registration updates
    assert objects(root).get_cluster_custom_object(*TENANCY, "shards", "two")["metadata"]["labels"]["zone"] == label


def test_workspaces_without_a_constraint_spread_over_the_shards(deployment):
    _, _, proxy = deployment
    # the least loaded by the shards' reports; the parent's shard (root) while within 50% (+10) of that: as its
    # own report grows, workspaces go to the other shard too
    locations = set()
    for _ in range(40):
        locations.add(create_workspace(proxy, unique("spread"))["status"]["location"]["current"])
        if locations == {"root", "two"}:
            break
    assert locations == {"root", "two"}


@pytest.mark.parametrize("constraint, message", [
    ({"name": "Not_A_Label"}, "spec.shard.name"),
    ({"name": "two", "selector": {}}, "mutually exclusive"),
    ({"nodes": 3}, 'Unsupported value: "nodes"'),
    ({"selector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}, "not a valid label selector operator"),
    ("two", "spec.shard: Invalid value"),
])
def test_a_bad_shard_constraint_is_refused(deployment, constraint, message):
    _, _, proxy = deployment
    with pytest.raises(ApiException) as info:
        objects(proxy).create_cluster_custom_object(*TENANCY, "clusterworkspaces", {
            "metadata": {"name": unique("bad")}, "spec": {"shard": constraint}})
    assert info.value.status == 422 and message in json.loads(info.value.body)["message"]


# ---------------------------------------------------------------------------------------------- front-proxy

def test_the_front_proxy_routes_each_path_to_its_shard(deployment):
    root, two, proxy = deployment
    org = unique("org")
    create_workspace(proxy, org, shard={"name": "two"})
    team = create_workspace(proxy, "team", parent=f"root:{org}", shard={"name": "root"})  # nested, back on root
    assert team["status"]["baseURL"] == f"{root.url}/clusters/root:{org}:team"
    for path, shard in ((f"root:{org}", two), (f"root:{org}:team", root)):
        core = client.CoreV1Api(proxy.cluster_client(path))
        core.create_namespaced_config_map("default", {"metadata": {"name": "via-proxy"}, "data": {"at": path}})
        assert client.CoreV1Api(shard.cluster_client(path)).read_namespaced_config_map(
            "via-proxy", "default").data == {"at": path}
    # kubectl with the front-proxy's own kubeconfig (its TLS, the shared CA's admin certificate)
    listed = proxy.kubectl("get", "configmaps", "-o", "name", server=f"{proxy.url}/clusters/root:{org}:team")
    assert "configmap/via-proxy" in listed.stdout.split()
    assert "root" in proxy.kubectl("config", "current-context").stdout
    # a watch through the front-proxy
    core = client.CoreV1Api(proxy.cluster_client(f"root:{org}"))
    version = core.list_namespaced_config_map("default").metadata.resource_version
    later = threading.Timer(0.3, lambda: client.CoreV1Api(two.cluster_client(f"root:{org}"))
                            .create_namespaced_config_map("default", {"metadata": {"name": "later"}}))
    later.start()
    seen = []
    for event in watch.Watch().stream(core.list_namespaced_config_map, "default", resource_version=version,
                                      timeout_seconds=10):
        seen.append((event["type"], event["object"].metadata.name))
        if event["object"].metadata.name == "later":
            break
    later.join()
    assert ("ADDED", "later") in seen


def test_the_front_proxy_passes_the_callers_identity_on(deployment):
    _, _, proxy = deployment
    cluster = f"root:{create_workspace(proxy, unique('who'), shard={'name': 'two'})['metadata']['name']}"
    admin = (str(proxy.proxy.pki.admin_cert_path), str(proxy.proxy.pki.admin_key_path))
    info = whoami(proxy, cluster, cert=admin)  # a client certificate: verified by the proxy, asserted to the shard
    assert info["username"] == "kcp-admin" and "system:masters" in info["groups"]
    # a token: the shard's to check; the tenancy rule's check in the parent (root, on the root shard) is the
    # root shard's: bob may enter only once root grants it
    review = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    denied = raw(proxy, "POST", f"/clusters/{cluster}{review}", token="bob-token", body=body)
    assert denied.status_code == 403 and "workspace access not permitted" in denied.json()["message"]
    name = cluster.split(":")[1]
    rbac = client.RbacAuthorizationV1Api(proxy.cluster_client("root"))
    rbac.create_cluster_role({"metadata": {"name": f"enter-{name}"}, "rules": [{
        "apiGroups": ["tenancy.kcp.dev"], "resources": ["clusterworkspaces/content"], "resourceNames": [name],
        "verbs": ["access"]}]})
    rbac.create_cluster_role_binding({"metadata": {"name": f"enter-{name}"}, "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": f"enter-{name}"},
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "bob"}]})
    wait_for(lambda: raw(proxy, "POST", f"/clusters/{cluster}{review}", token="bob-token", body=body).status_code
             == 201)  # after the shard's remembered denial (a second at most)
    assert whoami(proxy, cluster, token="bob-token")["username"] == "bob"
    assert whoami(proxy, cluster, cert=admin, headers={"Impersonate-User": "bob"})["username"] == "bob"  # --as
    forged = whoami(proxy, cluster, token="bob-token", headers={"X-Remote-User": "admin",
                                                                "X-Remote-Group": "system:masters"})
    assert forged["username"] == "bob" and "system:masters" not in forged.get("groups", [])
    answer = raw(proxy, "POST", f"/clusters/{cluster}{review}", token="not-a-token", body=body)
    assert answer.status_code == 401 and answer.json()["kind"] == "Status"


def test_the_front_proxy_answers_404_for_a_path_of_no_shard(deployment):
    _, _, proxy = deployment
    for path in ("/clusters/root:no-such-workspace/api/v1/namespaces", "/clusters/root:a:b:c/api",
                 "/clusters/*/api/v1/configmaps", "/clusters/other/api", "/services/apiexport/root:x/y/clusters/*/api"):
        result = proxy.kubectl("get", "--raw", path, check=False)
        assert result.returncode == 1 and "(NotFound)" in result.stderr, (path, result.stderr)
    result = proxy.kubectl("get", "--raw", "/clusters/root:no-such-workspace/api", check=False)
    assert 'workspace "root:no-such-workspace" not found' in result.stderr


def test_a_shard_that_is_down_is_a_503_until_it_is_back(deployment, tmp_path):
    root, _, proxy = deployment
    flaky = join_shard(root, "flaky", workdir=tmp_path)
    port = int(flaky.url.rsplit(":", 1)[1])
    try:
        name = create_workspace(proxy, unique("flaky"), shard={"name": "flaky"})["metadata"]["name"]
        core = client.CoreV1Api(proxy.cluster_client(f"root:{name}"))
        core.list_namespace()
        flaky.stop()
        with pytest.raises(ApiException) as info:
            core.list_namespace()
        status = json.loads(info.value.body)
        assert info.value.status == 503 and status["kind"] == "Status" and "shard flaky" in status["message"]
        flaky = join_shard(root, "flaky", workdir=tmp_path, port=port)  # the same shard back, same URL and data
        assert [n.metadata.name for n in core.list_namespace().items] == ["default"]
    finally:
        flaky.stop()
        objects(root).delete_cluster_custom_object(*TENANCY, "shards", "flaky")


# ---------------------------------------------------------------------------------------------- URL lists

def url_list(server, provider: str, export: str = "widgets") -> list[str]:
    found = objects(server, provider).get_cluster_custom_object(GROUP, VERSION, "apiexports", export)
    return sorted(vw["url"] for vw in (found.get("status") or {}).get("virtualWorkspaces") or ())


def vw_widgets(proxy, url: str) -> set[tuple[str, str]]:
    configuration = proxy.api_client("base").configuration
    configuration.host = f"{url}/clusters/*"
    items = client.CustomObjectsApi(client.ApiClient(configuration)).list_cluster_custom_object(
        "example.io", "v1", "widgets")["items"]
    return {(i["metadata"]["annotations"]["kcp.dev/cluster"], i["metadata"]["name"]) for i in items}


def bound_consumer(proxy, provider: str, shard: str) -> str:
    cluster = f"root:{create_workspace(proxy, unique('consumer'), shard={'name': shard})['metadata']['name']}"
    bind(proxy, cluster, provider)
    wait_for(lambda: (objects(proxy, cluster).get_cluster_custom_object(GROUP, VERSION, "apibindings", "widgets")
                      .get("status") or {}).get("phase") == "Bound")
    return cluster


def test_one_url_per_shard_and_each_shows_its_own_shards_workspaces(deployment):
    root, two, proxy = deployment
    for home in ("root", "two"):  # a provider on either shard publishes both shards' URLs
        provider = f"root:{create_workspace(proxy, unique('provider'), shard={'name': home})['metadata']['name']}"
        provide(proxy, provider)
        urls = wait_for(lambda: len(url_list(proxy, provider)) == 2 and url_list(proxy, provider))
        assert urls == sorted(f"{s.url}/services/apiexport/{provider}/widgets" for s in (root, two))
        here, there = bound_consumer(proxy, provider, "root"), bound_consumer(proxy, provider, "two")
        for consumer in (here, there):
            objects(proxy, consumer).create_namespaced_custom_object("example.io", "v1", "default", "widgets",
                                                                     widget("w"))
        assert vw_widgets(proxy, f"{root.url}/services/apiexport/{provider}/widgets") == {(here, "w")}
        assert vw_widgets(proxy, f"{two.url}/services/apiexport/{provider}/widgets") == {(there, "w")}


def test_the_controller_follows_the_url_list_as_shards_come_and_go(deployment, tmp_path):
    root, two, proxy = deployment
    provider = f"root:{create_workspace(proxy, unique('provider'), shard={'name': 'root'})['metadata']['name']}"
    provide(proxy, provider)
    consumers = [bound_consumer(proxy, provider, "root"), bound_consumer(proxy, provider, "two")]
    for consumer in consumers:
        objects(proxy, consumer).create_namespaced_custom_object("example.io", "v1", "default", "widgets",
                                                                 widget("before"))

    def observed(cluster: str, name: str) -> bool:
        obj = objects(proxy, cluster).get_namespaced_custom_object("example.io", "v1", "default", "widgets", name)
        return (obj.get("status") or {}).get("observed") is True

    base = proxy.api_client().configuration
    controller = WidgetController(base, provider, "widgets").start()
    three = None
    try:
        for consumer in consumers:
            wait_for(lambda c=consumer: observed(c, "before"))
        assert sorted(controller.workers) == url_list(proxy, provider)
        # a third shard joins: its URL is published, the controller watches it, its consumer is reconciled
        three = join_shard(root, "three", workdir=tmp_path)
        third = bound_consumer(proxy, provider, "three")
        objects(proxy, third).create_namespaced_custom_object("example.io", "v1", "default", "widgets", widget("new"))
        wait_for(lambda: observed(third, "new"))
        assert f"{three.url}/services/apiexport/{provider}/widgets" in controller.workers
        # the shard is removed: its URL leaves the list and its informer stops
        gone = controller.workers[f"{three.url}/services/apiexport/{provider}/widgets"]
        three.stop()
        three = None
        objects(root).delete_cluster_custom_object(*TENANCY, "shards", "three")
        wait_for(lambda: len(url_list(proxy, provider)) == 2)
        wait_for(lambda: len(controller.workers) == 2)
        gone.join(10)
        assert gone.stopped.is_set() and not gone.alive
        # the others go on
        objects(proxy, consumers[1]).create_namespaced_custom_object("example.io", "v1", "default", "widgets",
                                                                     widget("after"))
        wait_for(lambda: observed(consumers[1], "after"))
    finally:
        controller.stop()
        controller.join(10)
        if three is not None:
            three.stop()
