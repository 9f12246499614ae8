"""The anomaly model on semiology events: the representation ``bench_openset`` measured to
separate a seizure type no site has seen (leave-one-type-out), unlike the fused embedding.

An event's features (:func:`patient_events`): the mean over its windows of the fixed
quantified signs of :mod:`semiofed.shared.semiology_features` (motion, frequency, band power,
asymmetry, face and presence per region). They have no learned or data-derived parameter, so
a type the consortium never saw is not pulled onto the known ones, as the fused embedding (a
network trained to tell the known types apart) pulls it.

The public space (:func:`public_space`): each feature centred on the mean of the public
known-type events and divided by its public within-class s.d. (floored at
:data:`WITHIN_FLOOR` × its s.d. over every public window); all 91 features kept; with
``whiten`` (the published model's), also multiplied by the inverse square root of the public
within-class correlation (shrunk by :data:`~.openset.SHRINKAGE` towards its mean diagonal), so
the merged model's identity covariance is the full public within-class covariance; clipping
scale from the public events (95th percentile of their norm). Every number of it comes from
public simulator patients (:func:`~semiofed.shared.public_data.anomaly_patients`).

The DP release is :func:`~.anomaly.dp_anomaly_summary` with each patient's rows its events'
feature vectors instead of its windows' embeddings: each row clipped to L2 norm ≤ 1 after
projection, so a patient's vector still has L2 norm ≤ 1 however many events it has
(sensitivity 1, one Gaussian release). The score of an event is its Mahalanobis distance to
the nearest merged class mean (:func:`merge`; :meth:`~.openset.OpenSetScorer.event_distance`); the threshold
is set on public known-type events (:meth:`~.openset.OpenSetScorer.calibrate_events`).
With a :func:`public_prior` (the public patients' noiseless sums), :func:`merge` shrinks each DP
class mean to the public one (post-processing), or with no summaries gives the public model.

The flag threshold from a second DP release (:func:`dp_threshold_summary`, after the model is
published to the sites): each patient contributes ``(W_COUNT, W_MEAN · mean u)`` over its
known-type events, ``u`` the event's log distance under the published model minus the public
median, clipped to ±:data:`THRESHOLD_WIDTH` and divided by it (L2 norm ≤ 1: sensitivity 1);
:func:`dp_threshold` sets the threshold to the sites' noisy patient mean of the log distance
plus :data:`THRESHOLD_MARGIN`, so it follows where the sites' known events sit (the public
events, which set the model, sit closer to it than the sites' do).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from semiofed.shared.dataset import PatientWindows
from semiofed.shared.errors import SemioFedError
from semiofed.shared.semiology_features import N_FEATURES, semiology_features

from . import calibration as cal
from .anomaly import (
    MIN_CLASS_WEIGHT,
    SEIZURE_CLASSES,
    W_COUNT,
    W_MEAN,
    merge_anomaly,
    noisy_totals,
    patient_contribution,
)
from .openset import (
    CLIP_QUANTILE,
    SEMIOLOGY_EVENTS,
    SHRINKAGE,
    OpenSetScorer,
    ProjectionSpace,
    event_features,
)

#: floor of a feature's within-class s.d., as a share of its s.d. over all public windows
WITHIN_FLOOR = 0.05
#: a merged class is kept only if its noisy weight exceeds this many noise s.d.s
NOISE_SDS = 1.0
#: the public prior's strength in :func:`merge`, per unit of noise variance Σ σ², in public
#: class patient weights: chosen (among 0.25–32) on a public consortium shaped like
#: bench_openset's (simulator seed 104729, 3 × 40 × 8 min) with the whitened space and the
#: prior of :func:`~semiofed.shared.public_data.anomaly_patients`
PRIOR_STRENGTH = 1.0
BATCH = 256
THRESHOLD_FORMAT = "semiofed-dp-anomaly-threshold"
#: clip range (± this, log units around the public median) of an event's log distance in the
#: threshold release, and the margin (log units) above the sites' noisy mean that sets the
#: threshold: chosen on the public consortium of :data:`PRIOR_STRENGTH` (σ = 3 release), where
#: it flags 5 % of held-out patients' known events
THRESHOLD_WIDTH, THRESHOLD_MARGIN = 2.0, 0.85
T_COUNT, T_MEAN = math.sqrt(0.2), math.sqrt(0.8)


def window_features(p: PatientWindows) -> np.ndarray:
    """(N, N_FEATURES) semiology features of a patient's windows (deterministic, no model)."""
    return features_of_windows(p.x, p.mask)


def features_of_windows(x: dict[str, np.ndarray], mask: dict[str, np.ndarray]) -> np.ndarray:
    """(N, N_FEATURES) semiology features of windows given as per-stream arrays (``x``: (N, …)
    features, ``mask``: their presence), as the model's inputs hold them."""
    n = len(next(iter(x.values()))) if x else 0
    out = []
    with torch.no_grad():
        for a in range(0, n, BATCH):
            batch = {f"x_{s}": torch.from_numpy(np.array(v[a : a + BATCH])) for s, v in x.items()}
            batch |= {
                f"m_{s}": torch.from_numpy(np.array(v[a : a + BATCH])) for s, v in mask.items()
            }
            out.append(semiology_features(batch).double().numpy())
    return np.concatenate(out) if out else np.zeros((0, N_FEATURES))


