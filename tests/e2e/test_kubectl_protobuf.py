"""kubectl 1.32 commands that send protobuf bodies, against a real shard: the objects they create
read back right with ``get -o json``, and the review APIs answer ``auth can-i``/``whoami``.

Also the raw HTTP contract: a malformed protobuf body is a 400, an unknown kind a 415 naming it.
"""

from __future__ import annotations

import base64
import json
import uuid

import pytest

PROTOBUF = "application/vnd.kubernetes.protobuf"


@pytest.fixture(scope="module")
def shard(kcp_shard_module):
    return kcp_shard_module


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def request(shard, method: str, path: str, body: bytes | None = None, content_type: str | None = None):
    """A raw admin request (client certificate) so tests control the exact bytes and headers."""
    headers = {"Accept": "application/json"}
    if content_type:
        headers["Content-Type"] = content_type
    return shard.api_client().rest_client.pool_manager.request(method, shard.url + path, body=body, headers=headers)


def served(shard, group_version: str, resource: str) -> bool:
    """Whether discovery in root lists ``resource`` (RBAC and the review APIs come from other modules)."""
    path = f"/clusters/root/api/{group_version}" if group_version == "v1" else f"/clusters/root/apis/{group_version}"
    response = request(shard, "GET", path)
    return response.status == 200 and resource in {r["name"] for r in json.loads(response.data)["resources"]}


def require(shard, group_version: str, *resources: str) -> None:
    missing = [r for r in resources if not served(shard, group_version, r)]
    if missing:
        pytest.skip(f"{group_version} {', '.join(missing)} not served by this shard (discovery)")


def get_json(shard, *args: str) -> dict:
    return json.loads(shard.kubectl("get", *args, "-o", "json").stdout)


@pytest.fixture
def namespace(shard) -> str:
    name = unique("pb")
    assert shard.kubectl("create", "namespace", name).stdout.strip() == f"namespace/{name} created"
    return name


# --------------------------------------------------------------------------- core and apps

def test_create_namespace(shard, namespace):
    ns = get_json(shard, "namespace", namespace)
    assert ns["kind"] == "Namespace" and ns["metadata"]["name"] == namespace
    assert ns["metadata"]["uid"] and ns["metadata"]["creationTimestamp"]


def test_create_configmap_from_literals_and_files(shard, namespace, tmp_path):
    shard.kubectl("create", "configmap", "lit", "-n", namespace, "--from-literal=a=b", "--from-literal=c=d")
    assert get_json(shard, "configmap", "lit", "-n", namespace)["data"] == {"a": "b", "c": "d"}
    (tmp_path / "bin.dat").write_bytes(bytes(range(256)))
    (tmp_path / "text.txt").write_text("hello\n")
    shard.kubectl("create", "configmap", "files", "-n", namespace, f"--from-file={tmp_path / 'bin.dat'}",
                  f"--from-file={tmp_path / 'text.txt'}")
    cm = get_json(shard, "configmap", "files", "-n", namespace)
    assert cm["data"] == {"text.txt": "hello\n"}
    assert base64.b64decode(cm["binaryData"]["bin.dat"]) == bytes(range(256))


def test_create_secret_generic_and_docker_registry(shard, namespace):
    shard.kubectl("create", "secret", "generic", "s", "-n", namespace, "--from-literal=k=v")
    secret = get_json(shard, "secret", "s", "-n", namespace)
    assert secret["data"] == {"k": base64.b64encode(b"v").decode()} and secret["type"] == "Opaque"
    shard.kubectl("create", "secret", "docker-registry", "reg", "-n", namespace, "--docker-username=u",
                  "--docker-password=p", "--docker-server=r.example.com")
    reg = get_json(shard, "secret", "reg", "-n", namespace)
    assert reg["type"] == "kubernetes.io/dockerconfigjson"
    config = json.loads(base64.b64decode(reg["data"][".dockerconfigjson"]))
    assert config["auths"]["r.example.com"]["username"] == "u"


def test_create_serviceaccount(shard, namespace):
    assert shard.kubectl("create", "serviceaccount", "robot", "-n", namespace).returncode == 0
    sa = get_json(shard, "serviceaccount", "robot", "-n", namespace)
    assert sa["kind"] == "ServiceAccount" and sa["metadata"]["namespace"] == namespace


def test_create_deployment(shard, namespace):
    shard.kubectl("create", "deployment", "web", "-n", namespace, "--image=nginx", "--replicas=2", "--port=80")
    deployment = get_json(shard, "deployment", "web", "-n", namespace)
    spec = deployment["spec"]
    assert deployment["metadata"]["labels"] == {"app": "web"}
    assert spec["replicas"] == 2 and spec["selector"] == {"matchLabels": {"app": "web"}}
    assert spec["template"]["metadata"]["labels"] == {"app": "web"}
    [container] = spec["template"]["spec"]["containers"]
    assert container["name"] == "nginx" and container["image"] == "nginx"
    assert container["ports"][0]["containerPort"] == 80
    shard.kubectl("create", "deployment", "sleeper", "-n", namespace, "--image=busybox", "--", "sleep", "3600")
    sleeper = get_json(shard, "deployment", "sleeper", "-n", namespace)
    assert sleeper["spec"]["template"]["spec"]["containers"][0]["command"] == ["sleep", "3600"]


# --------------------------------------------------------------------------- rbac and reviews

