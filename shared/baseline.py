"""The references every learned detector is shown beside.

* Motion-energy threshold baseline: flag a window when the keypoints move a lot. Per-window
  mean speed of all detected keypoints, one threshold chosen on training or validation
  patients (the same F1 criterion as the models' threshold,
  :func:`~semiofed.shared.metrics.select_threshold`), applied to held-out patients. Target:
  event of interest (any seizure or PNES) vs background.
* Detectors that know nothing (:func:`reference_detector`): flag everything, a coin flip
  per window, and a random 10 % of windows. Flagged windows get a uniformly random seizure
  type. A metric on which one of them scores like a trained model measures nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .events import Event
from .labels import CLASS_INDEX, CLASSES, is_event_of_interest
from .metrics import select_threshold
from .recording import STREAMS, Recording

WINDOW_S = 4.0
HOP_S = 2.0
#: Reference detectors: name -> fraction of windows flagged.
REFERENCE_DETECTORS = {"flag everything": 1.0, "coin flip": 0.5, "random 10 %": 0.1}


def motion_energy(rec: Recording, fps: float | None = None) -> np.ndarray:
    """Per-frame motion energy (T,): mean image-plane speed (frame widths per second) of all
    keypoints detected in both the frame and the previous one; 0 where none is."""
    fps = float(fps or rec.fps)
    n = rec.n_frames
    total = np.zeros(n, dtype=np.float64)
    count = np.zeros(n, dtype=np.float64)
    for i, name in enumerate(STREAMS):
        xy = rec.stream(name)[..., :2]
        ok = rec.present[:, i]
        both = ok[1:] & ok[:-1]
        speed = np.linalg.norm(np.diff(xy, axis=0), axis=-1)  # (T-1, N), NaN where absent
        speed = np.where(both[:, None], speed, 0.0)
        total[1:] += np.nan_to_num(speed).sum(1)
        count[1:] += both * xy.shape[1]
    return np.divide(total, count, out=np.zeros(n), where=count > 0) * fps


def windows(
    rec: Recording,
    events: Iterable[Event],
    window_s: float = WINDOW_S,
    hop_s: float = HOP_S,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean motion energy per window and its label (True when the window's centre lies in
    an event of interest)."""
    energy = motion_energy(rec)
    fps = rec.fps
    w, h = max(1, round(window_s * fps)), max(1, round(hop_s * fps))
    starts = np.arange(0, max(1, rec.n_frames - w + 1), h)
    csum = np.concatenate([[0.0], np.cumsum(energy)])
    ends = np.minimum(starts + w, rec.n_frames)
    feat = (csum[ends] - csum[starts]) / (ends - starts)
    centre = (starts + ends) / 2 / fps
    label = np.zeros(len(starts), dtype=bool)
    for e in events:
        if is_event_of_interest(e.event_type):
            label |= (centre >= e.onset) & (centre < e.offset)
    return feat, label


def balanced_accuracy(pred: np.ndarray, label: np.ndarray) -> float:
    tpr = float(pred[label].mean()) if label.any() else 0.0
    tnr = float((~pred[~label]).mean()) if (~label).any() else 0.0
    return (tpr + tnr) / 2


def macro_f1(pred: np.ndarray, label: np.ndarray) -> float:
    """Mean F1 of the two classes (event, background)."""
    scores = []
    for p, y in ((pred, label), (~pred, ~label)):
        tp = float((p & y).sum())
        denom = float(p.sum() + y.sum())
        scores.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(scores))


def fit_threshold(energy: np.ndarray, label: np.ndarray) -> float:
    """Threshold on window energy with the best detection F1 on the given windows, among
    513 quantiles of their energies."""
    energy = np.asarray(energy, dtype=np.float64)
    label = np.asarray(label, dtype=bool)
    if not label.any() or label.all():
        raise ValueError("fit_threshold needs both event and background windows")
    if not np.isfinite(energy).all():
        raise ValueError("fit_threshold: window energies must be finite (an empty window?)")
    candidates = np.unique(np.quantile(energy, np.linspace(0.0, 1.0, 513)))
    return select_threshold(label, energy, tuple(candidates.tolist()))


def window_energy(rec: Recording, t0: np.ndarray, window_s: float) -> np.ndarray:
    """Mean motion energy of ``rec`` over each window ``[t0, t0 + window_s)`` (the part
    inside the recording; 0 for a window holding no frame), for scoring the baseline on a
    model's own windows."""
    energy = motion_energy(rec)
    csum = np.concatenate([[0.0], np.cumsum(energy)])
    a = np.clip(np.round(np.asarray(t0) * rec.fps).astype(np.int64), 0, rec.n_frames)
    b = np.clip(np.round((np.asarray(t0) + window_s) * rec.fps).astype(np.int64), 0, rec.n_frames)
    return np.divide(csum[b] - csum[a], b - a, out=np.zeros(len(a)), where=b > a)


def reference_detector(
    name: str, n_windows: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(detection scores in {0, 1}, type predictions) of a detector that knows nothing;
    ``name`` is a key of REFERENCE_DETECTORS. Any threshold in (0, 1] gives its decisions."""
    flagged = rng.random(n_windows) < REFERENCE_DETECTORS[name]
    seizure_types = [i for i, c in enumerate(CLASSES) if c != "bckg"]
    types = np.where(flagged, rng.choice(seizure_types, n_windows), CLASS_INDEX["bckg"])
    return flagged.astype(np.float64), types.astype(np.int64)


def predict(energy: np.ndarray, threshold: float) -> np.ndarray:
    """True where the window's motion energy reaches the threshold."""
    return np.asarray(energy) >= threshold
