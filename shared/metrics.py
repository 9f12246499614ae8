"""Window-level and event-level metrics.

Window level: macro-F1 and balanced accuracy of the seizure-type head (averaged over the
classes present in the reference or the predictions, like scikit-learn's default),
per-class recall, and AUROC of seizure-vs-background probabilities.

Event level: SzCORE event scoring by the ``timescoring`` package with its default
parameters (30 s tolerance before and 60 s after an event, any overlap counts, events
closer than 90 s merged, events longer than 5 min split). Results over several
recordings are summed (true/false detections, reference events, hours) before the rates
are computed, as SzCORE does. Onset latency, which ``timescoring`` does not report, is
computed from its matched events: for every detected reference event, the onset of the
first hypothesis event overlapping the tolerance-extended reference event minus the
reference onset (negative = early).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .events import Event
from .labels import CLASSES, IGNORE_INDEX, is_event_of_interest

SCORING_FS = 10  # Hz; the resolution EventScoring works at


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
    f1s, recalls = [], {}
    for c in present:
        tp = int(np.sum((yt == c) & (yp == c)))
        n_true, n_pred = int(np.sum(yt == c)), int(np.sum(yp == c))
        f1s.append(2 * tp / (n_true + n_pred) if n_true + n_pred else 0.0)
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
        "macro_f1": float(np.mean(f1s)) if f1s else math.nan,
        "balanced_accuracy": float(np.mean(list(recalls.values()))) if recalls else math.nan,
        "per_class_recall": recalls,
        "auroc_seizure": auroc(y_detect, detect_prob),
        "detect_sensitivity": sens,
        "detect_specificity": spec,
    }


def windows_to_events(
    t0: Sequence[float] | np.ndarray,
    probs: Sequence[float] | np.ndarray,
    window_s: float,
    hop_s: float,
    threshold: float = 0.5,
    event_type: str = "sz",
) -> list[Event]:
    """Turn per-window probabilities into events.

    Each window speaks for the hop-long segment at its centre
    (``[t0 + window/2 - hop/2, t0 + window/2 + hop/2)``); consecutive segments at or above
    ``threshold`` form one event, whose confidence is its highest window probability.
    """
    t0, probs = np.asarray(t0, dtype=float), np.asarray(probs, dtype=float)
    order = np.argsort(t0)
    events: list[Event] = []
    start = end = peak = None
    for t, p in zip(t0[order], probs[order], strict=True):
        seg_on = t + window_s / 2 - hop_s / 2
        seg_off = seg_on + hop_s
        if p >= threshold:
            if start is not None and seg_on <= end + 1e-6:
                end, peak = seg_off, max(peak, p)
            else:
                if start is not None:
                    events.append(Event(start, end - start, event_type, None, float(peak)))
                start, end, peak = max(0.0, seg_on), seg_off, p
    if start is not None:
        events.append(Event(start, end - start, event_type, None, float(peak)))
    return events


def _intervals(events: Iterable[Event]) -> list[tuple[float, float]]:
    return sorted((e.onset, e.offset) for e in events if is_event_of_interest(e.event_type))


@dataclass
class EventCounts:
    ref_events: int = 0
    true_detections: int = 0
    false_detections: int = 0
    seconds: float = 0.0
    latencies: list[float] | None = None

    def add(self, other: EventCounts) -> None:
        self.ref_events += other.ref_events
        self.true_detections += other.true_detections
        self.false_detections += other.false_detections
        self.seconds += other.seconds
        self.latencies = (self.latencies or []) + (other.latencies or [])

    def summary(self) -> dict[str, float | int]:
        tp, fp, n = self.true_detections, self.false_detections, self.ref_events
        lat = self.latencies or []
        hours = self.seconds / 3600
        return {
            "ref_events": n,
            "true_detections": tp,
            "false_detections": fp,
            "hours": hours,
            "sensitivity": tp / n if n else math.nan,
            "precision": tp / (tp + fp) if tp + fp else math.nan,
            "f1": 2 * tp / (2 * tp + fp + (n - tp)) if n + fp else math.nan,
            "false_alarms_per_hour": fp / hours if hours else math.nan,
            "onset_latency_s": float(np.mean(lat)) if lat else math.nan,
            "onset_latency_median_s": float(np.median(lat)) if lat else math.nan,
        }


def score_recording(ref: Iterable[Event], hyp: Iterable[Event], duration_s: float) -> EventCounts:
    """SzCORE event scoring of one recording (non-background events of any type)."""
    from timescoring.annotations import Annotation  # imported here: scipy-heavy
    from timescoring.scoring import EventScoring

    if not duration_s > 0:
        raise ValueError(f"recording duration must be > 0 s, got {duration_s}")
    n = round(duration_s * SCORING_FS)
    ref_iv = [(a, min(b, duration_s)) for a, b in _intervals(ref) if a < duration_s]
    hyp_iv = [(a, min(b, duration_s)) for a, b in _intervals(hyp) if a < duration_s]
    params = EventScoring.Parameters()
    scores = EventScoring(
        Annotation(ref_iv, SCORING_FS, n), Annotation(hyp_iv, SCORING_FS, n), params
    )
    latencies = []
    for r_on, r_off in scores.ref.events:
        lo, hi = r_on - params.toleranceStart, r_off + params.toleranceEnd
        onsets = [h_on for h_on, h_off in scores.hyp.events if h_off > lo and h_on < hi]
        if onsets:
            latencies.append(min(onsets) - r_on)
    return EventCounts(int(scores.refTrue), int(scores.tp), int(scores.fp), duration_s, latencies)


def score_events(
    recordings: Iterable[tuple[Iterable[Event], Iterable[Event], float]],
) -> dict[str, float | int]:
    """Event metrics summed over ``(ref, hyp, duration_s)`` recordings."""
    total = EventCounts(latencies=[])
    for ref, hyp, duration in recordings:
        total.add(score_recording(ref, hyp, duration))
    return total.summary()
