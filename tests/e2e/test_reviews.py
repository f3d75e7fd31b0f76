"""The review APIs against a real shard: TokenReview, SelfSubjectReview, (Local|Self)SubjectAccessReview,
SelfSubjectRulesReview, with the kubernetes Python client, raw JSON and kubectl 1.32 (``auth can-i``,
``auth whoami``, which send protobuf bodies)."""

from __future__ import annotations

import json

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from server import pki
from tests.e2e.test_authn import (admin_cert, bind, client_for, issue_cert, new_workspace, raw,
                                  request_token, sa_subject, service_account, token_kubeconfig, unique, user_subject)

AUTHZ = "/apis/authorization.k8s.io/v1"
AUTHN = "/apis/authentication.k8s.io/v1"


@pytest.fixture(scope="module")
def shard(kcp_shard_module):
    return kcp_shard_module


@pytest.fixture(scope="module")
def editor(shard):
    """A user (client certificate) bound to ``edit`` in namespace ``default`` of root."""
    name = unique("editor")
    bind(shard, "root", "edit", user_subject(name), namespace="default")
    return name, issue_cert(shard, name, ("team",))


def can(api: client.ApiClient, verb: str, resource: str, namespace: str = "default", **extra) -> bool:
    review = client.AuthorizationV1Api(api).create_self_subject_access_review(client.V1SelfSubjectAccessReview(
        spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=client.V1ResourceAttributes(
            verb=verb, resource=resource, namespace=namespace, **extra))))
    return review.status.allowed


def sar(shard, spec: dict, cluster: str = "root", namespace: str | None = None):
    path = f"/clusters/{cluster}{AUTHZ}/" + (f"namespaces/{namespace}/localsubjectaccessreviews" if namespace
                                            else "subjectaccessreviews")
    kind = "LocalSubjectAccessReview" if namespace else "SubjectAccessReview"
    return raw(shard, "POST", path, cert=admin_cert(shard),
               body={"apiVersion": "authorization.k8s.io/v1", "kind": kind, "spec": spec})


def list_configmaps(namespace: str = "default") -> dict:
    return {"verb": "list", "resource": "configmaps", "namespace": namespace}


# ------------------------------------------------------------------------------ discovery and verbs


def test_discovery_lists_create_only_review_types(shard):
    api = shard.api_client()
    authz = client.AuthorizationV1Api(api).get_api_resources()
    assert {r.name: r.verbs for r in authz.resources} == {
        "localsubjectaccessreviews": ["create"], "selfsubjectaccessreviews": ["create"],
        "selfsubjectrulesreviews": ["create"], "subjectaccessreviews": ["create"]}
    authn = client.AuthenticationV1Api(api).get_api_resources()
    assert {r.name for r in authn.resources} == {"tokenreviews", "selfsubjectreviews"}
    response = raw(shard, "GET", f"/clusters/root{AUTHZ}/subjectaccessreviews", cert=admin_cert(shard))
    assert response.status_code == 405


# ------------------------------------------------------------------------------ SelfSubjectAccessReview


def test_self_subject_access_review(shard, editor):
    name, cert = editor
    admin = shard.api_client()
    assert can(admin, "delete", "namespaces", namespace="")
    api = client_for(shard, cert=cert)
    assert can(api, "create", "configmaps")
    assert can(api, "create", "serviceaccounts", subresource="token")
    assert not can(api, "list", "configmaps", namespace="kube-system")
    assert not can(api, "create", "roles", group="rbac.authorization.k8s.io")
    review = client.AuthorizationV1Api(api).create_self_subject_access_review(client.V1SelfSubjectAccessReview(
        spec=client.V1SelfSubjectAccessReviewSpec(non_resource_attributes=client.V1NonResourceAttributes(
            verb="get", path="/healthz"))))
    assert review.status.allowed


def test_self_subject_access_review_needs_exactly_one_attribute_kind(shard):
    response = raw(shard, "POST", f"/clusters/root{AUTHZ}/selfsubjectaccessreviews", cert=admin_cert(shard),
                   body={"spec": {}})
    assert response.status_code == 422
    assert "exactly one of nonResourceAttributes or resourceAttributes must be specified" in response.json()["message"]


# ------------------------------------------------------------------------------ SelfSubjectRulesReview


