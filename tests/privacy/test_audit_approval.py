"""Run-configuration approval: the officer signs the whole configuration, the FAB and an
expiry; anything else, tampered or expired is refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from semiofed.privacy.approval import (
    APPROVALS_DIR,
    OFFICER_PUB_FILE,
    TRUSTED_ENTITIES_FILE,
    NotApproved,
    approval_fields_of,
    approve,
    require_approved,
    trusted_signers_file,
)
from semiofed.privacy.audit_trail import TRAIL_FILE, verify
from semiofed.privacy.keys import KeyFileError, generate_keypair, load_public_key
from semiofed.server.code_signing import write_signing_key
from semiofed.shared.cli import main
from semiofed.shared.fab import build_fab, fab_hash, signer_id
from semiofed.shared.run_config import RunConfig

CONFIG = """\
[federation]
rounds = 3
strategy = "fedavg"
[privacy]
noise-multiplier = 1.1
clip-norm = 1.0
delta = 1e-3
"""
FAB = "ab" * 32


@pytest.fixture
def run_config(tmp_path: Path) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def signer(tmp_path: Path) -> str:
    write_signing_key(tmp_path / "fab-signing.key", tmp_path / "fab-signing.pub")
    return (tmp_path / "fab-signing.pub").read_text().strip()


def test_nothing_approved_is_refused(tmp_path: Path, run_config: Path) -> None:
    fields = approval_fields_of(run_config)
    with pytest.raises(NotApproved, match="no privacy officer key is pinned"):
        require_approved(fields, tmp_path / "state", fab_hash=FAB)
    key = generate_keypair(tmp_path / "officer.pem")
    with pytest.raises(NotApproved, match="no approved run configuration"):
        require_approved(fields, tmp_path / "state", key.public_key(), fab_hash=FAB)
    with pytest.raises(NotApproved, match="no trusted FAB signer"):
        trusted_signers_file(tmp_path / "state" / TRUSTED_ENTITIES_FILE)


def test_cli_approval_pins_fab_signer_and_expiry(tmp_path: Path, run_config: Path, signer: str):
    state = tmp_path / "state"
    key = tmp_path / "officer" / "officer_ed25519.pem"  # outside STATE, created here
    argv = ["audit", "approve", str(run_config), "--state", str(state), "--key", str(key)]
    assert main([*argv, "--signer", str(tmp_path / "fab-signing.pub"), "--valid-days", "2"]) == 0
    fields = approval_fields_of(run_config)
    code = fab_hash(build_fab())  # the FAB this installation builds, as the coordinator's
    record = require_approved(fields, state, fab_hash=code)
    assert record["fields"] == fields and record["fab_signer"] == signer
    expires = datetime.fromisoformat(record["expires_at"])
    assert timedelta(days=1.9) < expires - datetime.now(UTC) <= timedelta(days=2)
    # the SuperNode's trusted entities: exactly the approved signer, as Flower reads them
    trusted = json.loads(trusted_signers_file(state / TRUSTED_ENTITIES_FILE).read_text())
    assert trusted == {signer_id(signer): signer}
    result = verify(state / TRAIL_FILE)
    assert result.ok and result.kinds == {"trail_opened": 1, "approval": 1}
    # a weaker noise multiplier: refused, naming the difference
    changed = run_config.with_name("weaker.toml")
    changed.write_text(CONFIG.replace("noise-multiplier = 1.1", "noise-multiplier = 0.5"))
    with pytest.raises(
        NotApproved, match=r"privacy\.noise-multiplier: approved 1\.1, requested 0\.5"
    ):
        require_approved(approval_fields_of(changed), state, fab_hash=code)
    # another FAB, or the right one after the expiry: refused, naming why
    with pytest.raises(NotApproved, match=r"approved for the FAB .* not for the FAB it came in"):
        require_approved(fields, state, fab_hash=FAB)
    with pytest.raises(NotApproved, match="without a FAB"):
        require_approved(fields, state, fab_hash=None)
    with pytest.raises(NotApproved, match="expired"):
        require_approved(fields, state, fab_hash=code, now=expires + timedelta(seconds=1))


def _leaves(obj: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(obj, dict):
        return [leaf for k, v in obj.items() for leaf in _leaves(v, (*path, k))]
    return [path]


def _changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value * 2 + 1
    if isinstance(value, list):
        return [*value, value[-1] if value else 1]
    return f"{value}-changed"


def test_changing_any_single_field_after_approval_is_refused(tmp_path: Path) -> None:
    """Every field of the validated configuration (defaults included: learning rate, split
    fractions, seed, fraction-train, min-nodes, SecAgg+ parameters, timeouts, …)."""
    cfg = RunConfig.parse(
        {"model": {"embed-dim": 16, "channels": [8]}, "central-dp": {"enabled": True}}
    )
    fields = cfg.approval_fields()
    state = tmp_path / "state"
    approve(fields, state, generate_keypair(tmp_path / "officer.pem"), fab_hash=FAB)
    require_approved(fields, state, fab_hash=FAB)
    leaves = _leaves(fields)
    for must in (
        ("run_config", "training", "learning-rate"),
        ("run_config", "training", "val-fraction"),
        ("run_config", "training", "test-fraction"),
        ("run_config", "federation", "seed"),
        ("run_config", "federation", "fraction-train"),
        ("run_config", "federation", "min-nodes"),
        ("run_config", "federation", "round-timeout"),
        ("run_config", "secagg", "num-shares"),
        ("run_config", "secagg", "reconstruction-threshold"),
        ("run_config", "secagg", "clipping-range"),
        ("run_config", "secagg", "quantization-range"),
        ("run_config", "model", "embed-dim"),
    ):
        assert must in leaves, must
    for leaf in leaves:
        changed = json.loads(json.dumps(fields))
        parent = changed
        for key in leaf[:-1]:
            parent = parent[key]
        parent[leaf[-1]] = _changed(parent[leaf[-1]])
        with pytest.raises(NotApproved, match="matches none") as refused:
            require_approved(changed, state, fab_hash=FAB)
        assert ".".join(leaf) in str(refused.value), leaf


def test_tampered_or_foreign_approval_refused(tmp_path: Path, run_config: Path) -> None:
    state = tmp_path / "state"
    officer = generate_keypair(tmp_path / "officer.pem")
    fields = approval_fields_of(run_config)
    approve(fields, state, officer, fab_hash=FAB)
    require_approved(fields, state, fab_hash=FAB)
    # someone edits the approved record to allow 100 rounds, or to last longer
    path = next((state / APPROVALS_DIR).glob("*.json"))
    original = path.read_text()
    for edit in (("fields", "run_config", "federation", "rounds"), ("expires_at",)):
        record = json.loads(original)
        parent = record
        for key in edit[:-1]:
            parent = parent[key]
        parent[edit[-1]] = 100 if edit[-1] == "rounds" else "2999-01-01T00:00:00+00:00"
        path.write_text(json.dumps(record))
        with pytest.raises(NotApproved, match="does not verify"):
            require_approved(fields, state, fab_hash=FAB)
    path.unlink()
    # an approval signed by another key (not the pinned officer) is refused, and pinning
    # a second officer key is refused too
    intruder = generate_keypair(tmp_path / "intruder.pem")
    with pytest.raises(KeyFileError, match="pins another privacy officer key"):
        approve(fields, state, intruder, fab_hash=FAB)
    approve(fields, tmp_path / "elsewhere", intruder, fab_hash=FAB)
    for p in (tmp_path / "elsewhere" / APPROVALS_DIR).glob("*.json"):
        (state / APPROVALS_DIR / p.name).write_text(p.read_text())
    with pytest.raises(NotApproved, match="does not verify"):
        require_approved(fields, state, fab_hash=FAB)
    assert load_public_key(state / OFFICER_PUB_FILE) is not None


def test_expired_approvals_leave_the_trusted_entities(
    tmp_path: Path, run_config: Path, signer: str
) -> None:
    state = tmp_path / "state"
    officer = generate_keypair(tmp_path / "officer.pem")
    fields = approval_fields_of(run_config)
    approve(fields, state, officer, fab_hash=FAB, signer=signer, valid_days=1e-9)
    with pytest.raises(NotApproved, match="expired"):
        require_approved(fields, state, fab_hash=FAB)
    with pytest.raises(NotApproved, match="names no trusted FAB signer"):
        trusted_signers_file(state / TRUSTED_ENTITIES_FILE)
    with pytest.raises(Exception, match="OpenSSH Ed25519"):
        approve(fields, state, officer, fab_hash=FAB, signer="ecdsa-sha2-nistp384 AAAA")
