"""Publishing a version: weights + model card in a canonical manifest, Ed25519-signed.

The manifest (``semiofed-model-manifest/1``) holds the version name and sequence number,
the weights' SHA-256 and size, the full model card and the signer's key fingerprint. The
coordinator signs ``canonical_json(manifest)`` with its private key; the registry accepts a
version only if that signature verifies against the coordinator public key it pins, and a
site installs it only if it verifies against the key the site pins.

Two ways in, one set of checks (:func:`register_version`): :func:`publish_local` writes to
the registry database and data folder directly; :func:`publish_remote` uploads through the
registry's API with a coordinator token.

Retiring a version is signed the same way (``semiofed.shared.retirement``): the coordinator
signs a statement naming the version, its sequence and its weights' hash; the registry
stores it only if it verifies against the pinned key (:func:`retire_version`), and
``site pull`` verifies it again.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from semiofed.privacy.keys import (
    SignatureError,
    canonical_json,
    fingerprint,
    load_private_key,
    load_public_key,
    sha256_file,
    sign,
    verify,
)
from semiofed.shared.errors import SemioFedError
from semiofed.shared.manifest import Manifest, ManifestError, new_manifest, validate_manifest
from semiofed.shared.model_folder import WEIGHTS_FILE
from semiofed.shared.registry_http import registry_client
from semiofed.shared.retirement import retirement_problem, retirement_statement

from .cards import build_card
from .db import AuditEvent, ModelVersion, open_database, utcnow
from .storage import ArtifactStore


class RegistryRefusal(SemioFedError):
    """The registry refuses a request; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Registry:
    """An open registry: database sessions, artifact store and the pinned coordinator key."""

    sessions: sessionmaker
    store: ArtifactStore
    coordinator_key: Ed25519PublicKey
    publish_lock: threading.Lock = field(default_factory=threading.Lock, compare=False)


def open_registry(db_url: str, data_dir: str | Path, coordinator_pub: str | Path) -> Registry:
    store = ArtifactStore(data_dir)
    return Registry(open_database(db_url), store, load_public_key(coordinator_pub))


def default_db_url(data_dir: str | Path) -> str:
    return f"sqlite:///{Path(data_dir).resolve() / 'registry.db'}"


def build_manifest(
    card: dict[str, Any], weights: Path, version: str, sequence: int, key: Ed25519PrivateKey
) -> tuple[dict[str, Any], str]:
    """The manifest for ``card`` + ``weights`` and its base64 signature by ``key``."""
    manifest = new_manifest(
        card,
        WEIGHTS_FILE,
        sha256_file(weights),
        weights.stat().st_size,
        version,
        sequence,
        utcnow(),
        fingerprint(key.public_key()),
    )
    return manifest, sign(key, canonical_json(manifest))


def register_version(
    registry: Registry,
    session: Session,
    manifest: dict[str, Any],
    signature: str,
    role: str,
    token_id: int | None,
) -> ModelVersion:
    """Verify a signed manifest against staged weights and the pinned key; store the version.

    Every check (schema, signature, names, weights) runs before the row is added; the row, its
    audit event and its files are one transaction. Publications are serialised by the
    registry's lock, so concurrent ones neither race on the sequence nor on the staged files.
    """
    try:
        checked_manifest = validate_manifest(manifest)
    except ManifestError as exc:
        raise RegistryRefusal(422, str(exc)) from None
    try:
        verify(registry.coordinator_key, canonical_json(manifest), signature)
    except SignatureError as exc:
        raise RegistryRefusal(400, f"signature rejected: {exc}") from None
    with registry.publish_lock:
        return _store_version(
            registry, session, checked_manifest, manifest, signature, role, token_id
        )


def _store_version(
    registry: Registry,
    session: Session,
    parsed: Manifest,
    manifest: dict[str, Any],
    signature: str,
    role: str,
    token_id: int | None,
) -> ModelVersion:
    version, sequence = parsed.version, parsed.sequence
    if session.scalar(select(ModelVersion.id).where(ModelVersion.version == version)) is not None:
        raise RegistryRefusal(409, f"version {version!r} already exists")
    last = session.scalar(select(func.max(ModelVersion.sequence))) or 0
    if sequence <= last:
        raise RegistryRefusal(409, f"sequence {sequence} is not after the latest ({last})")
    sha, size = parsed.weights.sha256, parsed.weights.size
    staged = registry.store.staged(sha)
    if not staged.is_file():
        raise RegistryRefusal(422, f"no uploaded weights with SHA-256 {sha}; upload them first")
    if staged.stat().st_size != size or sha256_file(staged) != sha:
        raise RegistryRefusal(422, "uploaded weights do not match the manifest's size/SHA-256")
    row = ModelVersion(
        version=version,
        sequence=sequence,
        status="active",
        created_at=utcnow(),
        weights_sha256=sha,
        weights_size=size,
        architecture_hash=parsed.card.model.architecture_hash,
        key_fingerprint=parsed.signer.key_fingerprint,
        manifest_json=json.dumps(manifest, sort_keys=True),
        signature=signature,
        published_by=token_id,
    )
    session.add(row)
    session.add(
        AuditEvent(at=utcnow(), action="publish", role=role, token_id=token_id, version=version)
    )
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise RegistryRefusal(
            409, f"version {version!r} or sequence {sequence} was just taken"
        ) from None
    registry.store.install(version, sha)
    session.commit()
    return row


