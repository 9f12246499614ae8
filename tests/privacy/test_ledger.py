"""Privacy ledger: persistence across processes, crash safety, budget refusal, locking."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from semiofed.privacy.accounting import epsilon
from semiofed.privacy.ledger import BudgetExceeded, PlannedRun, PrivacyLedger
from semiofed.shared.errors import FormatError, SemioFedError
from tests.ledger_helpers import new_ledger
from tests.system import test_federation_units as units

DELTA = 1e-5
tiny = units.tiny  # the module-scoped fixture: one tiny synthetic site and its configuration


def plan(steps: int, sigma: float = 2.0, q: float = 0.25) -> PlannedRun:
    return PlannedRun("patient", q, sigma, 1.0, steps, DELTA, dataset_size=12)


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from semiofed.privacy.ledger import PlannedRun, PrivacyLedger
    state, steps, planned, sigma, progress = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
    ledger = PrivacyLedger(state)
    run = ledger.begin_run(PlannedRun("patient", 0.25, sigma, 1.0, planned, 1e-5))
    for i in range(steps):
        run.count_step()          # counted before the (simulated) noisy update
        Path(progress).write_text(str(i + 1))
        time.sleep(0.02)
    run.finish()
    """
)


def run_child(
    state: Path, steps: int, planned: int, sigma: float, progress: Path
) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            str(state),
            str(steps),
            str(planned),
            str(sigma),
            str(progress),
        ],
    )


def test_ledger_persists_across_processes(tmp_path: Path) -> None:
    state = tmp_path / "state"
    new_ledger(state, 50.0, DELTA)
    assert run_child(state, 6, 6, 1.0, tmp_path / "p1").wait(timeout=60) == 0
    assert run_child(state, 4, 10, 2.0, tmp_path / "p2").wait(timeout=60) == 0
    ledger = PrivacyLedger(state)  # a fresh object, as a new process would have
    data = ledger.load()
    assert [r["status"] for r in data["runs"]] == ["completed", "completed"]
    assert [r["steps_counted"] for r in data["runs"]] == [6, 4]
    assert ledger.history() == [(1.0, 0.25, 6), (2.0, 0.25, 4)]
    assert data["history"] == [[1.0, 0.25, 6], [2.0, 0.25, 4]]
    expected = epsilon([(1.0, 0.25, 6), (2.0, 0.25, 4)], DELTA, "rdp")
    assert data["runs"][1]["epsilon_after"]["rdp"] == pytest.approx(expected)
    assert ledger.spent() == pytest.approx(expected)
    assert expected > data["runs"][0]["epsilon_after"]["rdp"] > 0
    for key in (
        "privacy_unit",
        "sample_rate",
        "noise_multiplier",
        "max_grad_norm",
        "delta",
        "run_id",
        "started",
        "finished",
    ):
        assert data["runs"][0][key] is not None


def test_killed_run_keeps_its_steps(tmp_path: Path) -> None:
    state, progress = tmp_path / "state", tmp_path / "progress"
    new_ledger(state, 1e4, DELTA)
    child = run_child(state, 10_000, 10_000, 1.0, progress)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (
        not progress.exists() or int(progress.read_text() or 0) < 8
    ):
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    taken = int(progress.read_text())
    assert taken >= 8
    ledger = PrivacyLedger(state)
    (run,) = ledger.load()["runs"]
    assert run["status"] == "running"
    assert run["steps_counted"] >= taken  # every step whose update may exist is counted
    assert run["steps_counted"] <= taken + 1
    # the next run sees the dead process, marks the run interrupted, keeps its steps
    with ledger.begin_run(plan(3)) as new:
        for _ in range(3):
            new.count_step()
    runs = ledger.load()["runs"]
    assert runs[0]["status"] == "interrupted"
    assert ledger.history() == [(1.0, 0.25, run["steps_counted"]), (2.0, 0.25, 3)]


def test_refusal_before_training(tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path / "state", 3.0, DELTA)
    with ledger.begin_run(plan(10)) as run:
        for _ in range(10):
            run.count_step()
    spent = ledger.spent()
    assert 0 < spent < 3.0
    before = ledger.history()
    with pytest.raises(BudgetExceeded) as info:
        ledger.begin_run(plan(2000))
    exc = info.value
    msg = str(exc)
    assert "refused before training" in msg and "remaining" in msg and "at most" in msg
    assert exc.remaining == pytest.approx(3.0 - spent)
    assert ledger.history() == before  # nothing counted
    runs = ledger.load()["runs"]
    assert runs[-1]["status"] == "refused" and runs[-1]["steps_counted"] == 0
    # the figures in the refusal are right: max_steps fits, one more does not
    ledger.check_budget(plan(exc.max_steps))
    with pytest.raises(BudgetExceeded):
        ledger.check_budget(plan(exc.max_steps + 1))
    assert exc.sigma_needed is not None
    ledger.check_budget(plan(2000, sigma=exc.sigma_needed))
    # count_step cannot go past the plan the budget check covered
    with ledger.begin_run(plan(1)) as run:
        run.count_step()
        with pytest.raises(SemioFedError, match="planned 1 steps"):
            run.count_step()


