"""Calibrated confidence: temperature scaling and split-conformal prediction sets.

Both are fitted on *held-out patients* (patients the model was not trained on), on the
seizure-type head's logits of windows (the unit of the coverage guarantee: a window of a new
patient exchangeable with the calibration patients).

* Temperature scaling: one scalar ``T`` minimising the negative log-likelihood of
  ``softmax(logits / T)``, searched over :data:`TEMPERATURE_GRID`.
* Split conformal (LAC score ``s = 1 − p_true``): the threshold is the
  ``⌈(n+1)(1−α)⌉ / n`` empirical quantile of the calibration scores; a prediction set holds
  every class with ``1 − p ≤ threshold``. Coverage ≥ 1 − α on exchangeable new windows.

Federated calibration releases two differentially private summaries per site (privacy unit:
the patient; each is one Gaussian mechanism of L2 sensitivity 1 under adding or removing a
patient, charged to the site's ledger by the caller):

1. :func:`dp_temperature_summary`: each patient's mean NLL per window (each window's NLL
   clipped at :data:`NLL_CLIP`) at the 49 public temperatures of :data:`TEMPERATURE_GRID`,
   centred and scaled to unit L2 norm (the temperature that minimises a sum of curves does
   not depend on a constant per curve); the site sends the sum over its patients plus
   ``N(0, σ²)`` per temperature. :func:`merge_temperature` adds the sites' curves, smooths
   the noise with a least-squares cubic in ``log T`` and takes its minimum on the grid.
2. :func:`dp_conformal_summary`: each patient's histogram of its scores on the public bins
   :data:`SCORE_EDGES`, normalised to sum 1 (L2 norm ≤ 1), summed over patients, plus
   ``N(0, σ²)`` per bin. :func:`merge_conformal` adds the sites' histograms (their total is
   a noisy patient count ``N``) and takes the upper edge of the bin where the noisy tail
   above holds at most ``1 − ⌈(N+1)(1−α)⌉/N`` of the mass: a patient-weighted conformal
   threshold whose coverage is nominal up to the DP noise (measured in the tests and bench).

Per-class (Mondrian) conformal prediction (:func:`mondrian_thresholds`): one threshold per
true class from the calibration windows of that class, so coverage ≥ 1 − α holds for every
class, each seizure type included (a global threshold is set by the background windows,
which dominate). Its federated form, :func:`dp_mondrian_summary`, releases per class the
patients' score histograms: each patient's histogram of each class it has windows of,
normalised to sum 1 and scaled by ``1/sqrt(number of its classes)`` (L2 norm ≤ 1 in all),
summed, plus ``N(0, σ²)`` per bin; :func:`merge_mondrian` applies the conformal tail rule to
each class's noisy histogram.

A site with fewer than :data:`MIN_PATIENTS` calibration patients (with labelled windows)
releases nothing: the noise would dominate its summary.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from semiofed.shared.errors import SemioFedError

TEMPERATURE_GRID: tuple[float, ...] = tuple(float(t) for t in np.geomspace(0.25, 8.0, 49))
SCORE_EDGES: tuple[float, ...] = tuple(float(e) for e in np.linspace(0.0, 1.0, 21))
DEFAULT_COVERAGE = 0.9
NLL_CLIP = 10.0
MIN_PATIENTS = 20
DEFAULT_NOISE_MULTIPLIER = 3.0
SUMMARY_FORMAT = "semiofed-dp-calibration"
SUMMARY_KINDS = ("temperature", "conformal")
#: the per-class conformal summary (:func:`dp_mondrian_summary`), released on its own
MONDRIAN = "mondrian"
#: what a site releases, in order, for the consortium's calibration (``make demo``)
FEDERATED_KINDS = (*SUMMARY_KINDS, MONDRIAN)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def window_nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> np.ndarray:
    """Negative log-likelihood of each window's label under ``softmax(logits / T)``."""
    p = softmax(logits, temperature)[np.arange(len(labels)), labels]
    return -np.log(np.clip(p, 1e-12, 1.0))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Summed negative log-likelihood of ``labels`` under ``softmax(logits / T)``."""
    return float(window_nll(logits, labels, temperature).sum())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature minimising the NLL on held-out windows (exact, local: nothing is released)."""
    return TEMPERATURE_GRID[int(np.argmin([nll(logits, labels, t) for t in TEMPERATURE_GRID]))]


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