def stored_problem(registry: Registry, row: ModelVersion) -> str | None:
    """Why a stored version disagrees with its signature, schema or files; None if it does not."""
    try:
        manifest = json.loads(row.manifest_json)
        parsed = validate_manifest(manifest)
        verify(registry.coordinator_key, canonical_json(manifest), row.signature)
    except (ValueError, SignatureError) as exc:  # JSON, ManifestError and signature errors
        return str(exc)
    if (parsed.version, parsed.sequence) != (row.version, row.sequence) or (
        parsed.weights.sha256,
        parsed.weights.size,
    ) != (row.weights_sha256, row.weights_size):
        return "the database row's name, sequence or weights differ from its signed manifest"
    return stored_retirement_problem(registry, row) or registry.store.check_version(
        row.version, row.weights_size
    )


def check_stored(registry: Registry) -> None:
    """Start-up check: every stored version is schema-valid, signed and has its weights."""
    with registry.sessions() as session:
        for row in session.scalars(select(ModelVersion).order_by(ModelVersion.sequence)):
            problem = stored_problem(registry, row)
            if problem:
                raise SemioFedError(
                    f"registry database: version {row.version!r}: {problem}; "
                    "refusing to serve a registry whose records disagree"
                )


def _row(session: Session, version: str) -> ModelVersion:
    row = session.scalar(select(ModelVersion).where(ModelVersion.version == version))
    if row is None:
        raise RegistryRefusal(404, f"no version {version!r}")
    return row


def build_retirement(
    manifest: dict[str, Any], reason: str, key: Ed25519PrivateKey
) -> tuple[dict[str, Any], str]:
    """The coordinator's retirement of the version ``manifest`` describes, and its signature."""
    statement = retirement_statement(
        manifest["version"],
        manifest["sequence"],
        manifest["weights"]["sha256"],
        reason,
        utcnow(),
        fingerprint(key.public_key()),
    )
    return statement, sign(key, canonical_json(statement))


def retirement_check(
    registry: Registry, row: ModelVersion, statement: Any, signature: str
) -> str | None:
    """Why ``statement``/``signature`` is not the coordinator's retirement of ``row``."""
    try:
        verify(registry.coordinator_key, canonical_json(statement), signature)
    except SignatureError as exc:
        return f"signature rejected: {exc}"
    return retirement_problem(statement, row.version, row.sequence, row.weights_sha256)


def stored_retirement_problem(registry: Registry, row: ModelVersion) -> str | None:
    """Why a stored row's status disagrees with its signed retirement; None if it does not."""
    if row.retirement_json is None:
        if row.status == "retired":
            return (
                "retired without a signed retirement "
                f"(sign it: `semiofed registry retire {row.version} --reason …`)"
            )
        return None
    if row.status != "retired":
        return "a signed retirement is stored but the version is listed as active"
    try:
        statement = json.loads(row.retirement_json)
    except ValueError as exc:
        return f"its stored retirement is not JSON ({exc})"
    problem = retirement_check(registry, row, statement, row.retirement_signature or "")
    if problem is None and (row.retired_at, row.retired_reason) != (
        statement["retired_at"],
        statement["reason"],
    ):
        return "the row's retirement date or reason differ from its signed retirement"
    return problem


def retire_version(
    registry: Registry,
    session: Session,
    version: str,
    statement: dict[str, Any],
    signature: str,
    role: str,
    token_id: int | None,
) -> ModelVersion:
    """Store the coordinator's signed retirement of ``version`` (400 unless it verifies and
    names exactly this version). A version already retired by a signed statement keeps it."""
    row = _row(session, version)
    if row.status == "retired" and stored_retirement_problem(registry, row) is None:
        return row
    problem = retirement_check(registry, row, statement, signature)
    if problem:
        raise RegistryRefusal(400, f"retirement of {version!r} refused: {problem}")
    row.status, row.retired_at, row.retired_reason = (
        "retired",
        statement["retired_at"],
        statement["reason"],
    )
    row.retirement_json = json.dumps(statement, sort_keys=True)
    row.retirement_signature = signature
    session.add(
        AuditEvent(
            at=utcnow(),
            action="retire",
            role=role,
            token_id=token_id,
            version=version,
            detail=statement["reason"],
        )
    )
    session.commit()
    return row


