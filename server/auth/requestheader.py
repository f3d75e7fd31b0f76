"""Requestheader authentication: the identity a trusted front proxy asserts in ``X-Remote-*`` headers.

A proxy (the shard forwarding to an external virtual-workspace process, or a front proxy in front
of the shard) authenticates the caller and passes ``X-Remote-User``, ``X-Remote-Group``
(repeatable) and ``X-Remote-Extra-<key>`` on. Those headers are believed **only** on a connection
whose TLS client certificate was issued by the requestheader CA and whose CN is an allowed name;
from anybody else they are stripped before any handler sees them, so they can never be spoofed
or leak further downstream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable
from urllib.parse import unquote

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from server.auth.user import UserInfo

DEFAULT_ALLOWED_NAMES = ("kcp-shard-proxy",)
USER_KEY = "HTTP_X_REMOTE_USER"
GROUP_KEY = "HTTP_X_REMOTE_GROUP"
EXTRA_PREFIX = "HTTP_X_REMOTE_EXTRA_"
_ASSERTED = "kcp.requestheader"
_CACHE_SIZE = 1024


def header_values(value: str | None) -> list[str]:
    """Values of a header that may have been repeated; WSGI servers join repeats with commas."""
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def extra_key(environ_suffix: str) -> str:
    """The extra key from the environ name's tail: WSGI upper-cases and maps ``-`` to ``_`` (headers with
    a real ``_`` are dropped by the server), kube lower-cases and percent-decodes it."""
    return unquote(environ_suffix.lower().replace("_", "-"))


def extra_headers(environ: dict, prefix: str) -> dict[str, list[str]]:
    return {extra_key(name[len(prefix):]): header_values(value)
            for name, value in environ.items() if name.startswith(prefix) and len(name) > len(prefix)}


def load_ca_certificates(path: Path | str) -> list[x509.Certificate]:
    certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
    if not certs:
        raise ValueError(f"{path}: no certificates")
    return certs


class RequestHeaderAuthenticator:
    """``X-Remote-*`` from clients whose certificate the requestheader CA issued to an allowed name.

    An empty ``allowed_names`` accepts any certificate of the CA (kube's semantics).
    """

    def __init__(self, ca_certs: Iterable[x509.Certificate], allowed_names: Iterable[str] = DEFAULT_ALLOWED_NAMES):
        self.cas = list(ca_certs)
        self.issuer_names = {cn.value for ca in self.cas
                             for cn in ca.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)}
        self.allowed_names = frozenset(allowed_names)
        self._trusted: dict[bytes, bool] = {}

    @classmethod
    def from_file(cls, path: Path | str, allowed_names: Iterable[str] = DEFAULT_ALLOWED_NAMES):
        return cls(load_ca_certificates(path), allowed_names)

    def trusted(self, peer: dict | None) -> bool:
        """Whether the verified client certificate ``peer`` (from the TLS layer) may assert identities."""
        if not peer or peer.get("issuer") not in self.issuer_names:
            return False
        if self.allowed_names and peer.get("user") not in self.allowed_names:
            return False
        der = peer.get("der")
        if not der:
            return False
        known = self._trusted.get(der)
        if known is None:  # the issuer CN is only a name: check the signature, once per certificate
            known = self._signed_by_ca(der)
            if len(self._trusted) >= _CACHE_SIZE:
                self._trusted.clear()
            self._trusted[der] = known
        return known

    def _signed_by_ca(self, der: bytes) -> bool:
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

    def prepare(self, environ: dict) -> None:
        """Remove the headers from every request; keep what they assert only when the connection is trusted."""
        user = environ.pop(USER_KEY, None)
        groups = environ.pop(GROUP_KEY, None)
        extra = extra_headers(environ, EXTRA_PREFIX)
        for name in [n for n in environ if n.startswith(EXTRA_PREFIX)]:
            del environ[name]
        if user is not None and user.strip() and self.trusted(environ.get("kcp.peer_certificate")):
            environ[_ASSERTED] = UserInfo(user.strip(), "", tuple(header_values(groups)), extra)

    def authenticate(self, environ: dict) -> UserInfo | None:
        if _ASSERTED not in environ and USER_KEY in environ:
            self.prepare(environ)  # called on its own, not through UnionAuthenticator
        return environ.get(_ASSERTED)
