"""Creating a site's privacy ledger: an explicit act of its privacy officer, bound to the data.

``semiofed audit init-ledger --state STATE --data DATA --key OFFICER_KEY --epsilon-budget E
--delta D`` signs a *binding* with the officer's key (kept outside STATE)::

    {ledger_id, created, patients: [SHA-256 of each patient id], data_fingerprint,
     budget: {epsilon_max, delta, accountant}, officer_fingerprint, reset}

and writes it to three places: inside the new ``STATE/privacy_ledger.json``; to the data
root, ``DATA/.semiofed-ledger.json`` (so a fresh STATE cannot forget that these patients
already have a ledger); and to the officer's own register, ``OFFICER_DIR/ledgers/`` beside the
officer key (so a copy of the data elsewhere is recognised by its patients). It refuses when
the data root already names a ledger or the register holds a ledger sharing a patient,
unless the officer signs a *reset* (``--reset-reason TEXT``): the new binding then names the
ledgers it supersedes and the reason, and the trail records it (``ledger_created``).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from semiofed.shared.atomic import atomic_write_json
from semiofed.shared.errors import SemioFedError

from .accounting import ACCOUNTANTS
from .approval import pin_officer_key
from .audit_trail import site_trail
from .keys import canonical_json, fingerprint, load_private_key, refuse_key_inside, sign
from .ledger import PrivacyLedger
from .ledger_integrity import patient_hash, sha256_json

DATA_MARKER = ".semiofed-ledger.json"
REGISTER_DIR = "ledgers"


def patient_hashes(data_dir: Path) -> list[str]:
    """SHA-256 of every patient id (folder) of the site's data, sorted."""
    from semiofed.shared.dataset import patient_folders

    names = patient_folders(data_dir)
    if not names:
        raise SemioFedError(f"{data_dir}: no patient folders; nothing to bind a ledger to")
    return sorted(patient_hash(n) for n in names)


def _bindings_sharing(patients: list[str], data_dir: Path, register: Path) -> dict[str, str]:
    """Ledger id → where it was found, for every existing binding of these patients."""
    found: dict[str, str] = {}
    marker = data_dir / DATA_MARKER
    paths = [marker] if marker.exists() else []
    paths += sorted(register.glob("*.json")) if register.is_dir() else []
    mine = set(patients)
    for path in paths:
        try:
            body = json.loads(path.read_text(encoding="utf-8"))["body"]
            shared = path == marker or mine & set(body["patients"])
            lid = str(body["ledger_id"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SemioFedError(f"{path}: unreadable ledger binding ({exc})") from None
        if shared:
            found.setdefault(lid, str(path))
    return found


def init_ledger(
    state_dir: Path,
    data_dir: Path,
    officer_key_path: Path,
    epsilon_max: float,
    delta: float,
    accountant: str = "rdp",
    reset_reason: str | None = None,
) -> dict[str, Any]:
    """Create the site's ledger under a new officer-signed binding; returns the binding body."""
    if not epsilon_max > 0:
        raise SemioFedError(f"epsilon budget must be > 0, got {epsilon_max}")
    if not 0 < delta < 1:
        raise SemioFedError(f"delta must be in (0, 1), got {delta}")
    if accountant not in ACCOUNTANTS:
        raise SemioFedError(f"unknown accountant {accountant!r}")
    refuse_key_inside(officer_key_path, state_dir)
    key = load_private_key(officer_key_path)
    ledger = PrivacyLedger(state_dir)
    if ledger.path.exists():
        raise SemioFedError(f"{ledger.path}: this state folder already has a privacy ledger")
    register = Path(officer_key_path).parent / REGISTER_DIR
    patients = patient_hashes(data_dir)
    earlier = _bindings_sharing(patients, data_dir, register)
    if earlier and not reset_reason:
        lid, where = next(iter(earlier.items()))
        raise SemioFedError(
            f"{where}: these patients already have privacy ledger {lid}; a new ledger would "
            "restart their ε from zero. Keep using its state folder, or sign a reset "
            "(--reset-reason TEXT)"
        )
    body = {
        "ledger_id": uuid.uuid4().hex,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "patients": patients,
        "data_fingerprint": sha256_json(patients),
        "budget": {
            "epsilon_max": float(epsilon_max),
            "delta": float(delta),
            "accountant": accountant,
        },
        "officer_fingerprint": fingerprint(key.public_key()),
        "reset": {"reason": reset_reason, "supersedes": sorted(earlier)} if earlier else None,
    }
    binding = {"body": body, "signature": sign(key, canonical_json(body))}
    pin_officer_key(state_dir, key)
    ledger.create(binding)
    atomic_write_json(data_dir / DATA_MARKER, binding)
    atomic_write_json(register / f"{body['ledger_id']}.json", binding)
    site_trail(state_dir).append(
        "ledger_created",
        {
            "ledger_id": body["ledger_id"],
            "data_fingerprint": body["data_fingerprint"],
            "patients": len(patients),
            "budget": body["budget"],
            "reset": body["reset"],
        },
    )
    return body
