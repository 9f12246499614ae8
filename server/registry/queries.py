"""Read-side helpers shared by the API and the web pages."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from semiofed.shared.manifest import (
    CARD_FORMAT,
    Card,
    CardModel,
    CardPrivacy,
    ManifestError,
    validate_manifest,
)

from .db import AuditEvent, ModelVersion
from .publish import RegistryRefusal
from .schemas import (
    AuditEventOut,
    AuditLog,
    LedgerEntry,
    SignedRetirement,
    VersionDetail,
    VersionSummary,
)


def manifest_of(row: ModelVersion) -> dict[str, Any]:
    """The stored manifest as signed (an empty object if the stored text is not one)."""
    try:
        manifest = json.loads(row.manifest_json)
    except ValueError:
        return {}
    return manifest if isinstance(manifest, dict) else {}


def retirement_of(row: ModelVersion) -> SignedRetirement | None:
    """The stored signed retirement, as stored (``None`` if there is none or it is not JSON:
    ``site pull`` then finds no verified retirement and the weights answer 410)."""
    if row.retirement_json is None:
        return None
    try:
        statement = json.loads(row.retirement_json)
    except ValueError:
        return None
    if not isinstance(statement, dict):
        return None
    return SignedRetirement(statement=statement, signature=row.retirement_signature or "")


def card_of(row: ModelVersion) -> Card:
    """The version's card, parsed; a placeholder if the stored one fails the schema (a row
    written by hand or by an older registry): no stored row makes a read route fail."""
    try:
        return validate_manifest(manifest_of(row)).card
    except ManifestError as exc:
        return Card(
            format=CARD_FORMAT,
            name=f"unreadable model card ({exc})",
            model=CardModel(architecture_hash=row.architecture_hash or "unknown"),
            rounds=0,
            sites=[],
            privacy=CardPrivacy(),
        )


def card_dict(row: ModelVersion) -> dict[str, Any]:
    return card_of(row).model_dump(mode="json")


def summarize(row: ModelVersion) -> VersionSummary:
    card = card_of(row)
    return VersionSummary(
        version=row.version,
        sequence=row.sequence,
        status=row.status,  # type: ignore[arg-type]
        created_at=row.created_at,
        weights_sha256=row.weights_sha256,
        weights_size=row.weights_size,
        architecture_hash=row.architecture_hash,
        key_fingerprint=row.key_fingerprint,
        rounds=card.rounds,
        sites=card.sites,
        privacy_unit=card.privacy.privacy_unit,
        epsilon_final={site: rec.epsilon_final for site, rec in card.privacy.per_site.items()},
        retired_at=row.retired_at,
        retired_reason=row.retired_reason,
    )


def detail(row: ModelVersion) -> VersionDetail:
    return VersionDetail(**summarize(row).model_dump(), card=card_dict(row))


def list_versions(session: Session, status: str | None = None) -> list[ModelVersion]:
    query = select(ModelVersion).order_by(ModelVersion.sequence.desc())
    if status:
        query = query.where(ModelVersion.status == status)
    return list(session.scalars(query))


def get_version(session: Session, version: str) -> ModelVersion:
    row = session.scalar(select(ModelVersion).where(ModelVersion.version == version))
    if row is None:
        raise RegistryRefusal(404, f"no version {version!r}")
    return row


def ledger(rows: list[ModelVersion]) -> list[LedgerEntry]:
    """Every site's ε per round for every version: the registry's privacy ledger."""
    entries = []
    for row in rows:
        for site, rec in card_of(row).privacy.per_site.items():
            for point in rec.epsilon_by_round:
                entries.append(
                    LedgerEntry(
                        version=row.version,
                        site=site,
                        round=point.round,
                        epsilon=point.epsilon,
                        epsilon_round=point.epsilon_round,
                        delta=rec.delta,
                        privacy_unit=rec.privacy_unit,
                        accountant=rec.accountant,
                    )
                )
    return entries


def audit_log(session: Session, limit: int) -> AuditLog:
    counts = session.execute(select(AuditEvent.action, func.count()).group_by(AuditEvent.action))
    downloads = session.execute(
        select(AuditEvent.version, func.count())
        .where(AuditEvent.action == "download")
        .group_by(AuditEvent.version)
    )
    events = session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit))
    return AuditLog(
        summary={action: n for action, n in counts},
        downloads={str(version): n for version, n in downloads},
        events=[
            AuditEventOut(
                at=e.at,
                action=e.action,
                role=e.role,
                token_id=e.token_id,
                version=e.version,
                detail=e.detail,
            )
            for e in events
        ],
    )