def test_self_subject_rules_review(shard, editor):
    _, cert = editor
    rules = client.AuthorizationV1Api(client_for(shard, cert=cert)).create_self_subject_rules_review(
        client.V1SelfSubjectRulesReview(spec=client.V1SelfSubjectRulesReviewSpec(namespace="default"))).status
    assert not rules.incomplete
    granted = {(verb, resource) for rule in rules.resource_rules for verb in rule.verbs for resource in rule.resources}
    assert ("create", "configmaps") in granted and ("create", "serviceaccounts/token") in granted
    assert ("create", "selfsubjectaccessreviews") in granted  # system:basic-user, through system:authenticated
    admin = client.AuthorizationV1Api(shard.api_client()).create_self_subject_rules_review(
        client.V1SelfSubjectRulesReview(spec=client.V1SelfSubjectRulesReviewSpec(namespace="default"))).status
    assert any(r.verbs == ["*"] and r.resources == ["*"] for r in admin.resource_rules)
    response = raw(shard, "POST", f"/clusters/root{AUTHZ}/selfsubjectrulesreviews", cert=cert, body={"spec": {}})
    assert response.status_code == 400


# ------------------------------------------------------------------------------ SubjectAccessReview


def test_subject_access_review_matches_the_real_decision(shard, editor):
    name, cert = editor
    allowed = sar(shard, {"user": name, "resourceAttributes": list_configmaps()})
    assert allowed.status_code == 201
    body = allowed.json()
    assert body["kind"] == "SubjectAccessReview" and body["status"]["allowed"] is True
    assert "RBAC: allowed by RoleBinding" in body["status"]["reason"]
    assert sar(shard, {"user": name, "resourceAttributes": list_configmaps("other")}).json()["status"] == \
        {"allowed": False}
    assert sar(shard, {"groups": ["system:masters"], "nonResourceAttributes": {"verb": "get", "path": "/x"}}).json()[
        "status"]["allowed"] is True
    typed = client.AuthorizationV1Api(shard.api_client()).create_subject_access_review(client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(user=name, resource_attributes=client.V1ResourceAttributes(
            verb="delete", resource="configmaps", namespace="default", name="x"))))
    assert typed.status.allowed


def test_subject_access_review_validation_and_permission(shard, editor):
    _, cert = editor
    none = sar(shard, {"resourceAttributes": list_configmaps()})
    assert none.status_code == 422 and "at least one of user or group must be specified" in none.json()["message"]
    both = sar(shard, {"user": "x", "resourceAttributes": list_configmaps(),
                       "nonResourceAttributes": {"verb": "get", "path": "/"}})
    assert both.status_code == 422
    response = raw(shard, "POST", f"/clusters/root{AUTHZ}/subjectaccessreviews", cert=cert,
                   body={"spec": {"user": "x", "resourceAttributes": list_configmaps()}})
    assert response.status_code == 403  # asking about others is for admins and delegating servers


def test_subject_access_review_for_service_accounts_is_workspace_bound(shard):
    ws = new_workspace(shard)
    bind(shard, ws, "view", sa_subject("robot"), namespace="default")
    spec = {"user": "system:serviceaccount:default:robot",
            "groups": ["system:serviceaccounts", "system:serviceaccounts:default"],
            "resourceAttributes": list_configmaps()}
    assert sar(shard, spec, cluster=ws).json()["status"]["allowed"] is True  # this workspace's account
    home = sar(shard, {**spec, "extra": {"authentication.kcp.io/cluster": [ws]}}, cluster=ws)
    assert home.json()["status"]["allowed"] is True
    foreign = sar(shard, {**spec, "extra": {"authentication.kcp.io/cluster": ["root:elsewhere"]}}, cluster=ws)
    assert foreign.json()["status"]["allowed"] is False


def test_local_subject_access_review(shard, editor):
    name, _ = editor
    ok = sar(shard, {"user": name, "resourceAttributes": list_configmaps()}, namespace="default")
    assert ok.status_code == 201 and ok.json()["status"]["allowed"] is True
    assert ok.json()["metadata"]["namespace"] == "default"
    mismatch = sar(shard, {"user": name, "resourceAttributes": list_configmaps("other")}, namespace="default")
    assert mismatch.status_code == 400
    assert "spec.resourceAttributes.namespace must match namespace: default" in mismatch.json()["message"]
    non_resource = sar(shard, {"user": name, "nonResourceAttributes": {"verb": "get", "path": "/"}},
                       namespace="default")
    assert non_resource.status_code == 422


# ------------------------------------------------------------------------------ TokenReview and SelfSubjectReview


def token_review(shard, token: str, cluster: str = "root", audiences: list[str] | None = None) -> dict:
    response = raw(shard, "POST", f"/clusters/{cluster}{AUTHN}/tokenreviews", cert=admin_cert(shard),
                   body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                         "spec": {"token": token, **({"audiences": audiences} if audiences else {})}})
    assert response.status_code == 201, response.text
    return response.json()["status"]


