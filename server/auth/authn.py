"""Authenticators: client certificates verified by the TLS layer, and static bearer tokens.

Each authenticator returns a ``UserInfo`` or None ("not mine"); a presented but invalid
credential raises ``errors.Unauthorized`` so that a bad token is never silently anonymous.
"""

from __future__ import annotations

import csv
import hmac
from pathlib import Path
from typing import Iterable, Protocol

from kcp_virtual.framework import errors
from server.auth.user import PerUser, UserInfo


class Authenticator(Protocol):
    def authenticate(self, environ: dict) -> UserInfo | None: ...


class ClientCertificateAuthenticator:
    """CN is the user name and each O a group, for certificates the TLS layer verified against our CAs."""

    def __init__(self, issuers: Iterable[str] | None = None):
        self.issuers = set(issuers) if issuers is not None else None

    def authenticate(self, environ: dict) -> UserInfo | None:
        peer = environ.get("kcp.peer_certificate")
        if not peer or not peer.get("user"):
            return None
        if self.issuers is not None and peer.get("issuer") not in self.issuers:
            return None
        return UserInfo(peer["user"], groups=tuple(peer.get("groups") or ()))


def bearer_token(environ: dict) -> str | None:
    header = environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class TokenFileAuthenticator:
    """The Kubernetes static token file: ``token,user,uid,"group1,group2"`` per line."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tokens: dict[str, UserInfo] = {}
        with self.path.open(newline="") as handle:
            for number, row in enumerate(csv.reader(handle), start=1):
                if not row or row[0].startswith("#"):
                    continue
                if len(row) < 3 or not row[0] or not row[1]:
                    raise ValueError(f"{self.path}:{number}: expected token,user,uid[,\"groups\"]")
                groups = tuple(g.strip() for g in row[3].split(",") if g.strip()) if len(row) > 3 else ()
                self.tokens[row[0]] = UserInfo(row[1], row[2], groups)

    def authenticate(self, environ: dict) -> UserInfo | None:
        token = bearer_token(environ)
        if token is None:
            return None
        for known, user in self.tokens.items():
            if hmac.compare_digest(known, token):
                return user
        return None


def _finished(user: UserInfo) -> UserInfo:
    """An authenticated identity as requests carry it (see ``UnionAuthenticator``)."""
    user = user.without_initializer_groups()
    return user if user.is_anonymous else user.with_authenticated_group()


class UnionAuthenticator:
    """Tries each authenticator in order; a bearer token that nobody accepted is a 401.

    Authenticators with a ``prepare(environ)`` method run it first on every request, whoever
    answers: requestheader authentication strips its headers there so they can never leak past
    an earlier authenticator. No identity keeps a ``system:kcp:initializer:*`` group, however it was
    authenticated (certificate, token, requestheader): only virtual workspaces assert those
    (``server.auth.workspace_access``). An anonymous answer (a service-account token outside its logical
    cluster) stays anonymous rather than joining ``system:authenticated``.
    """

    def __init__(self, authenticators: Iterable[Authenticator]):
        self.authenticators = list(authenticators)
        self._preparers = [a.prepare for a in self.authenticators if callable(getattr(a, "prepare", None))]
        self._finished = PerUser(_finished)  # a static token's user, finished once rather than per request

    def authenticate(self, environ: dict) -> UserInfo | None:
        for prepare in self._preparers:
            prepare(environ)
        for authenticator in self.authenticators:
            user = authenticator.authenticate(environ)
            if user is not None:
                return self._finished(user)
        if bearer_token(environ) is not None:
            raise errors.Unauthorized()
        return None
