"""Independent ε: Google's dp-accounting vs published values, vs SemioFed's Opacus accounting,
and the ledger check that flags a disagreement."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from dp_accounting import rdp

from semiofed.privacy.accounting import epsilon as opacus_epsilon
from semiofed.privacy.independent_check import check_ledger, gaussian_event, independent_epsilon
from semiofed.privacy.ledger import PlannedRun
from semiofed.shared.cli import main
from tests.ledger_helpers import new_ledger

MNIST_Q = 256 / 60000
# TensorFlow Privacy, tutorials/README.md ("Select Parameters", δ = 1e-5, 256 per batch on
# the 60 000 MNIST training images): (noise multiplier, epochs, published ε). Those numbers
# come from RDP with the classic conversion ε = min_α RDP(α) + log(1/δ)/(α − 1) over the
# orders below; (1.1, 60) is the tutorial's default run (its README prints ε = 2.92 for the
# table's σ = 1.12; σ = 1.1 gives 3.01).
PUBLISHED = [(1.12, 60, 2.92), (0.6, 30, 9.74), (1.2, 10, 1.20)]
TF_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


def _classic_rdp_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    acc = rdp.RdpAccountant(orders=TF_ORDERS)
    acc.compose(gaussian_event(sigma, q, steps))
    orders = np.array(TF_ORDERS)
    return float(np.min(np.array(acc._rdp) - np.log(delta) / (orders - 1)))


@pytest.mark.parametrize(("sigma", "epochs", "published"), PUBLISHED)
def test_dp_accounting_reproduces_tf_privacy(sigma: float, epochs: int, published: float) -> None:
    steps = epochs * 60000 // 256
    assert _classic_rdp_epsilon(sigma, MNIST_Q, steps, 1e-5) == pytest.approx(published, abs=0.03)


@pytest.mark.parametrize(
    ("history", "delta"),
    [
        ([(1.1, MNIST_Q, 60 * 60000 // 256)], 1e-5),  # the TF Privacy MNIST tutorial
        ([(0.6, MNIST_Q, 30 * 60000 // 256)], 1e-5),
        ([(1.0, 0.2, 100)], 1e-3),  # patient-level: 5 of 25 patients per step
        ([(0.8, 0.1, 50), (1.2, 0.1, 200)], 1e-4),  # two runs composed
    ],
)
def test_dp_accounting_agrees_with_semiofed_accounting(
    history: list[tuple[float, float, int]], delta: float
) -> None:
    independent = independent_epsilon(history, delta)
    rdp_semiofed = opacus_epsilon(history, delta, "rdp")
    prv_semiofed = opacus_epsilon(history, delta, "prv")
    assert independent["rdp"] == pytest.approx(rdp_semiofed, rel=0.01)
    assert independent["pld"] == pytest.approx(prv_semiofed, rel=0.01)
    assert independent["pld"] < independent["rdp"]  # PLD is the tighter of the two


def test_mnist_improved_conversion_below_published() -> None:
    """Modern RDP conversion gives ε ≈ 2.60 < 3.01 (classic) for the tutorial's σ = 1.1 run."""
    steps = 60 * 60000 // 256
    classic = _classic_rdp_epsilon(1.1, MNIST_Q, steps, 1e-5)
    assert classic == pytest.approx(3.0, abs=0.02)
    modern = independent_epsilon([(1.1, MNIST_Q, steps)], 1e-5)["rdp"]
    assert modern == pytest.approx(2.60, abs=0.01) and modern < classic


def _ledger_with_two_runs(state: Path) -> None:
    ledger = new_ledger(state, 20.0, 1e-3, "rdp")
    for sigma, steps in ((1.0, 40), (1.3, 60)):
        planned = PlannedRun("patient", 0.2, sigma, 1.0, steps, 1e-3, "rdp", dataset_size=25)
        with ledger.begin_run(planned, commit_every=20) as run:
            for _ in range(steps):
                run.count_step()


def _ledger_cli(state: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["audit", "ledger", "--state", str(state)])
    return code, capsys.readouterr().out


def test_ledger_check_agrees_then_flags_tampering(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _ledger_with_two_runs(tmp_path)
    result = check_ledger(tmp_path)
    assert result.ok and len(result.runs) == 2
    assert all(not r.skipped for r in result.runs)
    code, out = _ledger_cli(tmp_path, capsys)
    assert code == 0 and "every recorded ε agrees" in out
    assert json.loads((tmp_path / "audits" / "ledger_check.json").read_text())["ok"]

    path = tmp_path / "privacy_ledger.json"
    data = json.loads(path.read_text())
    true_rdp = data["runs"][1]["epsilon_after"]["rdp"]
    data["runs"][1]["epsilon_after"]["rdp"] = true_rdp * 0.8  # claims less privacy loss
    path.write_text(json.dumps(data))
    code, out = _ledger_cli(tmp_path, capsys)
    assert code == 1 and "UNDERSTATES" in out and "DISAGREEMENT" in out
    # inside a stated tolerance of 25 % the same value passes
    assert main(["audit", "ledger", "--state", str(tmp_path), "--tolerance", "0.25"]) == 0
    capsys.readouterr()
