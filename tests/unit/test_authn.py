"""Authentication parts on their own: service-account JWTs, requestheader trust, impersonation, the union chain.

Real keys, real certificates from ``server.pki``, and a real registry + RBAC authorizer on SQLite
in ``tmp_path`` where a decision is needed.
"""

from __future__ import annotations

import stat
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kcp_virtual.external.delegated import extra_key
from kcp_virtual.framework import errors
from server import pki
from server.apis import builtin_types
from server.auth.authn import UnionAuthenticator
from server.auth.bootstrap_policy import ensure_bootstrap_policy
from server.auth.impersonation import impersonate
from server.auth.rbac import RBACAuthorizer
from server.auth.requestheader import RequestHeaderAuthenticator
from server.auth.serviceaccounts import (CLUSTER_EXTRA, KEY_FILE, InvalidToken, ServiceAccountAuthenticator,
                                         ServiceAccountTokens, scope_user, service_account_user, split_service_account)
from server.auth.user import UserInfo
from server.registry.generic import Registry
from server.registry.resourcetype import Catalog
from server.storage import SQLiteBackend, Store

ISSUED = dict(cluster="root:org", namespace="ns", name="robot", uid="uid-1")


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> ServiceAccountTokens:
    return ServiceAccountTokens.load_or_create(tmp_path_factory.mktemp("sa"))


@pytest.fixture
def registry(tmp_path):
    store = Store(SQLiteBackend(str(tmp_path / "kcp.db")))
    registry = Registry(store, Catalog(builtin_types()))
    registry.cluster_hooks.append(ensure_bootstrap_policy)
    registry.ensure_logical_cluster("root")
    yield registry
    store.close()


def _rt(registry, plural: str, group: str = ""):
    return registry.catalog.lookup("root", group, "v1", plural)


# ------------------------------------------------------------------------------ service-account tokens


def test_signing_key_is_created_once_and_private(tmp_path):
    first = ServiceAccountTokens.load_or_create(tmp_path)
    second = ServiceAccountTokens.load_or_create(tmp_path)
    assert first.key_id == second.key_id
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    token, _ = first.issue(**ISSUED)
    assert second.verify(token)["sub"] == "system:serviceaccount:ns:robot"


def test_an_rsa_key_file_is_used_with_rs256(tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / KEY_FILE).write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    tokens = ServiceAccountTokens.load_or_create(tmp_path)
    token, _ = tokens.issue(**ISSUED)
    assert jwt.get_unverified_header(token)["alg"] == "RS256" and tokens.verify(token)


def test_token_claims(tokens):
    token, expires = tokens.issue(**ISSUED, expiration_seconds=900, now=1_000_000)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert jwt.get_unverified_header(token)["kid"] == tokens.key_id
    assert claims["iss"] == tokens.issuer and claims["aud"] == [tokens.issuer]
    assert claims["sub"] == "system:serviceaccount:ns:robot"
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (1_000_000, 1_000_000, 1_000_900) and expires == 1_000_900
    assert claims["kubernetes.io"] == {"namespace": "ns", "serviceaccount": {"name": "robot", "uid": "uid-1"}}
    assert claims["kcp.dev/cluster"] == "root:org"


def test_expired_and_not_yet_valid_tokens_are_rejected(tokens):
    token, expires = tokens.issue(**ISSUED, expiration_seconds=600, now=time.time() - 700)
    with pytest.raises(InvalidToken, match="expired"):
        tokens.verify(token)
    future, _ = tokens.issue(**ISSUED, now=time.time() + 3600)
    with pytest.raises(InvalidToken, match="not valid yet"):
        tokens.verify(future)


def test_cached_verification_still_checks_expiry(tokens):
    token, expires = tokens.issue(**ISSUED, expiration_seconds=600)
    assert tokens.verify(token)
    with pytest.raises(InvalidToken, match="expired"):
        tokens.verify(token, now=expires)


