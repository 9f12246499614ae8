"""Run-configuration approval by the site's privacy officer; the client refuses anything else.

The officer signs the *approval fields* of a run configuration (model architecture hash,
DP and evaluation-noise parameters, seed and split fractions, learning rate, rounds,
strategy, SecAgg+, central DP: every field that changes what is computed on patient data;
see ``semiofed.shared.run_config.approval_fields``) with their Ed25519 key. Each approval is a JSON record in ``STATE/approvals/``; the officer's
public key is pinned at ``STATE/keys/privacy_officer_ed25519.pub.pem``.

:func:`require_approved` fails closed: no pinned key, no record, a record whose signature
does not verify, or no record whose fields equal the run's fields all raise
:class:`NotApproved`.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from semiofed.shared.atomic import atomic_write_bytes, atomic_write_json
from semiofed.shared.errors import SemioFedError

from .keys import (
    KeyFileError,
    SignatureError,
    canonical_json,
    fingerprint,
    load_public_key,
    public_pem,
    sign,
    verify,
)

APPROVALS_DIR = "approvals"
OFFICER_KEY_FILE = "keys/privacy_officer_ed25519.pem"
OFFICER_PUB_FILE = "keys/privacy_officer_ed25519.pub.pem"


class NotApproved(SemioFedError):
    """The run configuration matches no valid approval (the site must not take part)."""


def fields_hash(fields: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(fields)).hexdigest()


def flatten_fields(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten_fields(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj}


def field_differences(approved: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """Human-readable differences, e.g. ``dp.noise_multiplier: approved 1.1, requested 0.5``."""
    a, r = flatten_fields(approved), flatten_fields(requested)
    diffs = []
    for k in sorted(set(a) | set(r)):
        if a.get(k, "<absent>") != r.get(k, "<absent>"):
            diffs.append(
                f"{k}: approved {a.get(k, '<absent>')!r}, requested {r.get(k, '<absent>')!r}"
            )
    return diffs


def approval_fields_of(path: str | Path) -> dict[str, Any]:
    """The fields an officer approves for a TOML run configuration file."""
    from semiofed.shared.run_config import approval_fields, load_run_config

    return dict(approval_fields(load_run_config(path)))


def pinned_officer_key(state_dir: str | Path) -> Ed25519PublicKey:
    path = Path(state_dir) / OFFICER_PUB_FILE
    if not path.exists():
        raise NotApproved(
            f"no privacy officer key is pinned at {path}; the officer must approve the run "
            "configuration first (`semiofed audit approve RUN_CONFIG --state DIR`)"
        )
    return load_public_key(path)


def pin_officer_key(state_dir: str | Path, key: Ed25519PrivateKey) -> None:
    """Pin the officer's public key on first use; refuse a different key later."""
    path = Path(state_dir) / OFFICER_PUB_FILE
    pem = public_pem(key.public_key())
    if path.exists():
        pinned = load_public_key(path)
        if fingerprint(pinned) != fingerprint(key.public_key()):
            raise KeyFileError(
                f"{path} pins another privacy officer key ({fingerprint(pinned)[:16]}…); "
                "remove it deliberately if the officer's key has changed"
            )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, pem)


def approve(
    fields: dict[str, Any],
    state_dir: str | Path,
    officer_key: Ed25519PrivateKey,
    source: str = "",
) -> dict[str, Any]:
    """Sign ``fields`` and store the approval record; returns it."""
    pin_officer_key(state_dir, officer_key)
    body = {
        "fields": fields,
        "fields_hash": fields_hash(fields),
        "approved_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "officer_fingerprint": fingerprint(officer_key.public_key()),
        "source": source,
    }
    record = {**body, "signature": sign(officer_key, canonical_json(body))}
    atomic_write_json(Path(state_dir) / APPROVALS_DIR / f"{body['fields_hash']}.json", record)
    return record


def load_approvals(state_dir: str | Path, public_key: Ed25519PublicKey) -> list[dict[str, Any]]:
    """Every approval record, each verified; any bad record raises :class:`NotApproved`."""
    folder = Path(state_dir) / APPROVALS_DIR
    records = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            body = {k: v for k, v in record.items() if k != "signature"}
            verify(public_key, canonical_json(body), record["signature"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError, SignatureError) as exc:
            raise NotApproved(
                f"{path}: approval record does not verify against the pinned officer key "
                f"({exc}); refusing every run until the approvals folder is restored"
            ) from None
        if record.get("fields_hash") != fields_hash(record.get("fields", {})):
            raise NotApproved(f"{path}: fields_hash does not match the approved fields")
        records.append(record)
    return records


def require_approved(
    fields: dict[str, Any],
    state_dir: str | Path,
    public_key: Ed25519PublicKey | None = None,
) -> dict[str, Any]:
    """The approval record matching ``fields``; raises :class:`NotApproved` with the reason."""
    key = public_key if public_key is not None else pinned_officer_key(state_dir)
    records = load_approvals(state_dir, key)
    if not records:
        raise NotApproved(
            f"no approved run configuration in {Path(state_dir) / APPROVALS_DIR}; "
            "the privacy officer must run `semiofed audit approve RUN_CONFIG --state DIR`"
        )
    want = fields_hash(fields)
    for record in records:
        if record["fields_hash"] == want:
            return record
    latest = max(records, key=lambda r: r.get("approved_at", ""))
    diffs = field_differences(latest["fields"], fields)
    shown = "; ".join(diffs[:5]) + (f"; … {len(diffs) - 5} more" if len(diffs) > 5 else "")
    raise NotApproved(
        f"this run configuration (fields hash {want[:16]}…) matches none of the "
        f"{len(records)} approved configuration(s); differences from the latest approval: {shown}"
    )
