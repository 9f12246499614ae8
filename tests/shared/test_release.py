"""The release inventory and the DP evaluation table (no processes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semiofed.shared.labels import IGNORE_INDEX, NUM_CLASSES
from semiofed.shared.metrics import auroc, window_metrics
from semiofed.shared.noisy_eval import (
    SCORE_BINS,
    TABLE_SIZE,
    encode_table,
    patient_vector,
    table_metrics,
)
from semiofed.shared.release import ALLOWED_METRICS, METRICS, SITE_METRICS, check_value


def _patient(rng: np.random.Generator, n: int = 200):
    y = (rng.random(n) < 0.3).astype(int)
    prob = np.clip(0.35 * y + rng.random(n) * 0.65, 0, 1)
    y_type = np.where(y == 1, rng.integers(1, NUM_CLASSES, n), IGNORE_INDEX)
    pred = np.where(rng.random(n) < 0.6, y_type, rng.integers(0, NUM_CLASSES, n))
    return y, prob, y_type, pred


def test_one_patient_moves_the_table_by_at_most_one() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 5, 500):
        v = patient_vector(*_patient(rng, n))
        assert v.shape == (TABLE_SIZE,) and np.linalg.norm(v) <= 1 + 1e-12


def test_metrics_of_an_exact_one_patient_table_match_the_window_metrics() -> None:
    y, prob, y_type, pred = _patient(np.random.default_rng(1))
    m = table_metrics(patient_vector(y, prob, y_type, pred))
    exact = window_metrics(y_type, pred, y, prob)
    assert m["macro-f1"] == pytest.approx(exact["macro_f1"])
    assert m["detect-accuracy"] == pytest.approx(np.mean((prob >= 0.5) == (y == 1)))
    binned = np.minimum((prob * SCORE_BINS).astype(int), SCORE_BINS - 1)
    assert m["auroc-seizure"] == pytest.approx(auroc(y, binned))  # AUROC on the public grid


def test_inventory_is_the_one_definition_both_sides_read() -> None:
    from semiofed.client import allowlist
    from semiofed.server import strategies

    assert set(SITE_METRICS) <= set(ALLOWED_METRICS)
    assert strategies.SITE_METRICS is SITE_METRICS
    assert not hasattr(allowlist, "ALLOWED_METRICS")  # no second copy
    assert all(m.protection in ("dp", "public") and m.why for m in METRICS)
    for key in ("num-patients", "num-windows", "train-loss", "train-seconds", "eval-loss"):
        assert check_value(key, 1.0) is not None
    assert check_value("decline-reason", "over-budget") is None
    assert check_value("decline-reason", "over budget: patient sub-01") is not None
    assert check_value("eval-table", encode_table([0.5] * TABLE_SIZE)) is None
    assert check_value("eval-table", encode_table([0.5] * TABLE_SIZE) + b"x") is not None
    assert check_value("eval-table", encode_table([np.nan] * TABLE_SIZE)) is not None
    assert check_value("eval-table", [0.5] * TABLE_SIZE) is not None


def test_adding_a_patient_changes_only_its_own_side_of_the_split() -> None:
    """The neighbouring site (one patient more) trains and evaluates on the same other
    patients, so per-mechanism ε compose into one patient-level guarantee."""
    from types import SimpleNamespace

    from semiofed.shared.splits import patient_split, stable_patient_split

    site = [SimpleNamespace(site="site-01", patient=f"sub-{i:03d}") for i in range(40)]
    extra = SimpleNamespace(site="site-01", patient="sub-999")

    def sides(split, patients):
        return [{p.patient for p in side} for side in split(patients, 0.1, 0.25, seed=3)]

    without, with_ = sides(stable_patient_split, site), sides(stable_patient_split, [*site, extra])
    assert sum(a != b for a, b in zip(without, with_, strict=True)) == 1
    assert set().union(*with_) - set().union(*without) == {"sub-999"}
    assert all(a <= b for a, b in zip(without, with_, strict=True))
    moved = sides(patient_split, site), sides(patient_split, [*site, extra])
    assert sum(a != b for a, b in zip(*moved, strict=True)) > 1  # the permutation moves others


def test_a_site_without_held_out_patients_sends_noise_only() -> None:
    from semiofed.client.dp_evaluation import exact_table

    assert not exact_table(torch.nn.Linear(1, 1), []).any()