def coverage_and_size(
    probs: np.ndarray, labels: np.ndarray, threshold: float
) -> tuple[float, float]:
    """Empirical coverage and mean set size of prediction sets on labelled windows."""
    sets = prediction_set(probs, threshold)
    return float(sets[np.arange(len(labels)), labels].mean()), float(sets.sum(1).mean())


def mondrian_thresholds(
    cal_probs: np.ndarray, labels: np.ndarray, coverage: float = DEFAULT_COVERAGE
) -> np.ndarray:
    """Per-class (Mondrian) split-conformal thresholds: class ``c``'s is
    :func:`conformal_threshold` of the scores of the calibration windows labelled ``c``, so
    coverage ≥ ``coverage`` holds for each true class (1.0, always in the set, for a class
    with too few windows)."""
    probs, labels = np.asarray(cal_probs), np.asarray(labels)
    s = scores(probs, labels)
    return np.array([conformal_threshold(s[labels == c], coverage) for c in range(probs.shape[1])])


def coverage_per_class(
    probs: np.ndarray, labels: np.ndarray, thresholds: float | np.ndarray
) -> dict[int, tuple[float, float, int]]:
    """Per true class: (coverage, mean set size, windows) of the prediction sets at a global
    threshold or per-class ``thresholds`` (:func:`prediction_set` broadcasts them)."""
    sets = prediction_set(probs, thresholds)
    out = {}
    for c in np.unique(labels):
        m = labels == c
        out[int(c)] = (float(sets[m, c].mean()), float(sets[m].sum(1).mean()), int(m.sum()))
    return out


# ------------------------------------------------------------------ DP summaries (federated)


def secret_rng() -> np.random.Generator:
    """numpy's PCG64 seeded with 256 bits from ``os.urandom``; the seed is never stored."""
    return np.random.default_rng(int.from_bytes(os.urandom(32), "big"))


def require_patients(
    n: int, what: str = "calibration patient(s) with labelled windows", summary: str = "calibration"
) -> None:
    """Refuse a DP summary of fewer than :data:`MIN_PATIENTS` patients."""
    if n < MIN_PATIENTS:
        raise SemioFedError(
            f"{n} {what}: a DP {summary} summary needs at least {MIN_PATIENTS} "
            "(nothing was released)"
        )


