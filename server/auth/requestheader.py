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

from cryptography import x509

from kcp_virtual.external.delegated import (CertificateIssuers, header_values, load_certificates, may_claim_identity,
                                            pop_extra)
from server.auth.user import UserInfo

DEFAULT_ALLOWED_NAMES = ("kcp-shard-proxy",)
USER_KEY = "HTTP_X_REMOTE_USER"
GROUP_KEY = "HTTP_X_REMOTE_GROUP"
EXTRA_PREFIX = "HTTP_X_REMOTE_EXTRA_"
_ASSERTED = "kcp.requestheader"
_CACHE_SIZE = 1024


class RequestHeaderAuthenticator:
    """``X-Remote-*`` from clients whose certificate the requestheader CA issued to an allowed name.

    An empty ``allowed_names`` accepts any certificate of the CA (kube's semantics).
    """

    def __init__(self, ca_certs: Iterable[x509.Certificate], allowed_names: Iterable[str] = DEFAULT_ALLOWED_NAMES):
        self.cas = list(ca_certs)
        self.issuer_names = {cn.value for ca in self.cas
                             for cn in ca.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)}
        self.allowed_names = frozenset(allowed_names)
        self._issuers = CertificateIssuers(self.cas, cache_size=_CACHE_SIZE)

    @classmethod
    def from_file(cls, path: Path | str, allowed_names: Iterable[str] = DEFAULT_ALLOWED_NAMES):
        return cls(load_certificates(path), allowed_names)

    def trusted(self, peer: dict | None) -> bool:
        """Whether the verified client certificate ``peer`` (from the TLS layer) may assert identities."""
        if not peer or peer.get("issuer") not in self.issuer_names:
            return False
        if self.allowed_names and peer.get("user") not in self.allowed_names:
            return False
        return self._issuers.issued(peer.get("der"))  # the issuer CN is only a name: check the signature

    def prepare(self, environ: dict) -> None:
        """Remove the headers from every request; keep what they assert only when the connection is trusted."""
        if not may_claim_identity(environ):
            return
        user = environ.pop(USER_KEY, None)
        groups = environ.pop(GROUP_KEY, None)
        extra = pop_extra(environ, EXTRA_PREFIX, list)
        if user is not None and user.strip() and self.trusted(environ.get("kcp.peer_certificate")):
            environ[_ASSERTED] = UserInfo(user.strip(), "", tuple(header_values(groups)), extra)

    def authenticate(self, environ: dict) -> UserInfo | None:
        if _ASSERTED not in environ and USER_KEY in environ:
            self.prepare(environ)  # called on its own, not through UnionAuthenticator
        return environ.get(_ASSERTED)
