"""Why a site's privacy ledger can be trusted before a DP action, or why it is refused.

A ledger (``STATE/privacy_ledger.json``, :mod:`.ledger`) is accepted only when

- it exists and parses (a missing or truncated file is refused; only the privacy officer
  creates a ledger: ``semiofed audit init-ledger``, :mod:`.ledger_binding`);
- its ``digest`` (SHA-256 of the canonical JSON of everything else) matches: a hand edit
  such as a lowered ``steps_counted`` is refused;
- its ``binding`` (ledger id, data fingerprint, budget) is signed by the officer key pinned
  in STATE, and the budget is at most the bound one with the bound δ and accountant;
- its *history chain* recomputes: every closed run (completed, failed, interrupted, refused)
  is linked, in closing order, into ``h_i = SHA-256(h_{i-1} ‖ SHA-256(run record))`` from
  ``h_0 = SHA-256(binding)``; closed records never change, so the chain is recomputable;
- before a run begins (:func:`check_history`): the signed audit trail verifies, records this
  ledger's creation, and its last ``ledger_state`` entry (closed runs n, history hash) is a
  prefix of the chain — a ledger rolled back, or edited and re-hashed, behind the trail is
  refused; every officer anchor in ``STATE/audit/anchors`` (:mod:`.anchors`) verifies, the
  trail holds the anchored entry, and the anchored ledger state is a prefix of the chain.

What it cannot see alone: STATE rolled back as a whole (ledger, trail and anchors) by whoever
can write it. The officer's own copies of the anchors catch that (``audit verify --anchors``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from semiofed.shared.errors import FormatError

from .keys import SignatureError, canonical_json, fingerprint, load_public_key, verify


class LedgerIntegrityError(FormatError):
    """The ledger is missing, truncated, edited, rolled back or unbound: DP actions refused."""


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj)).hexdigest()


def patient_hash(patient_id: str) -> str:
    return hashlib.sha256(patient_id.encode()).hexdigest()


def digest(data: dict[str, Any]) -> str:
    return sha256_json({k: v for k, v in data.items() if k != "digest"})


def link(prev: str, record: dict[str, Any]) -> str:
    return hashlib.sha256((prev + sha256_json(record)).encode()).hexdigest()


def ledger_id(data: dict[str, Any]) -> str:
    return str(data["binding"]["body"]["ledger_id"])


def verify_binding(path: Path, binding: Any, officer_key: Any) -> dict[str, Any]:
    """The binding's body, if ``binding`` is signed by ``officer_key``; raises otherwise."""
    try:
        body, signature = binding["body"], binding["signature"]
        verify(officer_key, canonical_json(body), signature)
    except (KeyError, TypeError, SignatureError) as exc:
        raise LedgerIntegrityError(
            path,
            f"the ledger binding does not verify against the pinned privacy officer key "
            f"{fingerprint(officer_key)[:16]}… ({exc}); refusing every DP action",
        ) from None
    return dict(body)


def chain(path: Path, data: dict[str, Any]) -> list[str]:
    """``[h_0, h_1, …]`` recomputed from the closed run records; raises on any mismatch."""
    runs = {r.get("run_id"): r for r in data["runs"]}
    hashes = [sha256_json(data["binding"])]
    for i, link_entry in enumerate(data.get("closed", [])):
        record = runs.get(link_entry.get("run_id"))
        if record is None or record.get("status") == "running":
            raise LedgerIntegrityError(
                path, f"closed run {i + 1} ({link_entry.get('run_id')}) is missing or reopened"
            )
        h = link(hashes[-1], record)
        if h != link_entry.get("hash"):
            raise LedgerIntegrityError(
                path,
                f"closed run {i + 1} ({link_entry.get('run_id')}) was changed after it closed "
                "(history hash does not recompute)",
            )
        hashes.append(h)
    linked = {e.get("run_id") for e in data.get("closed", [])}
    open_runs = [r["run_id"] for r in data["runs"] if r.get("status") != "running"]
    if any(rid not in linked for rid in open_runs):
        raise LedgerIntegrityError(path, "a closed run is not in the history chain")
    return hashes


def check_data(path: Path, data: dict[str, Any], officer_pub: Path) -> list[str]:
    """Digest, binding and history chain of a parsed ledger; returns the chain."""
    if data.get("digest") != digest(data):
        raise LedgerIntegrityError(
            path, "content does not match its digest (edited by hand?); refusing every DP action"
        )
    if not officer_pub.exists():
        raise LedgerIntegrityError(
            path, f"no privacy officer key is pinned at {officer_pub}; the ledger cannot be checked"
        )
    body = verify_binding(path, data.get("binding"), load_public_key(officer_pub))
    bound, budget = body.get("budget") or {}, data.get("budget") or {}
    if (budget.get("delta"), budget.get("accountant")) != (
        bound.get("delta"),
        bound.get("accountant"),
    ) or float(budget.get("epsilon_max", float("inf"))) > float(bound.get("epsilon_max", 0)):
        raise LedgerIntegrityError(
            path, f"budget {budget} exceeds the officer-signed budget {bound}"
        )
    return chain(path, data)


def require_prefix(path: Path, hashes: list[str], closed: int, head: str, where: str) -> None:
    """``(closed, head)`` recorded by ``where`` must be a state this ledger went through."""
    if closed > len(hashes) - 1:
        raise LedgerIntegrityError(
            path,
            f"rolled back: {where} records {closed} closed runs, the ledger has "
            f"{len(hashes) - 1}; refusing every DP action",
        )
    if hashes[closed] != head:
        raise LedgerIntegrityError(
            path,
            f"history differs from {where} at closed run {closed} (edited or replaced); "
            "refusing every DP action",
        )


def check_history(path: Path, data: dict[str, Any], hashes: list[str], state_dir: Path) -> None:
    """The ledger against the site's signed trail and the officer's anchors in STATE."""
    from .anchors import check_state_anchors
    from .audit_trail import TRAIL_FILE, read_entries, site_public_key_path
    from .audit_trail import verify as verify_trail

    trail = state_dir / TRAIL_FILE
    if not trail.exists():
        raise LedgerIntegrityError(
            path, f"the audit trail {trail} is missing; the ledger's history cannot be checked"
        )
    pub = site_public_key_path(state_dir)
    result = verify_trail(trail, load_public_key(pub) if pub.exists() else None)
    if not result.ok:
        raise LedgerIntegrityError(
            path, f"the audit trail {trail} does not verify ({result.summary()})"
        )
    lid = ledger_id(data)
    entries = read_entries(trail)
    mine = [e for e in entries if e["payload"].get("ledger_id") == lid]
    if not any(e["kind"] == "ledger_created" for e in mine):
        raise LedgerIntegrityError(
            path, f"the audit trail {trail} does not record the creation of ledger {lid}"
        )
    states = [e for e in mine if e["kind"] == "ledger_state"]
    if states:
        last = states[-1]
        p = last["payload"]
        require_prefix(
            path, hashes, int(p["closed"]), str(p["history_hash"]), f"trail entry {last['seq']}"
        )
    check_state_anchors(path, state_dir, entries, lid, hashes)
