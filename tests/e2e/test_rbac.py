"""Per-workspace RBAC end to end: real token users against a real shard, kubectl and the Python client.

The shard authenticates static tokens (``--token-auth-file``); the admin (system:masters, client
certificate) sets up RBAC through the typed Python client; each user's requests go over HTTPS with
``requests`` (status codes and Status bodies) or kubectl with the user's own kubeconfig.
"""

from __future__ import annotations

import json

import pytest
import requests
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from server.shard import ShardConfig
from server.testing import running_shard

GROUP = "rbac.authorization.k8s.io"
TOKENS = {"alice": "alice-token", "bob": "bob-token", "carol": "carol-token", "dave": "dave-token"}


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    token_file = tmp_path_factory.mktemp("tokens") / "tokens.csv"
    token_file.write_text('alice-token,alice,1,"devs"\nbob-token,bob,2\ncarol-token,carol,3,"ops,devs"\n'
                          'dave-token,dave,4\n')
    with running_shard(ShardConfig(token_auth_file=str(token_file))) as running:
        yield running


def call(shard, who: str, method: str, path: str, body: dict | None = None, cluster: str = "root",
         content_type: str = "application/json"):
    response = requests.request(method, f"{shard.url}/clusters/{cluster}{path}", verify=shard.ca_file,
                                headers={"Authorization": f"Bearer {TOKENS[who]}", "Content-Type": content_type},
                                data=json.dumps(body) if body is not None else None, timeout=10)
    return response.status_code, response.json() if "json" in response.headers.get("Content-Type", "") else None


def rbac(shard, cluster: str = "root") -> client.RbacAuthorizationV1Api:
    return client.RbacAuthorizationV1Api(shard.cluster_client(cluster))


def rule(verbs, groups, resources, names=None) -> client.V1PolicyRule:
    return client.V1PolicyRule(verbs=verbs, api_groups=groups, resources=resources, resource_names=names)


def subject(kind: str, name: str) -> client.RbacV1Subject:
    return client.RbacV1Subject(kind=kind, name=name, api_group=GROUP)


def grant_cluster_role(shard, name: str, rules, *subjects, cluster: str = "root") -> None:
    api = rbac(shard, cluster)
    api.create_cluster_role(client.V1ClusterRole(metadata=client.V1ObjectMeta(name=name), rules=rules))
    api.create_cluster_role_binding(client.V1ClusterRoleBinding(
        metadata=client.V1ObjectMeta(name=name), subjects=list(subjects),
        role_ref=client.V1RoleRef(api_group=GROUP, kind="ClusterRole", name=name)))


@pytest.fixture(scope="module")
def matrix(shard):
    """Two namespaces with configmaps and a deployment, and four users with different grants."""
    core = client.CoreV1Api(shard.api_client())
    apps = client.AppsV1Api(shard.api_client())
    api = rbac(shard)
    for ns in ("rb-a", "rb-b"):
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        for cm in ("cm1", "cm2"):
            core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=cm),
                                                                     data={"k": "v"}))
    apps.create_namespaced_deployment("rb-a", {
        "metadata": {"name": "d1"}, "spec": {"selector": {"matchLabels": {"a": "b"}},
                                             "template": {"metadata": {"labels": {"a": "b"}},
                                                          "spec": {"containers": [{"name": "c", "image": "i"}]}}}})
    # alice reads configmaps in rb-a (a Role) and may get the namespace rb-b (a ClusterRole bound in rb-b)
    api.create_namespaced_role("rb-a", client.V1Role(metadata=client.V1ObjectMeta(name="cm-reader"),
                                                     rules=[rule(["get", "list", "watch"], [""], ["configmaps"])]))
    api.create_namespaced_role_binding("rb-a", client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name="read-cms"), subjects=[subject("User", "alice")],
        role_ref=client.V1RoleRef(api_group=GROUP, kind="Role", name="cm-reader")))
    api.create_cluster_role(client.V1ClusterRole(metadata=client.V1ObjectMeta(name="ns-getter"),
                                                 rules=[rule(["get"], [""], ["namespaces"])]))
    api.create_namespaced_role_binding("rb-b", client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name="get-ns"), subjects=[subject("User", "alice")],
        role_ref=client.V1RoleRef(api_group=GROUP, kind="ClusterRole", name="ns-getter")))
    # group ops (carol) may update and patch only cm1 in rb-a
    api.create_namespaced_role("rb-a", client.V1Role(metadata=client.V1ObjectMeta(name="cm1-editor"),
                                                     rules=[rule(["update", "patch"], [""], ["configmaps"], ["cm1"])]))
    api.create_namespaced_role_binding("rb-a", client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name="edit-cm1"), subjects=[subject("Group", "ops")],
        role_ref=client.V1RoleRef(api_group=GROUP, kind="Role", name="cm1-editor")))
    # bob may read deployments/status everywhere, and nothing else
    grant_cluster_role(shard, "deploy-status", [rule(["get"], ["apps"], ["deployments/status"])],
                       subject("User", "bob"))
    return shard