def test_create_role_and_rolebinding_grant_access(shard, namespace):
    require(shard, "rbac.authorization.k8s.io/v1", "roles", "rolebindings")
    require(shard, "authorization.k8s.io/v1", "selfsubjectaccessreviews")
    user = unique("alice")
    shard.kubectl("create", "role", "reader", "-n", namespace, "--verb=get,list", "--resource=configmaps")
    role = get_json(shard, "role", "reader", "-n", namespace)
    assert role["rules"] == [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["configmaps"]}]
    shard.kubectl("create", "rolebinding", "reader", "-n", namespace, "--role=reader", f"--user={user}")
    binding = get_json(shard, "rolebinding", "reader", "-n", namespace)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"}
    assert binding["subjects"] == [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user}]
    can = shard.kubectl("auth", "can-i", "list", "configmaps", "-n", namespace, "--as", user, check=False)
    assert (can.returncode, can.stdout.strip()) == (0, "yes")
    cannot = shard.kubectl("auth", "can-i", "delete", "configmaps", "-n", namespace, "--as", user, check=False)
    assert (cannot.returncode, cannot.stdout.strip()) == (1, "no")


def test_create_clusterrole_and_clusterrolebinding(shard):
    require(shard, "rbac.authorization.k8s.io/v1", "clusterroles", "clusterrolebindings")
    name, group = unique("cr"), unique("g")
    shard.kubectl("create", "clusterrole", name, "--verb=get,watch", "--resource=namespaces,deployments.apps")
    role = get_json(shard, "clusterrole", name)
    assert {(tuple(r["apiGroups"]), tuple(r["resources"])) for r in role["rules"]} == {
        (("",), ("namespaces",)), (("apps",), ("deployments",))}
    urls = unique("urls")
    shard.kubectl("create", "clusterrole", urls, "--verb=get", "--non-resource-url=/logs/*")
    assert get_json(shard, "clusterrole", urls)["rules"] == [{"verbs": ["get"], "nonResourceURLs": ["/logs/*"]}]
    aggregated = unique("agg")
    shard.kubectl("create", "clusterrole", aggregated, "--aggregation-rule=example.com/aggregate=true")
    assert get_json(shard, "clusterrole", aggregated)["aggregationRule"] == {
        "clusterRoleSelectors": [{"matchLabels": {"example.com/aggregate": "true"}}]}
    shard.kubectl("create", "clusterrolebinding", name, f"--clusterrole={name}", f"--group={group}")
    binding = get_json(shard, "clusterrolebinding", name)
    assert binding["roleRef"]["name"] == name and binding["subjects"][0] == {
        "kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": group}


def test_auth_can_i_and_list(shard):
    require(shard, "authorization.k8s.io/v1", "selfsubjectaccessreviews", "selfsubjectrulesreviews")
    assert shard.kubectl("auth", "can-i", "create", "configmaps").stdout.strip() == "yes"
    assert shard.kubectl("auth", "can-i", "get", "/healthz").stdout.strip() == "yes"
    denied = shard.kubectl("auth", "can-i", "get", "configmaps", "--as", unique("nobody"), check=False)
    assert (denied.returncode, denied.stdout.strip()) == (1, "no")
    listing = shard.kubectl("auth", "can-i", "--list").stdout
    assert listing.splitlines()[0].split()[:2] == ["Resources", "Non-Resource"]


def test_auth_whoami(shard):
    require(shard, "authentication.k8s.io/v1", "selfsubjectreviews")
    out = shard.kubectl("auth", "whoami", "-o", "json").stdout
    info = json.loads(out)["status"]["userInfo"]
    assert info["username"] == "kcp-admin" and "system:masters" in info["groups"]


def test_create_token_then_whoami_with_it(shard, namespace):
    require(shard, "v1", "serviceaccounts/token")
    require(shard, "authentication.k8s.io/v1", "selfsubjectreviews")
    shard.kubectl("create", "serviceaccount", "bot", "-n", namespace)
    token = shard.kubectl("create", "token", "bot", "-n", namespace, "--duration=10m").stdout.strip()
    assert token.count(".") == 2
    out = shard.kubectl("auth", "whoami", "-o", "json", "--kubeconfig=/dev/null", f"--token={token}",
                        f"--certificate-authority={shard.ca_file}", server=f"{shard.url}/clusters/root", check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:bot"


# --------------------------------------------------------------------------- the HTTP contract

def test_malformed_protobuf_body_is_400(shard):
    response = request(shard, "POST", "/clusters/root/api/v1/namespaces", b"k8s\x00\x0a\x05ab", PROTOBUF)
    status = json.loads(response.data)
    assert response.status == 400 and status["reason"] == "BadRequest"
    assert "protobuf request body could not be decoded" in status["message"]
    no_envelope = request(shard, "POST", "/clusters/root/api/v1/namespaces", b"\x0a\x02{}", PROTOBUF)
    assert no_envelope.status == 400 and "k8s\\x00" in json.loads(no_envelope.data)["message"]


def test_unknown_protobuf_kind_is_415_naming_it(shard):
    def field(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2, len(payload)]) + payload

    body = b"k8s\x00" + field(1, field(1, b"batch/v1") + field(2, b"CronJob")) + field(2, b"")
    response = request(shard, "POST", "/clusters/root/api/v1/namespaces/default/configmaps", body, PROTOBUF)
    status = json.loads(response.data)
    assert response.status == 415 and status["reason"] == "UnsupportedMediaType"
    assert '"CronJob"' in status["message"] and "batch/v1" in status["message"]