def test_forged_tokens_are_rejected(tokens):
    token, _ = tokens.issue(**ISSUED)
    header, payload, signature = token.split(".")
    tampered = f"{header}.{payload}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}"
    with pytest.raises(InvalidToken):
        tokens.verify(tampered)
    stranger = ServiceAccountTokens(ec.generate_private_key(ec.SECP256R1()))
    forged, _ = stranger.issue(**ISSUED)
    assert tokens.is_ours(forged)  # same issuer name...
    with pytest.raises(InvalidToken, match="(?i)signature"):
        tokens.verify(forged)  # ...but not our key
    other_algorithm, _ = ServiceAccountTokens(rsa.generate_private_key(public_exponent=65537, key_size=2048)).issue(
        **ISSUED)
    with pytest.raises(InvalidToken):
        tokens.verify(other_algorithm)
    unsigned = jwt.encode(jwt.decode(token, options={"verify_signature": False}), key=None, algorithm="none")
    with pytest.raises(InvalidToken):
        tokens.verify(unsigned)


def test_audiences(tokens):
    vault, _ = tokens.issue(**ISSUED, audiences=["vault"])
    with pytest.raises(InvalidToken, match="audience"):
        tokens.verify(vault)
    assert tokens.verify(vault, audiences=("vault",))["aud"] == ["vault"]


def test_foreign_jwts_and_opaque_tokens_are_not_ours(tokens):
    other = jwt.encode({"iss": "https://accounts.example.com", "sub": "x"}, "s" * 32, algorithm="HS256")
    assert not tokens.is_ours(other)
    assert not tokens.is_ours("31ada4fd-adec-460c-809a-9e56ceb75269")
    assert not tokens.is_ours("a.b.c")


def test_service_account_names_and_scoping():
    assert split_service_account("system:serviceaccount:ns:robot") == ("ns", "robot")
    assert split_service_account("system:serviceaccount:ns") is None
    assert split_service_account("system:serviceaccount:ns:a:b") is None
    assert split_service_account("alice") is None
    user = service_account_user("root:org", "ns", "robot", "u")
    assert user.groups == ("system:serviceaccounts", "system:serviceaccounts:ns")
    assert scope_user(user, "root:org") is user
    assert scope_user(user, "root:other").name == "system:anonymous"
    alice = UserInfo("alice", groups=("devs",))
    assert scope_user(alice, "anywhere") is alice


def test_authenticator_checks_cluster_and_account(tokens, registry):
    sa_rt = _rt(registry, "serviceaccounts")
    sa = registry.create(sa_rt, "root", "default", {"metadata": {"name": "robot"}})
    uid = sa["metadata"]["uid"]
    authenticator = ServiceAccountAuthenticator(tokens, registry)
    token, _ = tokens.issue("root", "default", "robot", uid)
    environ = {"HTTP_AUTHORIZATION": f"Bearer {token}", "kcp.cluster": "root"}
    user = authenticator.authenticate(dict(environ))
    assert user.name == "system:serviceaccount:default:robot" and user.uid == uid
    assert user.extra[CLUSTER_EXTRA] == ["root"]
    assert authenticator.authenticate({**environ, "kcp.cluster": "root:other"}).name == "system:anonymous"
    assert authenticator.authenticate({**environ, "kcp.cluster": ""}).extra[CLUSTER_EXTRA] == ["root"]
    assert authenticator.authenticate({"HTTP_AUTHORIZATION": "Bearer opaque"}) is None
    registry.delete(sa_rt, "root", "default", "robot")
    with pytest.raises(InvalidToken, match="not found"):
        authenticator.authenticate(dict(environ))
    registry.create(sa_rt, "root", "default", {"metadata": {"name": "robot"}})
    with pytest.raises(InvalidToken, match="uid"):
        authenticator.authenticate(dict(environ))


