"""Certificates for a shard: CAs, serving and client certs, kubeconfigs.

Everything is EC P-256 and built with ``cryptography`` only (no openssl binary). Kubernetes maps
a client certificate's CN to the user name and each O RDN to a group, so client certs carry one
O per group. Files are written atomically (temp file + rename) so a concurrently starting
process never reads a half-written key; keys and kubeconfigs are 0600.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
LEAF_DAYS = 365
#: Leaf certs closer than this to expiry are reissued on start.
RENEW_BEFORE = dt.timedelta(days=30)
#: Backdating absorbs clock skew between this host and clients.
BACKDATE = dt.timedelta(minutes=5)

_UNSPECIFIED = {"", "0.0.0.0", "::"}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_pem_pair(cert_path: Path | str, key_path: Path | str, cert_pem: bytes, key_pem: bytes) -> None:
    """Write a cert (0644) and its key (0600); the key first, so a cert never exists without it."""
    _write_atomic(Path(key_path), key_pem, 0o600)
    _write_atomic(Path(cert_path), cert_pem, 0o644)


def _split_names(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """Sort host names into (dns, ip) so a bind address given either way lands in the right SAN."""
    dns, ips = [], []
    for name in names:
        name = name.strip("[]")
        try:
            ips.append(str(ipaddress.ip_address(name)))
        except ValueError:
            dns.append(name)
    return dns, ips


@dataclass
class CA:
    """A signing CA: its certificate and private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return _cert_pem(self.cert)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)

    @property
    def common_name(self) -> str:
        return self.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value

    @classmethod
    def create(cls, common_name: str, days: int = CA_DAYS) -> "CA":
        key = _new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (x509.CertificateBuilder()
                .subject_name(name).issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - BACKDATE)
                .not_valid_after(now + dt.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, key_cert_sign=True, crl_sign=True,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(ski, critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                               critical=False)
                .sign(key, hashes.SHA256()))
        return cls(cert, key)

    def issue(self, common_name: str, groups: Iterable[str] = (), *, server_names: Iterable[str] = (),
              ip_addresses: Iterable[str] = (), client: bool = True, server: bool = False,
              days: int = LEAF_DAYS) -> tuple[bytes, bytes]:
        """Issue a leaf cert; returns ``(cert_pem, key_pem)``.

        ``groups`` become O RDNs (Kubernetes groups). ``server_names`` may mix DNS names and IP
        literals; ``ip_addresses`` must be IPs. EKU is clientAuth and/or serverAuth.
        """
        if not (client or server):
            raise ValueError("a certificate must be for client and/or server use")
        key = _new_key()
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        now = _now()
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + \
                 ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name(attrs)).issuer_name(self.cert.subject)
                   .public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - BACKDATE)
                   .not_valid_after(min(now + dt.timedelta(days=days), self.cert.not_valid_after_utc))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                key_encipherment=False, data_encipherment=False,
                                                key_agreement=False, key_cert_sign=False, crl_sign=False,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                                  critical=False))
        dns, ips = _split_names(server_names)
        ips += [str(ipaddress.ip_address(ip)) for ip in ip_addresses]
        if dns or ips:
            sans = [x509.DNSName(d) for d in dict.fromkeys(dns)]
            sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in dict.fromkeys(ips)]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return _cert_pem(cert), _key_pem(key)

    def signed(self, cert: x509.Certificate) -> bool:
        """Whether ``cert`` was issued by this CA (signature check, not just the issuer name)."""
        try:
            cert.verify_directly_issued_by(self.cert)
            return True
        except (ValueError, TypeError, InvalidSignature):
            return False


