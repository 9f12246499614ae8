"""Ed25519 keys and signatures: coordinator model signing, site audit trails, approvals.

Private keys are PEM (PKCS#8) files written with mode 0600; public keys are PEM
(SubjectPublicKeyInfo). Signatures are over bytes; :func:`canonical_json` gives the bytes
of a JSON document independent of key order and whitespace.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from semiofed.shared.atomic import atomic_write_bytes
from semiofed.shared.errors import SemioFedError


class SignatureError(SemioFedError):
    """A signature is missing, malformed or does not verify."""


class KeyFileError(SemioFedError):
    """A key file is missing or unreadable."""


def generate_keypair(
    private_path: str | Path, public_path: str | Path | None = None
) -> Ed25519PrivateKey:
    """Create a new Ed25519 key pair; refuses to overwrite an existing private key."""
    private_path = Path(private_path)
    if private_path.exists():
        raise KeyFileError(
            f"{private_path}: a private key already exists; refusing to overwrite it"
        )
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    atomic_write_bytes(private_path, pem)
    os.chmod(private_path, 0o600)
    pub_path = Path(public_path) if public_path else private_path.with_suffix(".pub.pem")
    atomic_write_bytes(pub_path, public_pem(key.public_key()))
    return key


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: cannot read Ed25519 private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path_or_pem: str | Path | bytes) -> Ed25519PublicKey:
    if isinstance(path_or_pem, bytes):
        data, where = path_or_pem, "<public key>"
    else:
        where = str(path_or_pem)
        try:
            data = Path(path_or_pem).read_bytes()
        except OSError as exc:
            raise KeyFileError(f"{where}: cannot read public key ({exc})") from None
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise KeyFileError(f"{where}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{where}: not an Ed25519 public key")
    return key


def fingerprint(key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw public key, hex: a short, stable key identifier."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(key: Ed25519PrivateKey, data: bytes) -> str:
    """Base64 signature of ``data``."""
    return base64.b64encode(key.sign(data)).decode()


def verify(key: Ed25519PublicKey, data: bytes, signature: str) -> None:
    """Raise :class:`SignatureError` unless ``signature`` is a valid signature of ``data``."""
    try:
        raw = base64.b64decode(signature, validate=True)
    except (ValueError, TypeError):
        raise SignatureError("signature is not valid base64") from None
    try:
        key.verify(raw, data)
    except InvalidSignature:
        raise SignatureError("signature does not verify against the pinned public key") from None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def refuse_key_inside(key_path: str | Path, state_dir: str | Path) -> None:
    """An officer's private key must not live in the site's state folder: anyone who can
    read STATE (the training host, the ClientApp) could then sign approvals and anchors."""
    key, state = Path(key_path).resolve(), Path(state_dir).resolve()
    if key == state or state in key.parents:
        raise KeyFileError(
            f"{key_path}: the privacy officer's private key must live outside the site state "
            f"folder {state_dir} (keep it on the officer's own machine or token)"
        )
