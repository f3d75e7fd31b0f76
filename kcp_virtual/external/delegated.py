"""Who is calling the external virtual-workspace server: authentication delegated to the shard.

The external process has no users of its own. In kube's order, a request is
1. **requestheader** -- ``X-Remote-User``/``-Uid``/``-Group``/``-Extra-<key>`` -- believed only on a TLS
   connection whose client certificate was issued by the requestheader CA to an allowed name (the
   shard's proxy certificate, ``kcp-shard-proxy``). From anybody else the headers are removed before
   anything reads them, so they can neither be spoofed nor leak further. The same trust covers
   ``X-Kcp-Shard-Resource-Version``, the shard's resourceVersion when it forwarded the request: it is
   left in ``environ[FRESH_AS_OF]`` (an int) only for a request requestheader authenticated, since
   believing a wrong one would let a cache serve stale reads;
2. a **client certificate** issued by the shard's CA: CN is the user, each O a group;
3. a **bearer token**, checked by a TokenReview against the shard. Service-account tokens are only valid
   in the logical cluster that issued them, so the review goes to the token's (unverified)
   ``kcp.dev/cluster`` claim -- the shard verifies the signature and everything else -- and other
   tokens to ``root``. Accepted tokens are cached for ``token_ttl`` seconds, rejections are not.

The TLS layer (``server.http.serving``, wired by ``kcp virtual-workspaces``) verifies client certificates
against both CAs and puts the verified one in ``environ["kcp.peer_certificate"]`` as
``{"user", "groups", "issuer", "der"}``; which CA signed it is checked here, by signature.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import unquote

import jwt
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from kcp_virtual.framework import errors
from kcp_virtual.framework.authorization import MASTERS, forbidden, without_initializer_groups
from kcp_virtual.framework.authorization import Attributes
from kcp_virtual.framework.shardclient import User
from kcp_virtual.framework.virtualworkspace import is_cluster_name

__all__ = ["DelegatedAuthenticator", "impersonate", "AUTHENTICATED", "DEFAULT_ALLOWED_NAMES", "load_certificates",
           "CertificateIssuers", "header_values", "extra_key", "pop_extra", "FRESH_AS_OF", "IDENTITY_HEADERS", "may_claim_identity"]

AUTHENTICATED = "system:authenticated"
UNAUTHENTICATED = "system:unauthenticated"
ANONYMOUS = "system:anonymous"
DEFAULT_ALLOWED_NAMES = ("kcp-shard-proxy",)
CLUSTER_CLAIM = "kcp.dev/cluster"
DEFAULT_TOKEN_CLUSTER = "root"
TOKEN_TTL = 10.0
_CACHE_SIZE = 4096

_USER, _UID, _GROUP, _EXTRA = "HTTP_X_REMOTE_USER", "HTTP_X_REMOTE_UID", "HTTP_X_REMOTE_GROUP", "HTTP_X_REMOTE_EXTRA_"
_IMPERSONATE = "HTTP_IMPERSONATE_"
_SHARD_RV = "HTTP_X_KCP_SHARD_RESOURCE_VERSION"
#: The environ key ``authenticate`` leaves the proxy's ``X-Kcp-Shard-Resource-Version`` under (an int).
FRESH_AS_OF = "kcp.fresh_as_of"
#: Environ key a server sets to False when the request has no ``Impersonate-*`` and no ``X-Remote-*`` header
#: (``server.http.serving`` does, from the header names it parsed): then nobody scans the environ for them (a scan
#: of its ~30 keys is ~4 µs, and a forwarded request took four).
IDENTITY_HEADERS = "kcp.identity_headers"


def may_claim_identity(environ: dict) -> bool:
    """Whether the request may carry ``Impersonate-*`` or ``X-Remote-*`` headers (True unless the server knows)."""
    return environ.get(IDENTITY_HEADERS, True)


def load_certificates(path: str | Path) -> list[x509.Certificate]:
    certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
    if not certs:
        raise ValueError(f"{path}: no certificates")
    return certs


def header_values(value: str | None) -> list[str]:
    """Values of a header that may have been repeated; WSGI servers join repeats with commas."""
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def extra_key(environ_suffix: str) -> str:
    """The extra key from the environ name's tail: WSGI upper-cases and maps ``-`` to ``_`` (headers with
    a real ``_`` are dropped by the server), kube lower-cases and percent-decodes it."""
    return unquote(environ_suffix.lower().replace("_", "-"))


def pop_extra(environ: dict, prefix: str, values: Callable[[list[str]], Any] = tuple) -> dict[str, Any]:
    """Remove every ``<prefix>...`` environ entry; the ``<prefix><KEY>`` ones as extra (keys as ``extra_key``
    reads them, each value list made ``values``: the shard's users keep lists, ours tuples)."""
    extra = {}
    for name in [n for n in environ if n.startswith(prefix)]:
        value = environ.pop(name)
        if len(name) > len(prefix):
            extra[extra_key(name[len(prefix):])] = values(header_values(value))
    return extra


def _resource_version(value: str | None) -> int | None:
    """A resourceVersion header's value; anything but one non-negative integer counts as none."""
    value = (value or "").strip()
    return int(value) if value.isascii() and value.isdigit() else None


def _with_authenticated(user: User) -> User:
    """``user`` in ``system:authenticated``, and in no ``system:kcp:initializer:*`` group: only a virtual
    workspace asserts those, so whatever a certificate, a token or the proxy's headers claim is dropped."""
    groups = without_initializer_groups(user.groups)
    if AUTHENTICATED in groups or user.name == ANONYMOUS:
        return user if groups == user.groups else User(user.name, user.uid, groups, user.extra)
    return User(user.name, user.uid, (*groups, AUTHENTICATED), user.extra)


class CertificateIssuers:
    """Whether one of our CAs issued a verified certificate: by signature, since an issuer CN is only a name;
    checked once per certificate (at most ``cache_size`` remembered)."""

    def __init__(self, cas: Iterable[x509.Certificate], *, cache_size: int = _CACHE_SIZE):
        self.cas = list(cas)
        self.cache_size = cache_size
        self._known: dict[bytes, bool] = {}

    def issued(self, der: bytes | None) -> bool:
        if not der:
            return False
        known = self._known.get(der)
        if known is None:
            known = self._verify(der)
            if len(self._known) >= self.cache_size:
                self._known.clear()
            self._known[der] = known
        return known

    def _verify(self, der: bytes) -> bool:
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            return False
        for ca in self.cas:
            try:
                cert.verify_directly_issued_by(ca)
                return True
            except (ValueError, TypeError, InvalidSignature):
                continue
        return False


def token_cluster(token: str) -> str:
    """The logical cluster whose TokenReview decides about ``token``: its ``kcp.dev/cluster`` claim (not
    verified here: the shard does that) or ``root``."""
    if token.count(".") != 2:
        return DEFAULT_TOKEN_CLUSTER
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return DEFAULT_TOKEN_CLUSTER
    cluster = claims.get(CLUSTER_CLAIM) if isinstance(claims, dict) else None
    if cluster is None:
        return DEFAULT_TOKEN_CLUSTER
    if not isinstance(cluster, str) or not is_cluster_name(cluster):
        raise errors.Unauthorized()
    return cluster


class DelegatedAuthenticator:
    """``authenticate(environ) -> User | None`` (None: no credentials; an invalid one is a 401).

    ``shard`` is the remote ShardClient (its ``token_review``); ``client_cas`` issue user certificates,
    ``requestheader_cas`` the proxy's, whose CN must be in ``allowed_names`` (empty: any).
    """

    def __init__(self, shard: Any, *, client_cas: Iterable[x509.Certificate],
                 requestheader_cas: Iterable[x509.Certificate], allowed_names: Iterable[str] = DEFAULT_ALLOWED_NAMES,
                 token_ttl: float = TOKEN_TTL):
        self.shard = shard
        self.client_issuers = CertificateIssuers(client_cas)
        self.requestheader_issuers = CertificateIssuers(requestheader_cas)
        self.allowed_names = frozenset(allowed_names)
        self.token_ttl = token_ttl
        self._tokens: dict[bytes, tuple[float, User]] = {}

    def authenticate(self, environ: dict) -> User | None:
        peer = environ.get("kcp.peer_certificate") or None
        asserted = self._requestheader(environ, peer)
        if asserted is not None:
            return asserted
        if peer and peer.get("user") and self.client_issuers.issued(peer.get("der")):
            return _with_authenticated(User(peer["user"], "", tuple(peer.get("groups") or ())))
        token = _bearer(environ)
        if token is not None:
            return self._token(token)
        return None

    # ------------------------------------------------------------------ requestheader

    def trusted_proxy(self, peer: dict | None) -> bool:
        if not peer:
            return False
        if self.allowed_names and peer.get("user") not in self.allowed_names:
            return False
        return self.requestheader_issuers.issued(peer.get("der"))

    def _requestheader(self, environ: dict, peer: dict | None) -> User | None:
        """Strip the headers from every request; return what they assert (and keep the shard's resourceVersion)
        only from the trusted proxy."""
        shard_rv = _resource_version(environ.pop(_SHARD_RV, None))
        environ.pop(FRESH_AS_OF, None)
        if not may_claim_identity(environ):
            return None
        name = environ.pop(_USER, None)
        uid = environ.pop(_UID, None)
        groups = environ.pop(_GROUP, None)
        extra = pop_extra(environ, _EXTRA)
        if name is None or not name.strip() or not self.trusted_proxy(peer):
            return None
        if shard_rv is not None:
            environ[FRESH_AS_OF] = shard_rv
        return _with_authenticated(User(name.strip(), (uid or "").strip(), tuple(header_values(groups)), extra))

    # ------------------------------------------------------------------ tokens

    def _token(self, token: str) -> User:
        key = hashlib.sha256(token.encode()).digest()
        now = time.monotonic()
        cached = self._tokens.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        user, _ = self.shard.token_review(token, token_cluster(token))
        if user is None:
            self._tokens.pop(key, None)
            raise errors.Unauthorized()
        user = _with_authenticated(user)
        if len(self._tokens) >= _CACHE_SIZE:
            self._tokens = {k: v for k, v in self._tokens.items() if v[0] > now}
            if len(self._tokens) >= _CACHE_SIZE:
                self._tokens.clear()
        self._tokens[key] = (now + self.token_ttl, user)
        return user


def _bearer(environ: dict) -> str | None:
    scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def impersonate(environ: dict, user: User) -> User:
    """``Impersonate-*`` sent straight to the external process. With no logical cluster to evaluate the
    permission in (the shard asks its authorizer for ``/services`` requests outside any cluster, where
    only ``system:masters`` holds), only ``system:masters`` may impersonate here; anyone else gets the
    shard's 403. Requests forwarded by the shard never carry these headers: it resolved them itself."""
    if not may_claim_identity(environ) or not any(key.startswith(_IMPERSONATE) for key in environ):
        return user
    name = (environ.pop("HTTP_IMPERSONATE_USER", None) or "").strip()
    groups = header_values(environ.pop("HTTP_IMPERSONATE_GROUP", None))
    uid = (environ.pop("HTTP_IMPERSONATE_UID", None) or "").strip()
    extra = pop_extra(environ, "HTTP_IMPERSONATE_EXTRA_")
    for key in [k for k in environ if k.startswith(_IMPERSONATE)]:
        del environ[key]
    if not name:
        raise errors.BadRequest("requested impersonation of groups, uid or extra without impersonating a user")
    if MASTERS not in user.groups:
        raise forbidden(user, Attributes(verb="impersonate", cluster="", is_resource=True, resource="users",
                                         name=name))
    implied = UNAUTHENTICATED if name == ANONYMOUS else AUTHENTICATED
    if implied not in groups:
        groups.append(implied)
    return User(name, uid, tuple(groups), extra)
