"""The site's share of the federated anomaly model: one DP release of its patients' class
sums (:func:`~semiofed.shared.analysis.anomaly.dp_anomaly_summary`), charged to the site's
privacy ledger before it is computed and recorded in the signed audit trail
(:func:`.dp_release.release_gaussian`).

What leaves the site: ``noisy_sums`` — per seizure class the sum over its patients of a count
indicator, a clipped mean and a clipped mean square of their windows' projected fused
embeddings, each patient's whole vector of L2 norm ≤ 1 (sensitivity 1 under adding or
removing a patient), plus ``N(0, σ²)`` per coordinate drawn from a secret generator — and
public fields (format, σ, the class list, the rank and digest of the public projection, its
own ε, δ and accountant). No count, label or embedding of any patient.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from semiofed.shared.analysis import calibration as cal
from semiofed.shared.analysis.anomaly import (
    DEFAULT_ENERGY_WEIGHT,
    SEIZURE_CLASSES,
    dp_anomaly_summary,
    merge_anomaly,
)
from semiofed.shared.analysis.openset import DEFAULT_FLAG_RATE, OpenSetScorer, ProjectionSpace
from semiofed.shared.dataset import PatientWindows, load_patient_windows
from semiofed.shared.errors import SemioFedError

from .dp_release import release_gaussian

PURPOSE = "anomaly summary: class gaussians"


def seizure_windows(
    model: nn.Module, patients: Sequence[PatientWindows]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fused embeddings, type classes) of each patient's windows of annotated seizure
    classes, from one batched pass; patients without any are left out."""
    from .evaluation import labelled_windows

    return labelled_windows(model, patients, "fused", lambda p: np.isin(p.y_type, SEIZURE_CLASSES))


def share_anomaly(
    state_dir: Path,
    per_patient: Sequence[tuple[np.ndarray, np.ndarray]],
    space: ProjectionSpace,
    noise_multiplier: float = cal.DEFAULT_NOISE_MULTIPLIER,
) -> tuple[dict[str, Any], float]:
    """Release the site's DP anomaly summary (at least :data:`~.calibration.MIN_PATIENTS`
    patients with seizure windows, else nothing); returns it with its own ε, δ and
    accountant, and the site's cumulative ε after it. Refused without a sound ledger or over
    budget, before anything is computed."""
    cal.require_patients(len(per_patient), "patient(s) with seizure windows", "anomaly")
    rng = cal.secret_rng()
    return release_gaussian(
        state_dir,
        PURPOSE,
        noise_multiplier,
        len(per_patient),
        lambda: dp_anomaly_summary(per_patient, space, noise_multiplier, rng),
    )


class PublicWindows:
    """The model's outputs on the annotated seizure windows of public patients (the
    simulator's tuning patients, :func:`~semiofed.shared.public_data.tuning_patients`): where
    the anomaly model's projection, standardisation and threshold come from (no ε)."""

    def __init__(self, model: nn.Module, public: Sequence[PatientWindows]) -> None:
        from semiofed.client.analysis.pipeline import event_groups

        from .evaluation import predict

        out = predict(model, list(public))  # from their cached embeddings when they carry them
        y_detect = np.concatenate([p.y_detect for p in public])
        y_type = np.concatenate([p.y_type for p in public])
        sel = (y_detect == 1) & np.isin(y_type, SEIZURE_CLASSES)
        if sel.sum() < 10:
            raise SemioFedError(
                f"{int(sel.sum())} public seizure windows: too few for a projection"
            )
        groups = event_groups(list(public))
        self.fused, self.logits = out["fused"][sel], out["type_logits"][sel]
        self.groups = [groups[i] for i in np.flatnonzero(sel)]
        self.space = ProjectionSpace.public(self.fused)

    @classmethod
    def load(cls, model: nn.Module, public_dir: Path, window_config: Any) -> PublicWindows:
        """From the public tuning patients under ``public_dir`` (generated there if missing),
        cut into the model's windows."""
        from semiofed.shared.public_data import tuning_sites

        sites = tuning_sites(public_dir)
        public = [p for s in sites for p in load_patient_windows(s, window_config)]
        return cls(model, public)

    def scorer(
        self,
        summaries: Sequence[dict],
        flag_rate: float = DEFAULT_FLAG_RATE,
        energy_weight: float = DEFAULT_ENERGY_WEIGHT,
    ) -> OpenSetScorer:
        """The consortium's anomaly model from the sites' DP summaries (post-processing),
        standardised and thresholded on the public windows."""
        model = merge_anomaly(summaries, self.space)
        model.energy_weight = energy_weight
        model.calibrate(self.fused, self.logits, self.groups, flag_rate)
        return model