@pytest.mark.parametrize("who,method,path,body,code", [
    ("alice", "GET", "/api/v1/namespaces/rb-a/configmaps/cm1", None, 200),
    ("alice", "GET", "/api/v1/namespaces/rb-a/configmaps", None, 200),
    ("alice", "GET", "/api/v1/namespaces/rb-b/configmaps", None, 403),           # another namespace
    ("alice", "GET", "/api/v1/namespaces/rb-b/configmaps/cm1", None, 403),
    ("alice", "GET", "/api/v1/configmaps", None, 403),                           # all namespaces: cluster scope
    ("alice", "DELETE", "/api/v1/namespaces/rb-a/configmaps/cm2", None, 403),    # verb not granted
    ("alice", "POST", "/api/v1/namespaces/rb-a/configmaps", {"metadata": {"name": "new"}}, 403),
    ("alice", "GET", "/api/v1/namespaces/rb-a/secrets", None, 403),              # resource not granted
    ("alice", "GET", "/api/v1/namespaces/rb-b", None, 200),                      # namespace get via RoleBinding
    ("alice", "GET", "/api/v1/namespaces/rb-a", None, 403),
    ("alice", "GET", "/api/v1/namespaces", None, 403),
    ("carol", "PATCH", "/api/v1/namespaces/rb-a/configmaps/cm1", {"data": {"k": "patched"}}, 200),
    ("carol", "PATCH", "/api/v1/namespaces/rb-a/configmaps/cm2", {"data": {"k": "patched"}}, 403),  # resourceName
    ("carol", "GET", "/api/v1/namespaces/rb-a/configmaps/cm1", None, 403),
    ("carol", "PATCH", "/api/v1/namespaces/rb-b/configmaps/cm1", {"data": {"k": "patched"}}, 403),
    ("bob", "GET", "/apis/apps/v1/namespaces/rb-a/deployments/d1/status", None, 200),
    ("bob", "GET", "/apis/apps/v1/namespaces/rb-b/deployments/d1/status", None, 404),  # allowed, absent
    ("bob", "GET", "/apis/apps/v1/namespaces/rb-a/deployments/d1", None, 403),        # subresource only
    ("bob", "PUT", "/apis/apps/v1/namespaces/rb-a/deployments/d1/status", {}, 403),
    ("bob", "GET", "/apis/apps/v1/namespaces/rb-a/deployments/d1/scale", None, 403),
    ("dave", "GET", "/api", None, 200),                                          # bootstrap discovery roles
    ("dave", "GET", "/apis", None, 200),
    ("dave", "GET", "/apis/apps/v1", None, 200),
    ("dave", "GET", "/version", None, 200),
    ("dave", "GET", "/openapi/v3", None, 200),
    ("dave", "GET", "/logs/anything", None, 403),
    ("dave", "GET", "/api/v1/namespaces/default/configmaps", None, 403),
])
def test_rbac_matrix(matrix, who, method, path, body, code):
    content_type = "application/merge-patch+json" if method == "PATCH" else "application/json"
    status, result = call(matrix, who, method, path, body, content_type=content_type)
    assert status == code, result


