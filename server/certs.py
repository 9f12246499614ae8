"""Consortium PKI for ``semiofed server init``: the CA, the SuperLink TLS certificate and the
coordinator's FAB-signing key. No site private key is ever made or held here.

Layout of a consortium directory (``CERTS``)::

    CERTS/ca.crt                      consortium root CA (given to every site)
    CERTS/ca.key                      CA private key (stays with the coordinator)
    CERTS/superlink.crt, .key         SuperLink TLS certificate (SANs: the given hosts)
    CERTS/fab-signing.key, .pub       Ed25519 key that signs the FAB (the .pub goes to every
                                      site's privacy officer, :mod:`.code_signing`)
    CERTS/supernodes/<site>.pub       a site's SuperNode public key, as the site sent it
                                      (``semiofed site keygen``); the coordinator registers
                                      it with ``flwr supernode register``

TLS keys are ECDSA P-256; SuperNode keys (made at each site) are ECDSA P-384.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from semiofed.shared.atomic import atomic_write_bytes
from semiofed.shared.errors import SemioFedError

from .code_signing import write_signing_key

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "superlink")
VALID_DAYS = 825


@dataclass(frozen=True)
class ConsortiumPaths:
    """Where the consortium's certificates and keys live."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def superlink_cert(self) -> Path:
        return self.root / "superlink.crt"

    @property
    def superlink_key(self) -> Path:
        return self.root / "superlink.key"

    @property
    def fab_signing_key(self) -> Path:
        return self.root / "fab-signing.key"

    @property
    def fab_signing_pub(self) -> Path:
        return self.root / "fab-signing.pub"

    def supernode_pub(self, site: str) -> Path:
        return self.root / "supernodes" / f"{site}.pub"

    def sites(self) -> list[str]:
        folder = self.root / "supernodes"
        return sorted(p.stem for p in folder.glob("*.pub")) if folder.is_dir() else []

    def require(self, superlink: bool = True) -> None:
        """The CA certificate, and the SuperLink's certificate and key when ``superlink``."""
        paths = (
            (self.ca_cert, self.superlink_cert, self.superlink_key)
            if superlink
            else (self.ca_cert,)
        )
        for path in paths:
            if not path.is_file():
                raise SemioFedError(
                    f"{path}: missing; create the consortium certificates with "
                    f"`semiofed server init --out {self.root}`"
                )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)
    path.chmod(0o600)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SemioFed consortium"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def create_ca(paths: ConsortiumPaths, name: str = "SemioFed consortium CA") -> None:
    """A self-signed root CA (path length 0: it signs leaf certificates only)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(paths.ca_key, _key_pem(key))
    atomic_write_bytes(paths.ca_cert, cert.public_bytes(serialization.Encoding.PEM))


def _load_ca(paths: ConsortiumPaths) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise SemioFedError(f"{paths.root}: cannot load the consortium CA ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SemioFedError(f"{paths.ca_key}: not an EC private key")
    return cert, key


def issue_server_cert(paths: ConsortiumPaths, hosts: list[str]) -> None:
    """The SuperLink TLS certificate, signed by the CA, valid for ``hosts`` (SANs)."""
    ca_cert, ca_key = _load_ca(paths)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(paths.superlink_key, _key_pem(key))
    atomic_write_bytes(paths.superlink_cert, cert.public_bytes(serialization.Encoding.PEM))


def add_site_key(paths: ConsortiumPaths, site: str, public_key: Path) -> Path:
    """Register-ready copy of the SuperNode public key a site sent (``site keygen``)."""
    check_site_name(site)
    try:
        text = public_key.read_text(encoding="utf-8").strip()
        key = serialization.load_ssh_public_key(text.encode())
    except (OSError, ValueError, UnicodeDecodeError, UnsupportedAlgorithm) as exc:
        raise SemioFedError(f"{public_key}: not an OpenSSH public key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SemioFedError(f"{public_key}: a SuperNode key must be ECDSA (NIST curve)")
    target = paths.supernode_pub(site)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, text.encode() + b"\n")
    return target


def check_site_name(site: str) -> None:
    if not site or "/" in site or site.startswith("."):
        raise SemioFedError(f"invalid site name {site!r}")


def init_consortium(
    out: Path, hosts: list[str] | None = None, force: bool = False
) -> ConsortiumPaths:
    """Create the CA, the SuperLink certificate and the FAB-signing key."""
    paths = ConsortiumPaths(Path(out))
    if paths.ca_key.exists() and not force:
        raise SemioFedError(
            f"{paths.ca_key}: a consortium CA already exists; use --force to replace it "
            "(every site then needs the new ca.crt)"
        )
    paths.root.mkdir(parents=True, exist_ok=True)
    create_ca(paths)
    issue_server_cert(paths, list(hosts or DEFAULT_HOSTS))
    (paths.root / "supernodes").mkdir(exist_ok=True)
    for old in (paths.fab_signing_key, paths.fab_signing_pub):
        old.unlink(missing_ok=True)  # --force: a new consortium, a new signer
    write_signing_key(paths.fab_signing_key, paths.fab_signing_pub)
    return paths
