"""The tls-inventory plugin, installed with pip as a user would, in all three topologies (embedded, external
process, forwarded): kubectl and the Python client see the certificates, their expiry and never a key; who sees
what follows the plugin's two authorization rules."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes import client

from server.shard import ShardConfig
from server.testing import installed_plugins
from tests.topologies import TOPOLOGIES, running_topology

PROJECT = Path(__file__).resolve().parents[1]
RBAC = "rbac.authorization.k8s.io"
TOKENS = {"alice": "tls-inventory-token-of-alice-0123", "auditor": "tls-inventory-token-of-auditor-01"}
NOT_AFTER = dt.datetime(2031, 5, 17, 12, 0, tzinfo=dt.timezone.utc)


def tls_secret(name: str) -> client.V1Secret:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(NOT_AFTER - dt.timedelta(days=90))
            .not_valid_after(NOT_AFTER).sign(key, hashes.SHA256()))
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    data = {"tls.crt": cert.public_bytes(serialization.Encoding.PEM), "tls.key": pem_key}
    return client.V1Secret(metadata=client.V1ObjectMeta(name=name), type="kubernetes.io/tls",
                           data={k: base64.b64encode(v).decode() for k, v in data.items()})


def grant(api, role: str, user: str, rules: list[dict], namespace: str = "") -> None:
    rbac = client.RbacAuthorizationV1Api(api)
    rbac.create_cluster_role({"metadata": {"name": role}, "rules": rules})
    rbac.create_cluster_role_binding({"metadata": {"name": role}, "subjects": [{"kind": "User", "name": user}],
                                      "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": role}})


@pytest.fixture(scope="module")
def plugin():
    with installed_plugins(PROJECT) as target:
        yield target


@pytest.fixture(scope="module", params=TOPOLOGIES)
def topology(request, plugin, tmp_path_factory):
    tokens = tmp_path_factory.mktemp("tokens") / "tokens.csv"
    tokens.write_text("".join(f"{token},{user},{user}-uid\n" for user, token in TOKENS.items()))
    config = ShardConfig(virtual_workspaces=("tls-inventory",), token_auth_file=str(tokens))
    with running_topology(request.param, config) as (vw, shard, _):
        for cluster in ("root:team-a", "root:team-b"):
            shard.run(shard.shard.registry.ensure_logical_cluster, cluster)
            core = client.CoreV1Api(shard.cluster_client(cluster))
            core.create_namespaced_secret("default", tls_secret("web"))
            core.create_namespaced_secret("default", {"metadata": {"name": "password"}, "stringData": {"p": "s"}})
        root = shard.cluster_client("root")
        # alice may enter team-a and read its secrets; the auditor holds the inventory grant in root
        grant(root, "enter-team-a", "alice", [{"apiGroups": ["tenancy.kcp.dev"], "verbs": ["access"],
                                               "resources": ["clusterworkspaces/content"],
                                               "resourceNames": ["team-a"]}])
        grant(shard.cluster_client("root:team-a"), "read-secrets", "alice",
              [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]}])
        grant(root, "certificate-auditor", "auditor",
              [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["inventory"]}])
        yield vw, shard


def get(topology, path: str, user: str, **params) -> requests.Response:
    vw, shard = topology
    return requests.get(vw.url(f"tls-inventory/{path}"), params=params, verify=shard.ca_file, timeout=30,
                        headers={"Authorization": f"Bearer {TOKENS[user]}"})


def test_a_workspace_shows_its_certificates_without_their_keys(topology):
    response = get(topology, "clusters/root:team-a/api/v1/namespaces/default/secrets", "alice")
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [s["metadata"]["name"] for s in items] == ["web"]  # the Opaque secret is not a certificate
    assert set(items[0]["data"]) == {"tls.crt"}


def test_another_workspace_and_the_wildcard_are_forbidden_to_alice(topology):
    for path in ("clusters/root:team-b/api/v1/secrets", "clusters/*/api/v1/secrets"):
        response = get(topology, path, "alice")
        assert response.status_code == 403, response.text
        assert response.json()["kind"] == "Status"


def test_the_auditor_sees_every_workspace_and_kubectl_shows_the_expiry(topology):
    response = get(topology, "clusters/*/api/v1/secrets", "auditor")
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert sorted(s["metadata"]["annotations"]["kcp.dev/cluster"] for s in items) == ["root:team-a", "root:team-b"]
    assert all("tls.key" not in s["data"] for s in items)
    vw, _ = topology
    out = vw.kubectl("tls-inventory/clusters/*", "get", "secrets", "-A").stdout
    assert "EXPIRES" in out and out.count("2031-05-17T12:00:00Z") == 2, out


def test_it_is_read_only(topology):
    vw, _ = topology
    core = client.CoreV1Api(vw.api_client("tls-inventory/clusters/root:team-a"))  # even system:masters
    with pytest.raises(client.ApiException) as raised:
        core.create_namespaced_secret("default", tls_secret("new"))
    assert raised.value.status == 405, raised.value.body


def test_a_new_certificate_arrives_on_a_watch(topology):
    vw, shard = topology
    listed = get(topology, "clusters/*/api/v1/secrets", "auditor").json()
    core = client.CoreV1Api(shard.cluster_client("root:team-b"))
    core.create_namespaced_secret("default", tls_secret("api"))
    core.create_namespaced_secret("default", {"metadata": {"name": "other"}, "stringData": {"p": "s"}})
    response = get(topology, "clusters/*/api/v1/secrets", "auditor", watch="true", timeoutSeconds="2",
                   resourceVersion=listed["metadata"]["resourceVersion"])
    events = [json.loads(line) for line in response.text.splitlines()]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "api")]
    assert "tls.key" not in events[0]["object"]["data"]