def test_forbidden_status_body(matrix):
    status, body = call(matrix, "alice", "DELETE", "/api/v1/namespaces/rb-a/configmaps/cm2")
    assert status == 403
    assert body["kind"] == "Status" and body["status"] == "Failure" and body["reason"] == "Forbidden"
    assert body["code"] == 403
    assert body["message"] == ('configmaps "cm2" is forbidden: User "alice" cannot delete resource "configmaps" in '
                               'API group "" in the namespace "rb-a" in workspace "root"')
    assert body["details"]["name"] == "cm2" and body["details"]["kind"] == "configmaps"
    status, body = call(matrix, "bob", "GET", "/apis/apps/v1/namespaces/rb-a/deployments/d1/scale")
    assert body["message"] == ('deployments.apps "d1" is forbidden: User "bob" cannot get resource '
                               '"deployments/scale" in API group "apps" in the namespace "rb-a" in workspace "root"')
    status, body = call(matrix, "dave", "GET", "/logs/anything")
    assert body["message"] == 'forbidden: User "dave" cannot get path "/logs/anything"'


def test_grants_and_revocations_apply_at_once(matrix):
    path = "/api/v1/namespaces/rb-b/configmaps"
    assert call(matrix, "dave", "GET", path)[0] == 403
    api = rbac(matrix)
    api.create_namespaced_role_binding("rb-b", client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name="dave-view"), subjects=[subject("User", "dave")],
        role_ref=client.V1RoleRef(api_group=GROUP, kind="ClusterRole", name="view")))
    assert call(matrix, "dave", "GET", path)[0] == 200
    assert call(matrix, "dave", "GET", "/api/v1/namespaces/rb-b/secrets")[0] == 403   # view does not read secrets
    api.delete_namespaced_role_binding("dave-view", "rb-b")
    assert call(matrix, "dave", "GET", path)[0] == 403


def test_role_ref_is_immutable_over_the_api(matrix):
    api = rbac(matrix)
    binding = api.read_namespaced_role_binding("read-cms", "rb-a")
    binding.role_ref.name = "cm1-editor"
    with pytest.raises(ApiException) as exc:
        api.replace_namespaced_role_binding("read-cms", "rb-a", binding)
    assert exc.value.status == 422
    assert json.loads(exc.value.body)["message"] == (
        f'RoleBinding.{GROUP} "read-cms" is invalid: roleRef: Invalid value: rbac.RoleRef{{APIGroup:"{GROUP}", '
        'Kind:"Role", Name:"cm1-editor"}: cannot change roleRef')
    with pytest.raises(ApiException) as exc:
        api.create_cluster_role(client.V1ClusterRole(metadata=client.V1ObjectMeta(name="no-verbs"),
                                                     rules=[client.V1PolicyRule(verbs=[], api_groups=[""],
                                                                                resources=["pods"])]))
    assert exc.value.status == 422
    message = json.loads(exc.value.body)["message"]
    assert "rules[0].verbs: Required value: verbs must contain at least one value" in message


def user_kubeconfig(shard, who: str, cluster: str = "root") -> str:
    path = shard.workdir / f"{who}.kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": who,
        "clusters": [{"name": "kcp", "cluster": {"server": f"{shard.url}/clusters/{cluster}",
                                                 "certificate-authority": shard.ca_file}}],
        "users": [{"name": who, "user": {"token": TOKENS[who]}}],
        "contexts": [{"name": who, "context": {"cluster": "kcp", "user": who}}]}))
    return str(path)


def test_kubectl_output(matrix):
    out = matrix.kubectl("get", "rolebindings", "-n", "rb-a").stdout.splitlines()
    assert out[0].split() == ["NAME", "ROLE", "AGE"]
    assert [line.split()[:2] for line in out[1:]] == [["edit-cm1", "Role/cm1-editor"], ["read-cms", "Role/cm-reader"]]
    out = matrix.kubectl("get", "roles", "-n", "rb-a").stdout.splitlines()
    assert out[0].split() == ["NAME", "CREATED", "AT"] and out[1].split()[0] == "cm-reader"
    wide = matrix.kubectl("get", "clusterrolebindings", "deploy-status", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "ROLE", "AGE", "USERS", "GROUPS", "SERVICEACCOUNTS"]
    assert wide[1].split()[:2] == ["deploy-status", "ClusterRole/deploy-status"] and wide[1].split()[3] == "bob"
    names = matrix.kubectl("get", "clusterroles", "-o", "name").stdout.split()
    assert {"clusterrole.rbac.authorization.k8s.io/cluster-admin",
            "clusterrole.rbac.authorization.k8s.io/system:discovery"} <= set(names)
    denied = matrix.kubectl("--kubeconfig", user_kubeconfig(matrix, "alice"), "get", "configmaps", "-n", "rb-b",
                            check=False)
    assert denied.returncode != 0
    assert ('Error from server (Forbidden): configmaps is forbidden: User "alice" cannot list resource "configmaps" '
            'in API group "" in the namespace "rb-b"') in denied.stderr
    allowed = matrix.kubectl("--kubeconfig", user_kubeconfig(matrix, "alice"), "get", "configmaps", "-n", "rb-a",
                             "-o", "name")
    assert allowed.stdout.split() == ["configmap/cm1", "configmap/cm2"]