def test_in_flight_runs_are_reserved(tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path / "state", 4.0, DELTA)
    steps = ledger.check_budget(plan(10))  # fits alone
    assert steps["epsilon_planned"] < 4.0
    fit = PrivacyLedger(tmp_path / "state")
    first = fit.begin_run(plan(_max_fit(ledger) - 5))
    with pytest.raises(BudgetExceeded, match="reserved by runs in flight"):
        ledger.begin_run(plan(10))
    first.finish()


def _max_fit(ledger: PrivacyLedger) -> int:
    with pytest.raises(BudgetExceeded) as info:
        ledger.check_budget(plan(10**6))
    return info.value.max_steps


def test_budget_changes_and_bad_files(tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path / "state", 8.0, DELTA)
    ledger.set_budget(3.0, DELTA)  # lowering is fine
    with pytest.raises(SemioFedError, match="only lowering"):
        ledger.set_budget(10.0, DELTA)
    with pytest.raises(SemioFedError, match="δ"):
        ledger.begin_run(PlannedRun("patient", 0.25, 1.0, 1.0, 5, 1e-6))
    assert ledger.budget.epsilon_max == 3.0
    ledger.path.write_text("{not json")
    with pytest.raises(FormatError, match=r"privacy_ledger\.json"):
        ledger.begin_run(plan(1))
    ledger.path.write_text(json.dumps({"version": 99}))
    with pytest.raises(FormatError, match="version"):
        ledger.spent()


# -- fails closed: missing, truncated, edited, rolled back, a new state folder ----------------


def _site_train(state: Path, data: Path, tmp_path: Path) -> tuple[int, str]:
    """``semiofed site train`` with DP, in-process; returns (exit code, output)."""
    import contextlib
    import io

    from semiofed.shared.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(
            ["site", "train", "--data", str(data), "--out", str(tmp_path / "run"),
             "--state", str(state), "--delta", str(DELTA), "--epochs", "1", "--no-progress"]
        )  # fmt: skip
    return code, out.getvalue()


def _round_refused(state: Path, tiny: tuple) -> str:
    """The ClientApp's DP path (fit of round 2): declined as a site error before any step;
    returns the detail the site kept in its trail."""
    from flwr.common import FitIns, ndarrays_to_parameters

    from semiofed.client.app import SiteClient

    site_dir, cfg, _model, arrays = tiny
    res = SiteClient(units._context(cfg, site_dir, state)).fit(
        FitIns(ndarrays_to_parameters(arrays), {"server-round": 2})
    )
    assert res.num_examples == 0 and res.metrics["decline-reason"] == "site-error"
    return units._decline_details(state)[-1]


@pytest.fixture
def site(tiny, tmp_path: Path) -> Path:
    """An approved site whose officer created its ledger; one DP run taken."""
    from semiofed.privacy.approval import approve
    from tests.ledger_helpers import officer

    site_dir, cfg, _model, _arrays = tiny
    state = tmp_path / "state"
    approve(cfg.approval_fields(), state, officer(state))
    ledger = new_ledger(state, 50.0, DELTA, "rdp", site_dir)
    with ledger.begin_run(plan(1)) as run:
        run.count_step()
    return state


def _assert_refused(state: Path, tiny: tuple, tmp_path: Path, why: str) -> None:
    """The next DP training (CLI: exit 2, one line naming the ledger) and the next federated
    round (declined before any step) are both refused for reason ``why``."""
    before = (
        (state / "privacy_ledger.json").read_bytes()
        if (state / "privacy_ledger.json").exists()
        else None
    )
    code, out = _site_train(state, tiny[0], tmp_path)
    assert code == 2 and len(out.strip().splitlines()) == 1, out
    assert "privacy_ledger.json" in out and why in out, out
    detail = _round_refused(state, tiny)
    assert "privacy_ledger.json" in detail and why in detail, detail
    after = (
        (state / "privacy_ledger.json").read_bytes()
        if (state / "privacy_ledger.json").exists()
        else None
    )
    assert after == before  # nothing was charged or "repaired"


