"""Aberrant seizures: an open-set scorer of class means and a covariance.

Two fits share this scorer, told apart by its ``representation``: the site's local one below
(:meth:`OpenSetScorer.fit` on the model's fused embedding, not DP, never leaves the site) and
the published federated DP model of :mod:`.semiology_anomaly` (events' semiology features,
class means from DP sums in a public :class:`ProjectionSpace`).

Two complementary scores per window, each standardised (median / 1.4826·MAD) on windows of
known-type events, then added:

* **energy** ``−logsumexp(type_logits)`` (Liu et al., 2020): low when the type head is
  confident about some class;
* **class-conditional Mahalanobis** (Lee et al., 2018): squared distance of the fused
  embedding to the nearest known class mean under a tied, shrunk covariance.

Class means and covariance come from windows of annotated events (not background) in the
training patients; the standardisation and the threshold come from *held-out* patients, so
the threshold reflects new patients. An event's score is the mean of its windows' scores;
the threshold is the ``1 − flag_rate`` quantile (default 95 %) of held-out known-type event
scores, so about 5 % of seizures of known types get flagged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from semiofed.shared.errors import SemioFedError

DEFAULT_FLAG_RATE = 0.05
SHRINKAGE = 0.1
DEFAULT_RANK = 4
CLIP_QUANTILE = 0.95
#: what an :class:`OpenSetScorer` scores: windows' fused embeddings (with their type logits),
#: or events' mean semiology features (:mod:`.semiology_anomaly`)
EMBEDDING, SEMIOLOGY_EVENTS = "embedding", "semiology-events"
REPRESENTATIONS = (EMBEDDING, SEMIOLOGY_EVENTS)


def energy(type_logits: np.ndarray) -> np.ndarray:
    z = np.asarray(type_logits, dtype=np.float64)
    m = z.max(axis=1)
    return -(m + np.log(np.exp(z - m[:, None]).sum(axis=1)))


def _robust(x: np.ndarray) -> tuple[float, float]:
    med = float(np.median(x))
    return med, max(1.4826 * float(np.median(np.abs(x - med))), 1e-6)


def event_scores(window_scores: np.ndarray, groups: Sequence) -> tuple[list, np.ndarray]:
    """Mean window score per group id (event); returns (ids, scores) in first-seen order."""
    ids = list(dict.fromkeys(groups))
    index = {g: k for k, g in enumerate(ids)}
    g = np.array([index[x] for x in groups])
    return ids, np.array([float(np.mean(window_scores[g == k])) for k in range(len(ids))])


def event_features(window_features: np.ndarray, groups: Sequence) -> tuple[list, np.ndarray]:
    """Mean feature row per group id (event; None ids skipped); returns (ids, (E, F))."""
    x = np.asarray(window_features, dtype=np.float64)
    ids = [g for g in dict.fromkeys(groups) if g is not None]
    index = {g: k for k, g in enumerate(ids)}
    g = np.array([index.get(i, -1) if i is not None else -1 for i in groups])
    rows = [x[g == k].mean(0) for k in range(len(ids))]
    return ids, np.array(rows).reshape(len(ids), x.shape[1] if x.ndim == 2 else 0)


@dataclass(frozen=True)
class ProjectionSpace:
    """Public map of fused embeddings (D,) to the anomaly model's features (rank,)."""

    centre: np.ndarray  # (D,)
    basis: np.ndarray  # (D, rank): orthonormal columns, or diagonal (:meth:`diagonal`)
    scale: float

    @classmethod
    def diagonal(cls, centre: np.ndarray, sd: np.ndarray, clip_rows: np.ndarray) -> ProjectionSpace:
        """Every feature kept, centred and divided by a public s.d.; the clipping scale is
        the public 95th percentile of the norm of ``clip_rows`` (public rows)."""
        centre, sd = np.asarray(centre, dtype=np.float64), np.asarray(sd, dtype=np.float64)
        if not (np.isfinite(sd).all() and (sd > 0).all()):
            raise SemioFedError("a diagonal projection needs finite positive s.d.s")
        basis = np.diag(1.0 / sd)
        norms = np.linalg.norm((np.asarray(clip_rows, dtype=np.float64) - centre) @ basis, axis=1)
        return cls(centre, basis, 1.0 / max(float(np.quantile(norms, CLIP_QUANTILE)), 1e-9))

    @classmethod
    def public(cls, emb: np.ndarray, rank: int = DEFAULT_RANK) -> ProjectionSpace:
        """Principal directions of *public* embeddings (never a site's patients)."""
        x = np.asarray(emb, dtype=np.float64)
        rank = min(rank, x.shape[1])
        if len(x) <= rank:
            raise SemioFedError(f"{len(x)} public windows: a rank-{rank} space needs more")
        centre = x.mean(0)
        basis = np.linalg.svd(x - centre, full_matrices=False)[2][:rank].T
        norms = np.linalg.norm((x - centre) @ basis, axis=1)
        return cls(centre, basis, 1.0 / max(float(np.quantile(norms, CLIP_QUANTILE)), 1e-9))

    def project(self, emb: np.ndarray) -> np.ndarray:
        """Features of windows (not clipped: scores use them as they are)."""
        return (np.asarray(emb, dtype=np.float64) - self.centre) @ self.basis * self.scale

    def clipped(self, emb: np.ndarray) -> np.ndarray:
        """Features with each row clipped to L2 norm ≤ 1 (what a patient contributes)."""
        z = self.project(emb)
        norms = np.linalg.norm(z, axis=1, keepdims=True)
        return z / np.maximum(norms, 1.0)

    @property
    def rank(self) -> int:
        return int(self.basis.shape[1])

    def to_dict(self) -> dict:
        return {
            "centre": self.centre.tolist(),
            "basis": self.basis.tolist(),
            "scale": self.scale,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ProjectionSpace:
        return cls(
            np.asarray(d["centre"], dtype=np.float64),
            np.asarray(d["basis"], dtype=np.float64),
            float(d["scale"]),
        )

    def digest(self) -> str:
        """SHA-256 of the space (summaries of different spaces are not merged)."""
        return hashlib.sha256(json.dumps(self.to_dict()).encode()).hexdigest()


@dataclass
class OpenSetScorer:
    classes: list[int]
    means: np.ndarray  # (K, D)
    precision: np.ndarray  # (D, D)
    energy_stats: tuple[float, float] = (0.0, 1.0)
    maha_stats: tuple[float, float] = (0.0, 1.0)
    threshold: float = float("inf")
    flag_rate: float = DEFAULT_FLAG_RATE
    #: the public feature map of the federated DP model (None: the raw fused embedding)
    space: ProjectionSpace | None = None
    #: weight of the standardised energy score in :meth:`window_scores` (0: distance only)
    energy_weight: float = 1.0
    #: the rows it scores (:data:`REPRESENTATIONS`): a loader feeds it nothing else
    representation: str = EMBEDDING

    @classmethod
    def fit(cls, emb: np.ndarray, labels: np.ndarray) -> OpenSetScorer:
        """Class means and tied shrunk covariance from training windows of known types."""
        emb = np.asarray(emb, dtype=np.float64)
        labels = np.asarray(labels)
        classes = sorted(int(c) for c in np.unique(labels))
        means = np.stack([emb[labels == c].mean(0) for c in classes])
        centred = emb - means[np.searchsorted(classes, labels)]
        cov = centred.T @ centred / max(len(emb) - len(classes), 1)
        d = cov.shape[0]
        cov = (1 - SHRINKAGE) * cov + SHRINKAGE * np.trace(cov) / d * np.eye(d)
        return cls(classes, means, np.linalg.inv(cov))

    def mahalanobis(self, emb: np.ndarray) -> np.ndarray:
        x = np.asarray(emb, dtype=np.float64)
        if self.space is not None:
            x = self.space.project(x)
        diff = x[:, None, :] - self.means[None]
        d2 = np.einsum("nkd,de,nke->nk", diff, self.precision, diff)
        return d2.min(axis=1)

    def window_scores(self, emb: np.ndarray, type_logits: np.ndarray) -> np.ndarray:
        e = (energy(type_logits) - self.energy_stats[0]) / self.energy_stats[1]
        m = (self.mahalanobis(emb) - self.maha_stats[0]) / self.maha_stats[1]
        return self.energy_weight * e + m

    def event_distance(self, events: np.ndarray) -> np.ndarray:
        """Standardised distance of events' feature rows (:func:`event_features`): the score
        of the semiology-event representation (no energy)."""
        return (self.mahalanobis(events) - self.maha_stats[0]) / self.maha_stats[1]

    def calibrate_events(
        self, events: np.ndarray, flag_rate: float = DEFAULT_FLAG_RATE
    ) -> np.ndarray:
        """Standardise and threshold :meth:`event_distance` on known-type events (public
        ones for the federated model); returns their scores."""
        self.maha_stats = _robust(self.mahalanobis(events))
        self.energy_weight = 0.0
        ev = self.event_distance(events)
        self.threshold = float(np.quantile(ev, 1 - flag_rate, method="higher"))
        self.flag_rate = flag_rate
        return ev

    def calibrate(
        self,
        emb: np.ndarray,
        type_logits: np.ndarray,
        groups: Sequence,
        flag_rate: float = DEFAULT_FLAG_RATE,
    ) -> np.ndarray:
        """Standardise and threshold on held-out known-type windows grouped by event; returns event scores."""
        self.energy_stats = _robust(energy(type_logits))
        self.maha_stats = _robust(self.mahalanobis(emb))
        _, ev = event_scores(self.window_scores(emb, type_logits), groups)
        self.threshold = float(np.quantile(ev, 1 - flag_rate, method="higher"))
        self.flag_rate = flag_rate
        return ev

    def to_dict(self) -> dict:
        return {
            "classes": self.classes,
            "means": self.means.tolist(),
            "precision": self.precision.tolist(),
            "energy_stats": list(self.energy_stats),
            "maha_stats": list(self.maha_stats),
            "threshold": self.threshold,
            "flag_rate": self.flag_rate,
            "space": None if self.space is None else self.space.to_dict(),
            "energy_weight": self.energy_weight,
            "representation": self.representation,
        }

    @classmethod
    def from_dict(cls, d: dict) -> OpenSetScorer:
        """The scorer of :meth:`to_dict`; an unknown representation is refused (a file without
        the field predates the semiology-event model: it scores embeddings)."""
        representation = d.get("representation", EMBEDDING)
        if representation not in REPRESENTATIONS:
            raise SemioFedError(
                f"anomaly model: field 'representation' must be one of {list(REPRESENTATIONS)}, "
                f"got {representation!r}"
            )
        return cls(
            classes=[int(c) for c in d["classes"]],
            means=np.asarray(d["means"], dtype=np.float64),
            precision=np.asarray(d["precision"], dtype=np.float64),
            energy_stats=tuple(d["energy_stats"]),
            maha_stats=tuple(d["maha_stats"]),
            threshold=float(d["threshold"]),
            flag_rate=float(d["flag_rate"]),
            space=None if d.get("space") is None else ProjectionSpace.from_dict(d["space"]),
            energy_weight=float(d.get("energy_weight", 1.0)),
            representation=representation,
        )
