"""The sensitivity check both anomaly-summary layouts share (fused embeddings, semiology events)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from semiofed.shared.analysis.anomaly import dp_anomaly_summary, patient_contribution
from semiofed.shared.analysis.openset import ProjectionSpace

Patient = tuple[np.ndarray, np.ndarray]  # (rows, their classes)


def assert_each_worst_case_moves_the_sum_by_at_most_one(
    space: ProjectionSpace,
    others: Sequence[Patient],
    worst: Sequence[Patient],
    rng: np.random.Generator,
) -> None:
    """Each ``worst`` patient's contribution has L2 norm ≤ 1, and adding it to ``others``
    moves the (noiseless) released sums by at most 1: the release's sensitivity."""
    without = dp_anomaly_summary(list(others), space, 1e-12, rng)["noisy_sums"]
    for e, y in worst:
        assert np.linalg.norm(patient_contribution(space, e, y)) <= 1.0 + 1e-9
        with_it = dp_anomaly_summary([*others, (e, y)], space, 1e-12, rng)["noisy_sums"]
        assert np.linalg.norm(np.subtract(with_it, without)) <= 1.0 + 1e-9
