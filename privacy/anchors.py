"""The privacy officer's anchors: countersignatures of a site's audit-trail head.

The site signs its trail with a key in STATE, so whoever can write STATE can rewrite the
trail (delete, reorder or insert entries) and re-sign it consistently. An *anchor* is the
officer's Ed25519 signature (a key kept outside STATE) over the trail's head and the
ledger's history state::

    {trail_seq, trail_hash, site_key_fingerprint, ledger_id, closed, history_hash,
     anchored_at, officer_fingerprint}

``semiofed audit anchor`` writes it twice: to the officer's own folder
(``OFFICER_DIR/anchors/``, beside the officer key, out of the site's reach) and to
``STATE/audit/anchors/`` (so the ClientApp can check the ledger before each DP action), and
records an ``officer_anchor`` entry in the trail. ``audit verify --officer-key PUB --anchors
DIR`` then reports as tampering any trail whose anchored entry is missing or has another
hash. Entries after the latest anchor are protected only by the site key.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from semiofed.shared.atomic import atomic_write_json
from semiofed.shared.errors import SemioFedError

from .audit_trail import (
    TRAIL_FILE,
    VerifyResult,
    read_entries,
    site_public_key_path,
    site_trail,
    verify,
)
from .keys import (
    SignatureError,
    canonical_json,
    fingerprint,
    load_private_key,
    load_public_key,
    refuse_key_inside,
    sign,
)
from .keys import verify as verify_signature
from .ledger_integrity import LedgerIntegrityError, require_prefix

ANCHORS_DIR = "audit/anchors"
OFFICER_ANCHORS = "anchors"


class AnchorError(SemioFedError):
    """An anchor is malformed or not signed by the officer, or the trail contradicts it."""


def anchor_file(seq: int) -> str:
    return f"trail-{seq:08d}.json"


def load_anchors(folder: Path, officer_key: Ed25519PublicKey) -> list[dict[str, Any]]:
    """Every anchor in ``folder`` (oldest first), each verified against ``officer_key``."""
    out = []
    for path in sorted(folder.glob("trail-*.json")) if folder.is_dir() else []:
        try:
            anchor = json.loads(path.read_text(encoding="utf-8"))
            body = {k: v for k, v in anchor.items() if k != "signature"}
            verify_signature(officer_key, canonical_json(body), anchor["signature"])
            int(body["trail_seq"])
        except (OSError, ValueError, KeyError, TypeError, SignatureError) as exc:
            raise AnchorError(f"{path}: not a valid officer anchor ({exc})") from None
        out.append(anchor)
    return sorted(out, key=lambda a: int(a["trail_seq"]))


def trail_problem(entries: list[dict[str, Any]], site_fp: str, anchor: dict[str, Any]) -> str:
    """Why the (verified) trail ``entries`` contradict ``anchor``; '' when they agree."""
    seq, when = int(anchor["trail_seq"]), anchor["anchored_at"]
    if anchor["site_key_fingerprint"] != site_fp:
        return f"the trail is signed by site key {site_fp[:16]}…, the officer anchored {anchor['site_key_fingerprint'][:16]}… ({when})"
    if seq >= len(entries):
        return (
            f"rolled back or truncated: the officer anchored entry {seq} ({when}), "
            f"the trail ends at entry {len(entries) - 1}"
        )
    if entries[seq]["hash"] != anchor["trail_hash"]:
        return (
            f"entry {seq} differs from the officer's anchor of {when}: entries at or before it "
            "were removed, inserted, reordered or changed and the trail re-signed"
        )
    return ""


def check_state_anchors(
    path: Path, state_dir: Path, entries: list[dict[str, Any]], ledger_id: str, hashes: list[str]
) -> None:
    """DP-time check of the ledger ``path`` against the anchors kept in STATE."""
    from .approval import OFFICER_PUB_FILE

    officer = load_public_key(state_dir / OFFICER_PUB_FILE)
    folder = state_dir / ANCHORS_DIR
    try:
        anchors = load_anchors(folder, officer)
    except AnchorError as exc:
        raise LedgerIntegrityError(path, str(exc)) from None
    have = {int(a["trail_seq"]) for a in anchors}
    for e in entries:
        if e["kind"] == "officer_anchor" and int(e["payload"]["trail_seq"]) not in have:
            raise LedgerIntegrityError(
                path,
                f"the trail records an officer anchor of entry {e['payload']['trail_seq']}, "
                f"but {folder / anchor_file(int(e['payload']['trail_seq']))} is missing",
            )
    site_fp = entries[0]["key_fingerprint"] if entries else ""
    for a in anchors:
        problem = trail_problem(entries, site_fp, a)
        if problem:
            raise LedgerIntegrityError(path, f"audit trail: {problem}")
        if a["ledger_id"] == ledger_id:
            where = f"the officer's anchor of {a['anchored_at']}"
            require_prefix(path, hashes, int(a["closed"]), str(a["history_hash"]), where)


def make_anchor(state_dir: Path, officer_key_path: Path) -> dict[str, Any]:
    """Countersign the trail head and the ledger state of ``state_dir`` (refused when the trail
    does not verify or contradicts an earlier anchor of this officer); returns the anchor."""
    from .ledger import PrivacyLedger

    refuse_key_inside(officer_key_path, state_dir)
    key = load_private_key(officer_key_path)
    officer_dir = Path(officer_key_path).parent / OFFICER_ANCHORS
    trail = state_dir / TRAIL_FILE
    result = verify(trail, load_public_key(site_public_key_path(state_dir)))
    if not result.ok:
        raise AnchorError(
            f"{trail}: refusing to anchor a trail that does not verify: {result.summary()}"
        )
    entries = read_entries(trail)
    for earlier in load_anchors(officer_dir, key.public_key()):
        problem = trail_problem(entries, result.key_fingerprint, earlier)
        if problem:
            raise AnchorError(f"{trail}: refusing to anchor: {problem}")
    ledger = PrivacyLedger(state_dir).head()
    head = entries[-1]
    body = {
        "trail_seq": int(head["seq"]),
        "trail_hash": head["hash"],
        "site_key_fingerprint": result.key_fingerprint,
        **ledger,
        "anchored_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "officer_fingerprint": fingerprint(key.public_key()),
    }
    anchor = {**body, "signature": sign(key, canonical_json(body))}
    name = anchor_file(body["trail_seq"])
    atomic_write_json(officer_dir / name, anchor)
    atomic_write_json(state_dir / ANCHORS_DIR / name, anchor)
    site_trail(state_dir).append(
        "officer_anchor",
        {"trail_seq": body["trail_seq"], "trail_hash": body["trail_hash"], **ledger},
    )
    return anchor


def verify_anchored(
    log: Path,
    site_key: Ed25519PublicKey | None,
    officer_key: Ed25519PublicKey,
    folder: Path,
    require_head: bool = True,
) -> VerifyResult:
    """:func:`~semiofed.privacy.audit_trail.verify`, then every officer anchor in ``folder``:
    a trail re-signed with the site key after an entry was deleted, reordered or inserted at
    or before an anchored entry is reported as tampered."""
    result = verify(log, site_key, require_head)
    if not result.ok:
        return result
    try:
        anchors = load_anchors(folder, officer_key)
    except AnchorError as exc:
        result.ok, result.reason = False, str(exc)
        return result
    entries = read_entries(log)
    for a in anchors:
        problem = trail_problem(entries, result.key_fingerprint, a)
        if problem:
            result.ok, result.reason = False, problem
            result.first_bad = min(int(a["trail_seq"]), len(entries) - 1) if entries else None
            return result
    result.anchors = len(anchors)
    result.anchored_seq = int(anchors[-1]["trail_seq"]) if anchors else None
    return result
