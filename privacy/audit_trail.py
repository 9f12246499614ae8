"""A site's tamper-evident audit trail: append-only, hash-chained, Ed25519-signed JSON lines.

Each line is one entry ``{seq, time, kind, payload, prev_hash, hash, signature,
key_fingerprint}``. ``hash`` is the SHA-256 of the canonical JSON of
``{seq, time, kind, payload, prev_hash}``; ``prev_hash`` is the previous entry's hash
(:data:`GENESIS_HASH` for the first); ``signature`` signs the canonical JSON of the entry
without ``signature``. The first entry (kind ``trail_opened``) carries the site's public
key, so a log can be checked on its own; pass the site's public key to :func:`verify` to pin
it (otherwise a log re-signed from scratch with another key would pass).

Changing, removing, inserting, reordering or re-signing an entry breaks the chain at that
entry. Dropping entries from the *end* leaves a valid shorter chain, so every append also
rewrites a signed head file (``<log>.head.json``: last seq and hash) that :func:`verify`
compares against.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from semiofed.shared.atomic import atomic_write_json
from semiofed.shared.errors import SemioFedError

from .keys import (
    KeyFileError,
    SignatureError,
    canonical_json,
    fingerprint,
    generate_keypair,
    load_private_key,
    load_public_key,
    public_pem,
    sign,
)
from .keys import verify as verify_signature

GENESIS_HASH = "0" * 64
OPENED = "trail_opened"
KINDS: tuple[str, ...] = (
    OPENED,
    "approval",
    "round_joined",
    "round_declined",
    "message_sent",
    "model_received",
    "budget_state",
    "summary_released",
    "ledger_created",
    "ledger_state",
    "officer_anchor",
)
REQUIRED_PAYLOAD: dict[str, tuple[str, ...]] = {
    "message_sent": ("hash", "size", "keys"),
    "model_received": ("signature_ok",),
    "round_joined": ("round",),
    "round_declined": ("round", "reason"),
    "summary_released": ("purpose", "summary"),
    "ledger_created": ("ledger_id", "data_fingerprint", "budget"),
    "ledger_state": ("ledger_id", "closed", "history_hash"),
    "officer_anchor": ("trail_seq", "trail_hash", "ledger_id", "closed", "history_hash"),
}
ENTRY_FIELDS = (
    "seq",
    "time",
    "kind",
    "payload",
    "prev_hash",
    "hash",
    "signature",
    "key_fingerprint",
)

TRAIL_FILE = "audit/trail.jsonl"
SITE_KEY_FILE = "keys/site_ed25519.pem"


class AuditTrailError(SemioFedError):
    """The trail cannot be appended to (corrupt tail, wrong key, bad entry)."""


def head_path(log: str | Path) -> Path:
    log = Path(log)
    return log.with_name(log.name + ".head.json")


def entry_hash(seq: int, time: str, kind: str, payload: Any, prev_hash: str) -> str:
    body = {"seq": seq, "time": time, "kind": kind, "payload": payload, "prev_hash": prev_hash}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def _signed_bytes(entry: dict[str, Any]) -> bytes:
    return canonical_json({k: v for k, v in entry.items() if k != "signature"})


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _last_line(fh: Any) -> bytes:
    """The last complete line of an open binary file ('' when empty); raises on a torn tail."""
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    if size == 0:
        return b""
    fh.seek(size - 1)
    if fh.read(1) != b"\n":
        raise AuditTrailError(
            f"{fh.name}: the last line is incomplete (interrupted write?); "
            "run `semiofed audit verify` and restore the trail before appending"
        )
    pos, chunk, tail = size - 1, 4096, b""
    while pos > 0:
        start = max(0, pos - chunk)
        fh.seek(start)
        tail = fh.read(pos - start) + tail
        pos = start
        if b"\n" in tail:
            break
    return tail.rsplit(b"\n", 1)[-1]


class AuditTrail:
    """Append-only writer for one site's trail; safe across processes (``flock``)."""

    def __init__(self, path: str | Path, private_key: Ed25519PrivateKey) -> None:
        self.path = Path(path)
        self.key = private_key
        self.public_key = private_key.public_key()
        self.fingerprint = fingerprint(self.public_key)

    def append(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Sign and append one entry; returns it. Opens the trail first when it is new."""
        if kind not in KINDS or kind == OPENED:
            raise AuditTrailError(
                f"unknown audit entry kind {kind!r}; one of {', '.join(KINDS[1:])}"
            )
        missing = [k for k in REQUIRED_PAYLOAD.get(kind, ()) if k not in payload]
        if missing:
            raise AuditTrailError(f"{kind} entry needs payload field(s): {', '.join(missing)}")
        if kind == "model_received" and not isinstance(payload["signature_ok"], bool):
            raise AuditTrailError("model_received: signature_ok must be true or false")
        json.dumps(payload, allow_nan=False)  # fail here, not at verification time
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                last = _last_line(fh)
                if not last:
                    opened = {"public_key": public_pem(self.public_key).decode()}
                    prev = self._write(fh, 0, OPENED, opened, GENESIS_HASH)
                else:
                    prev = self._check_last(json.loads(last))
                return self._write(fh, prev["seq"] + 1, kind, payload, prev["hash"])
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _check_last(self, last: dict[str, Any]) -> dict[str, Any]:
        if last.get("key_fingerprint") != self.fingerprint:
            raise AuditTrailError(
                f"{self.path}: the trail was signed with key {str(last.get('key_fingerprint'))[:16]}…, "
                f"not this site's key {self.fingerprint[:16]}…"
            )
        return last

    def _write(
        self, fh: Any, seq: int, kind: str, payload: dict[str, Any], prev_hash: str
    ) -> dict[str, Any]:
        time = _now()
        entry: dict[str, Any] = {
            "seq": seq,
            "time": time,
            "kind": kind,
            "payload": payload,
            "prev_hash": prev_hash,
            "hash": entry_hash(seq, time, kind, payload, prev_hash),
            "key_fingerprint": self.fingerprint,
        }
        entry["signature"] = sign(self.key, _signed_bytes(entry))
        fh.seek(0, os.SEEK_END)
        fh.write(canonical_json(entry) + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
        head = {
            "seq": seq,
            "hash": entry["hash"],
            "time": time,
            "key_fingerprint": self.fingerprint,
        }
        head["signature"] = sign(self.key, canonical_json(head))
        atomic_write_json(head_path(self.path), head)
        return entry


def load_or_create_site_key(state_dir: str | Path) -> Ed25519PrivateKey:
    """The site's Ed25519 signing key at ``STATE/keys/site_ed25519.pem`` (created if absent)."""
    path = Path(state_dir) / SITE_KEY_FILE
    if path.exists():
        return load_private_key(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return generate_keypair(path)


def site_trail(state_dir: str | Path) -> AuditTrail:
    """The trail at ``STATE/audit/trail.jsonl`` signed with the site key."""
    return AuditTrail(Path(state_dir) / TRAIL_FILE, load_or_create_site_key(state_dir))


def site_public_key_path(state_dir: str | Path) -> Path:
    return (Path(state_dir) / SITE_KEY_FILE).with_suffix(".pub.pem")


@dataclass
class VerifyResult:
    """Outcome of :func:`verify`. ``first_bad`` is the 0-based line index of the first bad entry."""

    ok: bool
    entries: int
    first_bad: int | None = None
    reason: str = ""
    key_fingerprint: str = ""
    key_pinned: bool = False
    head_checked: bool = False
    kinds: dict[str, int] = field(default_factory=dict)
    anchors: int | None = None  # officer anchors checked (None: not asked)
    anchored_seq: int | None = None  # the latest anchored entry

    def _anchor_text(self) -> str:
        if self.anchors is None:
            return "NOT checked against the officer's anchors (a re-signing with the site key is undetectable)"
        if not self.anchors:
            return "NO officer anchor found (a re-signing with the site key is undetectable)"
        return (
            f"{self.anchors} officer anchor(s) match, the latest covers entries 0–{self.anchored_seq}"
            f" (later entries only by the site key)"
        )

    def summary(self) -> str:
        key = f"key {self.key_fingerprint[:16]}…" if self.key_fingerprint else "no key"
        key += " (pinned)" if self.key_pinned else " (taken from the log; pass --key to pin)"
        if self.ok:
            head = "head checkpoint matches" if self.head_checked else "NO head checkpoint"
            return f"intact: {self.entries} entries, {key}, {head}; {self._anchor_text()}"
        where = f"entry at line {self.first_bad + 1}" if self.first_bad is not None else "trail"
        return f"TAMPERED: {where}: {self.reason} ({self.entries} entries read, {key})"


def _bad(result: VerifyResult, index: int | None, reason: str) -> VerifyResult:
    result.ok, result.first_bad, result.reason = False, index, reason
    return result


def verify(
    path: str | Path,
    public_key: Ed25519PublicKey | None = None,
    require_head: bool = True,
) -> VerifyResult:
    """Check the whole trail; the result names the first bad entry, if any."""
    path = Path(path)
    result = VerifyResult(ok=True, entries=0, key_pinned=public_key is not None)
    if public_key is not None:
        result.key_fingerprint = fingerprint(public_key)
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as exc:
        raise AuditTrailError(f"{path}: cannot read audit trail ({exc})") from None
    if lines and lines[-1] == b"":
        lines.pop()
    else:
        return _bad(result, len(lines) - 1, "last line is incomplete (no newline)")
    key = public_key
    prev = GENESIS_HASH
    hashes: list[str] = []
    for i, line in enumerate(lines):
        result.entries = i + 1
        try:
            entry = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _bad(result, i, "not a JSON object")
        if not isinstance(entry, dict) or set(entry) != set(ENTRY_FIELDS):
            return _bad(result, i, f"fields must be exactly {', '.join(ENTRY_FIELDS)}")
        if entry["seq"] != i:
            return _bad(
                result,
                i,
                f"sequence number {entry['seq']!r} where {i} was expected "
                "(an entry was removed, inserted or moved here)",
            )
        if entry["prev_hash"] != prev:
            return _bad(
                result, i, "prev_hash does not match the previous entry (chain broken here)"
            )
        if i == 0:
            if entry["kind"] != OPENED:
                return _bad(result, i, f"first entry must be {OPENED!r}")
            try:
                own = load_public_key(str(entry["payload"].get("public_key", "")).encode())
            except (KeyFileError, AttributeError):
                return _bad(result, i, "trail_opened entry carries no valid public key")
            if key is None:
                key = own
            elif fingerprint(own) != fingerprint(key):
                return _bad(
                    result, i, "the trail was opened with a different key than the pinned one"
                )
            result.key_fingerprint = fingerprint(key)
        elif entry["kind"] not in KINDS or entry["kind"] == OPENED:
            return _bad(result, i, f"unknown entry kind {entry['kind']!r}")
        want = entry_hash(entry["seq"], entry["time"], entry["kind"], entry["payload"], prev)
        if entry["hash"] != want:
            return _bad(result, i, "content changed: hash does not match the entry")
        if entry["key_fingerprint"] != result.key_fingerprint:
            return _bad(
                result, i, f"signed with another key ({str(entry['key_fingerprint'])[:16]}…)"
            )
        try:
            verify_signature(key, _signed_bytes(entry), entry["signature"])
        except SignatureError as exc:
            return _bad(result, i, f"bad signature: {exc}")
        result.kinds[entry["kind"]] = result.kinds.get(entry["kind"], 0) + 1
        prev = entry["hash"]
        hashes.append(prev)
    return _check_head(path, result, key, hashes, require_head)


def _check_head(
    path: Path,
    result: VerifyResult,
    key: Ed25519PublicKey | None,
    hashes: list[str],
    require_head: bool,
) -> VerifyResult:
    hp = head_path(path)
    if not hp.exists():
        if require_head and result.entries:
            return _bad(
                result, None, f"head checkpoint {hp.name} is missing (tail truncation undetectable)"
            )
        return result
    if key is None:
        return _bad(result, None, f"{hp.name} exists but the trail is empty (truncated to nothing)")
    try:
        head = json.loads(hp.read_text(encoding="utf-8"))
        signature = head.pop("signature")
        verify_signature(key, canonical_json(head), signature)
        seq, head_hash = int(head["seq"]), str(head["hash"])
    except (OSError, ValueError, KeyError, TypeError, SignatureError) as exc:
        return _bad(result, None, f"head checkpoint {hp.name} is invalid ({exc})")
    result.head_checked = True
    last = result.entries - 1
    if seq > last:
        return _bad(
            result, None, f"truncated: the signed head records entry {seq}, the log ends at {last}"
        )
    if seq < 0 or hashes[seq] != head_hash:
        return _bad(result, max(seq, 0), "entry differs from the signed head checkpoint")
    # seq < last: the process stopped between appending a line and updating the head; the
    # extra entries are chained and signed, so they are accepted.
    return result


def read_entries(path: str | Path) -> list[dict[str, Any]]:
    """All parseable entries (for reports; use :func:`verify` for trust)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