def test_union_keeps_anonymous_unauthenticated(tokens, registry):
    sa = registry.create(_rt(registry, "serviceaccounts"), "root", "default", {"metadata": {"name": "bot"}})
    token, _ = tokens.issue("root", "default", "bot", sa["metadata"]["uid"])
    union = UnionAuthenticator([ServiceAccountAuthenticator(tokens, registry)])
    here = union.authenticate({"HTTP_AUTHORIZATION": f"Bearer {token}", "kcp.cluster": "root"})
    assert "system:authenticated" in here.groups
    elsewhere = union.authenticate({"HTTP_AUTHORIZATION": f"Bearer {token}", "kcp.cluster": "root:x"})
    assert elsewhere.groups == ("system:unauthenticated",)
    with pytest.raises(errors.Unauthorized):
        union.authenticate({"HTTP_AUTHORIZATION": "Bearer nobody-knows-me", "kcp.cluster": "root"})


# ------------------------------------------------------------------------------ requestheader


@pytest.fixture(scope="module")
def cas():
    return {"rh": pki.CA.create("kcp-requestheader-ca"), "shard": pki.CA.create("kcp-shard-ca"),
            "twin": pki.CA.create("kcp-requestheader-ca")}  # same name, different key


def _peer(ca: pki.CA, cn: str) -> dict:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    cert_pem, _ = ca.issue(cn)
    cert = x509.load_pem_x509_certificate(cert_pem)
    return {"user": cn, "groups": [], "issuer": ca.cert.subject.rfc4514_string().removeprefix("CN="),
            "der": cert.public_bytes(Encoding.DER)}


def _asserting(peer: dict | None) -> dict:
    environ = {"HTTP_X_REMOTE_USER": "bob", "HTTP_X_REMOTE_GROUP": "g1,g2",
               "HTTP_X_REMOTE_EXTRA_ACME.COM%2FPROJECT": "p1,p2", "HTTP_X_REMOTE_EXTRA_SCOPES": "s"}
    if peer is not None:
        environ["kcp.peer_certificate"] = peer
    return environ


def test_requestheader_trusted_proxy(cas):
    authenticator = RequestHeaderAuthenticator([cas["rh"].cert])
    environ = _asserting(_peer(cas["rh"], "kcp-shard-proxy"))
    user = UnionAuthenticator([authenticator]).authenticate(environ)
    assert user.name == "bob" and user.groups == ("g1", "g2", "system:authenticated")
    assert user.extra == {"acme.com/project": ["p1", "p2"], "scopes": ["s"]}
    assert not any(key.startswith("HTTP_X_REMOTE_") for key in environ)  # consumed, not forwarded


@pytest.mark.parametrize("who", ["plain client", "shard-CA user", "other CN of the requestheader CA",
                                 "same-named foreign CA"])
def test_requestheader_ignored_and_stripped_from_others(cas, who):
    peer = {"plain client": None, "shard-CA user": _peer(cas["shard"], "kcp-shard-proxy"),
            "other CN of the requestheader CA": _peer(cas["rh"], "mallory"),
            "same-named foreign CA": _peer(cas["twin"], "kcp-shard-proxy")}[who]
    authenticator = RequestHeaderAuthenticator([cas["rh"].cert])
    environ = _asserting(peer)
    assert UnionAuthenticator([authenticator]).authenticate(environ) is None
    assert not any(key.startswith("HTTP_X_REMOTE_") for key in environ)


def test_requestheader_empty_allowed_names_trusts_any_cert_of_the_ca(cas):
    authenticator = RequestHeaderAuthenticator([cas["rh"].cert], allowed_names=())
    assert authenticator.authenticate(_asserting(_peer(cas["rh"], "any-proxy"))).name == "bob"


def test_extra_key_decoding():
    assert extra_key("ACME.COM%2FPROJECT") == "acme.com/project"
    assert extra_key("MY_KEY") == "my-key"


# ------------------------------------------------------------------------------ impersonation