def test_token_review(shard):
    ws = new_workspace(shard)
    sa = service_account(shard, ws)
    token = request_token(shard, sa).status.token
    typed = client.AuthenticationV1Api(shard.cluster_client(ws)).create_token_review(client.V1TokenReview(
        spec=client.V1TokenReviewSpec(token=token)))
    assert typed.status.authenticated
    assert typed.status.user.username == f"system:serviceaccount:default:{sa['name']}"
    assert typed.status.user.extra["authentication.kcp.io/cluster"] == [ws]
    assert typed.status.audiences == [shard.shard.service_account_tokens.issuer]
    elsewhere = token_review(shard, token, cluster="root")
    assert elsewhere["authenticated"] is False and "not valid in logical cluster" in elsewhere["error"]
    garbage = token_review(shard, "not-a-token")
    assert garbage["authenticated"] is False and garbage["error"]
    vault = request_token(shard, sa, audiences=["vault"]).status.token
    assert token_review(shard, vault, cluster=ws)["authenticated"] is False
    reviewed = token_review(shard, vault, cluster=ws, audiences=["vault"])
    assert reviewed["authenticated"] is True and reviewed["audiences"] == ["vault"]


def test_self_subject_review_reports_the_impersonated_user(shard):
    response = raw(shard, "POST", f"/clusters/root{AUTHN}/selfsubjectreviews", cert=admin_cert(shard),
                   headers={"Impersonate-User": "bob", "Impersonate-Group": "devs"}, body={})
    assert response.status_code == 201
    body = response.json()
    assert body["kind"] == "SelfSubjectReview" and body["apiVersion"] == "authentication.k8s.io/v1"
    assert body["status"]["userInfo"] == {"username": "bob", "uid": "", "groups": ["devs", "system:authenticated"],
                                          "extra": {}}


# ------------------------------------------------------------------------------ kubectl 1.32 (protobuf bodies)


def cert_kubeconfig(shard, cert: tuple[str, str]) -> str:
    path = shard.workdir / f"{unique('user')}.kubeconfig"
    with open(cert[0], "rb") as c, open(cert[1], "rb") as k:
        pki.write_kubeconfig(path, server_base=shard.url, ca_pem=shard.shard.pki.ca_pem, cert_pem=c.read(),
                             key_pem=k.read(), contexts={"root": "/clusters/root"}, current="root")
    return str(path)


def test_kubectl_auth_can_i(shard, editor):
    _, cert = editor
    kubeconfig = cert_kubeconfig(shard, cert)
    assert shard.kubectl("--kubeconfig", kubeconfig, "auth", "can-i", "create", "configmaps").stdout.strip() == "yes"
    denied = shard.kubectl("--kubeconfig", kubeconfig, "auth", "can-i", "create", "roles", check=False)
    assert denied.returncode == 1 and denied.stdout.strip() == "no"
    assert shard.kubectl("auth", "can-i", "*", "*").stdout.strip() == "yes"
    listing = shard.kubectl("--kubeconfig", kubeconfig, "auth", "can-i", "--list", "-n", "default").stdout
    rows = [line.split() for line in listing.splitlines()]
    assert rows[0][:2] == ["Resources", "Non-Resource"]
    assert any(row[0] == "configmaps" for row in rows[1:])


def test_kubectl_auth_whoami(shard, editor):
    name, cert = editor
    out = shard.kubectl("--kubeconfig", cert_kubeconfig(shard, cert), "auth", "whoami", "-o", "json").stdout
    info = json.loads(out)["status"]["userInfo"]
    assert info["username"] == name and info["groups"] == ["team", "system:authenticated"]
    table = shard.kubectl("auth", "whoami").stdout
    assert "kcp-admin" in table and "system:masters" in table
    sa = service_account(shard)
    token = request_token(shard, sa).status.token
    out = shard.kubectl("--kubeconfig", token_kubeconfig(shard, token), "auth", "whoami", "-o", "json").stdout
    assert json.loads(out)["status"]["userInfo"]["username"] == f"system:serviceaccount:default:{sa['name']}"
    impersonated = shard.kubectl("auth", "whoami", "--as", "bob", "--as-group", "devs", "-o", "json").stdout
    assert json.loads(impersonated)["status"]["userInfo"]["groups"] == ["devs", "system:authenticated"]


def test_reviews_refuse_the_cross_cluster_view(shard):
    response = raw(shard, "POST", f"/clusters/*{AUTHN}/selfsubjectreviews", cert=admin_cert(shard), body={})
    assert response.status_code == 405
    with pytest.raises(ApiException):
        client.AuthenticationV1Api(shard.cluster_client("*")).create_self_subject_review(client.V1SelfSubjectReview())
