"""A DP summary that leaves the site: one Gaussian mechanism of L2 sensitivity 1 under adding
or removing a patient, charged to the site's privacy ledger before the noisy value is
computed and recorded in the signed audit trail before it is handed out.

Accounting: a ledger run of one step at sample rate 1 with noise multiplier σ and clipping
norm 1 — the RDP of one such step is exactly that of the Gaussian mechanism of sensitivity 1,
so the release composes with the site's DP-SGD history in the same ledger (same δ and
accountant as the site budget). Over budget: :class:`BudgetExceeded`, nothing is computed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from semiofed.privacy.accounting import epsilon
from semiofed.privacy.ledger import Budget, PlannedRun, PrivacyLedger
from semiofed.shared.errors import SemioFedError

from . import site_audit


def site_budget(ledger: PrivacyLedger) -> Budget:
    """The site budget; a DP summary is refused without one (its ε would be unbounded)."""
    budget = ledger.budget
    if budget is None:
        raise SemioFedError(
            f"{ledger.path}: no site budget yet; set one (`semiofed site train --epsilon-budget E`) "
            "before releasing a DP summary"
        )
    return budget


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
