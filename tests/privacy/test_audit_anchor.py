"""The officer's anchor: a trail rewritten and re-signed with the site key (which lives in
STATE) verifies on its own, but not against the officer's countersigned head."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from semiofed.privacy.anchors import make_anchor
from semiofed.privacy.audit_trail import (
    GENESIS_HASH,
    SITE_KEY_FILE,
    TRAIL_FILE,
    _signed_bytes,
    entry_hash,
    head_path,
    verify,
)
from semiofed.privacy.keys import KeyFileError, canonical_json, load_private_key, sign
from semiofed.shared.cli import main
from tests.ledger_helpers import new_ledger, officer_key
from tests.privacy.test_ledger import plan


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A site whose officer created its ledger, ran two DP runs and anchored the trail."""
    state = tmp_path / "state"
    ledger = new_ledger(state, 50.0)
    for steps in (2, 3):
        with ledger.begin_run(plan(steps)) as run:
            for _ in range(steps):
                run.count_step()
    make_anchor(state, officer_key(state))
    return state


def _cli(*args: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue() + err.getvalue()


def _verify_cli(state: Path) -> tuple[int, str]:
    pub = officer_key(state).with_suffix(".pub.pem")
    anchors = officer_key(state).parent / "anchors"  # the officer's own copies
    return _cli(
        "audit",
        "verify",
        str(state / TRAIL_FILE),
        "--officer-key",
        str(pub),
        "--anchors",
        str(anchors),
    )


def _resign(state: Path, entries: list[dict]) -> None:
    """Rewrite the trail from ``entries`` with the site key in STATE: fresh seq, chain,
    signatures and signed head, as anyone who can read STATE could."""
    key = load_private_key(state / SITE_KEY_FILE)
    prev, lines = GENESIS_HASH, []
    for seq, e in enumerate(entries):
        e = {**e, "seq": seq, "prev_hash": prev}
        e["hash"] = entry_hash(seq, e["time"], e["kind"], e["payload"], prev)
        e.pop("signature")
        e["signature"] = sign(key, _signed_bytes(e))
        lines.append(canonical_json(e).decode())
        prev = e["hash"]
    (state / TRAIL_FILE).write_text("\n".join(lines) + "\n")
    head = {"seq": len(entries) - 1, "hash": prev, "time": entries[-1]["time"]}
    head["key_fingerprint"] = entries[0]["key_fingerprint"]
    head["signature"] = sign(key, canonical_json(head))
    head_path(state / TRAIL_FILE).write_text(json.dumps(head))


def _entries(state: Path) -> list[dict]:
    return [json.loads(line) for line in (state / TRAIL_FILE).read_text().splitlines()]


def test_intact_trail_matches_the_officer_anchor(site: Path) -> None:
    code, out = _verify_cli(site)
    assert code == 0, out
    assert "1 officer anchor(s) match" in out
    # without the officer key the report says what it cannot see
    code, out = _cli("audit", "verify", str(site / TRAIL_FILE))
    assert code == 0 and "NOT checked against the officer's anchors" in out


@pytest.mark.parametrize("edit", ["delete", "reorder", "insert"])
def test_resigned_rewrite_is_tampering(site: Path, edit: str) -> None:
    entries = _entries(site)
    kinds = [e["kind"] for e in entries]
    i = kinds.index("ledger_state")  # the first run's close: before the anchored head
    if edit == "delete":
        del entries[i]
    elif edit == "reorder":
        entries[i], entries[i + 1] = entries[i + 1], entries[i]
    else:
        entries.insert(
            i, {**entries[i], "kind": "round_declined", "payload": {"round": 1, "reason": "x"}}
        )
    _resign(site, entries)
    assert verify(site / TRAIL_FILE).ok  # consistent under the site key alone…
    code, out = _verify_cli(site)  # …but not against the officer's anchor
    assert code == 1 and "TAMPERED" in out
    assert "differs from the officer's anchor" in out or "rolled back" in out


def test_trail_rolled_back_before_the_anchor(site: Path) -> None:
    entries = _entries(site)
    anchored = next(e for e in entries if e["kind"] == "officer_anchor")["payload"]["trail_seq"]
    _resign(site, entries[:anchored])  # an older trail, before the officer countersigned
    code, out = _verify_cli(site)
    assert code == 1 and "rolled back or truncated" in out


def test_officer_key_inside_state_is_refused(site: Path, tmp_path: Path) -> None:
    inside = site / "keys" / "officer.pem"
    code, out = _cli(
        "audit", "approve", str(Path(__file__).parents[2] / "configs" / "demo.toml"),
        "--state", str(site), "--key", str(inside),
    )  # fmt: skip
    assert code == 2 and "outside the site state folder" in out and not inside.exists()
    with pytest.raises(KeyFileError, match="outside the site state folder"):
        make_anchor(site, inside)
