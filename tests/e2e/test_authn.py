"""Every way to authenticate against a real shard, and the forgery each one must refuse.

Client certificates, the static token file, service-account tokens (TokenRequest, expiry,
revocation, bound to their workspace), requestheaders from the shard proxy only, impersonation
only with the ``impersonate`` verb. Driven with the kubernetes Python client, raw HTTPS (to send
exactly the headers a forger would) and kubectl.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
import uuid

import pytest
import requests
import urllib3
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from kubernetes import client
from kubernetes.client.rest import ApiException

from server import pki
from server.auth.serviceaccounts import ServiceAccountTokens
from server.shard import ShardConfig
from server.testing import running_shard

STATIC_TOKEN = "static-token-of-carol-0123456789"
RBAC = "rbac.authorization.k8s.io"


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    token_file = tmp_path_factory.mktemp("tokens") / "tokens.csv"
    token_file.write_text(f'{STATIC_TOKEN},carol,carol-uid,"ops,dev"\n')
    with running_shard(ShardConfig(token_auth_file=str(token_file))) as running:
        yield running


# ------------------------------------------------------------------------------ helpers (also used by test_reviews)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def issue_cert(shard, cn: str, groups: tuple[str, ...] = (), ca: pki.CA | None = None) -> tuple[str, str]:
    """A client certificate (and key) for ``cn``, by the shard CA unless another ``ca`` is given."""
    directory = shard.workdir / "certs"
    directory.mkdir(exist_ok=True)
    cert_pem, key_pem = (ca or shard.shard.pki.ca).issue(cn, groups)
    stem = directory / unique(cn.replace(":", "-"))
    pki.write_pem_pair(f"{stem}.crt", f"{stem}.key", cert_pem, key_pem)
    return f"{stem}.crt", f"{stem}.key"


def client_for(shard, cluster: str = "root", *, cert: tuple[str, str] | None = None,
               token: str | None = None) -> client.ApiClient:
    """A kubernetes ``ApiClient`` for one logical cluster with exactly the given credential."""
    configuration = client.Configuration(host=f"{shard.url}/clusters/{cluster}", ssl_ca_cert=shard.ca_file,
                                         retries=0)
    if cert:
        configuration.cert_file, configuration.key_file = cert
    if token:
        configuration.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(configuration)


def raw(shard, method: str, path: str, *, cert=None, token: str | None = None, headers: dict | None = None,
        body=None) -> requests.Response:
    """One HTTPS request with exactly these headers (what a forger controls)."""
    sent = dict(headers or {})
    if token:
        sent["Authorization"] = f"Bearer {token}"
    return requests.request(method, shard.url + path, cert=cert, headers=sent, json=body, verify=shard.ca_file,
                            timeout=10)


def whoami(shard, cluster: str = "root", **credentials) -> dict:
    """``status.userInfo`` of a SelfSubjectReview sent with ``credentials`` (see ``raw``)."""
    response = raw(shard, "POST", f"/clusters/{cluster}/apis/authentication.k8s.io/v1/selfsubjectreviews",
                   body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}, **credentials)
    assert response.status_code == 201, response.text
    return response.json()["status"]["userInfo"]


def admin_cert(shard) -> tuple[str, str]:
    return str(shard.shard.pki.admin_cert_path), str(shard.shard.pki.admin_key_path)


def bind(shard, cluster: str, role: str, subject: dict, *, namespace: str = "", rules: list | None = None) -> None:
    """Bind (Cluster)Role ``role`` to ``subject`` in ``cluster``, creating the role from ``rules`` if given."""
    rbac = client.RbacAuthorizationV1Api(shard.cluster_client(cluster))
    name = unique("b")
    kind = "Role" if namespace and rules is not None else "ClusterRole"
    if rules is not None:
        meta = client.V1ObjectMeta(name=role, namespace=namespace or None)
        if kind == "Role":
            rbac.create_namespaced_role(namespace, client.V1Role(metadata=meta, rules=rules))
        else:
            rbac.create_cluster_role(client.V1ClusterRole(metadata=meta, rules=rules))
    ref = client.V1RoleRef(api_group=RBAC, kind=kind, name=role)
    subjects = [client.RbacV1Subject(**subject)]
    if namespace:
        rbac.create_namespaced_role_binding(namespace, client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name=name), role_ref=ref, subjects=subjects))
    else:
        rbac.create_cluster_role_binding(client.V1ClusterRoleBinding(
            metadata=client.V1ObjectMeta(name=name), role_ref=ref, subjects=subjects))


def user_subject(name: str) -> dict:
    return {"kind": "User", "name": name, "api_group": RBAC}


def sa_subject(name: str, namespace: str = "default") -> dict:
    return {"kind": "ServiceAccount", "name": name, "namespace": namespace}


def new_workspace(shard, name: str | None = None) -> str:
    cluster = f"root:{name or unique('ws')}"
    shard.run(shard.shard.registry.ensure_logical_cluster, cluster)
    return cluster


def service_account(shard, cluster: str = "root", name: str | None = None, namespace: str = "default") -> dict:
    name = name or unique("robot")
    core = client.CoreV1Api(shard.cluster_client(cluster))
    created = core.create_namespaced_service_account(namespace, client.V1ServiceAccount(
        metadata=client.V1ObjectMeta(name=name)))
    return {"name": name, "namespace": namespace, "uid": created.metadata.uid, "cluster": cluster}


def request_token(shard, sa: dict, *, expiration: int | None = None, audiences: list[str] | None = None
                  ) -> client.AuthenticationV1TokenRequest:
    core = client.CoreV1Api(shard.cluster_client(sa["cluster"]))
    return core.create_namespaced_service_account_token(sa["name"], sa["namespace"], client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=audiences or [], expiration_seconds=expiration)))


def token_kubeconfig(shard, token: str, cluster: str = "root") -> str:
    path = shard.workdir / f"{unique('token')}.kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"{shard.url}/clusters/{cluster}",
                                                "certificate-authority": shard.ca_file}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": token}}]}))
    return str(path)


# ------------------------------------------------------------------------------ client certificates


def test_client_certificate_identity(shard):
    alice = issue_cert(shard, "alice", ("devs", "admins"))
    review = client.AuthenticationV1Api(client_for(shard, cert=alice)).create_self_subject_review(
        client.V1SelfSubjectReview())
    assert review.status.user_info.username == "alice"
    assert review.status.user_info.groups == ["devs", "admins", "system:authenticated"]


def test_certificate_from_unknown_ca_is_refused(shard):
    stranger = issue_cert(shard, "kcp-admin", ("system:masters",), ca=pki.CA.create("kcp-shard-ca"))
    with pytest.raises(requests.exceptions.SSLError):
        raw(shard, "GET", "/clusters/root/api/v1/namespaces", cert=stranger)


# ------------------------------------------------------------------------------ bearer tokens


def test_static_token_file(shard):
    info = whoami(shard, token=STATIC_TOKEN)
    assert info == {"username": "carol", "uid": "carol-uid", "groups": ["ops", "dev", "system:authenticated"],
                    "extra": {}}
    response = raw(shard, "GET", "/clusters/root/api/v1/namespaces", token=STATIC_TOKEN + "x")
    assert response.status_code == 401 and response.json()["reason"] == "Unauthorized"


def test_no_credentials_is_401_but_health_and_version_are_open(shard):
    response = raw(shard, "GET", "/clusters/root/api/v1/namespaces")
    assert response.status_code == 401 and response.json()["kind"] == "Status"
    for path in ("/healthz", "/livez", "/readyz", "/version"):
        assert raw(shard, "GET", path).status_code == 200


def test_service_account_token_request_and_use(shard):
    sa = service_account(shard)
    issued = request_token(shard, sa, expiration=900)
    remaining = issued.status.expiration_timestamp - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(seconds=880) < remaining <= dt.timedelta(seconds=900)
    api = client_for(shard, token=issued.status.token)
    info = client.AuthenticationV1Api(api).create_self_subject_review(client.V1SelfSubjectReview()).status.user_info
    assert info.username == f"system:serviceaccount:default:{sa['name']}" and info.uid == sa["uid"]
    assert info.groups == ["system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"]
    assert info.extra["authentication.kcp.io/cluster"] == ["root"]
    core = client.CoreV1Api(api)
    with pytest.raises(ApiException) as exc:
        core.list_namespaced_config_map("default")
    assert exc.value.status == 403 and f'User \\"system:serviceaccount:default:{sa["name"]}\\"' in exc.value.body
    bind(shard, "root", "view", sa_subject(sa["name"]), namespace="default")
    assert core.list_namespaced_config_map("default").items is not None


def test_token_request_defaults_and_validation(shard):
    sa = service_account(shard)
    default = request_token(shard, sa)
    remaining = default.status.expiration_timestamp - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(seconds=3500) < remaining <= dt.timedelta(seconds=3600)
    assert default.spec.audiences == [shard.shard.service_account_tokens.issuer]
    with pytest.raises(ApiException) as exc:
        request_token(shard, sa, expiration=300)
    assert exc.value.status == 422 and "may not specify a duration less than 10 minutes" in exc.value.body
    with pytest.raises(ApiException) as exc:
        request_token(shard, {**sa, "name": "nobody"})
    assert exc.value.status == 404


def test_token_for_another_audience_is_not_an_api_credential(shard):
    sa = service_account(shard)
    token = request_token(shard, sa, audiences=["vault"]).status.token
    assert raw(shard, "GET", "/clusters/root/api", token=token).status_code == 401


def test_expired_token_is_401(shard):
    sa = service_account(shard)
    token, _ = shard.shard.service_account_tokens.issue("root", "default", sa["name"], sa["uid"],
                                                        expiration_seconds=600, now=time.time() - 601)
    response = raw(shard, "GET", "/clusters/root/api/v1/namespaces/default/configmaps", token=token)
    assert response.status_code == 401 and response.json()["reason"] == "Unauthorized"


def test_forged_tokens_are_401(shard):
    sa = service_account(shard)
    token = request_token(shard, sa).status.token
    header, payload, signature = token.split(".")
    claims = json.loads(_b64decode(payload))
    claims["sub"] = "system:serviceaccount:default:admin"
    forged = f"{header}.{_b64encode(json.dumps(claims).encode())}.{signature}"
    assert raw(shard, "GET", "/clusters/root/api", token=forged).status_code == 401
    stranger = ServiceAccountTokens(ec.generate_private_key(ec.SECP256R1()))
    own_key, _ = stranger.issue("root", "default", sa["name"], sa["uid"])
    assert raw(shard, "GET", "/clusters/root/api", token=own_key).status_code == 401


def test_deleting_the_account_revokes_its_tokens(shard):
    sa = service_account(shard)
    token = request_token(shard, sa).status.token
    assert whoami(shard, token=token)["uid"] == sa["uid"]
    core = client.CoreV1Api(shard.cluster_client("root"))
    core.delete_namespaced_service_account(sa["name"], "default")
    assert raw(shard, "GET", "/clusters/root/api", token=token).status_code == 401
    service_account(shard, name=sa["name"])  # same name, new uid: the old token stays dead
    assert raw(shard, "GET", "/clusters/root/api", token=token).status_code == 401


def test_token_is_only_valid_in_its_own_workspace(shard):
    home, elsewhere = new_workspace(shard), new_workspace(shard)
    sa = service_account(shard, home, name="robot")
    service_account(shard, elsewhere, name="robot")  # a namesake in the other workspace...
    bind(shard, elsewhere, "view", sa_subject("robot"), namespace="default")  # ...which may read configmaps
    bind(shard, home, "view", sa_subject("robot"), namespace="default")
    token = request_token(shard, sa).status.token
    assert whoami(shard, home, token=token)["username"] == "system:serviceaccount:default:robot"
    assert raw(shard, "GET", f"/clusters/{home}/api/v1/namespaces/default/configmaps", token=token).status_code == 200
    response = raw(shard, "GET", f"/clusters/{elsewhere}/api/v1/namespaces/default/configmaps", token=token)
    assert response.status_code == 403
    assert 'User "system:anonymous"' in response.json()["message"]
    response = raw(shard, "GET", "/clusters/root/api/v1/namespaces/default/configmaps", token=token)
    assert response.status_code == 403 and 'User "system:anonymous"' in response.json()["message"]


def test_token_bound_to_a_secret_dies_with_it(shard):
    sa = service_account(shard)
    core = client.CoreV1Api(shard.cluster_client("root"))
    secret = core.create_namespaced_secret("default", client.V1Secret(metadata=client.V1ObjectMeta(name=unique("s"))))
    issued = core.create_namespaced_service_account_token(sa["name"], "default", client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], bound_object_ref=client.V1BoundObjectReference(
            kind="Secret", api_version="v1", name=secret.metadata.name))))
    assert issued.spec.bound_object_ref.uid == secret.metadata.uid
    assert whoami(shard, token=issued.status.token)["uid"] == sa["uid"]
    core.delete_namespaced_secret(secret.metadata.name, "default")
    assert raw(shard, "GET", "/clusters/root/api", token=issued.status.token).status_code == 401


def test_kubectl_create_token(shard):
    sa = service_account(shard)
    token = shard.kubectl("create", "token", sa["name"], "--duration", "15m").stdout.strip()
    info = client.AuthenticationV1Api(client_for(shard, token=token)).create_self_subject_review(
        client.V1SelfSubjectReview()).status.user_info
    assert info.username == f"system:serviceaccount:default:{sa['name']}"


# ------------------------------------------------------------------------------ requestheader


def test_requestheader_from_the_shard_proxy(shard):
    proxy = (str(shard.shard.pki.shard_proxy_cert_path), str(shard.shard.pki.shard_proxy_key_path))
    # a repeated header (X-Remote-Group) needs urllib3's HTTPHeaderDict; requests would send one
    http = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=shard.ca_file, cert_file=proxy[0],
                               key_file=proxy[1])
    headers = urllib3.HTTPHeaderDict()
    headers.add("X-Remote-User", "bob")
    headers.add("X-Remote-Group", "devs")
    headers.add("X-Remote-Group", "ops")
    headers.add("X-Remote-Extra-Acme.com%2Fproject", "p1")
    headers.add("Content-Type", "application/json")
    response = http.request("POST", f"{shard.url}/clusters/root/apis/authentication.k8s.io/v1/selfsubjectreviews",
                            body=b"{}", headers=headers)
    assert response.status == 201, response.data
    info = json.loads(response.data)["status"]["userInfo"]
    assert info == {"username": "bob", "uid": "", "groups": ["devs", "ops", "system:authenticated"],
                    "extra": {"acme.com/project": ["p1"]}}


SPOOF = {"X-Remote-User": "kcp-admin", "X-Remote-Group": "system:masters"}


def test_spoofed_requestheaders_from_a_plain_client_are_ignored(shard):
    response = raw(shard, "GET", "/clusters/root/api/v1/namespaces", headers=SPOOF)
    assert response.status_code == 401
    assert whoami(shard, token=STATIC_TOKEN, headers=SPOOF)["username"] == "carol"


def test_spoofed_requestheaders_from_a_user_certificate_are_ignored(shard):
    alice = issue_cert(shard, "alice")
    info = whoami(shard, cert=alice, headers=SPOOF)
    assert info["username"] == "alice" and "system:masters" not in info["groups"]


def test_requestheader_ca_certificate_with_another_name_is_not_a_proxy(shard):
    mallory = issue_cert(shard, "mallory", ca=shard.shard.pki.requestheader_ca)
    response = raw(shard, "GET", "/clusters/root/api/v1/namespaces", cert=mallory, headers=SPOOF)
    assert response.status_code == 401


def test_requestheader_ca_and_allowed_names_are_configurable(tmp_path):
    ca = pki.CA.create("front-proxy-ca")
    ca_file = tmp_path / "front-proxy-ca.crt"
    ca_file.write_bytes(ca.cert_pem)
    config = ShardConfig(requestheader_client_ca_file=str(ca_file), requestheader_allowed_names=["front-proxy"])
    with running_shard(config) as custom:
        front_proxy = issue_cert(custom, "front-proxy", ca=ca)
        assert whoami(custom, cert=front_proxy, headers={"X-Remote-User": "bob"})["username"] == "bob"
        other_name = issue_cert(custom, "kcp-shard-proxy", ca=ca)
        generated = (str(custom.shard.pki.shard_proxy_cert_path), str(custom.shard.pki.shard_proxy_key_path))
        for cert in (other_name, generated):
            response = raw(custom, "GET", "/clusters/root/api", cert=cert, headers={"X-Remote-User": "bob"})
            assert response.status_code == 401


# ------------------------------------------------------------------------------ impersonation


def test_admin_impersonates(shard):
    info = whoami(shard, cert=admin_cert(shard), headers={"Impersonate-User": "bob", "Impersonate-Group": "devs",
                                                            "Impersonate-Uid": "bob-1",
                                                            "Impersonate-Extra-Scopes": "s1"})
    assert info == {"username": "bob", "uid": "bob-1", "groups": ["devs", "system:authenticated"],
                    "extra": {"scopes": ["s1"]}}


def test_impersonation_without_the_verb_is_403(shard):
    dave = issue_cert(shard, "dave")
    response = raw(shard, "GET", "/clusters/root/api/v1/namespaces", cert=dave, headers={"Impersonate-User": "bob"})
    assert response.status_code == 403
    assert response.json()["message"].startswith(
        'users "bob" is forbidden: User "dave" cannot impersonate resource "users" in API group "" at the cluster '
        "scope")


def test_impersonation_is_limited_to_what_is_granted(shard):
    erin = issue_cert(shard, "erin")
    bind(shard, "root", unique("impersonate-bob"), user_subject("erin"), rules=[
        client.V1PolicyRule(verbs=["impersonate"], api_groups=[""], resources=["users"], resource_names=["bob"])])
    assert whoami(shard, cert=erin, headers={"Impersonate-User": "bob"})["username"] == "bob"
    response = raw(shard, "GET", "/clusters/root/api/v1/namespaces", cert=erin,
                   headers={"Impersonate-User": "bob", "Impersonate-Group": "system:masters"})
    assert response.status_code == 403 and response.json()["message"].startswith('groups "system:masters" is forbidden')
    response = raw(shard, "GET", "/clusters/root/api/v1/namespaces", cert=erin, headers={"Impersonate-User": "frank"})
    assert response.status_code == 403


def test_kubectl_as(shard):
    denied = shard.kubectl("--as", "bob", "get", "configmaps", "-n", "default", check=False)
    assert denied.returncode == 1
    assert 'User "bob" cannot list resource "configmaps"' in denied.stderr
    allowed = shard.kubectl("--as", "bob", "--as-group", "system:masters", "get", "namespaces", "-o", "name")
    assert "namespace/default" in allowed.stdout.split()


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")
