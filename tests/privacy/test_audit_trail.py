"""Tamper detection of the signed, hash-chained site audit trail (library and CLI)."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from semiofed.privacy.audit_trail import (
    AuditTrail,
    AuditTrailError,
    _signed_bytes,
    entry_hash,
    head_path,
    verify,
)
from semiofed.privacy.keys import canonical_json, fingerprint, generate_keypair, sign
from semiofed.shared.cli import main

CLI = [sys.executable, "-m", "semiofed.shared.cli", "audit", "verify"]


@pytest.fixture
def trail(tmp_path: Path) -> tuple[Path, Path]:
    """A trail with 6 entries of every kind; returns (log, site public key)."""
    key = generate_keypair(tmp_path / "site.pem")
    log = tmp_path / "trail.jsonl"
    t = AuditTrail(log, key)
    t.append("approval", {"fields_hash": "ab" * 32})
    t.append("round_joined", {"round": 1})
    t.append("message_sent", {"hash": "cd" * 32, "size": 1234, "keys": ["parameters"]})
    t.append("model_received", {"hash": "ef" * 32, "signature_ok": True})
    t.append("budget_state", {"epsilon_spent": 1.2, "delta": 1e-3})
    return log, tmp_path / "site.pub.pem"


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines()


def _write(log: Path, lines: list[str]) -> None:
    log.write_text("\n".join(lines) + "\n")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``semiofed audit verify`` in-process (fast); see the subprocess tests for the real exit."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["audit", "verify", *args])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def _subprocess_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)


def test_intact_trail_verifies(trail: tuple[Path, Path]) -> None:
    log, pub = trail
    from semiofed.privacy.keys import load_public_key

    result = verify(log, load_public_key(pub))
    assert result.ok and result.entries == 6 and result.head_checked
    assert result.kinds["message_sent"] == 1
    proc = _subprocess_cli(str(log), "--key", str(pub))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "intact: 6 entries" in proc.stdout


def test_changed_entry_is_named(trail: tuple[Path, Path]) -> None:
    log, _ = trail
    lines = _lines(log)
    entry = json.loads(lines[3])
    entry["payload"]["size"] = 1  # under-report the bytes sent
    lines[3] = json.dumps(entry)
    _write(log, lines)
    result = verify(log)
    assert not result.ok and result.first_bad == 3 and "content changed" in result.reason
    proc = _subprocess_cli(str(log))
    assert proc.returncode == 1 and "line 4" in proc.stdout


def test_deleted_entry_is_named(trail: tuple[Path, Path]) -> None:
    log, _ = trail
    lines = _lines(log)
    del lines[2]
    _write(log, lines)
    result = verify(log)
    assert not result.ok and result.first_bad == 2 and "sequence number 3" in result.reason
    assert _cli(str(log)).returncode == 1


def test_inserted_entry_is_named(trail: tuple[Path, Path], tmp_path: Path) -> None:
    log, _ = trail
    lines = _lines(log)
    lines.insert(2, lines[1])  # a replayed copy of a genuine, validly signed entry
    _write(log, lines)
    result = verify(log)
    assert not result.ok and result.first_bad == 2
    proc = _cli(str(log))
    assert proc.returncode == 1 and "line 3" in proc.stdout


def test_reordered_entries_are_named(trail: tuple[Path, Path]) -> None:
    log, _ = trail
    lines = _lines(log)
    lines[2], lines[3] = lines[3], lines[2]
    _write(log, lines)
    result = verify(log)
    assert not result.ok and result.first_bad == 2


def test_resigned_entry_is_named(trail: tuple[Path, Path], tmp_path: Path) -> None:
    """An attacker with another key rewrites entry 4 consistently (hash, signature, fingerprint)."""
    log, pub = trail
    other = generate_keypair(tmp_path / "attacker.pem")
    lines = _lines(log)
    entry = json.loads(lines[4])
    entry["payload"]["signature_ok"] = True
    entry["hash"] = entry_hash(
        entry["seq"], entry["time"], entry["kind"], entry["payload"], entry["prev_hash"]
    )
    entry["key_fingerprint"] = fingerprint(other.public_key())
    entry["signature"] = sign(other, _signed_bytes(entry))
    lines[4] = json.dumps(entry)
    _write(log, lines)
    result = verify(log)
    assert not result.ok and result.first_bad == 4 and "another key" in result.reason
    # keeping the genuine fingerprint but the attacker's signature fails too
    entry["key_fingerprint"] = json.loads(lines[0])["key_fingerprint"]
    entry["signature"] = sign(other, _signed_bytes(entry))
    lines[4] = json.dumps(entry)
    _write(log, lines)
    result = verify(log)
    assert not result.ok and result.first_bad == 4 and "bad signature" in result.reason
    assert _cli(str(log), "--key", str(pub)).returncode == 1


def test_whole_trail_resigned_needs_pinned_key(trail: tuple[Path, Path], tmp_path: Path) -> None:
    _, pub = trail
    forged = AuditTrail(tmp_path / "forged.jsonl", generate_keypair(tmp_path / "evil.pem"))
    forged.append("round_joined", {"round": 1})
    assert verify(forged.path).ok  # self-consistent on its own…
    proc = _cli(str(forged.path), "--key", str(pub))  # …but not under the site's key
    assert proc.returncode == 1 and "line 1" in proc.stdout


def test_truncated_tail_detected_by_signed_head(trail: tuple[Path, Path]) -> None:
    log, _ = trail
    _write(log, _lines(log)[:-2])
    result = verify(log)
    assert not result.ok and "truncated" in result.reason
    assert _cli(str(log)).returncode == 1
    head_path(log).unlink()
    assert not verify(log).ok  # a missing head is refused by default
    assert verify(log, require_head=False).ok


def test_forged_head_rejected(trail: tuple[Path, Path], tmp_path: Path) -> None:
    log, _ = trail
    _write(log, _lines(log)[:-1])
    head = json.loads(head_path(log).read_text())
    head.update(seq=4, hash=json.loads(_lines(log)[-1])["hash"])
    head.pop("signature")
    head["signature"] = sign(generate_keypair(tmp_path / "x.pem"), canonical_json(head))
    head_path(log).write_text(json.dumps(head))
    result = verify(log)
    assert not result.ok and "head checkpoint" in result.reason


def test_append_refuses_torn_tail_and_foreign_key(trail: tuple[Path, Path], tmp_path: Path) -> None:
    log, _ = trail
    other = AuditTrail(log, generate_keypair(tmp_path / "other.pem"))
    with pytest.raises(AuditTrailError, match="not this site's key"):
        other.append("round_joined", {"round": 2})
    with open(log, "a") as fh:
        fh.write('{"seq": 6')
    with pytest.raises(AuditTrailError, match="incomplete"):
        AuditTrail(log, generate_keypair(tmp_path / "k.pem")).append("round_joined", {"round": 2})
    assert not verify(log).ok


def test_payload_rules() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    t = AuditTrail(Path("/nonexistent/never-written.jsonl"), Ed25519PrivateKey.generate())
    with pytest.raises(AuditTrailError, match="unknown audit entry kind"):
        t.append("gossip", {})
    with pytest.raises(AuditTrailError, match=r"needs payload field.*hash, keys"):
        t.append("message_sent", {"size": 3})
    with pytest.raises(AuditTrailError, match="signature_ok"):
        t.append("model_received", {"signature_ok": "yes"})