def patient_nll_curve(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One patient's contribution to the temperature summary: its mean clipped NLL per
    window at each grid temperature, centred and scaled to unit L2 norm."""
    z = np.asarray(logits, dtype=np.float64)[None] / np.asarray(TEMPERATURE_GRID)[:, None, None]
    z -= z.max(axis=-1, keepdims=True)
    log_p = z[:, np.arange(len(labels)), labels] - np.log(np.exp(z).sum(axis=-1))
    curve = np.minimum(-log_p, NLL_CLIP).mean(axis=1)
    curve -= curve.mean()
    norm = float(np.linalg.norm(curve))
    return curve / norm if norm > 0 else curve


def patient_score_histogram(patient_scores: np.ndarray) -> np.ndarray:
    """One patient's contribution to the conformal summary: its score histogram on
    :data:`SCORE_EDGES`, normalised to sum 1."""
    bins = np.searchsorted(SCORE_EDGES, patient_scores, side="right") - 1
    k = len(SCORE_EDGES) - 1
    return np.bincount(np.clip(bins, 0, k - 1), minlength=k) / len(bins)


def noisy_sum(total: np.ndarray, noise_multiplier: float, rng: np.random.Generator) -> list:
    """``total`` plus ``N(0, σ²)`` per coordinate (the Gaussian mechanism), as floats."""
    if not (noise_multiplier > 0 and math.isfinite(noise_multiplier)):
        raise SemioFedError(f"noise multiplier must be finite and > 0, got {noise_multiplier}")
    return [float(v) for v in total + rng.normal(0.0, noise_multiplier, total.shape)]


def summary_header(kind: str, noise_multiplier: float, fmt: str = SUMMARY_FORMAT) -> dict:
    """The public fields of a DP summary of ``kind`` (no value of any patient)."""
    return {
        "format": fmt,
        "version": 1,
        "kind": kind,
        "privacy_unit": "patient",
        "mechanism": "sum of per-patient contributions of L2 norm <= 1 + Gaussian noise",
        "noise_multiplier": float(noise_multiplier),
    }


def dp_temperature_summary(
    patients: Sequence[tuple[np.ndarray, np.ndarray]],
    noise_multiplier: float,
    rng: np.random.Generator,
) -> dict:
    """Round 1 of a site: noisy sum of :func:`patient_nll_curve` over its patients
    (``(logits, labels)`` of each patient's labelled windows)."""
    used = [(z, y) for z, y in patients if len(y)]
    require_patients(len(used))
    total = np.sum([patient_nll_curve(z, y) for z, y in used], axis=0)
    return {
        **summary_header("temperature", noise_multiplier),
        "temperatures": list(TEMPERATURE_GRID),
        "noisy_sums": noisy_sum(total, noise_multiplier, rng),
    }


def dp_conformal_summary(
    patient_scores: Sequence[np.ndarray],
    temperature: float,
    noise_multiplier: float,
    rng: np.random.Generator,
) -> dict:
    """Round 2 of a site: noisy sum of :func:`patient_score_histogram` over its patients
    (each patient's scores at the merged ``temperature``)."""
    used = [s for s in patient_scores if len(s)]
    require_patients(len(used))
    total = np.sum([patient_score_histogram(s) for s in used], axis=0)
    return {
        **summary_header("conformal", noise_multiplier),
        "temperature": float(temperature),
        "edges": list(SCORE_EDGES),
        "noisy_counts": noisy_sum(total, noise_multiplier, rng),
    }


def patient_class_histograms(
    patient_scores: np.ndarray, labels: np.ndarray, n_classes: int
) -> np.ndarray:
    """One patient's contribution to the Mondrian summary (L2 norm ≤ 1): for each class it
    has windows of, its histogram of those windows' scores on :data:`SCORE_EDGES`
    (normalised to sum 1) times ``1 / sqrt(number of such classes)``; zeros elsewhere."""
    labels = np.asarray(labels)
    out = np.zeros((n_classes, len(SCORE_EDGES) - 1))
    present = np.unique(labels)
    for c in present:
        out[int(c)] = patient_score_histogram(patient_scores[labels == c]) / math.sqrt(len(present))
    return out.ravel()


def dp_mondrian_summary(
    patients: Sequence[tuple[np.ndarray, np.ndarray]],
    temperature: float,
    n_classes: int,
    noise_multiplier: float,
    rng: np.random.Generator,
) -> dict:
    """Noisy sum of :func:`patient_class_histograms` over a site's patients (``(scores,
    labels)`` of each patient's labelled windows at the merged ``temperature``)."""
    used = [(s, y) for s, y in patients if len(y)]
    require_patients(len(used))
    total = np.sum([patient_class_histograms(s, y, n_classes) for s, y in used], axis=0)
    return {
        **summary_header(MONDRIAN, noise_multiplier),
        "temperature": float(temperature),
        "edges": list(SCORE_EDGES),
        "classes": n_classes,
        "noisy_counts": noisy_sum(total, noise_multiplier, rng),
    }


_GRID_FIELDS = {
    "temperature": ("temperatures", TEMPERATURE_GRID, "noisy_sums"),
    "conformal": ("edges", SCORE_EDGES, "noisy_counts"),
    MONDRIAN: ("edges", SCORE_EDGES, "noisy_counts"),
}


def summary_problem(doc: object, kind: str) -> str | None:
    """Why ``doc`` is not a DP calibration summary of ``kind`` (None if it is one)."""
    grid_key, grid, values_key = _GRID_FIELDS[kind]
    if not isinstance(doc, dict) or doc.get("format") != SUMMARY_FORMAT:
        return f"not a {SUMMARY_FORMAT} summary"
    if doc.get("kind") != kind:
        return f"a {doc.get('kind')!r} summary, expected {kind!r}"
    if doc.get(grid_key) != list(grid):
        return f"field '{grid_key}' is not the public grid of this version"
    values = doc.get(values_key)
    n_values = len(grid) - (kind != "temperature")
    if kind == MONDRIAN:
        if not (isinstance(doc.get("classes"), int) and doc["classes"] > 0):
            return "field 'classes' must be a positive integer"
        n_values *= doc["classes"]
    if not (
        isinstance(values, list)
        and len(values) == n_values
        and all(isinstance(v, int | float) and math.isfinite(v) for v in values)
    ):
        return f"field '{values_key}' must hold {n_values} finite numbers"
    if kind != "temperature" and not (
        isinstance(doc.get("temperature"), int | float) and doc["temperature"] > 0
    ):
        return "field 'temperature' must be a positive number"
    return None


def _values(summaries: Sequence[dict], kind: str) -> np.ndarray:
    values_key = _GRID_FIELDS[kind][2]
    for i, s in enumerate(summaries):
        problem = summary_problem(s, kind)
        if problem:
            raise SemioFedError(f"summary {i + 1}: {problem}")
    return np.sum([s[values_key] for s in summaries], axis=0)


def merge_temperature(summaries: Sequence[dict]) -> float:
    """The consortium's temperature from the sites' DP temperature summaries (post-processing)."""
    total = _values(summaries, "temperature")
    x = np.log(TEMPERATURE_GRID)
    smooth = np.polyval(np.polyfit(x, total, 3), x)
    return TEMPERATURE_GRID[int(np.argmin(smooth))]


def _same_temperature(summaries: Sequence[dict]) -> None:
    temps = {float(s["temperature"]) for s in summaries}
    if len(temps) != 1:
        raise SemioFedError(f"conformal summaries at different temperatures: {sorted(temps)}")


def _histogram_threshold(hist: np.ndarray, coverage: float) -> tuple[float, float]:
    """Upper edge of the bin where the noisy tail holds at most the conformal share of the
    noisy mass; 1.0 (every class) when the mass is too small for ``coverage``."""
    mass = float(hist.sum())
    level = conformal_level(max(1, round(mass)), coverage)
    if level > 1:
        return 1.0, mass
    tail = np.cumsum(hist[::-1])[::-1]  # tail[b]: mass in bins b, b+1, …
    over = np.flatnonzero(tail > (1.0 - level) * mass)
    return SCORE_EDGES[int(over.max()) + 1], mass


def merge_conformal(
    summaries: Sequence[dict], coverage: float = DEFAULT_COVERAGE
) -> tuple[float, float]:
    """Conformal threshold and noisy patient count from the sites' DP conformal summaries
    (post-processing); 1.0 (every class) when the noisy count is too small for ``coverage``."""
    hist = _values(summaries, "conformal")
    _same_temperature(summaries)
    return _histogram_threshold(hist, coverage)


def merge_mondrian(
    summaries: Sequence[dict], coverage: float = DEFAULT_COVERAGE
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class conformal thresholds and noisy class masses (patient-weighted) from the
    sites' DP Mondrian summaries (post-processing)."""
    hist = _values(summaries, MONDRIAN)
    _same_temperature(summaries)
    if len({s["classes"] for s in summaries}) != 1:
        raise SemioFedError("Mondrian summaries of different class counts")
    per_class = [
        _histogram_threshold(h, coverage) for h in hist.reshape(summaries[0]["classes"], -1)
    ]
    return np.array([t for t, _ in per_class]), np.array([m for _, m in per_class])
