"""A DP summary that leaves the site: one Gaussian mechanism of L2 sensitivity 1 under adding
or removing a patient, charged to the site's privacy ledger before the noisy value is
computed and recorded in the signed audit trail before it is handed out.

Accounting: a ledger run of one step at sample rate 1 with noise multiplier σ and clipping
norm 1 — the RDP of one such step is exactly that of the Gaussian mechanism of sensitivity 1,
so the release composes with the site's DP-SGD history in the same ledger (same δ and
accountant as the site budget). Over budget: :class:`BudgetExceeded`, nothing is computed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from semiofed.privacy.accounting import epsilon
from semiofed.privacy.ledger import Budget, PlannedRun, PrivacyLedger
from semiofed.shared.analysis import calibration as cal
from semiofed.shared.dataset import PatientWindows
from semiofed.shared.errors import SemioFedError

from . import site_audit


def site_budget(ledger: PrivacyLedger) -> Budget:
    """The site budget; a DP summary is refused without a sound ledger (missing, truncated,
    edited or rolled back: its ε would be unbounded)."""
    ledger.check_history()
    return ledger.budget


def release_gaussian(
    state_dir: Path,
    purpose: str,
    noise_multiplier: float,
    n_patients: int,
    compute: Callable[[], dict[str, Any]],
) -> tuple[dict[str, Any], float]:
    """Charge, compute (``compute()`` adds the noise), record; returns the summary with its
    own ε, δ and accountant added, and the site's cumulative ε after it."""
    ledger = PrivacyLedger(state_dir)
    budget = site_budget(ledger)
    planned = PlannedRun(
        privacy_unit="patient",
        sample_rate=1.0,
        noise_multiplier=noise_multiplier,
        max_grad_norm=1.0,
        steps=1,
        delta=budget.delta,
        accountant=budget.accountant,
        dataset_size=n_patients,
        purpose=purpose,
    )
    with ledger.begin_run(planned) as run:
        run.count_step()
        summary = compute()
        record = run.finish()
    eps = epsilon([planned.mechanism()], budget.delta, budget.accountant)
    summary = {**summary, "epsilon": eps, "delta": budget.delta, "accountant": budget.accountant}
    total = float(record["epsilon_after"][budget.accountant])
    site_audit.record(
        state_dir,
        "summary_released",
        {
            "purpose": purpose,
            "run_id": record["run_id"],
            "epsilon_total": total,
            "summary": summary,
        },
    )
    return summary, total


def labelled_outputs(
    model: nn.Module, patients: Sequence[PatientWindows]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(type logits, labels) of each patient's windows with a type label, from one batched
    pass over every patient (their cached embeddings when they carry them); patients
    without one are left out (they contribute nothing to a calibration summary)."""
    from semiofed.shared.labels import IGNORE_INDEX

    from .evaluation import labelled_windows

    return labelled_windows(model, patients, "type_logits", lambda p: p.y_type != IGNORE_INDEX)


def share_calibration(
    state_dir: Path,
    kind: str,
    per_patient: Sequence[tuple[np.ndarray, np.ndarray]],
    noise_multiplier: float,
    temperature: float | None = None,
) -> tuple[dict[str, Any], float, str]:
    """Release one DP calibration summary of ``kind`` (round 1 ``temperature``; round 2
    ``conformal`` or ``mondrian``, per class, at the merged ``temperature``) of the
    patients' labelled outputs, charged to ``state_dir``'s ledger; returns the summary, the
    site's cumulative ε after it and what it holds (for the user)."""
    cal.require_patients(len(per_patient))
    rng = cal.secret_rng()
    bins = len(cal.SCORE_EDGES) - 1
    if kind == "temperature":
        compute = lambda: cal.dp_temperature_summary(per_patient, noise_multiplier, rng)  # noqa: E731
        what = f"{len(cal.TEMPERATURE_GRID)} noisy sums of per-patient NLL curves"
    else:
        if temperature is None:
            raise SemioFedError(f"a {kind} summary needs the merged temperature")
        t = temperature
        scores = [cal.scores(cal.softmax(z, t), y) for z, y in per_patient]
        if kind == cal.MONDRIAN:
            k = per_patient[0][0].shape[1]
            pairs = [(sc, y) for sc, (_, y) in zip(scores, per_patient, strict=True)]
            compute = lambda: cal.dp_mondrian_summary(pairs, t, k, noise_multiplier, rng)  # noqa: E731
            what = f"{k} × {bins} noisy per-patient, per-class score-histogram bins"
        else:
            compute = lambda: cal.dp_conformal_summary(scores, t, noise_multiplier, rng)  # noqa: E731
            what = f"{bins} noisy per-patient score-histogram bins"
    purpose = f"calibration summary: {kind}"
    summary, total = release_gaussian(
        state_dir, purpose, noise_multiplier, len(per_patient), compute
    )
    return summary, total, what
