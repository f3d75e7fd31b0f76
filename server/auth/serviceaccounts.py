"""Service-account tokens: JWTs the shard signs, bound to one logical cluster, namespace and account.

``ServiceAccountTokens`` owns the signing key (EC P-256, generated once as
``<root>/service-account.key``: ES256 keys cost microseconds to create where RSA costs ~100 ms on
every fresh shard, and verification is paid once per token thanks to a cache; an RSA key in that
file is used with RS256) and issues/verifies tokens. ``ServiceAccountAuthenticator``
turns a bearer token into the account's identity, but only inside the logical cluster that issued
it: a token presented to another workspace authenticates as ``system:anonymous`` (so RBAC decides,
usually 403), which is what makes "a service account can only access its own workspace" hold.
Requests that target no logical cluster (``/services/...``) get the identity with its cluster in
``extra[CLUSTER_EXTRA]``; whoever authorizes such a user in a concrete cluster must apply
``scope_user`` (the SubjectAccessReview handler does).

``create_token`` serves the TokenRequest subresource (``POST .../serviceaccounts/<name>/token``,
what ``kubectl create token`` calls).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import time
import uuid
from dataclasses import replace
from pathlib import Path

import jwt
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kcp_virtual.framework import errors
from server.auth.authn import bearer_token
from server.auth.user import ANONYMOUS, UNAUTHENTICATED, UserInfo
from server.registry import validation
from server.registry.resourcetype import RequestContext, ResourceType

log = structlog.get_logger("kcp.auth")

KEY_FILE = "service-account.key"
DEFAULT_ISSUER = "https://kcp.default.svc"
CLUSTER_CLAIM = "kcp.dev/cluster"
CLUSTER_EXTRA = "authentication.kcp.io/cluster"
CREDENTIAL_ID_EXTRA = "authentication.kubernetes.io/credential-id"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
SERVICE_ACCOUNTS_GROUP = "system:serviceaccounts"
DEFAULT_EXPIRATION = 3600
MIN_EXPIRATION = 600
MAX_EXPIRATION = 2 ** 32
_NBF_LEEWAY = 60          # seconds of clock skew tolerated on nbf/iat, as kube does
_CACHE_SIZE = 4096        # verified signatures kept, so a busy client does not pay a signature check per request


def anonymous_user() -> UserInfo:
    return UserInfo(ANONYMOUS, "", (UNAUTHENTICATED,))


def service_account_user(cluster: str, namespace: str, name: str, uid: str = "", extra: dict | None = None) -> UserInfo:
    """The identity of a service account, with kube's username and groups and its logical cluster."""
    return UserInfo(f"{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}", uid,
                    (SERVICE_ACCOUNTS_GROUP, f"{SERVICE_ACCOUNTS_GROUP}:{namespace}"),
                    {**(extra or {}), CLUSTER_EXTRA: [cluster]})


def split_service_account(username: str) -> tuple[str, str] | None:
    """``(namespace, name)`` of ``system:serviceaccount:<ns>:<name>``, else None."""
    if not username.startswith(SERVICE_ACCOUNT_PREFIX):
        return None
    namespace, sep, name = username[len(SERVICE_ACCOUNT_PREFIX):].partition(":")
    if not sep or not namespace or not name or ":" in name:
        return None
    return namespace, name


def scope_user(user: UserInfo, cluster: str) -> UserInfo:
    """``user`` as seen in logical cluster ``cluster``: anonymous if its identity belongs to another cluster."""
    home = user.extra.get(CLUSTER_EXTRA) if user.extra else None
    if home and cluster not in home:
        return anonymous_user()
    return user


class InvalidToken(errors.Unauthorized):
    """A token that is ours but not acceptable; ``detail`` says why (for TokenReview and logs only)."""

    def __init__(self, detail: str):
        super().__init__()
        self.detail = detail

    def __str__(self) -> str:
        return self.detail