def _edit(state: Path, change) -> None:
    path = state / "privacy_ledger.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_deleted_ledger_is_refused(site: Path, tiny, tmp_path: Path) -> None:
    (site / "privacy_ledger.json").unlink()
    _assert_refused(site, tiny, tmp_path, "no privacy ledger")


def test_truncated_ledger_is_refused(site: Path, tiny, tmp_path: Path) -> None:
    path = site / "privacy_ledger.json"
    path.write_bytes(path.read_bytes()[:200])
    _assert_refused(site, tiny, tmp_path, "unreadable privacy ledger")


def test_edited_ledger_is_refused(site: Path, tiny, tmp_path: Path) -> None:
    from semiofed.privacy.ledger_integrity import digest

    def fewer_steps(d: dict) -> None:
        d["runs"][0]["steps_counted"] = 0

    _edit(site, fewer_steps)
    _assert_refused(site, tiny, tmp_path, "does not match its digest")

    def rehashed(d: dict) -> None:  # the editor also recomputes the digest
        d["digest"] = digest(d)

    _edit(site, rehashed)
    _assert_refused(site, tiny, tmp_path, "changed after it closed")

    def budget_up(d: dict) -> None:
        d["budget"]["epsilon_max"] = 1e6
        d["digest"] = digest(d)

    _edit(site, budget_up)
    _assert_refused(site, tiny, tmp_path, "exceeds the officer-signed budget")


def test_rolled_back_ledger_is_refused(site: Path, tiny, tmp_path: Path) -> None:
    import shutil

    from semiofed.privacy.anchors import make_anchor
    from tests.ledger_helpers import officer_key

    ledger = PrivacyLedger(site)
    old = tmp_path / "old"
    shutil.copytree(site, old)  # a snapshot of the whole state folder
    with ledger.begin_run(plan(1)) as run:
        run.count_step()
    shutil.copy(old / "privacy_ledger.json", ledger.path)  # the ledger alone rolled back
    _assert_refused(site, tiny, tmp_path, "rolled back: trail entry")
    # ledger and trail rolled back together: the officer's anchor in STATE catches it
    shutil.rmtree(site)
    shutil.copytree(old, site)
    with ledger.begin_run(plan(1)) as run:
        run.count_step()
    make_anchor(site, officer_key(site))
    anchored = tmp_path / "anchored"
    shutil.copytree(site, anchored)
    for name in ("privacy_ledger.json", "audit/trail.jsonl", "audit/trail.jsonl.head.json"):
        shutil.copy(old / name, site / name)
    _assert_refused(site, tiny, tmp_path, "rolled back or truncated")
    # deleting the anchor from STATE leaves the trail's own record of it
    shutil.rmtree(site)
    shutil.copytree(anchored, site)
    shutil.rmtree(site / "audit" / "anchors")
    _assert_refused(site, tiny, tmp_path, "is missing")
    # an officer's private key left in STATE: every DP action refused
    shutil.rmtree(site)
    shutil.copytree(anchored, site)
    shutil.copy(officer_key(site), site / "keys" / "privacy_officer_ed25519.pem")
    _assert_refused(site, tiny, tmp_path, "private key lies in the state folder")


def test_new_state_folder_for_the_same_data(site: Path, tiny, tmp_path: Path) -> None:
    import shutil

    from semiofed.privacy.approval import approve
    from semiofed.privacy.ledger_binding import init_ledger
    from tests.ledger_helpers import officer, officer_key

    site_dir = tiny[0]
    fresh = tmp_path / "fresh"
    approve(tiny[1].approval_fields(), fresh, officer(site))  # approved, but no ledger
    _assert_refused(fresh, tiny, tmp_path, "no privacy ledger")  # no fresh budget by default
    key = officer_key(site)  # the same officer is asked for a new ledger: refused
    with pytest.raises(
        SemioFedError, match=r"\.semiofed-ledger\.json: these patients already have"
    ):
        init_ledger(fresh, site_dir, key, 50.0, DELTA)
    copy = tmp_path / "copy"  # the data copied elsewhere: the officer's register knows them
    shutil.copytree(site_dir, copy, ignore=shutil.ignore_patterns(".semiofed-ledger.json"))
    with pytest.raises(SemioFedError, match=r"ledgers/.*: these patients already have"):
        init_ledger(fresh, copy, key, 50.0, DELTA)
    assert not (fresh / "privacy_ledger.json").exists()
    body = init_ledger(fresh, copy, key, 50.0, DELTA, reset_reason="data re-extracted")
    assert body["reset"]["reason"] == "data re-extracted" and body["reset"]["supersedes"]
