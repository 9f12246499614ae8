"""The federated anomaly model: class-conditional Gaussians of the fused embedding estimated
from differentially private sums (privacy unit: the patient).

Feature space (public, :class:`~.openset.ProjectionSpace`): the fused embedding minus a public centre,
projected on the top ``rank`` principal directions of *public* embeddings (the simulator's
tuning patients, :mod:`semiofed.shared.public_data`) and scaled so that the public 95th
percentile of the norm is 1. Nothing of it depends on a site's patients.

Each patient contributes one vector (:func:`patient_contribution`): for every seizure class
``k`` it has annotated event windows of, with ``a = 1 / sqrt(number of such classes)``,

* ``a · W_COUNT`` (a count indicator),
* ``a · W_MEAN · mean_w z_w`` (the mean of its windows' projected embeddings, each window's
  ``z`` clipped to L2 norm ≤ 1),
* ``a · W_SQUARE · mean_w z_w²`` (their mean elementwise square, L2 norm ≤ mean ‖z‖² ≤ 1),

zeros for the classes it lacks. With ``W_COUNT² + W_MEAN² + W_SQUARE² = 1`` the vector's
L2 norm is ≤ ``sqrt(Σ_k a²) = 1`` however many or large the patient's windows are, so adding
or removing a patient changes the site's sum by at most 1 in L2: one Gaussian mechanism of
sensitivity 1 (:func:`dp_anomaly_summary`, ``N(0, σ²)`` per coordinate). The coordinator
adds the sites' sums (:func:`merge_anomaly`, post-processing): per class a noisy weighted
patient count ``n_k``, mean ``μ_k`` and second moment ``q_k``; one shared diagonal
covariance ``Σ_k n_k (q_k − μ_k²) / Σ_k n_k`` shrunk towards its mean; classes with a noisy
count below :data:`MIN_CLASS_WEIGHT` are dropped. The score is the squared Mahalanobis
distance to the nearest kept class mean (:class:`~.openset.OpenSetScorer` with this space),
optionally plus the energy score; both standardisations and the threshold come from public
data (:meth:`~.openset.OpenSetScorer.calibrate` on public tuning patients), never from a
site's patients.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from semiofed.shared.errors import SemioFedError
from semiofed.shared.labels import NUM_CLASSES

from . import calibration as cal
from .openset import SHRINKAGE, OpenSetScorer, ProjectionSpace

ANOMALY_FORMAT = "semiofed-dp-anomaly"
#: The seizure classes (every type-head class but background): fixed, so the summary's
#: layout is public.
SEIZURE_CLASSES: tuple[int, ...] = tuple(range(1, NUM_CLASSES))
W_COUNT, W_MEAN, W_SQUARE = math.sqrt(0.2), math.sqrt(0.6), math.sqrt(0.2)
MIN_CLASS_WEIGHT = 2.0
#: weight of the energy score beside the distance (chosen in bench_analysis: see README)
DEFAULT_ENERGY_WEIGHT = 1.0
#: ``site calibrate --share`` kind of the anomaly summary
ANOMALY_KIND = "anomaly"
#: ``site calibrate --share`` kind of the anomaly model's threshold release
ANOMALY_THRESHOLD_KIND = "anomaly-threshold"
VAR_FLOOR = 1e-3


def _layout(rank: int) -> int:
    return len(SEIZURE_CLASSES) * (1 + 2 * rank)


def patient_contribution(space: ProjectionSpace, emb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One patient's vector (L2 norm ≤ 1): ``emb`` the fused embeddings of its annotated
    seizure windows, ``labels`` their type classes (other classes are ignored)."""
    labels = np.asarray(labels)
    present = [k for k in SEIZURE_CLASSES if (labels == k).any()]
    out = np.zeros((len(SEIZURE_CLASSES), 1 + 2 * space.rank))
    if not present:
        return out.ravel()
    z = space.clipped(np.asarray(emb)[np.isin(labels, present)])
    zl = labels[np.isin(labels, present)]
    a = 1.0 / math.sqrt(len(present))
    for k in present:
        zk = z[zl == k]
        row = SEIZURE_CLASSES.index(k)
        out[row, 0] = a * W_COUNT
        out[row, 1 : 1 + space.rank] = a * W_MEAN * zk.mean(0)
        out[row, 1 + space.rank :] = a * W_SQUARE * (zk**2).mean(0)
    return out.ravel()