def load_or_create_ca(cert_path: Path | str, key_path: Path | str, common_name: str) -> CA:
    """Load the CA at the given paths, or create and write one if either file is missing.

    A cert whose key does not match is an error rather than silently replaced: every cert and
    kubeconfig signed by it would stop working.
    """
    cert_path, key_path = Path(cert_path), Path(key_path)
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if cert.public_key().public_numbers() != key.public_key().public_numbers():
            raise ValueError(f"{key_path} does not match {cert_path}")
        return CA(cert, key)
    ca = CA.create(common_name)
    write_pem_pair(cert_path, key_path, ca.cert_pem, ca.key_pem)
    return ca


def cert_names(cert: x509.Certificate) -> set[str]:
    """DNS names and IPs (as strings) from a cert's SAN."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return set(san.get_values_for_type(x509.DNSName)) | {
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def serving_names(bind_address: str) -> list[str]:
    """SANs for a serving cert: loopback always, plus a specific bind address."""
    names = ["localhost", "127.0.0.1", "::1"]
    bind = (bind_address or "").strip("[]")
    if bind not in _UNSPECIFIED:
        dns, ips = _split_names([bind])
        bind = (ips or dns)[0]
        if bind not in names:
            names.append(bind)
    return names


def _leaf_usable(cert_path: Path, key_path: Path, ca: CA, names: Iterable[str] = ()) -> bool:
    """Reuse a leaf if it is signed by ``ca``, not near expiry, and covers ``names``."""
    if not (cert_path.exists() and key_path.exists()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except ValueError:
        return False
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        return False
    if not ca.signed(cert) or cert.not_valid_after_utc - RENEW_BEFORE < _now():
        return False
    dns, ips = _split_names(names)
    return set(dns) | set(ips) <= cert_names(cert)


def _ensure_leaf(cert_path: Path, key_path: Path, ca: CA, common_name: str, groups=(), *,
                 names: Iterable[str] = (), client=True, server=False) -> None:
    names = list(names)
    if _leaf_usable(cert_path, key_path, ca, names):
        return
    cert_pem, key_pem = ca.issue(common_name, groups, server_names=names, client=client, server=server)
    write_pem_pair(cert_path, key_path, cert_pem, key_pem)


_PKI_FILES = {
    "ca": "ca",
    "serving": "apiserver",
    "admin": "admin",
    "requestheader_ca": "requestheader-ca",
    "shard_proxy": "shard-proxy",
    "virtual_workspaces": "virtual-workspaces",
}


@dataclass
class ShardPKI:
    """The shard's PKI: loaded CAs, file paths (``<name>_cert_path``/``<name>_key_path``) and PEMs.

    PEM properties read the files on access so a cert reissued by another start is picked up.
    """

    root: Path
    ca: CA
    requestheader_ca: CA

    def __post_init__(self) -> None:
        for attr, stem in _PKI_FILES.items():
            setattr(self, f"{attr}_cert_path", self.root / f"{stem}.crt")
            setattr(self, f"{attr}_key_path", self.root / f"{stem}.key")

    # Declared for type checkers and readers; set in __post_init__.
    ca_cert_path: Path = field(init=False)
    ca_key_path: Path = field(init=False)
    serving_cert_path: Path = field(init=False)
    serving_key_path: Path = field(init=False)
    admin_cert_path: Path = field(init=False)
    admin_key_path: Path = field(init=False)
    requestheader_ca_cert_path: Path = field(init=False)
    requestheader_ca_key_path: Path = field(init=False)
    shard_proxy_cert_path: Path = field(init=False)
    shard_proxy_key_path: Path = field(init=False)
    virtual_workspaces_cert_path: Path = field(init=False)
    virtual_workspaces_key_path: Path = field(init=False)

    @property
    def client_ca_files(self) -> list[str]:
        """CAs the shard trusts for client certs: users (shard CA) and the shard proxy."""
        return [str(self.ca_cert_path), str(self.requestheader_ca_cert_path)]

    @property
    def ca_pem(self) -> bytes:
        return self.ca_cert_path.read_bytes()

    @property
    def requestheader_ca_pem(self) -> bytes:
        return self.requestheader_ca_cert_path.read_bytes()

    @property
    def serving_cert_pem(self) -> bytes:
        return self.serving_cert_path.read_bytes()

    @property
    def serving_key_pem(self) -> bytes:
        return self.serving_key_path.read_bytes()

    @property
    def admin_cert_pem(self) -> bytes:
        return self.admin_cert_path.read_bytes()

    @property
    def admin_key_pem(self) -> bytes:
        return self.admin_key_path.read_bytes()

    @property
    def shard_proxy_cert_pem(self) -> bytes:
        return self.shard_proxy_cert_path.read_bytes()

    @property
    def shard_proxy_key_pem(self) -> bytes:
        return self.shard_proxy_key_path.read_bytes()

    @property
    def virtual_workspaces_cert_pem(self) -> bytes:
        return self.virtual_workspaces_cert_path.read_bytes()

    @property
    def virtual_workspaces_key_pem(self) -> bytes:
        return self.virtual_workspaces_key_path.read_bytes()


#: The CAs every shard of one deployment (and its front-proxy) shares: users' certificates and the proxies'.
SHARED_CA_FILES = ("ca.crt", "ca.key", "requestheader-ca.crt", "requestheader-ca.key")


def adopt_shared_cas(root_dir: Path | str, source_dir: Path | str) -> None:
    """Make ``root_dir`` use the CAs of the root shard's root directory ``source_dir``, so that one kubeconfig
    works on every shard and the front-proxy, and each of them trusts the others' proxy certificate.

    Copied when ``root_dir`` has none yet; refused (ValueError) when it holds different ones, since every
    certificate issued there would stop working. Without the CA keys in ``source_dir`` (the root shard runs
    elsewhere), place the four files in ``root_dir`` by hand before the first start."""
    root, source = Path(root_dir), Path(source_dir)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    if Path(root).resolve() == source.resolve():
        return
    available = all((source / name).exists() for name in SHARED_CA_FILES)
    for name in SHARED_CA_FILES:
        mine = root / name
        if mine.exists():
            if available and mine.read_bytes() != (source / name).read_bytes():
                raise ValueError(f"{mine} differs from the root shard's {source / name}: a shard must use the "
                                 "root shard's CAs (start it with a fresh --root-directory)")
        elif available:
            _write_atomic(mine, (source / name).read_bytes(), 0o600 if name.endswith(".key") else 0o644)
        else:
            raise ValueError(f"{source} does not hold the root shard's CAs ({', '.join(SHARED_CA_FILES)}): copy "
                             f"them from the root shard's root directory into {root} before the first start")


def ensure_shard_pki(root_dir: Path | str, bind_address: str) -> ShardPKI:
    """Create the shard's PKI under ``root_dir`` on first start and reuse it afterwards.

    Only what is missing, expiring, signed by a different CA, or (for serving certs) lacking a
    needed SAN is (re)issued, so kubeconfigs handed out earlier keep working across restarts.
    """
    root = Path(root_dir)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = load_or_create_ca(root / "ca.crt", root / "ca.key", "kcp-shard-ca")
    rh_ca = load_or_create_ca(root / "requestheader-ca.crt", root / "requestheader-ca.key",
                              "kcp-requestheader-ca")
    pki = ShardPKI(root, ca, rh_ca)
    names = serving_names(bind_address)
    _ensure_leaf(pki.serving_cert_path, pki.serving_key_path, ca, "kcp-apiserver",
                 names=names, client=False, server=True)
    _ensure_leaf(pki.virtual_workspaces_cert_path, pki.virtual_workspaces_key_path, ca,
                 "kcp-virtual-workspaces", names=names, client=False, server=True)
    _ensure_leaf(pki.admin_cert_path, pki.admin_key_path, ca, "kcp-admin", ["system:masters"])
    _ensure_leaf(pki.shard_proxy_cert_path, pki.shard_proxy_key_path, rh_ca, "kcp-shard-proxy")
    return pki


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def write_kubeconfig(path: Path | str, *, server_base: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes,
                     contexts: dict[str, str], current: str, user: str = "admin") -> None:
    """Write a kubeconfig with embedded credentials, one cluster per context (same name).

    ``contexts`` maps context name to server URL; a URL starting with ``/`` is taken relative
    to ``server_base`` (``https://host:port``).
    """
    if current not in contexts:
        raise ValueError(f"current context {current!r} is not one of {sorted(contexts)}")
    base = server_base.rstrip("/")
    clusters, ctxs = [], []
    for name, url in contexts.items():
        server = base + url if url.startswith("/") else url
        clusters.append({"name": name, "cluster": {"server": server,
                                                   "certificate-authority-data": _b64(ca_pem)}})
        ctxs.append({"name": name, "context": {"cluster": name, "user": user}})
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": clusters,
        "contexts": ctxs,
        "current-context": current,
        "users": [{"name": user, "user": {"client-certificate-data": _b64(cert_pem),
                                          "client-key-data": _b64(key_pem)}}],
        "preferences": {},
    }
    _write_atomic(Path(path), yaml.safe_dump(config, sort_keys=False).encode(), 0o600)


def write_admin_kubeconfig(root_dir: Path | str, pki: ShardPKI, host: str = "127.0.0.1",
                           port: int = 6443, *, root_url: str | None = None) -> Path:
    """Write ``<root>/admin.kubeconfig``: context ``root`` (current) and ``base`` (no cluster path). A shard that
    is not the root (``root_url``: the root shard's) holds no ``root``: its ``root`` context is the root
    shard's, and ``base`` (this shard) is current.

    A restart keeps what the user did with the file since (``kcp ws use`` adds a context and cluster per
    workspace and switches to it): only the entries written here are renewed, entries on the previous
    address follow the shard to its new one, and the current context stays."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    base = f"https://{host}:{port}"
    path = Path(root_dir) / "admin.kubeconfig"
    previous = _read_kubeconfig(path)
    write_kubeconfig(path, server_base=base, ca_pem=pki.ca_pem, cert_pem=pki.admin_cert_pem,
                     key_pem=pki.admin_key_pem,
                     contexts={"root": f"{root_url.rstrip('/')}/clusters/root" if root_url else "/clusters/root",
                               "base": base},
                     current="base" if root_url else "root", user="admin")
    if previous is not None:
        _keep_user_entries(path, previous, base)
    return path


def _read_kubeconfig(path: Path) -> dict | None:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def _keep_user_entries(path: Path, previous: dict, base: str) -> None:
    """Carry the entries of ``previous`` that ``write_admin_kubeconfig`` does not own into the new file."""
    fresh = yaml.safe_load(path.read_text())
    old_base = next((c.get("cluster", {}).get("server") for c in previous.get("clusters") or ()
                     if isinstance(c, dict) and c.get("name") == "base"), None)
    ca = fresh["clusters"][0]["cluster"]["certificate-authority-data"]
    for kind in ("clusters", "contexts", "users"):
        owned = {entry["name"] for entry in fresh[kind]}
        for entry in previous.get(kind) or ():
            if not isinstance(entry, dict) or entry.get("name") in owned:
                continue
            cluster = entry.get("cluster") if kind == "clusters" else None
            server = cluster.get("server") if isinstance(cluster, dict) else None
            if old_base and isinstance(server, str) and (server == old_base or server.startswith(old_base + "/")):
                cluster["server"] = base + server[len(old_base):]  # this shard's: it may listen elsewhere now
                cluster["certificate-authority-data"] = ca
            fresh[kind].append(entry)
    current = previous.get("current-context")
    if any(entry["name"] == current for entry in fresh["contexts"]):
        fresh["current-context"] = current
    _write_atomic(path, yaml.safe_dump(fresh, sort_keys=False).encode(), 0o600)