class ServiceAccountTokens:
    """Issues and verifies the shard's service-account JWTs with a key kept in the root directory."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, issuer: str = DEFAULT_ISSUER,
                 api_audiences: tuple[str, ...] | None = None):
        self.private_key = private_key
        self.algorithm = "RS256" if isinstance(private_key, rsa.RSAPrivateKey) else "ES256"
        self.public_key = private_key.public_key()
        self.issuer = issuer
        self.api_audiences = tuple(api_audiences or (issuer,))
        der = self.public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.key_id = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")
        self._verified: dict[str, dict] = {}

    @classmethod
    def load_or_create(cls, root: Path | str, issuer: str = DEFAULT_ISSUER) -> "ServiceAccountTokens":
        """Load ``<root>/service-account.key``, creating it once; a concurrent start never overwrites it."""
        path = Path(root) / KEY_FILE
        if not path.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(pem)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.link(tmp, path)  # fails if another process won the race: then its key is used
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey) and not (
                isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)):
            raise ValueError(f"{path}: expected an EC P-256 or RSA private key")
        return cls(key, issuer)

    # ------------------------------------------------------------------ issue

    def issue(self, cluster: str, namespace: str, name: str, uid: str, *, audiences: list[str] | None = None,
              expiration_seconds: int = DEFAULT_EXPIRATION, bound_secret: dict | None = None,
              now: float | None = None) -> tuple[str, int]:
        """A signed token and its expiry (epoch seconds)."""
        issued = int(now if now is not None else time.time())
        expires = issued + int(expiration_seconds)
        private = {"namespace": namespace, "serviceaccount": {"name": name, "uid": uid}}
        if bound_secret is not None:
            private["secret"] = {"name": bound_secret["name"], "uid": bound_secret["uid"]}
        claims = {"iss": self.issuer, "sub": f"{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}",
                  "aud": list(audiences or self.api_audiences), "iat": issued, "nbf": issued, "exp": expires,
                  "jti": str(uuid.uuid4()), "kubernetes.io": private, CLUSTER_CLAIM: cluster}
        token = jwt.encode(claims, self.private_key, algorithm=self.algorithm, headers={"kid": self.key_id})
        return token, expires

    # ------------------------------------------------------------------ verify

    def is_ours(self, token: str) -> bool:
        """Cheap pre-check: a JWT whose (unverified) issuer is ours; anything else belongs to other authenticators."""
        if token in self._verified:
            return True
        if token.count(".") != 2:
            return False
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return False
        return claims.get("iss") == self.issuer

    def verify(self, token: str, audiences: tuple[str, ...] | None = None, now: float | None = None) -> dict:
        """The claims of a valid token, or ``InvalidToken``. Time and audience are checked on every call."""
        claims = self._verified.get(token)
        if claims is None:
            try:
                claims = jwt.decode(token, self.public_key, algorithms=[self.algorithm],
                                    options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                                             "verify_aud": False, "verify_iss": False,
                                             "require": ["iss", "sub", "aud", "exp", "nbf", "kubernetes.io"]})
            except jwt.PyJWTError as exc:
                raise InvalidToken(f"invalid service account token: {exc}") from None
            if claims.get("iss") != self.issuer:
                raise InvalidToken("invalid service account token: wrong issuer")
            if not _well_formed(claims):
                raise InvalidToken("invalid service account token: malformed claims")
            if len(self._verified) >= _CACHE_SIZE:
                self._verified.clear()
            self._verified[token] = claims
        current = now if now is not None else time.time()
        if current >= claims["exp"]:
            raise InvalidToken("service account token has expired")
        if current + _NBF_LEEWAY < claims["nbf"]:
            raise InvalidToken("service account token is not valid yet")
        aud = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if not set(aud) & set(audiences or self.api_audiences):
            raise InvalidToken("service account token has an invalid audience")
        return claims


def _well_formed(claims: dict) -> bool:
    private = claims.get("kubernetes.io")
    if not isinstance(private, dict) or not isinstance(private.get("serviceaccount"), dict):
        return False
    sa = private["serviceaccount"]
    cluster = claims.get(CLUSTER_CLAIM)
    ok = all(isinstance(v, str) and v for v in (private.get("namespace"), sa.get("name"), sa.get("uid"), cluster))
    return ok and claims.get("sub") == f"{SERVICE_ACCOUNT_PREFIX}{private['namespace']}:{sa['name']}" and \
        isinstance(claims.get("exp"), (int, float)) and isinstance(claims.get("nbf"), (int, float))


class ServiceAccountAuthenticator:
    """Bearer JWTs of ``tokens``: signature, expiry, audience, the issuing cluster, and the account still existing.

    ``environ["kcp.cluster"]`` is the logical cluster the request targets (set by the app before
    authentication): a token of another cluster is anonymous there; ``""`` (no cluster, e.g.
    ``/services``) keeps the identity with its cluster in extra. ``environ["kcp.token_audiences"]``
    overrides the accepted audiences (TokenReview's ``spec.audiences``).
    """

    def __init__(self, tokens: ServiceAccountTokens, registry):
        self.tokens = tokens
        self.registry = registry

    def authenticate(self, environ: dict) -> UserInfo | None:
        token = bearer_token(environ)
        if token is None or not self.tokens.is_ours(token):
            return None
        claims = self.tokens.verify(token, environ.get("kcp.token_audiences"))
        home = claims[CLUSTER_CLAIM]
        private = claims["kubernetes.io"]
        namespace, sa = private["namespace"], private["serviceaccount"]
        # A revoked token is refused wherever it is used, not only at home (elsewhere it would pass as anonymous).
        self._require_live(home, "serviceaccounts", namespace, sa["name"], sa["uid"])
        if "secret" in private:
            secret = private["secret"]
            self._require_live(home, "secrets", namespace, secret.get("name", ""), secret.get("uid", ""))
        target = environ.get("kcp.cluster")
        if target is None or (target != "" and target != home):
            log.debug("service account token used outside its logical cluster", token_cluster=home, cluster=target)
            return anonymous_user()
        extra = {CREDENTIAL_ID_EXTRA: [f"JTI={claims['jti']}"]} if claims.get("jti") else {}
        return service_account_user(home, namespace, sa["name"], sa["uid"], extra)

    def _require_live(self, cluster: str, plural: str, namespace: str, name: str, uid: str) -> None:
        """The object the token is bound to must still exist with the same uid (deleting it revokes the token)."""
        rt = self.registry.catalog.lookup(cluster, "", "v1", plural)
        try:
            obj = self.registry.get(rt, cluster, namespace, name)
        except errors.NotFound:
            raise InvalidToken(f'{plural} "{name}" not found') from None
        meta = obj["metadata"]
        if meta.get("uid") != uid:
            raise InvalidToken(f'{plural} "{name}" has been deleted and recreated (uid mismatch)')
        if meta.get("deletionTimestamp"):
            raise InvalidToken(f'{plural} "{name}" is being deleted')


# ---------------------------------------------------------------------- TokenRequest subresource

TOKEN_REQUEST_API_VERSION = "authentication.k8s.io/v1"


def create_token(ctx: RequestContext) -> tuple[int, dict]:
    """``POST .../serviceaccounts/<name>/token``: a TokenRequest in, the same with ``status.token`` out."""
    if ctx.cluster == "*":
        raise errors.MethodNotAllowed.for_verb("create", "serviceaccounts/token")
    tokens: ServiceAccountTokens = ctx.services.token_issuer
    body = ctx.body
    if not isinstance(body, dict):
        raise errors.BadRequest("the request body must be a TokenRequest object")
    spec = body.get("spec") or {}
    if not isinstance(spec, dict):
        raise errors.BadRequest("spec must be an object")
    causes = []
    expiration = spec.get("expirationSeconds")
    if expiration is None:
        expiration = DEFAULT_EXPIRATION
    if not isinstance(expiration, int) or isinstance(expiration, bool):
        causes.append(validation.invalid("spec.expirationSeconds", expiration, "must be an integer"))
    elif expiration < MIN_EXPIRATION:
        causes.append(validation.invalid("spec.expirationSeconds", expiration,
                                         "may not specify a duration less than 10 minutes"))
    elif expiration > MAX_EXPIRATION:
        causes.append(validation.invalid("spec.expirationSeconds", expiration,
                                         "may not specify a duration larger than 2^32 seconds"))
    audiences = spec.get("audiences") or list(tokens.api_audiences)
    if not isinstance(audiences, list) or not all(isinstance(a, str) and a for a in audiences):
        causes.append(validation.invalid("spec.audiences", audiences, "must be a list of non-empty strings"))
    bound = spec.get("boundObjectRef")
    if bound is not None and (not isinstance(bound, dict) or bound.get("kind") != "Secret"):
        kind = bound.get("kind") if isinstance(bound, dict) else bound
        causes.append(validation.not_supported("spec.boundObjectRef.kind", kind, ["Secret"]))
    if causes:
        raise errors.Invalid.for_fields("TokenRequest", "authentication.k8s.io", ctx.name, causes)
    registry = ctx.services.registry
    sa = registry.get(registry.catalog.lookup(ctx.cluster, "", "v1", "serviceaccounts"), ctx.cluster,
                      ctx.namespace, ctx.name)
    if sa["metadata"].get("deletionTimestamp"):
        raise errors.Forbidden(f'serviceaccounts "{ctx.name}" is being deleted; cannot issue tokens for it')
    bound_secret = None
    if bound is not None:
        secret = registry.get(registry.catalog.lookup(ctx.cluster, "", "v1", "secrets"), ctx.cluster,
                              ctx.namespace, bound.get("name", ""))
        if bound.get("uid") and bound["uid"] != secret["metadata"]["uid"]:
            raise errors.Conflict(f'the UID in the bound object reference ({bound["uid"]}) does not match the '
                                  f'UID in record ({secret["metadata"]["uid"]}). The object might have been '
                                  "deleted and then recreated")
        bound_secret = {"name": secret["metadata"]["name"], "uid": secret["metadata"]["uid"]}
        bound = {"kind": "Secret", "apiVersion": "v1", **bound, "uid": bound_secret["uid"]}
    token, expires = tokens.issue(ctx.cluster, ctx.namespace, ctx.name, sa["metadata"]["uid"], audiences=audiences,
                                  expiration_seconds=expiration, bound_secret=bound_secret)
    now = dt.datetime.now(dt.timezone.utc)
    out_spec = {"audiences": audiences, "expirationSeconds": expiration, "boundObjectRef": bound}
    return 201, {"kind": "TokenRequest", "apiVersion": TOKEN_REQUEST_API_VERSION,
                 "metadata": {"name": ctx.name, "namespace": ctx.namespace,
                              "creationTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ")},
                 "spec": out_spec,
                 "status": {"token": token, "expirationTimestamp": dt.datetime.fromtimestamp(
                     expires, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}}


def with_token_subresource(types: list[ResourceType]) -> list[ResourceType]:
    """``types`` with core/v1 ServiceAccount serving the ``token`` subresource (TokenRequest)."""
    result = []
    for rt in types:
        if rt.group == "" and rt.plural == "serviceaccounts":
            rt = replace(rt, subresources=(*rt.subresources, "token"),
                         handlers={**rt.handlers, ("create", "token"): create_token})
        result.append(rt)
    return result