def dp_anomaly_summary(
    patients: Sequence[tuple[np.ndarray, np.ndarray]],
    space: ProjectionSpace,
    noise_multiplier: float,
    rng: np.random.Generator,
) -> dict:
    """A site's release: the sum of :func:`patient_contribution` over its patients
    (``(fused embeddings, type labels)`` of each patient's annotated seizure windows) plus
    ``N(0, σ²)`` per coordinate. Holds only noisy values and public parameters."""
    total = np.zeros(_layout(space.rank))
    for emb, labels in patients:
        total += patient_contribution(space, emb, labels)
    return {
        **cal.summary_header("class gaussians", noise_multiplier, ANOMALY_FORMAT),
        "classes": list(SEIZURE_CLASSES),
        "rank": space.rank,
        "space": space.digest(),
        "noisy_sums": cal.noisy_sum(total, noise_multiplier, rng),
    }


def anomaly_summary_problem(doc: object, space: ProjectionSpace) -> str | None:
    """Why ``doc`` is not a DP anomaly summary in ``space`` (None if it is one)."""
    if not isinstance(doc, dict) or doc.get("format") != ANOMALY_FORMAT:
        return f"not a {ANOMALY_FORMAT} summary"
    if doc.get("classes") != list(SEIZURE_CLASSES) or doc.get("rank") != space.rank:
        return "fields 'classes'/'rank' are not this version's layout"
    sigma = doc.get("noise_multiplier")
    if not (isinstance(sigma, int | float) and math.isfinite(sigma) and sigma > 0):
        return "field 'noise_multiplier' must be a finite number > 0"
    if doc.get("space") != space.digest():
        return "field 'space' names another public projection"
    values = doc.get("noisy_sums")
    n = _layout(space.rank)
    if not (
        isinstance(values, list)
        and len(values) == n
        and all(isinstance(v, int | float) and math.isfinite(v) for v in values)
    ):
        return f"field 'noisy_sums' must hold {n} finite numbers"
    return None


def noisy_totals(summaries: Sequence[dict], space: ProjectionSpace) -> tuple[np.ndarray, float]:
    """The sites' validated noisy sums added, one row per seizure class (count, means,
    squares), and the s.d. of the noise on a class's weight (post-processing)."""
    for i, s in enumerate(summaries):
        problem = anomaly_summary_problem(s, space)
        if problem:
            raise SemioFedError(f"anomaly summary {i + 1}: {problem}")
    total = np.sum([s["noisy_sums"] for s in summaries], axis=0).reshape(-1, 1 + 2 * space.rank)
    noise_sd = math.sqrt(sum(float(s["noise_multiplier"]) ** 2 for s in summaries)) / W_COUNT
    return total, noise_sd


def merge_anomaly(
    summaries: Sequence[dict],
    space: ProjectionSpace,
    public_variance: np.ndarray | None = None,
    noise_sds: float = 0.0,
) -> OpenSetScorer:
    """The consortium's anomaly model from the sites' DP summaries (post-processing): class
    means and a shared shrunk diagonal covariance in ``space``; not yet standardised or
    thresholded (calibrate it on public data).

    ``public_variance``: a public diagonal covariance (in ``space``) used instead of the DP
    second moments; ``noise_sds``: a class is kept only if its noisy weight also exceeds that
    many s.d.s of the weight's noise (an absent class's noisy count passes the fixed minimum
    often when σ is large: its mean is then pure noise)."""
    total, noise_sd = noisy_totals(summaries, space)
    r = space.rank
    weight = total[:, 0] / W_COUNT
    keep = weight >= max(MIN_CLASS_WEIGHT, noise_sds * noise_sd)
    if not keep.any():
        raise SemioFedError(
            "no seizure class has a noisy patient weight above the minimum: no model"
        )
    n = weight[keep][:, None]
    means = total[keep, 1 : 1 + r] / (W_MEAN * n)
    second = total[keep, 1 + r :] / (W_SQUARE * n)
    if public_variance is None:
        var = np.sum(n * (second - means**2), axis=0) / n.sum()
        var = (1 - SHRINKAGE) * var + SHRINKAGE * max(float(var.mean()), 0.0)
        var = np.maximum(var, VAR_FLOOR)
    else:
        var = np.asarray(public_variance, dtype=np.float64)
    classes = [k for k, kept in zip(SEIZURE_CLASSES, keep, strict=True) if kept]
    return OpenSetScorer(classes, means, np.diag(1.0 / var), space=space)
