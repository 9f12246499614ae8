"""`semiofed audit epsilon` and the accounting helpers agree with Opacus' accountants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from semiofed.privacy import accounting
from semiofed.privacy.accounting import epsilon, max_steps, noise_for_target
from semiofed.privacy.ledger import PlannedRun, PrivacyLedger
from semiofed.shared.cli import main
from tests.ledger_helpers import new_ledger

CASES = [
    (0.01, 1.1, 1000, 1e-5),
    (0.25, 1.0, 40, 1e-5),
    (0.5, 2.5, 200, 1e-6),
    (1.0, 4.0, 10, 1e-3),
]


def opacus_epsilon(q: float, sigma: float, steps: int, delta: float, accountant: str) -> float:
    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    for _ in range(steps):  # the way DPOptimizer's hook drives it
        acc.step(noise_multiplier=sigma, sample_rate=q)
    return acc.get_epsilon(delta=delta)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_audit_epsilon_cli_equals_opacus(
    accountant: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for q, sigma, steps, delta in CASES:
        argv = ["audit", "epsilon", "--sample-rate", str(q), "--noise-multiplier", str(sigma)]
        argv += ["--steps", str(steps), "--delta", str(delta), "--accountant", accountant, "--json"]
        assert main(argv) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["accountant"] == accountant
        assert out["epsilon"] == pytest.approx(
            opacus_epsilon(q, sigma, steps, delta, accountant), rel=1e-9
        )


def test_audit_epsilon_text_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["audit", "epsilon", "--noise-multiplier", "1.1", "--steps", "100", "--delta", "1e-5"]
    assert main([*argv, "--sample-rate", "0.1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ε = ") and "rdp" in out
    assert main([*argv, "--sample-rate", "1.5"]) == 2
    assert "sample rate" in capsys.readouterr().err


def test_composition_noise_search_and_max_steps() -> None:
    hist = [(3.0, 0.25, 30), (4.0, 0.5, 20)]
    acc = RDPAccountant()
    acc.history = list(hist)
    assert epsilon(hist, 1e-5) == pytest.approx(acc.get_epsilon(delta=1e-5))
    assert epsilon([], 1e-5) == 0.0
    assert epsilon([(0.0, 0.1, 1)], 1e-5) == float("inf")
    sigma = noise_for_target(8.0, 1e-5, 0.25, 400)
    assert sigma == pytest.approx(
        get_noise_multiplier(target_epsilon=8.0, target_delta=1e-5, sample_rate=0.25, steps=400),
        rel=0.02,
    )
    assert 7.9 <= epsilon([(sigma, 0.25, 400)], 1e-5) <= 8.0
    # with a prior history the search uses only what remains
    sigma_rest = noise_for_target(8.0, 1e-5, 0.25, 400, prior=hist)
    assert sigma_rest > sigma
    assert epsilon([*hist, (sigma_rest, 0.25, 400)], 1e-5) <= 8.0
    n = max_steps(8.0, 1e-5, 1.0, 0.25, prior=hist)
    assert (
        epsilon([*hist, (1.0, 0.25, n)], 1e-5) <= 8.0 < epsilon([*hist, (1.0, 0.25, n + 1)], 1e-5)
    )


def uncached(hist: list[tuple[float, float, int]], delta: float, accountant: str) -> float:
    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    acc.history = list(hist)
    return float(acc.get_epsilon(delta=delta))


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # Opacus' PRV at q = 1
@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_epsilon_cache_is_opacus_bit_for_bit(accountant: str) -> None:
    """The memoised ε (and PRV's domain from the cached RDP curves) is exactly Opacus'
    uncached accountant, on a cold and a warm cache; one step more is a new history."""
    accounting._epsilon.cache_clear()
    hist = [(1.0, 2 / 3, 1), (2.0, 1.0, 1), (0.8, 0.1, 7)]
    for delta in (1e-5, 1e-3):
        first = epsilon(hist, delta, accountant)
        assert first == uncached(hist, delta, accountant)
        assert epsilon([list(m) for m in hist], delta, accountant) == first  # cache hit
    more = [*hist[:-1], (0.8, 0.1, 8)]
    assert epsilon(more, 1e-5, accountant) == uncached(more, 1e-5, accountant)
    assert epsilon(more, 1e-5, accountant) > epsilon(hist, 1e-5, accountant)
    assert accounting._epsilon.cache_info().hits >= 3


def test_ledger_epsilon_follows_each_counted_step(tmp_path: Path) -> None:
    """A ledger's ε after each counted step is the uncached ε of its new history."""
    ledger: PrivacyLedger = new_ledger(tmp_path / "state", 50.0, 1e-5)
    run = ledger.begin_run(PlannedRun("patient", 0.25, 2.0, 1.0, 3, 1e-5))
    seen = [ledger.spent()]
    for _ in range(3):
        run.count_step()
        seen.append(ledger.spent())
    record = run.finish()
    assert seen == [0.0, *(uncached([(2.0, 0.25, n)], 1e-5, "rdp") for n in (1, 2, 3))]
    assert record["epsilon_after"] == {
        acc: uncached([(2.0, 0.25, 3)], 1e-5, acc) for acc in ("rdp", "prv")
    }
