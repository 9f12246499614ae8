"""The DP evaluation table: its fixed public layout, one patient's normalized contribution,
and the metrics the coordinator derives from a noisy sum of them (post-processing).

A held-out patient contributes one vector of ``TABLE_SIZE`` values:

* the detection-score histogram: window counts per (true label 0/1) × ``SCORE_BINS`` equal
  bins of the detection probability on [0, 1] (a fixed public grid), L2-normalized and
  scaled by 1/√2;
* the type confusion table: window counts per (true class, predicted class) over the
  windows with a type label (``NUM_CLASSES``²), L2-normalized and scaled by 1/√2.

So every patient's vector has L2 norm ≤ 1: adding or removing one patient moves the sum by
at most 1, and the site's Gaussian noise of std σ makes the sum (ε, δ)-DP at patient level
(``client/dp_evaluation.py``). Everything in :func:`table_metrics` is post-processing of the
noisy sum and costs no further ε. Within a patient the proportions are exact; patients are
weighted by 1/‖counts‖₂ instead of by window count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .labels import IGNORE_INDEX, NUM_CLASSES

SCORE_BINS = 10  # even, so that 0.5 is a bin edge (the detection threshold)
TABLE_SIZE = 2 * SCORE_BINS + NUM_CLASSES * NUM_CLASSES
TABLE_DTYPE = "<f8"  # on the wire: TABLE_SIZE little-endian float64 (Flower metrics are scalars)
TABLE_BYTES = TABLE_SIZE * 8
_PART_SCALE = 1.0 / math.sqrt(2.0)


def patient_vector(
    y_detect: np.ndarray, detect_prob: np.ndarray, y_type: np.ndarray, type_pred: np.ndarray
) -> np.ndarray:
    """One patient's contribution (L2 norm ≤ 1) to the evaluation table."""
    bins = np.clip((np.asarray(detect_prob) * SCORE_BINS).astype(int), 0, SCORE_BINS - 1)
    hist = np.zeros((2, SCORE_BINS))
    np.add.at(hist, (np.asarray(y_detect).astype(int).clip(0, 1), bins), 1.0)
    keep = np.asarray(y_type) != IGNORE_INDEX
    conf = np.zeros((NUM_CLASSES, NUM_CLASSES))
    np.add.at(conf, (np.asarray(y_type)[keep], np.asarray(type_pred)[keep]), 1.0)
    return np.concatenate([_unit(hist.ravel()), _unit(conf.ravel())]) * _PART_SCALE


def encode_table(table: Sequence[float]) -> bytes:
    t = np.asarray(table, dtype=TABLE_DTYPE)
    if t.shape != (TABLE_SIZE,):
        raise ValueError(f"an evaluation table has {TABLE_SIZE} values, got {t.shape}")
    return t.tobytes()


def decode_table(value: object) -> np.ndarray | None:
    """The table of a wire value, or None unless it is exactly TABLE_SIZE finite floats."""
    if not isinstance(value, bytes) or len(value) != TABLE_BYTES:
        return None
    t = np.frombuffer(value, dtype=TABLE_DTYPE).astype(float)
    return t if np.all(np.isfinite(t)) else None


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def table_metrics(table: Sequence[float], noise_std: float = 0.0) -> dict[str, float]:
    """Loss proxy, detection accuracy, AUROC and type macro-F1 of a (noisy) table whose
    entries carry Gaussian noise of std ``noise_std``; negative counts are taken as 0, and
    macro-F1 averages the classes whose true + predicted mass exceeds 2·``noise_std``. A
    metric whose counts are all 0 is left out."""
    t = np.clip(np.asarray(table, dtype=float), 0.0, None)
    if t.shape != (TABLE_SIZE,):
        raise ValueError(f"an evaluation table has {TABLE_SIZE} values, got {t.shape}")
    neg, pos = t[:SCORE_BINS], t[SCORE_BINS : 2 * SCORE_BINS]
    conf = t[2 * SCORE_BINS :].reshape(NUM_CLASSES, NUM_CLASSES)
    out: dict[str, float] = {}
    total = neg.sum() + pos.sum()
    if total > 0:
        centre = (np.arange(SCORE_BINS) + 0.5) / SCORE_BINS
        out["loss"] = float((-(neg @ np.log(1 - centre)) - pos @ np.log(centre)) / total)
        half = SCORE_BINS // 2
        out["detect-accuracy"] = float((neg[:half].sum() + pos[half:].sum()) / total)
    if neg.sum() > 0 and pos.sum() > 0:  # Mann-Whitney on binned scores, ties count half
        below = np.cumsum(neg) - neg
        out["auroc-seizure"] = float(pos @ (below + neg / 2) / (pos.sum() * neg.sum()))
    f1s = []
    for c in range(NUM_CLASSES):
        n_true, n_pred = conf[c].sum(), conf[:, c].sum()
        if n_true + n_pred > 2 * noise_std:  # a class seen (or predicted) in the table
            f1s.append(2 * conf[c, c] / (n_true + n_pred))
    if f1s:
        out["macro-f1"] = float(np.mean(f1s))
    return out
