"""Data splits, always by patient (a patient's windows never straddle two sides of a split).

A patient is identified by ``(site, patient)``. Functions take and return lists of
:class:`~semiofed.shared.dataset.PatientWindows` (or anything with ``site``/``patient``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, TypeVar

import numpy as np


class _HasPatient(Protocol):
    site: str
    patient: str


P = TypeVar("P", bound=_HasPatient)


def _key(p: _HasPatient) -> tuple[str, str]:
    return (p.site, p.patient)


def _check_unique(patients: Sequence[_HasPatient]) -> None:
    keys = [_key(p) for p in patients]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"patient listed more than once: {dup}")


def patient_split(
    patients: Sequence[P], val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> tuple[list[P], list[P], list[P]]:
    """Shuffle patients and cut them into train / validation / test.

    Each non-zero fraction gets at least one patient when there are enough patients to keep
    one for training.
    """
    _check_unique(patients)
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction and test_fraction must be in [0, 1) and sum below 1")
    n = len(patients)
    order = np.random.default_rng(seed).permutation(n)

    def count(frac: float) -> int:
        return 0 if frac == 0 else max(1, round(frac * n))

    n_test, n_val = count(test_fraction), count(val_fraction)
    if n_test + n_val >= n:
        raise ValueError(f"{n} patients are too few for a train/val/test split")
    test = [patients[i] for i in order[:n_test]]
    val = [patients[i] for i in order[n_test : n_test + n_val]]
    train = [patients[i] for i in order[n_test + n_val :]]
    return train, val, test


def stable_patient_split(
    patients: Sequence[P], val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> tuple[list[P], list[P], list[P]]:
    """Train / validation / test where each patient's side depends only on the patient and
    the seed (SHA-256 of seed, site and patient id → a uniform number in [0, 1)).

    Adding or removing one patient therefore changes exactly one side by that patient, which
    is what makes the ε of mechanisms run on different sides compose into one patient-level
    guarantee for the site (a seeded permutation, :func:`patient_split`, can move every other
    patient). The side sizes are random (binomial), not rounded fractions; a side may be empty.
    """
    import hashlib

    _check_unique(patients)
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction and test_fraction must be in [0, 1) and sum below 1")
    sides: tuple[list[P], list[P], list[P]] = ([], [], [])
    for p in patients:
        digest = hashlib.sha256(f"{seed}\0{p.site}\0{p.patient}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        side = 2 if u < test_fraction else 1 if u < test_fraction + val_fraction else 0
        sides[side].append(p)
    return sides


def leave_patient_out_folds(
    patients: Sequence[P], n_folds: int | None = None, seed: int = 0
) -> Iterator[tuple[list[P], list[P]]]:
    """(train, test) folds; ``n_folds=None`` leaves one patient out per fold, otherwise the
    shuffled patients are dealt into ``n_folds`` groups and each group is left out once."""
    _check_unique(patients)
    n = len(patients)
    k = n if n_folds is None else n_folds
    if not 2 <= k <= n:
        raise ValueError(f"need 2 <= folds <= patients, got {k} folds for {n} patients")
    order = np.random.default_rng(seed).permutation(n)
    for fold in range(k):
        held = set(order[fold::k].tolist())
        yield (
            [p for i, p in enumerate(patients) if i not in held],
            [p for i, p in enumerate(patients) if i in held],
        )


def leave_site_out_folds(patients: Sequence[P]) -> Iterator[tuple[str, list[P], list[P]]]:
    """(held-out site, train, test) for each site, in sorted order of site names."""
    _check_unique(patients)
    sites = sorted({p.site for p in patients})
    if len(sites) < 2:
        raise ValueError(f"leave-site-out needs at least two sites, got {sites}")
    for site in sites:
        yield (
            site,
            [p for p in patients if p.site != site],
            [p for p in patients if p.site == site],
        )
