"""Federated evaluation inside the site's ε budget: a Gaussian mechanism on the evaluation
table of the held-out patients (layout in :mod:`semiofed.shared.noisy_eval`).

Each held-out patient contributes one vector of L2 norm ≤ 1; the site sums them and adds
Gaussian noise of std σ (the approved ``[privacy] eval-noise-multiplier``) to every entry,
from a generator seeded with ``os.urandom``. That is one Gaussian mechanism of L2
sensitivity 1, charged to the site's ledger BEFORE the table is computed as one run with
``sample_rate = 1``, ``steps = 1``, ``noise_multiplier = σ`` (RDP-exact for it). Only the
noisy table leaves the site; the coordinator derives the metrics from it.
"""

from __future__ import annotations

import secrets

import numpy as np
import torch

from semiofed.privacy.ledger import PlannedRun, PrivacyLedger
from semiofed.shared.dataset import PatientWindows
from semiofed.shared.noisy_eval import TABLE_SIZE, encode_table, patient_vector

from .evaluation import predict


def exact_table(
    model: torch.nn.Module, patients: list[PatientWindows], device: str = "auto"
) -> np.ndarray:
    """Σ over patients of their normalized contributions (no noise: never sent); all zeros
    for a site without held-out patients (its table is then noise only)."""
    table, start = np.zeros(TABLE_SIZE), 0
    if not patients:
        return table
    pred = predict(model, patients, device=device)
    for p in patients:
        end = start + len(p)
        table += patient_vector(
            p.y_detect, pred["detect_prob"][start:end], p.y_type, pred["type_pred"][start:end]
        )
        start = end
    return table


def noisy_table(
    model: torch.nn.Module,
    patients: list[PatientWindows],
    sigma: float,
    ledger: PrivacyLedger,
    delta: float,
    accountant: str,
    purpose: str,
    device: str = "auto",
) -> bytes:
    """The DP evaluation table, encoded for the wire; raises ``BudgetExceeded`` before
    anything is computed."""
    planned = PlannedRun(
        privacy_unit="patient",
        sample_rate=1.0,
        noise_multiplier=sigma,
        max_grad_norm=1.0,  # the L2 sensitivity of the table
        steps=1,
        delta=delta,
        accountant=accountant,
        dataset_size=len(patients),
        purpose=purpose,
    )
    run = ledger.begin_run(planned)
    try:
        run.count_step()  # counted before the noisy table exists
        table = exact_table(model, patients, device)
        noise = np.random.default_rng(secrets.randbits(128)).normal(0.0, sigma, TABLE_SIZE)
    except BaseException as exc:
        run.finish("failed", error=type(exc).__name__)
        raise
    run.finish("completed")
    return encode_table(table + noise)
