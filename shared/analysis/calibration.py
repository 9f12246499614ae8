"""Calibrated confidence: temperature scaling and split-conformal prediction sets.

Both are fitted on *held-out patients* (patients the model was not trained on), on the
seizure-type head's logits of windows (the unit of the coverage guarantee: a window of a new
patient exchangeable with the calibration patients).

* Temperature scaling: one scalar ``T`` minimising the negative log-likelihood of
  ``softmax(logits / T)``, searched over :data:`TEMPERATURE_GRID`.
* Split conformal (LAC score ``s = 1 − p_true``): the threshold is the
  ``⌈(n+1)(1−α)⌉ / n`` empirical quantile of the calibration scores; a prediction set holds
  every class with ``1 − p ≤ threshold``. Coverage ≥ 1 − α on exchangeable new windows.

Federated calibration (two rounds, no window, score or label leaves a site):

1. each site sends :func:`temperature_summary`: ``{"n": window count, "nll": summed NLL at
   each of the 49 fixed temperatures of TEMPERATURE_GRID}``; the coordinator adds them and
   picks the temperature with the lowest total (:func:`merge_temperature`) — the same result
   as pooling all windows.
2. each site sends :func:`quantile_summary` of its scores at that temperature:
   ``{"n": window count, "levels": the fixed QUANTILE_LEVELS, "quantiles": the site's
   empirical score quantile at each level}`` (99 numbers). The coordinator mixes the sites'
   piecewise-linear score CDFs weighted by ``n`` and takes the finite-sample-corrected level
   (:func:`merge_quantile_summaries`).

These summaries are aggregate statistics, not protected by the training's differential
privacy: they reveal each site's number of calibration windows, 49 summed losses and 99
score quantiles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

TEMPERATURE_GRID: tuple[float, ...] = tuple(float(t) for t in np.geomspace(0.25, 8.0, 49))
QUANTILE_LEVELS: tuple[float, ...] = tuple(round(q, 2) for q in np.arange(0.01, 1.0, 0.01))
DEFAULT_COVERAGE = 0.9


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Summed negative log-likelihood of ``labels`` under ``softmax(logits / T)``."""
    p = softmax(logits, temperature)[np.arange(len(labels)), labels]
    return float(-np.sum(np.log(np.clip(p, 1e-12, 1.0))))


def temperature_summary(logits: np.ndarray, labels: np.ndarray) -> dict:
    """What a site shares in round 1: its window count and summed NLL per grid temperature."""
    return {"n": len(labels), "nll": [nll(logits, labels, t) for t in TEMPERATURE_GRID]}


def merge_temperature(summaries: Sequence[dict]) -> float:
    total = np.sum([s["nll"] for s in summaries], axis=0)
    return TEMPERATURE_GRID[int(np.argmin(total))]


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature minimising the NLL on held-out windows (same grid as the federated fit)."""
    return merge_temperature([temperature_summary(logits, labels)])


def scores(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """LAC nonconformity score ``1 − p_true``."""
    return 1.0 - np.asarray(probs)[np.arange(len(labels)), labels]


def conformal_level(n: int, coverage: float) -> float:
    """Finite-sample quantile level ⌈(n+1)·coverage⌉ / n (> 1 means: every class)."""
    return math.ceil((n + 1) * coverage) / n if n else math.inf


def conformal_threshold(cal_scores: np.ndarray, coverage: float = DEFAULT_COVERAGE) -> float:
    """Split-conformal threshold on the calibration scores (1.0 = all classes when n is too small)."""
    s = np.sort(np.asarray(cal_scores, dtype=np.float64))
    level = conformal_level(len(s), coverage)
    if level > 1:
        return 1.0
    return float(s[math.ceil(level * len(s)) - 1])


def prediction_set(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean (…, C) membership; the top class is always included."""
    probs = np.asarray(probs)
    member = 1.0 - probs <= threshold + 1e-12
    top = probs == probs.max(axis=-1, keepdims=True)
    return member | top


def quantile_summary(cal_scores: np.ndarray) -> dict:
    """What a site shares in round 2: its window count and empirical score quantiles."""
    s = np.asarray(cal_scores, dtype=np.float64)
    return {
        "n": len(s),
        "levels": list(QUANTILE_LEVELS),
        "quantiles": [float(np.quantile(s, q, method="inverted_cdf")) for q in QUANTILE_LEVELS],
    }


def _cdf(summary: dict, x: float) -> float:
    """A site's score CDF at ``x``, piecewise linear through its quantiles (0 below 0, 1 above 1)."""
    q = np.concatenate([[0.0], summary["quantiles"], [1.0]])
    lv = np.concatenate([[0.0], summary["levels"], [1.0]])
    return float(np.interp(x, np.maximum.accumulate(q), lv))


def merge_quantile_summaries(
    summaries: Sequence[dict], coverage: float = DEFAULT_COVERAGE
) -> float:
    """Conformal threshold from the sites' quantile summaries (bisection on the mixed CDF)."""
    n = sum(int(s["n"]) for s in summaries)
    level = conformal_level(n, coverage)
    if level > 1:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        cdf = sum(s["n"] * _cdf(s, mid) for s in summaries) / n
        lo, hi = (lo, mid) if cdf >= level else (mid, hi)
    return hi


def coverage_and_size(
    probs: np.ndarray, labels: np.ndarray, threshold: float
) -> tuple[float, float]:
    """Empirical coverage and mean set size of prediction sets on labelled windows."""
    sets = prediction_set(probs, threshold)
    return float(sets[np.arange(len(labels)), labels].mean()), float(sets.sum(1).mean())