def _bind(registry, user: str, rules: list[dict], name: str) -> None:
    registry.create(_rt(registry, "clusterroles", "rbac.authorization.k8s.io"), "root", "",
                    {"metadata": {"name": name}, "rules": rules})
    registry.create(_rt(registry, "clusterrolebindings", "rbac.authorization.k8s.io"), "root", "",
                    {"metadata": {"name": name},
                     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                     "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]})


ALICE = UserInfo("alice", groups=("system:authenticated",))


def test_no_headers_no_impersonation(registry):
    assert impersonate({}, ALICE, RBACAuthorizer(registry), "root") is ALICE


def test_impersonation_requires_the_verb(registry):
    authorizer = RBACAuthorizer(registry)
    with pytest.raises(errors.Forbidden) as exc:
        impersonate({"HTTP_IMPERSONATE_USER": "bob"}, ALICE, authorizer, "root")
    assert exc.value.message.startswith('users "bob" is forbidden: User "alice" cannot impersonate resource "users" '
                                        'in API group "" at the cluster scope')


def test_impersonation_checks_every_part(registry):
    authorizer = RBACAuthorizer(registry)
    _bind(registry, "alice", [
        {"verbs": ["impersonate"], "apiGroups": [""], "resources": ["users"], "resourceNames": ["bob"]},
        {"verbs": ["impersonate"], "apiGroups": [""], "resources": ["groups"], "resourceNames": ["devs"]},
        {"verbs": ["impersonate"], "apiGroups": ["authentication.k8s.io"], "resources": ["uids"]},
        {"verbs": ["impersonate"], "apiGroups": ["authentication.k8s.io"], "resources": ["userextras/scopes"]},
    ], "impersonator")
    environ = {"HTTP_IMPERSONATE_USER": "bob", "HTTP_IMPERSONATE_GROUP": "devs", "HTTP_IMPERSONATE_UID": "42",
               "HTTP_IMPERSONATE_EXTRA_SCOPES": "a,b"}
    user = impersonate(environ, ALICE, authorizer, "root")
    assert (user.name, user.uid, user.groups, user.extra) == ("bob", "42", ("devs", "system:authenticated"),
                                                               {"scopes": ["a", "b"]})
    assert not any(key.startswith("HTTP_IMPERSONATE_") for key in environ)
    for denied, message in (({"HTTP_IMPERSONATE_USER": "carol"}, 'users "carol"'),
                            ({"HTTP_IMPERSONATE_USER": "bob", "HTTP_IMPERSONATE_GROUP": "devs,system:masters"},
                             'groups "system:masters"'),
                            ({"HTTP_IMPERSONATE_USER": "bob", "HTTP_IMPERSONATE_EXTRA_OTHER": "x"},
                             'userextras.authentication.k8s.io "x" is forbidden: User "alice" cannot impersonate '
                             'resource "userextras/other"')):
        with pytest.raises(errors.Forbidden) as exc:
            impersonate(denied, ALICE, authorizer, "root")
        assert exc.value.message.startswith(message)


def test_impersonating_a_service_account(registry):
    authorizer = RBACAuthorizer(registry)
    with pytest.raises(errors.Forbidden) as exc:
        impersonate({"HTTP_IMPERSONATE_USER": "system:serviceaccount:ns:robot"}, ALICE, authorizer, "root")
    assert exc.value.message.startswith('serviceaccounts "robot" is forbidden: User "alice" cannot impersonate '
                                        'resource "serviceaccounts" in API group "" in the namespace "ns"')
    admin = UserInfo("admin", groups=("system:masters",))
    user = impersonate({"HTTP_IMPERSONATE_USER": "system:serviceaccount:ns:robot"}, admin, authorizer, "root")
    assert user.groups == ("system:serviceaccounts", "system:serviceaccounts:ns", "system:authenticated")
    assert user.extra == {CLUSTER_EXTRA: ["root"]}


def test_impersonating_groups_without_a_user_is_a_bad_request(registry):
    with pytest.raises(errors.BadRequest):
        impersonate({"HTTP_IMPERSONATE_GROUP": "devs"}, ALICE, RBACAuthorizer(registry), "root")
