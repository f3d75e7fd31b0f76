"""The pure parts of the two-process topologies: identity headers both ways, what crosses a proxy, the shard's
Status answers as exceptions, and whom the external process believes."""

from __future__ import annotations

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from werkzeug.datastructures import EnvironHeaders, Headers

from kcp_virtual.external.delegated import DelegatedAuthenticator, impersonate, token_cluster
from kcp_virtual.external.remote import impersonation_headers, status_error
from kcp_virtual.framework import errors
from kcp_virtual.framework.shardclient import User
from kcp_virtual.transport import httpclient
from server import pki
from server.auth.user import UserInfo
from server.http.forwarding import identity_headers


def environ_of(headers) -> dict:
    """What a WSGI server makes of these request headers (repeats joined by commas)."""
    environ: dict = {}
    for name, value in (headers.items() if isinstance(headers, dict) else headers):
        key = "HTTP_" + name.upper().replace("-", "_")
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def peer(cert_pem: bytes) -> dict:
    """``kcp.peer_certificate`` as the TLS layer fills it for a verified certificate."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    groups = [a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)]
    return {"user": cn, "groups": groups, "issuer": "", "der": cert.public_bytes(serialization.Encoding.DER)}


@pytest.fixture(scope="module")
def cas():
    return pki.CA.create("kcp-shard-ca"), pki.CA.create("kcp-requestheader-ca")


@pytest.fixture(scope="module")
def authenticator(cas):
    users, proxies = cas
    return DelegatedAuthenticator(None, client_cas=[users.cert], requestheader_cas=[proxies.cert])


def test_the_forwarded_identity_is_read_back_exactly(cas, authenticator):
    user = UserInfo("system:serviceaccount:default:robot", "uid-1", ("system:serviceaccounts", "system:authenticated"),
                    {"authentication.kcp.io/cluster": ["root:org"], "scopes_x": ["a", "b"]})
    environ = environ_of(identity_headers(user))
    environ["kcp.peer_certificate"] = peer(cas[1].issue("kcp-shard-proxy")[0])
    assert authenticator.authenticate(environ) == User(
        user.name, "uid-1", user.groups, {"authentication.kcp.io/cluster": ("root:org",), "scopes_x": ("a", "b")})
    assert not any(key.startswith("HTTP_X_REMOTE") for key in environ)


@pytest.mark.parametrize("issuer, name", [(1, "someone-else"), (0, "kcp-shard-proxy")])
def test_requestheaders_from_anyone_but_the_proxy_are_stripped(cas, authenticator, issuer, name):
    environ = environ_of({"X-Remote-User": "kcp-admin", "X-Remote-Group": "system:masters",
                          "X-Remote-Extra-Foo": "bar"})
    environ["kcp.peer_certificate"] = peer(cas[issuer].issue(name)[0])
    user = authenticator.authenticate(environ)
    assert not any(key.startswith("HTTP_X_REMOTE") for key in environ)
    if issuer == 0:  # a user certificate of the shard CA: that user, nothing more
        assert user == User(name, "", ("system:authenticated",))
    else:
        assert user is None


def test_a_certificate_of_an_unknown_ca_is_nobody(authenticator):
    environ = {"kcp.peer_certificate": peer(pki.CA.create("kcp-shard-ca").issue("kcp-admin", ["system:masters"])[0])}
    assert authenticator.authenticate(environ) is None


def test_impersonation_headers_round_trip_and_only_masters_may_impersonate():
    target = User("alice", "u-1", ("devs", "ops"), {"example.com/team": ("a",)})
    environ = environ_of(impersonation_headers(target))
    master = User("admin", "", ("system:masters", "system:authenticated"))
    assert impersonate(dict(environ), master) == User("alice", "u-1", ("devs", "ops", "system:authenticated"),
                                                      {"example.com/team": ("a",)})
    with pytest.raises(errors.Forbidden) as exc:
        impersonate(dict(environ), User("bob", "", ("system:authenticated",)))
    assert exc.value.message == ('users "alice" is forbidden: User "bob" cannot impersonate resource "users" in API '
                                 'group "" at the cluster scope')
    with pytest.raises(errors.BadRequest):
        impersonate({"HTTP_IMPERSONATE_GROUP": "x"}, master)


def test_token_reviews_go_to_the_token_s_own_cluster():
    key = "a key only this test knows, 32 bytes or more"  # the claim is read unverified: any key will do
    assert token_cluster(jwt.encode({"kcp.dev/cluster": "root:org"}, key, algorithm="HS256")) == "root:org"
    assert token_cluster(jwt.encode({"sub": "x"}, key, algorithm="HS256")) == "root"
    assert token_cluster("static-token") == "root"
    with pytest.raises(errors.Unauthorized):
        token_cluster(jwt.encode({"kcp.dev/cluster": "../root"}, key, algorithm="HS256"))


def test_a_proxy_drops_credentials_identity_claims_and_hop_by_hop_headers():
    headers = Headers([("Accept", "application/json"), ("Authorization", "Bearer t"), ("Impersonate-User", "x"),
                       ("X-Remote-User", "y"), ("X-Remote-Extra-Foo", "z"), ("Connection", "keep-alive, X-Custom"),
                       ("X-Custom", "1"), ("Content-Length", "3"), ("Transfer-Encoding", "chunked"), ("X-Kcp-Shard-Resource-Version", "9"),
                       ("X-Request-Id", "client-chosen"),
                       ("User-Agent", "kubectl")])
    assert httpclient.environ_request_headers(environ_of(headers)) == [
        ("Accept", "application/json"), ("User-Agent", "kubectl")]


def test_a_proxy_passes_the_same_of_the_headers_as_received_as_of_the_environ():
    """``request_headers`` (the header lines as the fast path received them) and ``environ_request_headers`` (the
    environ pywsgi builds from them) pass the same headers; repeats stay separate lines instead of joined."""
    received = [("Accept", "application/json"), ("authorization", "Bearer t"), ("Impersonate-User", "x"),
                ("x-remote-user", "y"), ("X-Remote-Extra-Foo", "z"), ("Connection", "keep-alive, X-Custom"),
                ("X-Custom", "1"), ("TE", "trailers"), ("X-Kcp-Shard-Resource-Version", "9"), ("Host", "h"),
                ("X-Request-Id", "client-chosen"), ("User-Agent", "kubectl"), ("X-Multi", "a"), ("X-Multi", "b")]
    for _ in range(2):  # names seen for the first time, then remembered
        assert httpclient.request_headers(received) == [
            ("Accept", "application/json"), ("User-Agent", "kubectl"), ("X-Multi", "a"), ("X-Multi", "b")]
    assert httpclient.environ_request_headers(environ_of(received)) == [
        ("Accept", "application/json"), ("User-Agent", "kubectl"), ("X-Multi", "a,b")]
    # what a proxy leaving authentication to the upstream keeps (the front-proxy)
    assert [name for name, _ in httpclient.request_headers(received, keep=httpclient.CALLER_CREDENTIALS)] == [
        "Accept", "authorization", "Impersonate-User", "User-Agent", "X-Multi", "X-Multi"]


def _what_a_proxy_passes(environ: dict) -> list[tuple[str, str]]:
    """The rule spelled out the plain way, over werkzeug's view of the headers: the oracle of the fast path."""
    items = list(EnvironHeaders(environ))
    listed = {token.strip().lower() for name, value in items if name.lower() == "connection"
              for token in value.split(",")}
    dropped = {"authorization", "content-length", "expect", "host", "x-request-id"} | httpclient.HOP_BY_HOP
    return [(name, value) for name, value in items
            if (lower := name.lower()) not in dropped and lower not in listed
            and not lower.startswith(("impersonate-", "x-remote-", "x-kcp-"))]


