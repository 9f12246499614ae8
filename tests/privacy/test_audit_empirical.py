"""Empirical audits: one-run canary ε lower bound, membership inference, gradient inversion."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from semiofed.privacy.empirical.canary import epsilon_lower_bound, p_value, run_canary_audit
from semiofed.privacy.empirical.inversion import run_inversion_probe
from semiofed.privacy.empirical.mia import auc, run_mia, tpr_at_fpr
from semiofed.privacy.empirical.training import TrainConfig

DP = TrainConfig(epochs=10, batch_size=32, lr=3e-3, noise_multiplier=1.5, max_grad_norm=1.0)
NON_DP = TrainConfig(epochs=40, batch_size=32)


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.filterwarnings("ignore", module="opacus")
    warnings.filterwarnings("ignore", message=".*backward hook.*")


def test_canary_bound_statistics() -> None:
    # all 200 guesses right among 1000 canaries: ε ≥ ~4.2; chance level gives nothing
    assert epsilon_lower_bound(1000, 200, 200, 1e-5) == pytest.approx(4.17, abs=0.05)
    assert epsilon_lower_bound(1000, 200, 100, 1e-5) == 0.0
    # the p-value falls as ε is assumed smaller, and δ only adds
    assert p_value(1000, 200, 150, 0.5, 1e-5) < p_value(1000, 200, 150, 1.5, 1e-5)
    assert p_value(1000, 200, 150, 1.0, 1e-3) > p_value(1000, 200, 150, 1.0, 0.0)


def test_canary_bound_below_claim_on_dp_and_above_it_without_dp() -> None:
    dp = run_canary_audit(DP, n_train=600, canaries=1000, guesses=200)
    assert dp["claimed_epsilon"] is not None and 0.5 < dp["claimed_epsilon"] < 3.0
    assert dp["epsilon_lower_bound"] <= dp["claimed_epsilon"] and dp["bound_below_claim"]
    plain = run_canary_audit(NON_DP, n_train=600, canaries=1000, guesses=200)
    assert plain["claimed_epsilon"] is None
    # without DP the canaries are memorised: the audit proves more leakage than DP allows
    assert plain["epsilon_lower_bound"] > dp["claimed_epsilon"]
    assert plain["correct"] > dp["correct"]


def test_roc_metrics() -> None:
    members, nonmembers = np.array([3.0, 2.0, 1.0]), np.array([0.0, 1.0, -1.0, -2.0])
    assert auc(members, nonmembers) == pytest.approx((4 + 4 + 3.5) / 12)
    assert tpr_at_fpr(members, nonmembers, 0.01) == pytest.approx(2 / 3)  # above every non-member
    assert auc(nonmembers, members) == pytest.approx(1 - (4 + 4 + 3.5) / 12)


def test_membership_inference_dp_vs_non_dp() -> None:
    plain = run_mia(NON_DP, pool_size=300, shadows=3)
    dp = run_mia(DP, pool_size=300, shadows=3)
    assert plain["loss_threshold"]["auc"] > 0.9  # an overfit model leaks membership
    assert dp["loss_threshold"]["auc"] < plain["loss_threshold"]["auc"] - 0.1
    assert dp["lira"]["auc"] < plain["lira"]["auc"]
    for r in (plain, dp):
        for attack in ("loss_threshold", "lira"):
            assert set(r[attack]) == {
                "auc",
                "tpr_at_0.001_fpr",
                "tpr_at_0.01_fpr",
                "fpr_resolution",
            }


def test_gradient_inversion_probe() -> None:
    r = run_inversion_probe(noise_multiplier=1.0, max_grad_norm=1.0, sites=4, trials=6)
    assert r["plain"]["relative_error_median"] < 1e-4  # a raw single-window update leaks it
    assert r["plain"]["exact_reconstructions"] == 6
    assert r["dp"]["relative_error_median"] > 0.5 and r["dp"]["exact_reconstructions"] == 0
    assert r["secagg"]["relative_error_median"] > 0.1


def test_patient_canary_audit_of_the_sites_own_trainer_has_power_and_dp_respects_it() -> None:
    """The trainer is SemioFed's own patient-level DP-SGD (make_patient_private). The non-DP
    control (same recipe, seeded minibatches) memorises the canary patients: the one-run audit
    then proves ε > 0 at 95 % (a weak canary fails here). With patient-level DP-SGD the bound stays below the
    accountant's ε, which is the ledger's formula."""
    from semiofed.privacy.accounting import epsilon
    from semiofed.privacy.empirical.patient_canary import (
        patient_trainer,
        run_patient_canary_audit,
    )

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many tiny steps: a second thread only contends on a busy machine
    try:
        plain = run_patient_canary_audit(patient_trainer(2.0, 1.0, 1e-5, 40), False, 1e-5)
        dp = run_patient_canary_audit(patient_trainer(2.0, 1.0, 1e-5, 3), True, 1e-5)  # cheaper
    finally:
        torch.set_num_threads(threads)
    assert plain["privacy_unit"] == "patient" and plain["claimed_epsilon"] is None
    assert plain["epsilon_lower_bound"] > 1.0 and plain["correct"] >= 27
    q = 4 / (10 + dp["canaries_included"])  # expected 4 sampled patients of the training set
    assert dp["steps"] == 3 * int(1 / q)
    assert dp["claimed_epsilon"] == pytest.approx(epsilon([(2.0, q, dp["steps"])], 1e-5, "rdp"))
    assert dp["epsilon_lower_bound"] <= dp["claimed_epsilon"] and dp["bound_below_claim"]
    assert dp["correct"] < plain["correct"]
