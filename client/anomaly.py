"""The site's share of the federated anomaly model, the semiology-event class Gaussians of
:mod:`semiofed.shared.analysis.semiology_anomaly`: two DP releases, each charged to the site's
privacy ledger before it is computed and recorded in the signed audit trail
(:func:`.dp_release.release_gaussian`).

1. :func:`share_anomaly`: per seizure class the sum over its patients of a count indicator, a
   clipped mean and a clipped mean square of their annotated events' semiology features in
   the public space (each patient's whole vector of L2 norm ≤ 1: sensitivity 1 under adding
   or removing a patient), plus ``N(0, σ²)`` per coordinate.
2. :func:`share_anomaly_threshold`, under the model the coordinator merged from the first:
   a count indicator and each patient's mean clipped log distance of its events (L2 norm ≤ 1),
   plus ``N(0, σ²)``; the coordinator sets the flag threshold from it.

Both draw their noise from a secret generator and hold only those noisy values and public
fields (format, σ, the class list, the space's rank and digest, the public centre, their own
ε, δ and accountant). No count, label or feature of any patient. The space, the prior the
class means are shrunk to and the standardisation come from public simulator patients
(:class:`PublicEvents`), never from a site's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semiofed.shared.analysis import calibration as cal
from semiofed.shared.analysis.anomaly import dp_anomaly_summary
from semiofed.shared.analysis.openset import OpenSetScorer, ProjectionSpace
from semiofed.shared.analysis.semiology_anomaly import (
    dp_threshold,
    dp_threshold_summary,
    merge,
    patient_events,
    public_log_centre,
    public_prior,
    public_space,
    window_features,
)
from semiofed.shared.dataset import PatientWindows

from .dp_release import release_gaussian

PURPOSE = "anomaly summary: class gaussians"
THRESHOLD_PURPOSE = "anomaly summary: threshold"

Events = list[tuple[np.ndarray, np.ndarray]]


def site_events(patients: Sequence[PatientWindows]) -> Events:
    """(event feature rows, their classes) of each patient's annotated seizure events;
    patients without any are left out."""
    events = [patient_events(p) for p in patients]
    return [(rows, labels) for rows, labels in events if len(labels)]


def share_anomaly(
    state_dir: Path,
    per_patient: Events,
    space: ProjectionSpace,
    noise_multiplier: float = cal.DEFAULT_NOISE_MULTIPLIER,
) -> tuple[dict[str, Any], float]:
    """Release the site's DP class sums (at least :data:`~.calibration.MIN_PATIENTS` patients
    with seizure events, else nothing); returns the summary with its own ε, δ and
    accountant, and the site's cumulative ε after it. Refused without a sound ledger or over
    budget, before anything is computed."""
    cal.require_patients(len(per_patient), "patient(s) with seizure events", "anomaly")
    rng = cal.secret_rng()
    return release_gaussian(
        state_dir,
        PURPOSE,
        noise_multiplier,
        len(per_patient),
        lambda: dp_anomaly_summary(per_patient, space, noise_multiplier, rng),
    )


def share_anomaly_threshold(
    state_dir: Path,
    per_patient: Events,
    model: OpenSetScorer,
    centre: float,
    noise_multiplier: float = cal.DEFAULT_NOISE_MULTIPLIER,
) -> tuple[dict[str, Any], float]:
    """Release the site's DP threshold summary under the merged ``model`` (``centre``: the
    public median log distance sent with it); as :func:`share_anomaly` otherwise."""
    cal.require_patients(len(per_patient), "patient(s) with seizure events", "anomaly threshold")
    rng = cal.secret_rng()
    rows = [r for r, _ in per_patient]
    return release_gaussian(
        state_dir,
        THRESHOLD_PURPOSE,
        noise_multiplier,
        len(rows),
        lambda: dp_threshold_summary(rows, model, centre, noise_multiplier, rng),
    )


class PublicEvents:
    """The anomaly model's public simulator patients
    (:func:`~semiofed.shared.public_data.anomaly_patients`): the whitened space, the prior of
    the class means and the known-type events that standardise the model (no ε)."""

    def __init__(self, public: Sequence[PatientWindows]) -> None:
        windows, events = [], []
        for p in public:
            f = window_features(p)
            windows.append(f)
            events.append(patient_events(p, f))
        self.rows = np.concatenate([r for r, _ in events])
        labels = np.concatenate([y for _, y in events])
        self.space = public_space(np.concatenate(windows), self.rows, labels, whiten=True)
        self.prior = public_prior(events, self.space)

    @classmethod
    def load(cls, public_dir: Path) -> PublicEvents:
        """From the public patients in ``public_dir``'s anomaly folder (generated there if
        missing; their per-frame features cached there)."""
        from semiofed.shared.public_data import ANOMALY_DIR, TUNING_CACHE, anomaly_patients

        from .feature_cache import site_features

        folder = public_dir / ANOMALY_DIR
        return cls(anomaly_patients(folder, site_features(folder / TUNING_CACHE)))

    def model(self, summaries: Sequence[dict]) -> OpenSetScorer:
        """The consortium's model from the sites' class sums (post-processing), standardised
        on the public events; its threshold until the threshold release: the public one."""
        scorer = merge(summaries, self.space, self.prior)
        scorer.calibrate_events(self.rows)
        return scorer

    def centre(self, model: OpenSetScorer) -> float:
        """The public median log distance the sites' threshold releases are centred on."""
        return public_log_centre(model, self.rows)

    def set_threshold(self, model: OpenSetScorer, summaries: Sequence[dict]) -> None:
        """The flag threshold from the sites' threshold releases (post-processing)."""
        dp_threshold(model, summaries, self.rows)