@pytest.mark.parametrize("extra", [
    {},
    {"CONTENT_TYPE": "application/json", "CONTENT_LENGTH": "2", "HTTP_CONTENT_TYPE": "x"},
    {"CONTENT_TYPE": "", "HTTP_CONNECTION": "keep-alive, X-Custom, accept", "HTTP_X_CUSTOM": "1"},
    {"HTTP_IMPERSONATE_EXTRA_SCOPES": "a", "HTTP_X_KCP_ANYTHING": "b", "HTTP_PROXY_AUTHORIZATION": "c",
     "HTTP_TE": "trailers", "HTTP_EXPECT": "100-continue", "HTTP_HOST": "h", "HTTP_WEIRD__NAME": "d"},
], ids=["plain", "body", "connection-listed", "dropped"])
def test_the_forwarder_s_environ_fast_path_passes_exactly_what_the_general_one_does(extra):
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/x", "QUERY_STRING": "", "SERVER_NAME": "s", "wsgi.input": None,
               "kcp.socket": None, **environ_of([("Accept", "application/json"), ("User-Agent", "kubectl"),
                                                 ("Authorization", "Bearer t"), ("X-Remote-Group", "g"),
                                                 ("Kubectl-Command", "kubectl get")]), **extra}
    expected = _what_a_proxy_passes(environ)
    assert ("Accept", "application/json") in expected or "HTTP_CONNECTION" in extra
    for _ in range(2):  # names seen for the first time, then remembered
        assert httpclient.environ_request_headers(environ) == expected


@pytest.mark.parametrize("code, reason, cls", [
    (409, "AlreadyExists", errors.AlreadyExists), (409, "Conflict", errors.Conflict),
    (404, "NotFound", errors.NotFound), (500, "InternalError", errors.InternalError),
    (422, "Invalid", errors.Invalid), (503, "ServiceUnavailable", errors.ServiceUnavailable)])
def test_the_shard_s_status_becomes_the_same_exception(code, reason, cls):
    body = (f'{{"kind":"Status","apiVersion":"v1","status":"Failure","message":"as the shard said",'
            f'"reason":"{reason}","code":{code},"details":{{"name":"x","kind":"configmaps"}}}}').encode()
    exc = status_error(code, body)
    assert type(exc) is cls
    assert exc.status() == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": "as the shard said", "reason": reason, "code": code,
                            "details": {"name": "x", "kind": "configmaps"}}


def test_a_non_status_error_body_is_kept_as_the_message():
    exc = status_error(502, b"bad gateway\n", {"Retry-After": "3"})
    assert (exc.code, exc.message, exc.get_response().headers["Retry-After"]) == (502, "bad gateway", "3")