def event_ids(p: PatientWindows) -> list:
    """An id per window: (recording, run) for consecutive windows of one annotated seizure
    class in one recording; None elsewhere (background, unlabelled)."""
    ids: list = []
    run, prev = 0, None
    for i in range(len(p)):
        key = (str(p.recording[i]), int(p.y_type[i]))
        if not p.y_detect[i] or key[1] not in SEIZURE_CLASSES:
            ids.append(None)
            prev = None
            continue
        run += key != prev
        prev = key
        ids.append((key[0], run))
    return ids


def patient_events(
    p: PatientWindows, features: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(event feature rows (E, N_FEATURES), their classes (E,)) of a patient's annotated
    seizure events (``features``: its windows' :func:`window_features`; if None, computed for
    its event windows only)."""
    groups = event_ids(p)
    if features is None:
        at = np.flatnonzero([g is not None for g in groups])
        f = features_of_windows(
            {k: v[at] for k, v in p.x.items()}, {k: v[at] for k, v in p.mask.items()}
        )
        ids, rows = event_features(f, [groups[i] for i in at])
    else:
        ids, rows = event_features(features, groups)
    first = {g: i for i, g in reversed(list(enumerate(groups))) if g is not None}
    return rows, np.array([int(p.y_type[first[g]]) for g in ids], dtype=np.int64)


def public_space(
    window_rows: np.ndarray,
    event_rows: np.ndarray,
    event_labels: np.ndarray,
    rank: int | None = None,
    whiten: bool = False,
) -> ProjectionSpace:
    """The space from public data only: every public window's features (``window_rows``) and
    the public known-type events (rows, classes). ``rank``: keep only that many public
    discriminant directions (principal directions of the public class means in the
    standardised features, at most classes − 1) instead of every feature; ``whiten``: every
    feature, whitened by the public within-class correlation (module docstring)."""
    ev, lab = np.asarray(event_rows, dtype=np.float64), np.asarray(event_labels)
    classes = sorted(set(lab.tolist()))
    if len(ev) < 2 * max(len(classes), 1):
        raise SemioFedError(f"{len(ev)} public events: too few for the anomaly space")
    means = np.stack([ev[lab == c].mean(0) for c in classes])
    within = np.sqrt(((ev - means[np.searchsorted(classes, lab)]) ** 2).mean(0))
    sd = np.maximum(within, WITHIN_FLOOR * np.asarray(window_rows).std(0)) + 1e-3
    full = ProjectionSpace.diagonal(ev.mean(0), sd, ev)
    if whiten:
        if rank is not None:
            raise SemioFedError("a whitened anomaly space keeps every feature: no rank")
        r = (ev - means[np.searchsorted(classes, lab)]) / sd
        cov = r.T @ r / max(len(ev) - len(classes), 1)
        cov = (1 - SHRINKAGE) * cov + SHRINKAGE * np.trace(cov) / len(cov) * np.eye(len(cov))
        w, v = np.linalg.eigh(cov)
        return _scaled(full.centre, (v / np.sqrt(np.maximum(w, 1e-12))) @ v.T / sd[:, None], ev)
    if rank is None:
        return full
    rank = max(1, min(rank, len(classes) - 1))
    directions = np.linalg.svd((means - full.centre) / sd, full_matrices=False)[2][:rank].T
    return _scaled(full.centre, directions / sd[:, None], ev)


def _scaled(centre: np.ndarray, basis: np.ndarray, rows: np.ndarray) -> ProjectionSpace:
    """The space of ``basis`` with the clipping scale of the public ``rows``."""
    norms = np.linalg.norm((rows - centre) @ basis, axis=1)
    return ProjectionSpace(centre, basis, 1.0 / max(float(np.quantile(norms, CLIP_QUANTILE)), 1e-9))


def public_prior(
    patients: Sequence[tuple[np.ndarray, np.ndarray]], space: ProjectionSpace
) -> np.ndarray:
    """The public patients' ((event rows, classes) each) contributions summed, without noise:
    the prior of :func:`merge`, in a DP summary's layout (data-independent of the sites)."""
    if not patients:
        raise SemioFedError("no public patients for the anomaly prior")
    return np.sum([patient_contribution(space, r, y) for r, y in patients], axis=0)


def merge(
    summaries: Sequence[dict],
    space: ProjectionSpace,
    prior: np.ndarray | None = None,
    strength: float = PRIOR_STRENGTH,
) -> OpenSetScorer:
    """The consortium's model from the sites' DP summaries (post-processing): DP class means;
    the covariance is the public one (identity in the space's within-class units), not the
    DP second moments, too noisy over 91 features; classes kept above :data:`NOISE_SDS`.

    ``prior`` (:func:`public_prior`): each class mean is shrunk to the public one,
    ``μ = (n0·μ_pub + S) / (n0 + max(N, 0))`` with ``S``, ``N`` the noisy sum and weight and
    ``n0`` = ``strength`` × Σ σ² (the sites' noise variance: the noisier the release, the
    stronger the prior, as in a Gaussian posterior mean) × the public class's patient
    weight; a class with public support is
    always kept, one without only above the noise level. No summaries: the public model."""
    var = np.full(space.rank, space.scale**2)
    if prior is None:
        model = merge_anomaly(summaries, space, public_variance=var, noise_sds=NOISE_SDS)
        model.representation = SEMIOLOGY_EVENTS
        return model
    r = space.rank
    p = np.asarray(prior, dtype=np.float64).reshape(len(SEIZURE_CLASSES), 1 + 2 * r)
    if summaries:
        total, noise_sd = noisy_totals(summaries, space)
        strength *= (noise_sd * W_COUNT) ** 2  # the noise variance Σ σ² of the sites' sums
        n, s = total[:, 0] / W_COUNT, total[:, 1 : 1 + r] / W_MEAN
        keep = (p[:, 0] > 0) | (n >= max(MIN_CLASS_WEIGHT, NOISE_SDS * noise_sd))
    else:
        n, s, keep = np.zeros(len(p)), np.zeros((len(p), r)), p[:, 0] > 0
    n0, s0 = strength * p[:, 0] / W_COUNT, strength * p[:, 1 : 1 + r] / W_MEAN
    if not keep.any():
        raise SemioFedError("no seizure class has public support or a noisy weight: no model")
    means = (s0 + s)[keep] / (n0 + np.maximum(n, 0.0))[keep, None]
    classes = [k for k, kept in zip(SEIZURE_CLASSES, keep, strict=True) if kept]
    return OpenSetScorer(
        classes, means, np.diag(1.0 / var), space=space, representation=SEMIOLOGY_EVENTS
    )


def events_of(
    patients: Sequence[PatientWindows], exclude: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every window's features, and the events (rows, classes) of ``patients`` (the events
    of class ``exclude`` left out)."""
    wins, rows, labs = [], [], []
    for p in patients:
        f = window_features(p)
        e, y = patient_events(p, f)
        keep = y != exclude
        wins.append(f)
        rows.append(e[keep])
        labs.append(y[keep])
    return np.concatenate(wins), np.concatenate(rows), np.concatenate(labs)


def threshold_contribution(model: OpenSetScorer, rows: np.ndarray, centre: float) -> np.ndarray:
    """One patient's vector (L2 norm ≤ 1) of the threshold release: ``rows`` its known-type
    events' features, ``centre`` the public median log distance (:func:`public_log_centre`)."""
    if not len(rows):
        return np.zeros(2)
    u = np.clip((np.log(model.mahalanobis(rows)) - centre) / THRESHOLD_WIDTH, -1.0, 1.0)
    return np.array([T_COUNT, T_MEAN * float(u.mean())])


def public_log_centre(model: OpenSetScorer, public_rows: np.ndarray) -> float:
    """The median log distance of the public known-type events (sent with the model)."""
    return float(np.median(np.log(model.mahalanobis(public_rows))))


def dp_threshold_summary(
    patients: Sequence[np.ndarray],
    model: OpenSetScorer,
    centre: float,
    noise_multiplier: float,
    rng: np.random.Generator,
) -> dict:
    """A site's threshold release: the sum of :func:`threshold_contribution` over its patients
    (each the feature rows of its known-type events) plus ``N(0, σ²)`` per coordinate."""
    total = np.sum([threshold_contribution(model, r, centre) for r in patients], axis=0)
    return {
        **cal.summary_header("anomaly threshold", noise_multiplier, THRESHOLD_FORMAT),
        "centre": float(centre),
        "noisy_sums": cal.noisy_sum(np.asarray(total, dtype=np.float64), noise_multiplier, rng),
    }


def dp_threshold(model: OpenSetScorer, summaries: Sequence[dict], public_rows: np.ndarray) -> None:
    """Standardise ``model`` on the public events (:meth:`~.openset.OpenSetScorer.calibrate_events`)
    and set its threshold from the sites' threshold releases (post-processing)."""
    centre = public_log_centre(model, public_rows)
    total = np.zeros(2)
    for i, doc in enumerate(summaries):
        sigma, values = doc.get("noise_multiplier"), doc.get("noisy_sums")
        if (
            doc.get("format") != THRESHOLD_FORMAT
            or doc.get("centre") != centre
            or not (isinstance(sigma, int | float) and math.isfinite(sigma) and sigma > 0)
            or not (isinstance(values, list) and len(values) == 2)
            or not all(isinstance(v, int | float) and math.isfinite(v) for v in values)
        ):
            raise SemioFedError(f"threshold summary {i + 1}: not a release for this model")
        total += values
    model.calibrate_events(public_rows)
    n = max(total[0] / T_COUNT, 1.0)
    mean = centre + THRESHOLD_WIDTH * float(np.clip(total[1] / T_MEAN / n, -1.0, 1.0))
    d2 = math.exp(mean + THRESHOLD_MARGIN)
    model.threshold = (d2 - model.maha_stats[0]) / model.maha_stats[1]
