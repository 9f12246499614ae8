"""Window-level and event-level metrics, and the choice of the decision threshold.

Window level: macro-F1 and balanced accuracy of the seizure-type head (averaged over the
classes present in the reference or the predictions, like scikit-learn's default),
per-class recall and F1, the confusion matrix, AUROC of seizure-vs-background scores, and
detection sensitivity / specificity at the decision threshold.

Event level, per recording, with the ``timescoring`` package (SzCORE):

* **event scoring** with its default parameters (30 s tolerance before and 60 s after an
  event, any overlap counts, events closer than 90 s merged, events longer than 5 min
  split): sensitivity, precision, F1, false alarms per hour;
* **false alarms per hour on unmerged detections**: the same matching, but hypothesis
  events are not merged (only split at 5 min), so every separate detection that touches no
  tolerance-extended reference event is one false alarm. SzCORE's merging lets a detector
  that flags scattered windows count a whole burst as one alarm; this figure does not;
* **sample-based scoring** (10 Hz): sensitivity, precision and F1 over time, and
  **specificity** = the fraction of background time (outside reference events) not flagged.

Results over several recordings are summed (detections, reference events, seconds) before
the rates are computed, as SzCORE does. A recording's duration is the recording's own (its
frames ÷ fps), never inferred from the detections. Onset latency, which ``timescoring``
does not report, is computed from its matched events: for every detected reference event,
the onset of the first hypothesis event overlapping the tolerance-extended reference event
minus the reference onset (negative = early).

Decision threshold: :func:`select_threshold` picks, on validation patients, the point of a
fixed public grid that maximises a window criterion. It is deliberately one small function
over per-threshold counts (:func:`threshold_counts`), so that a private variant (noisy
counts, or a data-independent rule) can replace it without touching the metrics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields

import numpy as np

from .events import Event
from .labels import CLASSES, IGNORE_INDEX, is_event_of_interest

SCORING_FS = 10  # Hz; the resolution EventScoring works at
#: Candidate decision thresholds (public, data-independent).
THRESHOLD_GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
#: How window detections become events, in `site analyze` and in evaluation alike: detections
#: closer than MERGE_GAP_S are one event, events shorter than MIN_EVENT_S are dropped.
MERGE_GAP_S = 5.0
MIN_EVENT_S = 2.0
DEFAULT_THRESHOLD = 0.5  # the rule when there are no validation patients


def auroc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties averaged); NaN with a single class."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=float)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # 1-based rank of each distinct value's last occurrence
    ranks = ((last - counts + 1 + last) / 2)[inverse]  # tied values share their mean rank
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def window_metrics(
    y_type: np.ndarray,
    type_pred: np.ndarray,
    y_detect: np.ndarray,
    detect_prob: np.ndarray,
    threshold: float = 0.5,
) -> dict[str, object]:
    """Window-level metrics; type labels equal to ``IGNORE_INDEX`` are left out of the type metrics."""
    y_type, type_pred = np.asarray(y_type), np.asarray(type_pred)
    keep = y_type != IGNORE_INDEX
    yt, yp = y_type[keep], type_pred[keep]
    present = sorted(set(yt.tolist()) | set(yp.tolist()))
    confusion = np.zeros((len(CLASSES), len(CLASSES)), dtype=np.int64)
    np.add.at(confusion, (yt, yp), 1)
    f1s, recalls = {}, {}
    for c in present:
        tp = int(confusion[c, c])
        n_true, n_pred = int(confusion[c].sum()), int(confusion[:, c].sum())
        f1s[CLASSES[c]] = 2 * tp / (n_true + n_pred) if n_true + n_pred else 0.0
        if n_true:
            recalls[CLASSES[c]] = tp / n_true
    y_detect = np.asarray(y_detect).astype(int)
    detect_prob = np.asarray(detect_prob, dtype=float)
    det_pred = detect_prob >= threshold
    sens = float(np.mean(det_pred[y_detect == 1])) if np.any(y_detect == 1) else math.nan
    spec = float(np.mean(~det_pred[y_detect == 0])) if np.any(y_detect == 0) else math.nan
    return {
        "windows": len(y_detect),
        "type_windows": int(keep.sum()),
        "macro_f1": float(np.mean(list(f1s.values()))) if f1s else math.nan,
        "balanced_accuracy": float(np.mean(list(recalls.values()))) if recalls else math.nan,
        "per_class_recall": recalls,
        "per_class_f1": f1s,
        # rows: reference class, columns: predicted class, both in CLASSES order
        "confusion": {"classes": list(CLASSES), "counts": confusion.tolist()},
        "threshold": float(threshold),
        "auroc_seizure": auroc(y_detect, detect_prob),
        "detect_sensitivity": sens,
        "detect_specificity": spec,
    }


def paired_bootstrap(
    groups: Sequence[np.ndarray],
    statistic: Callable[[np.ndarray], float],
    resamples: int = 200,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of ``statistic(indices)`` over resamples of whole groups
    (patients) drawn with replacement; ``groups`` are index arrays, one per patient.
    Resamples where the statistic is NaN are left out."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        pick = rng.integers(len(groups), size=len(groups))
        v = statistic(np.concatenate([groups[i] for i in pick]))
        if math.isfinite(v):
            values.append(v)
    if not values:
        return math.nan, math.nan
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def threshold_counts(
    y_detect: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    grid: Sequence[float] = THRESHOLD_GRID,
) -> np.ndarray:
    """(len(grid), 4) window counts ``[tp, fn, fp, tn]`` of the rule ``score >= t`` per ``t``."""
    y = np.asarray(y_detect).astype(bool)
    s = np.asarray(scores, dtype=float)
    flagged = s[None, :] >= np.asarray(grid, dtype=float)[:, None]
    tp, fp = (flagged & y).sum(1), (flagged & ~y).sum(1)
    return np.stack([tp, y.sum() - tp, fp, (~y).sum() - fp], axis=1)


def select_threshold(
    y_detect: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    grid: Sequence[float] = THRESHOLD_GRID,
) -> float:
    """The grid threshold with the best detection F1 on (validation) windows.

    F1 rather than balanced accuracy: seizure windows are rare, and balanced accuracy's
    optimum sits low, where background windows raise false alarms. Ties go to the higher
    threshold; with no seizure window at all the rule falls back to DEFAULT_THRESHOLD.
    """
    counts = threshold_counts(y_detect, scores, grid)
    tp, fn, fp = counts[:, 0], counts[:, 1], counts[:, 2]
    if not (tp + fn).any():
        return DEFAULT_THRESHOLD
    f1 = np.divide(2 * tp, 2 * tp + fn + fp, out=np.zeros(len(grid)), where=2 * tp + fn + fp > 0)
    best = np.flatnonzero(f1 == f1.max())[-1]
    return float(grid[best])


def smooth_scores(
    t0: Sequence[float] | np.ndarray, scores: Sequence[float] | np.ndarray, windows: int
) -> np.ndarray:
    """Centred moving average of one recording's window scores over ``windows`` consecutive
    windows in time order (shrinking at the ends); ``windows = 1`` returns the scores."""
    s = np.asarray(scores, dtype=float)
    if windows <= 1 or len(s) == 0:
        return s.copy()
    order = np.argsort(np.asarray(t0, dtype=float), kind="stable")
    kernel = np.ones(windows)
    total = np.convolve(s[order], kernel, mode="same")
    count = np.convolve(np.ones(len(s)), kernel, mode="same")
    out = np.empty_like(s)
    out[order] = total / count
    return out


def windows_to_events(
    t0: Sequence[float] | np.ndarray,
    probs: Sequence[float] | np.ndarray,
    window_s: float,
    hop_s: float,
    threshold: float = 0.5,
    event_type: str = "sz",
    merge_gap_s: float = 0.0,
    min_event_s: float = 0.0,
) -> list[Event]:
    """Turn per-window probabilities into events.

    Each window speaks for the hop-long segment at its centre
    (``[t0 + window/2 - hop/2, t0 + window/2 + hop/2)``); consecutive segments at or above
    ``threshold`` form one event, whose confidence is its highest window probability.
    Events less than ``merge_gap_s`` apart are then joined, and events shorter than
    ``min_event_s`` dropped.
    """
    t0, probs = np.asarray(t0, dtype=float), np.asarray(probs, dtype=float)
    order = np.argsort(t0)
    runs: list[list[float]] = []  # [onset, offset, peak]
    for t, p in zip(t0[order], probs[order], strict=True):
        if p < threshold:
            continue
        seg_on = t + window_s / 2 - hop_s / 2
        if runs and seg_on - runs[-1][1] < max(merge_gap_s, 1e-6):
            runs[-1][1], runs[-1][2] = seg_on + hop_s, max(runs[-1][2], p)
        else:
            runs.append([max(0.0, seg_on), seg_on + hop_s, p])
    return [
        Event(on, off - on, event_type, None, float(peak))
        for on, off, peak in runs
        if off - on >= min_event_s
    ]


def _intervals(events: Iterable[Event], duration_s: float) -> list[tuple[float, float]]:
    return sorted(
        (e.onset, min(e.offset, duration_s))
        for e in events
        if is_event_of_interest(e.event_type) and e.onset < duration_s
    )


@dataclass
class EventCounts:
    """Counts of one or more recordings; :meth:`summary` turns them into rates."""

    ref_events: int = 0
    true_detections: int = 0
    false_detections: int = 0  # SzCORE (hypothesis events merged within 90 s)
    false_detections_unmerged: int = 0
    seconds: float = 0.0
    event_seconds: float = 0.0  # reference event time
    background_seconds: float = 0.0  # the rest (same 10 Hz samples as the two below)
    flagged_event_seconds: float = 0.0  # reference event time the hypothesis flags
    flagged_background_seconds: float = 0.0  # background time the hypothesis flags
    recordings: int = 0
    recordings_without_events: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, other: EventCounts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def summary(self) -> dict[str, float | int]:
        tp, fp, n = self.true_detections, self.false_detections, self.ref_events
        lat = self.latencies
        hours = self.seconds / 3600
        background = self.background_seconds
        flagged = self.flagged_event_seconds + self.flagged_background_seconds

        def ratio(a: float, b: float) -> float:
            return a / b if b else math.nan

        return {
            "recordings": self.recordings,
            "recordings_without_events": self.recordings_without_events,
            "hours": hours,
            "background_hours": background / 3600,
            "ref_events": n,
            "true_detections": tp,
            "false_detections": fp,
            "false_detections_unmerged": self.false_detections_unmerged,
            "sensitivity": ratio(tp, n),
            "precision": ratio(tp, tp + fp),
            "f1": 2 * tp / (2 * tp + fp + (n - tp)) if n + fp else math.nan,
            "false_alarms_per_hour": ratio(fp, hours),
            "false_alarms_per_hour_unmerged": ratio(self.false_detections_unmerged, hours),
            "sample_sensitivity": ratio(self.flagged_event_seconds, self.event_seconds),
            "sample_precision": ratio(self.flagged_event_seconds, flagged),
            "sample_f1": ratio(2 * self.flagged_event_seconds, self.event_seconds + flagged),
            "specificity": ratio(background - self.flagged_background_seconds, background),
            "onset_latency_s": float(np.mean(lat)) if lat else math.nan,
            "onset_latency_median_s": float(np.median(lat)) if lat else math.nan,
        }


def score_recording(ref: Iterable[Event], hyp: Iterable[Event], duration_s: float) -> EventCounts:
    """SzCORE event and sample scoring of one recording (non-background events of any type)."""
    from timescoring.annotations import Annotation  # imported here: scipy-heavy
    from timescoring.scoring import EventScoring, SampleScoring

    if not duration_s > 0:
        raise ValueError(f"recording duration must be > 0 s, got {duration_s}")
    n = round(duration_s * SCORING_FS)
    ref_ann = Annotation(_intervals(ref, duration_s), SCORING_FS, n)
    hyp_ann = Annotation(_intervals(hyp, duration_s), SCORING_FS, n)
    params = EventScoring.Parameters()
    scores = EventScoring(ref_ann, hyp_ann, params)
    unmerged = EventScoring(ref_ann, hyp_ann, EventScoring.Parameters(minDurationBetweenEvents=0))
    samples = SampleScoring(ref_ann, hyp_ann, SCORING_FS)
    latencies = []
    for r_on, r_off in scores.ref.events:
        lo, hi = r_on - params.toleranceStart, r_off + params.toleranceEnd
        onsets = [h_on for h_on, h_off in scores.hyp.events if h_off > lo and h_on < hi]
        if onsets:
            latencies.append(min(onsets) - r_on)
    return EventCounts(
        ref_events=int(scores.refTrue),
        true_detections=int(scores.tp),
        false_detections=int(scores.fp),
        false_detections_unmerged=int(unmerged.fp),
        seconds=duration_s,
        event_seconds=float(samples.refTrue) / SCORING_FS,
        background_seconds=float(samples.numSamples - samples.refTrue) / SCORING_FS,
        flagged_event_seconds=float(samples.tp) / SCORING_FS,
        flagged_background_seconds=float(samples.fp) / SCORING_FS,
        recordings=1,
        recordings_without_events=int(scores.refTrue == 0),
        latencies=latencies,
    )


def score_events(
    recordings: Iterable[tuple[Iterable[Event], Iterable[Event], float]],
) -> dict[str, float | int]:
    """Event and sample metrics summed over ``(ref, hyp, duration_s)`` recordings."""
    return event_counts(recordings).summary()


def event_counts(
    recordings: Iterable[tuple[Iterable[Event], Iterable[Event], float]],
) -> EventCounts:
    """The summed :class:`EventCounts` of ``(ref, hyp, duration_s)`` recordings."""
    total = EventCounts()
    for ref, hyp, duration in recordings:
        total.add(score_recording(ref, hyp, duration))
    return total
