"""Run-configuration approval: the officer signs; anything unapproved or tampered is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semiofed.privacy.approval import (
    APPROVALS_DIR,
    OFFICER_PUB_FILE,
    NotApproved,
    approval_fields_of,
    approve,
    require_approved,
)
from semiofed.privacy.audit_trail import TRAIL_FILE, verify
from semiofed.privacy.keys import KeyFileError, generate_keypair, load_public_key
from semiofed.shared.cli import main

CONFIG = """\
[federation]
rounds = 3
strategy = "fedavg"
[privacy]
noise-multiplier = 1.1
clip-norm = 1.0
delta = 1e-3
"""


@pytest.fixture
def run_config(tmp_path: Path) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(CONFIG)
    return path


def test_nothing_approved_is_refused(tmp_path: Path, run_config: Path) -> None:
    fields = approval_fields_of(run_config)
    with pytest.raises(NotApproved, match="no privacy officer key is pinned"):
        require_approved(fields, tmp_path / "state")
    key = generate_keypair(tmp_path / "officer.pem")
    with pytest.raises(NotApproved, match="no approved run configuration"):
        require_approved(fields, tmp_path / "state", key.public_key())


def test_cli_approval_then_changed_config_refused(tmp_path: Path, run_config: Path) -> None:
    state = tmp_path / "state"
    key = tmp_path / "officer" / "officer_ed25519.pem"  # outside STATE, created here
    assert (
        main(["audit", "approve", str(run_config), "--state", str(state), "--key", str(key)]) == 0
    )
    fields = approval_fields_of(run_config)
    record = require_approved(fields, state)
    assert record["fields"] == fields
    # the approval is in the site's audit trail, which verifies
    result = verify(state / TRAIL_FILE)
    assert result.ok and result.kinds == {"trail_opened": 1, "approval": 1}
    # a weaker noise multiplier or more rounds than approved: refused, with the difference
    changed = run_config.with_name("weaker.toml")
    changed.write_text(CONFIG.replace("noise-multiplier = 1.1", "noise-multiplier = 0.5"))
    with pytest.raises(NotApproved, match=r"dp\.noise_multiplier: approved 1\.1, requested 0\.5"):
        require_approved(approval_fields_of(changed), state)
    more = dict(fields, rounds=50)
    with pytest.raises(NotApproved, match="rounds: approved 3, requested 50"):
        require_approved(more, state)


def test_tampered_or_foreign_approval_refused(tmp_path: Path, run_config: Path) -> None:
    state = tmp_path / "state"
    officer = generate_keypair(tmp_path / "officer.pem")
    fields = approval_fields_of(run_config)
    approve(fields, state, officer)
    require_approved(fields, state)
    # someone edits the approved record to allow 100 rounds
    path = next((state / APPROVALS_DIR).glob("*.json"))
    record = json.loads(path.read_text())
    record["fields"]["rounds"] = 100
    path.write_text(json.dumps(record))
    with pytest.raises(NotApproved, match="does not verify"):
        require_approved(fields, state)
    with pytest.raises(NotApproved, match="does not verify"):
        require_approved(dict(fields, rounds=100), state)
    path.unlink()
    # an approval signed by another key (not the pinned officer) is refused, and pinning
    # a second officer key is refused too
    intruder = generate_keypair(tmp_path / "intruder.pem")
    with pytest.raises(KeyFileError, match="pins another privacy officer key"):
        approve(fields, state, intruder)
    approve(fields, tmp_path / "elsewhere", intruder)
    for p in (tmp_path / "elsewhere" / APPROVALS_DIR).glob("*.json"):
        (state / APPROVALS_DIR / p.name).write_text(p.read_text())
    with pytest.raises(NotApproved, match="does not verify"):
        require_approved(fields, state)
    assert load_public_key(state / OFFICER_PUB_FILE) is not None
