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

DELTA = 1e-5


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
