"""Workspaces end to end: ClusterWorkspace lifecycle, URLs, nesting, deletion, owners, validation, restarts."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from server.controllers.workspaces import WorkspaceController
from server.testing import start_shard

GROUP, VERSION = "tenancy.kcp.dev", "v1alpha1"
OWNER = "experimental.tenancy.kcp.dev/owner"


@pytest.fixture(scope="module")
def shard(kcp_shard_module):
    return kcp_shard_module


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def workspaces(shard, cluster: str = "root", api_client=None) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client or shard.cluster_client(cluster))


def create_workspace(shard, name: str, cluster: str = "root", api_client=None, **spec) -> dict:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ClusterWorkspace", "metadata": {"name": name},
            "spec": spec}
    return workspaces(shard, cluster, api_client).create_cluster_custom_object(GROUP, VERSION, "clusterworkspaces",
                                                                               body)


def wait_workspace(shard, name: str, cluster: str = "root", phase: str | None = "Ready", gone: bool = False,
                   timeout: float = 10.0) -> dict | None:
    api = workspaces(shard, cluster)
    deadline = time.monotonic() + timeout
    obj = None
    while time.monotonic() < deadline:
        try:
            obj = api.get_cluster_custom_object(GROUP, VERSION, "clusterworkspaces", name)
        except ApiException as exc:
            if exc.status == 404 and gone:
                return None
            raise
        if not gone and (obj.get("status") or {}).get("phase") == phase:
            return obj
        time.sleep(0.02)
    raise AssertionError(f"workspace {cluster}:{name} did not become {'gone' if gone else phase}: {obj}")


def status_of(call) -> int:
    try:
        call()
    except ApiException as exc:
        return exc.status
    return 200


def user_client(shard, host: str, user: str, groups=()) -> client.ApiClient:
    """An ApiClient authenticating with a client certificate for ``user`` issued by the shard CA."""
    cert_pem, key_pem = shard.shard.pki.ca.issue(user, groups)
    cert, key = shard.workdir / f"{user}.crt", shard.workdir / f"{user}.key"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    configuration = client.Configuration()
    configuration.host = host
    configuration.ssl_ca_cert = shard.ca_file
    configuration.cert_file, configuration.key_file = str(cert), str(key)
    return client.ApiClient(configuration)


def controller_of(shard) -> WorkspaceController:
    return next(c for c in shard.shard.controllers if isinstance(c, WorkspaceController))


# ---------------------------------------------------------------------------------------------- lifecycle

def test_new_workspace_becomes_ready_and_its_base_url_is_a_server_url(shard):
    name = unique("life")
    created = create_workspace(shard, name)
    assert created["status"]["phase"] == "Scheduling"
    assert created["spec"]["type"] == {"name": "universal", "path": "root"}
    ready = wait_workspace(shard, name)
    base_url = ready["status"]["baseURL"]
    assert base_url == f"{shard.url}/clusters/root:{name}"
    # the kubernetes client and kubectl take it as a plain server URL
    api = shard.api_client("base")
    api.configuration.host = base_url
    assert [ns.metadata.name for ns in client.CoreV1Api(api).list_namespace().items] == ["default"]
    shard.kubectl("create", "configmap", "hello", "--from-literal=a=b", server=base_url)
    out = shard.kubectl("get", "configmaps", "-o", "name", server=base_url).stdout.split()
    assert "configmap/hello" in out
    assert "configmap/hello" not in shard.kubectl("get", "configmaps", "-o", "name").stdout.split()


def test_initializers_keep_the_workspace_initializing(shard):
    type_name, name = unique("init"), unique("slow")
    workspaces(shard).create_cluster_custom_object(GROUP, VERSION, "workspacetypes", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "WorkspaceType", "metadata": {"name": type_name},
        "spec": {"initializers": ["example:setup"], "initializer": True}})
    create_workspace(shard, name, type={"name": type_name})
    obj = wait_workspace(shard, name, phase="Initializing")
    assert obj["status"]["initializers"] == ["example:setup", f"root:{type_name}"]
    assert obj["spec"]["type"] == {"name": type_name, "path": "root"}
    # the workspace exists already (initializers work inside it) but is not Ready
    assert shard.kubectl("get", "ns", "default", "-o", "name", server=obj["status"]["baseURL"]).stdout.strip() \
        == "namespace/default"
    api = workspaces(shard)
    api.patch_cluster_custom_object_status(GROUP, VERSION, "clusterworkspaces", name,
                                           {"status": {"initializers": [f"root:{type_name}"]}})
    time.sleep(0.2)
    assert wait_workspace(shard, name, phase="Initializing")["status"]["initializers"] == [f"root:{type_name}"]
    api.patch_cluster_custom_object_status(GROUP, VERSION, "clusterworkspaces", name,
                                           {"status": {"initializers": []}})
    ready = wait_workspace(shard, name)
    assert "initializers" not in ready["status"]


def test_nested_workspaces(shard):
    org, team = unique("org"), "team"
    create_workspace(shard, org)
    wait_workspace(shard, org)
    create_workspace(shard, team, cluster=f"root:{org}")
    ready = wait_workspace(shard, team, cluster=f"root:{org}")
    assert ready["status"]["baseURL"] == f"{shard.url}/clusters/root:{org}:{team}"
    shard.kubectl("create", "configmap", "deep", server=ready["status"]["baseURL"])
    core = client.CoreV1Api(shard.cluster_client(f"root:{org}:{team}"))
    assert core.read_namespaced_config_map("deep", "default").metadata.name == "deep"


def test_deleting_a_workspace_deletes_its_content_recursively(shard):
    org = unique("doomed")
    create_workspace(shard, org)
    wait_workspace(shard, org)
    create_workspace(shard, "team", cluster=f"root:{org}")
    wait_workspace(shard, "team", cluster=f"root:{org}")
    for cluster in (f"root:{org}", f"root:{org}:team"):
        client.CoreV1Api(shard.cluster_client(cluster)).create_namespaced_config_map(
            "default", {"metadata": {"name": "data"}})
    workspaces(shard).delete_cluster_custom_object(GROUP, VERSION, "clusterworkspaces", org)
    wait_workspace(shard, org, gone=True)
    for cluster in (f"root:{org}", f"root:{org}:team"):
        core = client.CoreV1Api(shard.cluster_client(cluster))
        assert status_of(lambda: core.read_namespaced_config_map("data", "default")) == 404
        assert status_of(core.list_namespace) == 404
    assert not shard.run(shard.shard.registry.cluster_exists, f"root:{org}:team")
    rbac = client.RbacAuthorizationV1Api(shard.cluster_client("root"))
    assert status_of(lambda: rbac.read_cluster_role(f"workspace-owner:{org}")) == 404
    assert status_of(lambda: rbac.read_cluster_role_binding(f"workspace-owner:{org}")) == 404


# ---------------------------------------------------------------------------------------------- owner

def test_creator_becomes_owner_with_admin_on_content_and_cluster_admin_inside(shard):
    name = unique("alices")
    alice_creator = unique("creator")
    rbac = client.RbacAuthorizationV1Api(shard.cluster_client("root"))
    rbac.create_cluster_role({"metadata": {"name": alice_creator}, "rules": [
        {"apiGroups": [GROUP], "resources": ["clusterworkspaces"], "verbs": ["create", "get", "list"]}]})
    rbac.create_cluster_role_binding({"metadata": {"name": alice_creator},
                                      "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                                  "name": alice_creator},
                                      "subjects": [{"kind": "User", "name": "alice"}]})
    alice_root = user_client(shard, f"{shard.url}/clusters/root", "alice", ["devs"])
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ClusterWorkspace",
            "metadata": {"name": name, "annotations": {OWNER: "mallory"}}}  # not hers to choose
    created = client.CustomObjectsApi(alice_root).create_cluster_custom_object(GROUP, VERSION, "clusterworkspaces",
                                                                               body)
    owner = json.loads(created["metadata"]["annotations"][OWNER])
    assert owner["username"] == "alice" and "devs" in owner["groups"]
    ready = wait_workspace(shard, name)

    role = rbac.read_cluster_role(f"workspace-owner:{name}")
    assert role.rules[0].resources == ["clusterworkspaces/content"] and role.rules[0].resource_names == [name]
    assert "admin" in role.rules[0].verbs
    binding = rbac.read_cluster_role_binding(f"workspace-owner:{name}")
    assert [(s.kind, s.name) for s in binding.subjects] == [("User", "alice")]
    inside = client.RbacAuthorizationV1Api(shard.cluster_client(f"root:{name}"))
    admin_binding = inside.read_cluster_role_binding("workspace-owner")
    assert admin_binding.role_ref.name == "cluster-admin" and admin_binding.subjects[0].name == "alice"

    alice_inside = client.CoreV1Api(user_client(shard, ready["status"]["baseURL"], "alice", ["devs"]))
    alice_inside.create_namespaced_config_map("default", {"metadata": {"name": "mine"}})
    assert [ns.metadata.name for ns in alice_inside.list_namespace().items] == ["default"]
    bob_inside = client.CoreV1Api(user_client(shard, ready["status"]["baseURL"], "bob"))
    assert status_of(bob_inside.list_namespace) == 403
    assert status_of(lambda: bob_inside.read_namespaced_config_map("mine", "default")) == 403


def test_privileged_creator_may_name_the_owner(shard):
    name = unique("delegated")
    api = workspaces(shard)
    created = api.create_cluster_custom_object(GROUP, VERSION, "clusterworkspaces", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ClusterWorkspace",
        "metadata": {"name": name, "annotations": {OWNER: json.dumps({"username": "carol", "groups": []})}}})
    assert json.loads(created["metadata"]["annotations"][OWNER])["username"] == "carol"
    wait_workspace(shard, name)
    binding = client.RbacAuthorizationV1Api(shard.cluster_client("root")).read_cluster_role_binding(
        f"workspace-owner:{name}")
    assert binding.subjects[0].name == "carol"


def test_dry_run_creates_nothing(shard):
    name = unique("dry")
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ClusterWorkspace", "metadata": {"name": name}}
    created = workspaces(shard).create_cluster_custom_object(GROUP, VERSION, "clusterworkspaces", body,
                                                             dry_run="All")
    assert json.loads(created["metadata"]["annotations"][OWNER])["username"] == "kcp-admin"
    assert status_of(lambda: workspaces(shard).get_cluster_custom_object(GROUP, VERSION, "clusterworkspaces",
                                                                         name)) == 404


# ---------------------------------------------------------------------------------------------- validation

@pytest.mark.parametrize("name", ["Upper", "dotted.name", "under_score", "x" * 64])
def test_workspace_names_are_dns_labels(shard, name):
    with pytest.raises(ApiException) as exc:
        create_workspace(shard, name)
    assert exc.value.status == 422
    assert json.loads(exc.value.body)["details"]["causes"][0]["field"] == "metadata.name"


@pytest.mark.parametrize("ref", [{"name": "no-such-type"}, {"name": "universal", "path": "root:nowhere"}])
def test_unknown_workspace_type_is_rejected(shard, ref):
    with pytest.raises(ApiException) as exc:
        create_workspace(shard, unique("typed"), type=ref)
    assert exc.value.status == 422
    status = json.loads(exc.value.body)
    assert status["details"]["causes"][0]["field"] == "spec.type" and "no such WorkspaceType" in status["message"]


def test_kubectl_get_clusterworkspaces_columns(shard):
    name = unique("table")
    create_workspace(shard, name)
    wait_workspace(shard, name)
    lines = shard.kubectl("get", "clusterworkspaces").stdout.splitlines()
    assert lines[0].split() == ["NAME", "TYPE", "PHASE", "URL", "AGE"]
    row = next(line.split() for line in lines if line.startswith(name + " "))
    assert row[1:4] == ["universal", "Ready", f"{shard.url}/clusters/root:{name}"]
    shards = shard.kubectl("get", "shards").stdout.splitlines()
    assert shards[0].split() == ["NAME", "URL", "VIRTUAL", "WORKSPACE", "URL", "AGE"]
    assert shards[1].split()[:3] == ["root", shard.url, shard.url]


# ---------------------------------------------------------------------------------------------- restarts

def test_restart_in_the_middle_finishes_pending_work(tmp_path):
    first = start_shard(workdir=tmp_path)
    try:
        create_workspace(first, "ready")
        wait_workspace(first, "ready")
        create_workspace(first, "leaving")
        wait_workspace(first, "leaving")
        first.run(controller_of(first).stop)  # from here on, work piles up as after a crash
        create_workspace(first, "pending")
        create_workspace(first, "inside", cluster="root:leaving")
        workspaces(first).delete_cluster_custom_object(GROUP, VERSION, "clusterworkspaces", "leaving")
        leaving = workspaces(first).get_cluster_custom_object(GROUP, VERSION, "clusterworkspaces", "leaving")
        assert leaving["metadata"]["deletionTimestamp"]
        with pytest.raises(ApiException) as exc:  # no new workspaces inside one being deleted
            create_workspace(first, "late", cluster="root:leaving")
        assert exc.value.status == 403 and "being terminated" in json.loads(exc.value.body)["message"]
        assert wait_workspace(first, "pending", phase="Scheduling")
        old_url = first.url
    finally:
        first.stop()
    second = start_shard(workdir=tmp_path)
    try:
        pending = wait_workspace(second, "pending")
        assert pending["status"]["baseURL"] == f"{second.url}/clusters/root:pending"
        wait_workspace(second, "leaving", gone=True)
        deadline = time.monotonic() + 10
        while second.run(second.shard.registry.cluster_exists, "root:leaving:inside"):
            assert time.monotonic() < deadline, "nested workspace of a deleted one left behind"
            time.sleep(0.02)
        assert status_of(client.CoreV1Api(second.cluster_client("root:leaving")).list_namespace) == 404
        deadline = time.monotonic() + 10
        while wait_workspace(second, "ready")["status"]["baseURL"] != f"{second.url}/clusters/root:ready":
            assert time.monotonic() < deadline, "baseURL not updated to the new address"
            time.sleep(0.02)
        if old_url != second.url:
            shard_obj = workspaces(second).get_cluster_custom_object(GROUP, VERSION, "shards", "root")
            assert shard_obj["spec"]["baseURL"] == second.url
    finally:
        second.stop()