def retire_local(
    registry: Registry, version: str, reason: str, key_path: str | Path
) -> ModelVersion:
    """Sign the retirement of ``version`` with the coordinator key and store it directly."""
    key = load_private_key(key_path)
    with registry.sessions() as session:
        manifest = json.loads(_row(session, version).manifest_json)
        statement, signature = build_retirement(manifest, reason, key)
        return retire_version(registry, session, version, statement, signature, "cli", None)


def _next(existing_sequences: list[int], version: str | None) -> tuple[str, int]:
    sequence = max(existing_sequences, default=0) + 1
    return (version or f"v{sequence}"), sequence


def _prepare(
    run_dir: str | Path, key_path: str | Path
) -> tuple[dict[str, Any], Path, Ed25519PrivateKey]:
    card = build_card(run_dir)
    return card, Path(run_dir) / WEIGHTS_FILE, load_private_key(key_path)


def publish_local(
    run_dir: str | Path,
    registry: Registry,
    key_path: str | Path,
    version: str | None = None,
) -> ModelVersion:
    """Publish ``run_dir`` straight into an open registry (no server needed)."""
    card, weights, key = _prepare(run_dir, key_path)
    with registry.sessions() as session:
        version, sequence = _next(list(session.scalars(select(ModelVersion.sequence))), version)
        manifest, signature = build_manifest(card, weights, version, sequence, key)
        with open(weights, "rb") as fh:
            registry.store.stage(iter(lambda: fh.read(1 << 20), b""))
        return register_version(registry, session, manifest, signature, "cli", None)


def _chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            yield block


def publish_remote(
    run_dir: str | Path,
    url: str,
    token: str,
    key_path: str | Path,
    version: str | None = None,
    ca: str | Path | None = None,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """Publish ``run_dir`` through a running registry at ``url`` with a coordinator token;
    an https:// registry's certificate must chain to ``ca``."""
    import httpx

    card, weights, key = _prepare(run_dir, key_path)
    headers = {"Authorization": f"Bearer {token}"}
    with registry_client(url, ca, timeout, headers=headers) as client:
        try:
            listing = checked(client.get("/api/v1/models"))
            version, sequence = _next([v["sequence"] for v in listing["versions"]], version)
            manifest, signature = build_manifest(card, weights, version, sequence, key)
            checked(
                client.post(
                    "/api/v1/uploads",
                    content=_chunks(weights),
                    headers={"Content-Type": "application/octet-stream"},
                )
            )
            return checked(
                client.post("/api/v1/models", json={"manifest": manifest, "signature": signature})
            )
        except httpx.HTTPError as exc:
            raise SemioFedError(f"{url}: registry unreachable ({exc})") from None


def retire_remote(
    version: str,
    reason: str,
    url: str,
    token: str,
    key_path: str | Path,
    ca: str | Path | None = None,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """Retire ``version`` on the registry at ``url``: only a manifest this coordinator key
    signed is retired, by a statement the same key signs."""
    import httpx

    key = load_private_key(key_path)
    headers = {"Authorization": f"Bearer {token}"}
    with registry_client(url, ca, timeout, headers=headers) as client:
        try:
            signed = checked(client.get(f"/api/v1/models/{version}/manifest"))
            manifest = signed.get("manifest")
            try:
                verify(key.public_key(), canonical_json(manifest), signed.get("signature", ""))
            except SignatureError as exc:
                raise SemioFedError(
                    f"{version}: the registry's manifest is not one {key_path} signed ({exc}); "
                    "not retiring it"
                ) from None
            statement, signature = build_retirement(manifest, reason, key)
            return checked(
                client.post(
                    f"/api/v1/models/{version}/retire",
                    json={"statement": statement, "signature": signature},
                )
            )
        except httpx.HTTPError as exc:
            raise SemioFedError(f"{url}: registry unreachable ({exc})") from None


def checked(response: Any) -> dict[str, Any]:
    """The JSON body of a successful registry response; a clear error otherwise."""
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise SemioFedError(
            f"registry refused {response.request.method} {response.request.url.path}: "
            f"HTTP {response.status_code}: {detail}"
        )
    return response.json()
