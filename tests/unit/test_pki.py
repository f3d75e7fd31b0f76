"""Shard PKI: generation, reuse across restarts, chains, names, and kubeconfigs."""

from __future__ import annotations

import stat
from ipaddress import ip_address
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import DNSName, IPAddress, PolicyBuilder, Store

from server import pki

FILES = ["ca", "apiserver", "admin", "requestheader-ca", "shard-proxy", "virtual-workspaces"]


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def cn(cert: x509.Certificate) -> str:
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def orgs(cert: x509.Certificate) -> list[str]:
    return [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]


def eku(cert: x509.Certificate) -> set:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def mtimes(root: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in root.iterdir()}


@pytest.fixture(scope="module")
def shard_pki(tmp_path_factory) -> pki.ShardPKI:
    return pki.ensure_shard_pki(tmp_path_factory.mktemp("pki"), "0.0.0.0")


def test_creates_every_file_with_private_keys_0600(shard_pki):
    for stem in FILES:
        crt, key = shard_pki.root / f"{stem}.crt", shard_pki.root / f"{stem}.key"
        assert crt.exists() and key.exists(), stem
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, stem
    assert shard_pki.serving_cert_path == shard_pki.root / "apiserver.crt"
    assert shard_pki.client_ca_files == [str(shard_pki.root / "ca.crt"), str(shard_pki.root / "requestheader-ca.crt")]
    assert shard_pki.admin_cert_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    assert b"PRIVATE KEY" in shard_pki.admin_key_pem


def test_second_call_reuses_everything(tmp_path):
    first = pki.ensure_shard_pki(tmp_path, "127.0.0.1")
    before = mtimes(tmp_path)
    second = pki.ensure_shard_pki(tmp_path, "127.0.0.1")
    assert mtimes(tmp_path) == before
    assert second.ca.cert == first.ca.cert
    assert second.requestheader_ca.cert == first.requestheader_ca.cert


def test_server_certs_verify_for_loopback_names(shard_pki):
    store = Store([shard_pki.ca.cert])
    for path in (shard_pki.serving_cert_path, shard_pki.virtual_workspaces_cert_path):
        leaf = load(path)
        for name in (DNSName("localhost"), IPAddress(ip_address("127.0.0.1")), IPAddress(ip_address("::1"))):
            chain = PolicyBuilder().store(store).build_server_verifier(name).verify(leaf, [])
            assert chain[-1] == shard_pki.ca.cert
        assert eku(leaf) == {ExtendedKeyUsageOID.SERVER_AUTH}
        assert pki.cert_names(leaf) == {"localhost", "127.0.0.1", "::1"}  # 0.0.0.0 is not a name


def test_admin_and_shard_proxy_client_certs(shard_pki):
    admin = load(shard_pki.admin_cert_path)
    admin.verify_directly_issued_by(shard_pki.ca.cert)
    assert (cn(admin), orgs(admin)) == ("kcp-admin", ["system:masters"])
    assert eku(admin) == {ExtendedKeyUsageOID.CLIENT_AUTH}

    proxy = load(shard_pki.shard_proxy_cert_path)
    proxy.verify_directly_issued_by(shard_pki.requestheader_ca.cert)
    assert not shard_pki.ca.signed(proxy)  # a different CA: not a user cert of this shard
    assert (cn(proxy), orgs(proxy)) == ("kcp-shard-proxy", [])
    assert eku(proxy) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cn(shard_pki.requestheader_ca.cert) != cn(shard_pki.ca.cert)


def test_ca_constraints(shard_pki):
    for ca in (shard_pki.ca, shard_pki.requestheader_ca):
        bc = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints)
        assert bc.critical and bc.value.ca
        assert ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign


def test_issue_one_o_per_group_and_both_usages(tmp_path):
    ca = pki.CA.create("test-ca")
    cert_pem, key_pem = ca.issue("alice", ["team-a", "developers"], server_names=["svc.local", "10.0.0.7"],
                                 ip_addresses=["fd00::1"], client=True, server=True)
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert cn(cert) == "alice" and orgs(cert) == ["team-a", "developers"]
    assert eku(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
    assert pki.cert_names(cert) == {"svc.local", "10.0.0.7", "fd00::1"}
    assert ca.signed(cert)
    pki.write_pem_pair(tmp_path / "a.crt", tmp_path / "a.key", cert_pem, key_pem)
    assert stat.S_IMODE((tmp_path / "a.key").stat().st_mode) == 0o600
    with pytest.raises(ValueError):
        ca.issue("nobody", client=False, server=False)


@pytest.mark.parametrize("bind,extra", [("10.1.2.3", "10.1.2.3"), ("kcp.example.test", "kcp.example.test"),
                                        ("[fd00::5]", "fd00::5")])
def test_serving_cert_reissued_when_bind_address_changes(tmp_path, bind, extra):
    pki.ensure_shard_pki(tmp_path, "0.0.0.0")
    before = mtimes(tmp_path)
    shard = pki.ensure_shard_pki(tmp_path, bind)
    after = mtimes(tmp_path)
    changed = {name for name in after if after[name] != before[name]}
    assert changed == {"apiserver.crt", "apiserver.key", "virtual-workspaces.crt", "virtual-workspaces.key"}
    for path in (shard.serving_cert_path, shard.virtual_workspaces_cert_path):
        assert pki.cert_names(load(path)) == {"localhost", "127.0.0.1", "::1", extra}
        assert shard.ca.signed(load(path))
    pki.ensure_shard_pki(tmp_path, bind)
    assert mtimes(tmp_path) == after


def test_leaf_reissued_when_ca_replaced(tmp_path):
    pki.ensure_shard_pki(tmp_path, "127.0.0.1")
    (tmp_path / "ca.crt").unlink()
    shard = pki.ensure_shard_pki(tmp_path, "127.0.0.1")
    for path in (shard.serving_cert_path, shard.admin_cert_path, shard.virtual_workspaces_cert_path):
        assert shard.ca.signed(load(path))


def test_mismatched_ca_key_is_an_error(tmp_path):
    pki.load_or_create_ca(tmp_path / "a.crt", tmp_path / "a.key", "a")
    pki.load_or_create_ca(tmp_path / "b.crt", tmp_path / "b.key", "b")
    with pytest.raises(ValueError):
        pki.load_or_create_ca(tmp_path / "a.crt", tmp_path / "b.key", "a")


def test_admin_kubeconfig_loads_into_client_configuration(tmp_path):
    from kubernetes import client, config

    shard = pki.ensure_shard_pki(tmp_path, "127.0.0.1")
    path = pki.write_admin_kubeconfig(tmp_path, shard, port=7443)
    assert path == tmp_path / "admin.kubeconfig"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    doc = yaml.safe_load(path.read_text())
    assert doc["current-context"] == "root"
    servers = {c["name"]: c["cluster"]["server"] for c in doc["clusters"]}
    assert servers == {"root": "https://127.0.0.1:7443/clusters/root", "base": "https://127.0.0.1:7443"}

    for context, host in servers.items():
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(path), context=context, client_configuration=cfg)
        assert cfg.host == host
        assert Path(cfg.ssl_ca_cert).read_bytes() == shard.ca_pem
        assert Path(cfg.cert_file).read_bytes() == shard.admin_cert_pem
        assert Path(cfg.key_file).read_bytes() == shard.admin_key_pem
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(path), client_configuration=cfg)
    assert cfg.host == servers["root"]


def test_a_restart_keeps_the_current_workspace_and_the_contexts_kcp_ws_wrote(tmp_path):
    from kcp_virtual.cli.workspace import Kubeconfig

    shard = pki.ensure_shard_pki(tmp_path, "127.0.0.1")
    path = pki.write_admin_kubeconfig(tmp_path, shard, port=7443)
    kubeconfig = Kubeconfig.load(str(path), None)
    kubeconfig.switch("root:team")  # what kcp ws use root:team writes
    doc = yaml.safe_load(path.read_text())
    doc["contexts"].append({"name": "elsewhere", "context": {"cluster": "other", "user": "admin"}})
    doc["clusters"].append({"name": "other", "cluster": {"server": "https://other.example:1/clusters/x"}})
    path.write_text(yaml.safe_dump(doc))

    pki.write_admin_kubeconfig(tmp_path, shard, port=7444)  # kcp start again, on another port
    doc = yaml.safe_load(path.read_text())
    assert doc["current-context"] == "root:team"
    servers = {c["name"]: c["cluster"]["server"] for c in doc["clusters"]}
    assert servers == {"root": "https://127.0.0.1:7444/clusters/root", "base": "https://127.0.0.1:7444",
                       "root:team": "https://127.0.0.1:7444/clusters/root:team",
                       "other": "https://other.example:1/clusters/x"}  # not this shard's: left alone
    assert [c["name"] for c in doc["contexts"]] == ["root", "base", "workspace.kcp.io/previous", "root:team",
                                                    "elsewhere"]
    assert Kubeconfig.load(str(path), None).location() == ("https://127.0.0.1:7444", "root:team")


def test_write_kubeconfig_relative_urls_and_validation(tmp_path):
    ca = pki.CA.create("ca")
    cert, key = ca.issue("bob", ["g"])
    path = tmp_path / "k"
    pki.write_kubeconfig(path, server_base="https://h:1/", ca_pem=ca.cert_pem, cert_pem=cert, key_pem=key,
                         contexts={"ws": "/clusters/root:org", "abs": "https://other:2"}, current="ws", user="bob")
    doc = yaml.safe_load(path.read_text())
    assert [c["cluster"]["server"] for c in doc["clusters"]] == ["https://h:1/clusters/root:org", "https://other:2"]
    assert doc["contexts"][0] == {"name": "ws", "context": {"cluster": "ws", "user": "bob"}}
    with pytest.raises(ValueError):
        pki.write_kubeconfig(path, server_base="https://h:1", ca_pem=ca.cert_pem, cert_pem=cert, key_pem=key,
                             contexts={"a": "/"}, current="b")
