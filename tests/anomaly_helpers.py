"""The sensitivity check the anomaly releases share (fused-embedding and semiology-event class
sums, the semiology threshold release)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from semiofed.shared.analysis.anomaly import dp_anomaly_summary, patient_contribution
from semiofed.shared.analysis.openset import ProjectionSpace

Patient = tuple[np.ndarray, np.ndarray]  # (rows, their classes)


def assert_worst_cases_move_the_release_by_at_most_one(
    release: Callable[[list], list],
    contribution: Callable[[Any], np.ndarray],
    others: Sequence[Any],
    worst: Sequence[Any],
) -> None:
    """Each ``worst`` patient's ``contribution`` has L2 norm ≤ 1, and adding it to ``others``
    moves the noiseless ``release`` (the sums it would publish) by at most 1: its sensitivity."""
    without = release(list(others))
    for patient in worst:
        assert np.linalg.norm(contribution(patient)) <= 1.0 + 1e-9
        with_it = release([*others, patient])
        assert np.linalg.norm(np.subtract(with_it, without)) <= 1.0 + 1e-9


def assert_each_worst_case_moves_the_sum_by_at_most_one(
    space: ProjectionSpace,
    others: Sequence[Patient],
    worst: Sequence[Patient],
    rng: np.random.Generator,
) -> None:
    """The check above for the class sums of :func:`dp_anomaly_summary`."""
    assert_worst_cases_move_the_release_by_at_most_one(
        lambda ps: dp_anomaly_summary(ps, space, 1e-12, rng)["noisy_sums"],
        lambda p: patient_contribution(space, *p),
        others,
        worst,
    )
