"""Run-configuration approval by the site's privacy officer; the client refuses anything else.

The officer signs, with their Ed25519 key, the *approval fields* of a run configuration (the
model architecture hash and the **whole** validated configuration: every field, including
learning rate, split fractions, seed, fraction-train, min-nodes, SecAgg+ parameters and
timeouts; ``semiofed.shared.run_config.RunConfig.approval_fields``), the hash of the FAB (the code
bundle) the run must come in, the FAB signer it trusts, and an expiry. Each approval is a
JSON record in ``STATE/approvals/``; the officer's public key is pinned at
``STATE/keys/privacy_officer_ed25519.pub.pem``. Every approval also refreshes
``STATE/trusted_entities.yaml``, the signers of the unexpired approvals, which the site's
SuperNode is started with (``flower-supernode --trusted-entities``).

:func:`require_approved` fails closed: no pinned key, no record, a record whose signature
does not verify, no record whose fields equal the run's fields, a different FAB or an
expired approval all raise :class:`NotApproved` naming the reason.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from semiofed.shared.atomic import atomic_write_bytes, atomic_write_json
from semiofed.shared.errors import SemioFedError
from semiofed.shared.fab import signer_id

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
TRUSTED_ENTITIES_FILE = "trusted_entities.yaml"
DEFAULT_VALID_DAYS = 30.0


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
    from semiofed.shared.run_config import load_run_config

    return load_run_config(path).approval_fields()


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
    *,
    fab_hash: str | None = None,
    signer: str | None = None,
    valid_days: float = DEFAULT_VALID_DAYS,
    source: str = "",
) -> dict[str, Any]:
    """Sign ``fields`` for runs of the FAB ``fab_hash`` signed by ``signer`` (an OpenSSH
    Ed25519 public key line), valid for ``valid_days``; store the record, refresh the trusted
    entities and return the record. ``fab_hash=None`` approves runs without a FAB only
    (simulation, in-process tests): a deployed ClientApp always runs from a FAB."""
    if valid_days <= 0:
        raise SemioFedError(f"an approval must be valid for > 0 days, got {valid_days}")
    signer = signer.strip() if signer is not None else None
    if signer is not None and not signer.startswith("ssh-ed25519 "):
        raise SemioFedError("the FAB signer must be an OpenSSH Ed25519 public key line")
    pin_officer_key(state_dir, officer_key)
    now = datetime.now(UTC)
    body = {
        "fields": fields,
        "fields_hash": fields_hash(fields),
        "fab_hash": fab_hash,
        "fab_signer": signer,
        "approved_at": now.isoformat(timespec="seconds"),
        "expires_at": (now + timedelta(days=valid_days)).isoformat(timespec="seconds"),
        "officer_fingerprint": fingerprint(officer_key.public_key()),
        "source": source,
    }
    record = {**body, "signature": sign(officer_key, canonical_json(body))}
    name = fields_hash({"fields": body["fields_hash"], "fab": fab_hash})
    atomic_write_json(Path(state_dir) / APPROVALS_DIR / f"{name}.json", record)
    write_trusted_entities(state_dir, officer_key.public_key())
    return record


def _expired(record: dict[str, Any], now: datetime) -> bool:
    try:
        return datetime.fromisoformat(str(record["expires_at"])) <= now
    except (KeyError, ValueError):
        return True  # an approval without a valid expiry never counts


def write_trusted_entities(state_dir: str | Path, public_key: Ed25519PublicKey) -> Path:
    """``STATE/trusted_entities.yaml``: the FAB signers of the unexpired approvals (JSON, a
    YAML subset, as Flower's ``--trusted-entities`` reads it: id → public key line)."""
    now = datetime.now(UTC)
    signers = {
        signer_id(r["fab_signer"]): r["fab_signer"]
        for r in load_approvals(state_dir, public_key)
        if r.get("fab_signer") and not _expired(r, now)
    }
    path = Path(state_dir) / TRUSTED_ENTITIES_FILE
    atomic_write_bytes(path, (json.dumps(signers, indent=1, sort_keys=True) + "\n").encode())
    return path


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


def trusted_signers_file(path: str | Path) -> Path:
    """``path`` (a trusted-entities file) when it names at least one signer; a SuperNode
    started with none would run any FAB, so this refuses (fails closed)."""
    import yaml  # the format Flower reads it in

    path = Path(path)
    try:
        signers = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise NotApproved(
            f"{path}: no trusted FAB signer ({exc}); the privacy officer must approve a run "
            "configuration with its signer (`semiofed audit approve RUN_CONFIG --signer "
            "fab-signing.pub --state DIR`)"
        ) from None
    if not isinstance(signers, dict) or not signers:
        raise NotApproved(f"{path}: names no trusted FAB signer (every approval expired?)")
    return path


def require_approved(
    fields: dict[str, Any],
    state_dir: str | Path,
    public_key: Ed25519PublicKey | None = None,
    *,
    fab_hash: str | None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The unexpired approval record for ``fields`` in the FAB ``fab_hash``; raises
    :class:`NotApproved` naming the reason (changed fields, other FAB, expired)."""
    key = public_key if public_key is not None else pinned_officer_key(state_dir)
    records = load_approvals(state_dir, key)
    if not records:
        raise NotApproved(
            f"no approved run configuration in {Path(state_dir) / APPROVALS_DIR}; "
            "the privacy officer must run `semiofed audit approve RUN_CONFIG --state DIR`"
        )
    want = fields_hash(fields)
    same = [r for r in records if r["fields_hash"] == want]
    code = [r for r in same if r.get("fab_hash") == fab_hash]
    now = now or datetime.now(UTC)
    for record in code:
        if not _expired(record, now):
            return record
    if code:
        raise NotApproved(
            f"the approval of this run configuration expired at {code[0].get('expires_at')}; "
            "the privacy officer must approve it again"
        )
    if same:
        raise NotApproved(
            f"this run configuration is approved for the FAB {same[0].get('fab_hash')}, "
            f"not for the FAB it came in ({fab_hash or 'none: this ClientApp runs without a FAB'})"
        )
    latest = max(records, key=lambda r: r.get("approved_at", ""))
    diffs = field_differences(latest["fields"], fields)
    shown = "; ".join(diffs[:5]) + (f"; … {len(diffs) - 5} more" if len(diffs) > 5 else "")
    raise NotApproved(
        f"this run configuration (fields hash {want[:16]}…) matches none of the "
        f"{len(records)} approved configuration(s); differences from the latest approval: {shown}"
    )