CHILD_PATHS = [("GET", "/api"), ("GET", "/apis"), ("GET", "/apis/rbac.authorization.k8s.io/v1"),
               ("GET", "/version"), ("GET", "/openapi/v3"), ("GET", "/healthz"),
               ("GET", "/api/v1/namespaces"), ("GET", "/api/v1/namespaces/default/configmaps"),
               ("POST", "/api/v1/namespaces/default/configmaps"),
               ("GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles"),
               ("DELETE", "/api/v1/namespaces/default")]


def test_entering_a_workspace_needs_access_in_its_parent(shard):
    shard.run(shard.shard.registry.ensure_logical_cluster, "root:team")
    team_roles = {r.metadata.name for r in rbac(shard, "root:team").list_cluster_role().items}
    assert {"cluster-admin", "admin", "edit", "view", "system:basic-user"} <= team_roles   # bootstrap policy
    # cluster-admin inside the workspace is not enough without access in the parent
    rbac(shard, "root:team").create_cluster_role_binding(client.V1ClusterRoleBinding(
        metadata=client.V1ObjectMeta(name="alice-admin"), subjects=[subject("User", "alice")],
        role_ref=client.V1RoleRef(api_group=GROUP, kind="ClusterRole", name="cluster-admin")))
    for method, path in CHILD_PATHS:
        status, body = call(shard, "alice", method, path, {"metadata": {"name": "x"}} if method == "POST" else None,
                            cluster="root:team")
        assert status == 403, (method, path, body)
        assert body["reason"] == "Forbidden" and body["message"].endswith(": workspace access not permitted")
    # access on another workspace's content grants nothing here
    content = rule(["access"], ["tenancy.kcp.dev"], ["clusterworkspaces/content"], ["other"])
    grant_cluster_role(shard, "other-access", [content], subject("User", "alice"))
    assert call(shard, "alice", "GET", "/api", cluster="root:team")[0] == 403
    # access on clusterworkspaces/content named team, in root, lets alice in; then the RBAC inside applies
    grant_cluster_role(shard, "team-access", [rule(["access"], ["tenancy.kcp.dev"], ["clusterworkspaces/content"],
                                                   ["team"])], subject("Group", "devs"))
    for method, path in CHILD_PATHS:
        if method == "DELETE":
            continue
        status, body = call(shard, "alice", method, path,
                            {"metadata": {"name": "x"}} if method == "POST" else None, cluster="root:team")
        assert status in (200, 201, 404), (method, path, body)     # /healthz in a cluster is a 404
        assert status != 404 or path == "/healthz"
    # carol (group devs) is let in by the same binding but has no RBAC inside: discovery yes, objects no
    assert call(shard, "carol", "GET", "/api", cluster="root:team")[0] == 200
    status, body = call(shard, "carol", "GET", "/api/v1/namespaces/default/configmaps", cluster="root:team")
    assert status == 403 and body["message"] == (
        'configmaps is forbidden: User "carol" cannot list resource "configmaps" in API group "" in the namespace '
        '"default" in workspace "root:team"')
    # bob has no access at all; the cross-cluster view is for system:masters only
    assert call(shard, "bob", "GET", "/api", cluster="root:team")[0] == 403
    assert call(shard, "alice", "GET", "/api/v1/configmaps", cluster="*")[0] == 403
    # the Python client as alice, through the workspace URL
    configuration = client.Configuration()
    configuration.host = f"{shard.url}/clusters/root:team"
    configuration.ssl_ca_cert = shard.ca_file
    configuration.api_key = {"authorization": f"Bearer {TOKENS['alice']}"}
    names = [n.metadata.name for n in client.CoreV1Api(client.ApiClient(configuration)).list_namespace().items]
    assert "default" in names
