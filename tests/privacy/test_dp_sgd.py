"""make_patient_private (privacy/dp_sgd.py): the accountant's ε and the ledger charge are
those of (σ, q, steps, δ); each patient's gradient, clipped and summed, equals an
explicit per-window reference computation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant

from semiofed.privacy.accounting import epsilon
from semiofed.privacy.dp_sgd import make_patient_private
from semiofed.shared.dataset import WindowDataset
from semiofed.shared.model import SemioNet, loss_per_window
from tests.client.test_dp_sampling import TINY, tiny_patients
from tests.ledger_helpers import new_ledger

DETERMINISTIC = replace(TINY, dropout=0.0)


def _loss(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return loss_per_window(out, batch, 0.5)


def _private(model: SemioNet, patients: list, ledger: object = None, **kw: object):
    params = [p for p in model.parameters() if p.requires_grad]
    return make_patient_private(
        model,
        torch.optim.Adam(params, lr=1e-3),
        WindowDataset(patients),
        ledger,
        loss=_loss,
        rng=np.random.default_rng(0),
        **kw,
    )


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_epsilon_and_ledger_charge_are_those_of_sigma_q_steps(
    accountant: str, tmp_path: Path
) -> None:
    """The ε of the run and of the ledger are Opacus' accountant driven step by step with
    (σ, q) as make_private's DPOptimizer hook drives it, q = batch / patients, ⌊1/q⌋ steps
    per epoch: the same mechanism as before the move."""
    sigma, delta, patients = 1.3, 1e-3, tiny_patients(5, windows=6)
    ledger = new_ledger(tmp_path / "state", 50.0, delta, accountant)
    torch.manual_seed(0)
    kw = {"epochs": 2, "batch_size": 2, "noise_multiplier": sigma, "delta": delta}
    with _private(SemioNet(TINY), patients, ledger, accountant=accountant, **kw) as run:
        for _ in range(2):
            run.run_epoch()
    q, steps = 2 / 5, 2 * int(5 / 2)
    assert (run.planned.sample_rate, run.planned.steps, run.steps) == (q, steps, steps)
    assert ledger.history() == [(sigma, q, steps)]
    reference = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    for _ in range(steps):
        reference.step(noise_multiplier=sigma, sample_rate=q)
    expected = reference.get_epsilon(delta=delta)
    assert run.epsilon_run() == pytest.approx(expected, rel=1e-9)
    assert run.epsilon_total == pytest.approx(epsilon(ledger.history(), delta, accountant))
    assert run.epsilon_total == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    ("k", "patients", "batch"),
    [(1, 10, 10), (3, 4, 3)],  # 10 single windows: torch.func's vmap; else one backward each
)
def test_clipped_patient_gradient_sum_matches_per_window_reference(
    k: int, patients: int, batch: int
) -> None:
    torch.manual_seed(0)
    model = SemioNet(DETERMINISTIC)
    params = [p for p in model.parameters() if p.requires_grad]
    clip, checked, clipped, sampled = 0.05, [], [], []
    expected: list[torch.Tensor] = []

    def reference(batch: dict[str, torch.Tensor], m: torch.nn.Module, optimizer: object) -> None:
        """Each patient's gradient from one backward pass PER WINDOW, averaged, then clipped."""
        n = len(batch["patient_idx"]) // k
        sampled.append(n)
        rows = []
        for j in range(n):
            acc = [torch.zeros_like(p) for p in params]
            for w in range(j * k, (j + 1) * k):
                one = {key: v[w : w + 1] for key, v in batch.items()}
                gs = torch.autograd.grad(_loss(m(one), one).sum(), params)
                acc = [a + g / k for a, g in zip(acc, gs, strict=True)]
            rows.append(acc)
        for i, p in enumerate(params):  # the trainer's per-sample rows are these gradients
            torch.testing.assert_close(p.grad_sample, torch.stack([r[i] for r in rows]))
        norms = torch.stack([torch.cat([g.flatten() for g in r]).norm() for r in rows])
        factors = (clip / (norms + 1e-6)).clamp(max=1.0)
        clipped.extend((factors < 1).tolist())
        expected.clear()
        expected.extend(
            sum(f * r[i] for f, r in zip(factors, rows, strict=True)) for i in range(len(params))
        )
        optimizer.attach_step_hook(check)

    def check(optimizer: object) -> None:  # after clipping, noise (σ = 0) and scaling
        for p, e in zip(params, expected, strict=True):
            torch.testing.assert_close(
                p.grad, e / optimizer.expected_batch_size, rtol=1e-4, atol=1e-7
            )
        checked.append(True)
        optimizer.step_hook = None  # a following empty Poisson batch has nothing to check

    kw = {"epochs": 2, "batch_size": batch, "noise_multiplier": 0.0, "max_grad_norm": clip}
    with _private(model, tiny_patients(patients, windows=6), windows_per_patient=k, **kw) as run:
        for _ in range(2):
            run.run_epoch(reference)
    assert checked and len(checked) == len(sampled)  # every step that sampled a patient
    assert any(clipped), "clipping was active on some patient"
