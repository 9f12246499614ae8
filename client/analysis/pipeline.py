"""Analysis of one keypoint recording with a trained model: detection timeline, events with
calibrated type probabilities and prediction sets, open-set flag, evolution, semiology,
explanations — everything :mod:`.report` renders.

A model folder (``shared/model_folder.py``) holds, after ``semiofed site calibrate``, also
``calibration.json``
(:class:`SiteCalibration`: temperature, conformal threshold, open-set scorer, all fitted on
held-out patients).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from semiofed.shared.analysis import calibration as cal
from semiofed.shared.analysis.explain import explain_window, resting_baseline
from semiofed.shared.analysis.openset import SEMIOLOGY_EVENTS, OpenSetScorer
from semiofed.shared.analysis.semiology_anomaly import features_of_windows
from semiofed.shared.atomic import atomic_write_json
from semiofed.shared.errors import FormatError, SemioFedError
from semiofed.shared.events import Event
from semiofed.shared.features import STREAM_NAMES
from semiofed.shared.labels import CANONICAL_EVENT_TYPE, CLASSES, IGNORE_INDEX
from semiofed.shared.metrics import MERGE_GAP_S, MIN_EVENT_S, windows_to_events
from semiofed.shared.model import predict_windows
from semiofed.shared.recording import Recording
from semiofed.shared.windows import WindowConfig, assemble_windows, windows_from_recording

from .evolution import EvolutionConfig, abnormal_masks, baseline_mask, event_evolution
from .onset import AlarmRule, causal_alarms
from .report import REPORT_FORMAT, REPORT_VERSION, skeleton_snapshot
from .semiology import SemiologyConfig, event_semiology, rhythm_tracks
from .signals import region_signals

CALIBRATION_FILE = "calibration.json"
SEIZURE_CLASSES = tuple(i for i, c in enumerate(CLASSES) if c != "bckg")


@dataclass(frozen=True)
class AnalysisConfig:
    detect_threshold: float = 0.5
    explain: bool = True
    ig_steps: int = 32
    batch_size: int = 64
    min_event_s: float = MIN_EVENT_S  # shorter detections are dropped
    merge_gap_s: float = MERGE_GAP_S  # detections closer than this are one event
    alarm: AlarmRule = field(default_factory=AlarmRule)  # live (causal) alarms: :mod:`.onset`


@dataclass
class SiteCalibration:
    """Fitted on held-out patients by :func:`fit_calibration`; stored as ``calibration.json``."""

    temperature: float
    coverage: float
    conformal_threshold: float
    source: str  # e.g. "local: 4 held-out patients, 812 windows" or "federated: 3 sites"
    openset: OpenSetScorer | None = None
    #: per-class (Mondrian) thresholds, one per class; None: the global threshold
    class_thresholds: list[float] | None = None

    def set_thresholds(self) -> float | np.ndarray:
        """What a prediction set is cut at: per-class thresholds when fitted, else the global one."""
        if self.class_thresholds is None:
            return self.conformal_threshold
        return np.asarray(self.class_thresholds)

    def to_dict(self) -> dict:
        return {
            "temperature": self.temperature,
            "coverage": self.coverage,
            "conformal_threshold": self.conformal_threshold,
            "source": self.source,
            "openset": None if self.openset is None else self.openset.to_dict(),
            "class_thresholds": self.class_thresholds,
        }

    @classmethod
    def from_dict(cls, d: dict) -> SiteCalibration:
        return cls(
            temperature=float(d["temperature"]),
            coverage=float(d["coverage"]),
            conformal_threshold=float(d["conformal_threshold"]),
            source=str(d["source"]),
            openset=None if d.get("openset") is None else OpenSetScorer.from_dict(d["openset"]),
            class_thresholds=None
            if d.get("class_thresholds") is None
            else [float(t) for t in d["class_thresholds"]],
        )

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> SiteCalibration:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FormatError(path, f"not a readable calibration file ({exc})") from None


def event_groups(patients: list, y_detect_key: str = "y_detect") -> list[tuple]:
    """An event id per window: (patient, recording, run number) for consecutive seizure windows of
    the same type in one recording; None for background windows."""
    ids: list[tuple] = []
    for pw in patients:
        run, prev = 0, None
        for i in range(len(pw)):
            if not pw.y_detect[i]:
                ids.append(None)
                prev = None
                continue
            key = (str(pw.recording[i]), int(pw.y_type[i]))
            if key != prev:
                run += 1
            prev = key
            ids.append((pw.site, pw.patient, str(pw.recording[i]), run))
    return ids


def outputs_for(model: nn.Module, patients: list, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Model outputs and labels over every window of ``patients`` (PatientWindows)."""
    outs = [predict_windows(model, p.x, p.mask, batch_size) for p in patients]
    res = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
    res["y_type"] = np.concatenate([p.y_type for p in patients])
    res["y_detect"] = np.concatenate([p.y_detect for p in patients])
    return res


def fit_calibration(
    model: nn.Module,
    held_out: list,
    fit: list,
    coverage: float = cal.DEFAULT_COVERAGE,
    flag_rate: float = 0.05,
    batch_size: int = 64,
    per_class: bool = False,
) -> SiteCalibration:
    """Temperature, conformal threshold(s) and open-set scorer.

    ``held_out``: PatientWindows of patients the model was not trained on (calibration);
    ``fit``: PatientWindows of training patients (class means of the open-set scorer);
    ``per_class``: also per-class (Mondrian) conformal thresholds, which prediction sets then use.
    """
    out = outputs_for(model, held_out, batch_size)
    lab = out["y_type"] != IGNORE_INDEX
    logits, y = out["type_logits"][lab], out["y_type"][lab]
    if len(y) == 0:
        raise SemioFedError("no labelled windows in the held-out patients: cannot calibrate")
    temp = cal.fit_temperature(logits, y)
    thr = cal.conformal_threshold(cal.scores(cal.softmax(logits, temp), y), coverage)
    scorer = None
    ft = outputs_for(model, fit, batch_size) if fit else None
    seiz = lambda o: (o["y_detect"] == 1) & (o["y_type"] != IGNORE_INDEX)  # noqa: E731
    if ft is not None and seiz(ft).sum() >= 10:
        scorer = OpenSetScorer.fit(ft["fused"][seiz(ft)], ft["y_type"][seiz(ft)])
        groups = event_groups(held_out)
        sel = seiz(out)
        if sel.sum() >= 5:
            g = [groups[i] for i in np.flatnonzero(sel)]
            scorer.calibrate(out["fused"][sel], out["type_logits"][sel], g, flag_rate)
        else:
            scorer = None
    n_pat = len(held_out)
    return SiteCalibration(
        temperature=temp,
        coverage=coverage,
        conformal_threshold=thr,
        source=f"local: {n_pat} held-out patients, {len(y)} windows",
        openset=scorer,
        class_thresholds=cal.mondrian_thresholds(cal.softmax(logits, temp), y, coverage).tolist()
        if per_class
        else None,
    )


def _detected_events(
    t0: np.ndarray, prob: np.ndarray, wcfg: WindowConfig, cfg: AnalysisConfig
) -> list[Event]:
    return windows_to_events(
        t0,
        prob,
        wcfg.seconds,
        wcfg.hop,
        cfg.detect_threshold,
        merge_gap_s=cfg.merge_gap_s,
        min_event_s=cfg.min_event_s,
    )


def _aberrant_score(
    scorer: OpenSetScorer, w: dict, out: dict[str, np.ndarray], inside: np.ndarray
) -> float:
    """An event's anomaly score from the rows its scorer's representation names: the mean
    semiology features of its windows, or the mean window score of their fused embeddings."""
    if scorer.representation == SEMIOLOGY_EVENTS:
        x = {k: v[inside] for k, v in w["x"].items()}
        mask = {k: v[inside] for k, v in w["mask"].items()}
        return float(scorer.event_distance(features_of_windows(x, mask).mean(0, keepdims=True))[0])
    return float(np.mean(scorer.window_scores(out["fused"][inside], out["type_logits"][inside])))


def analyze_recording(
    rec: Recording,
    model: nn.Module,
    wcfg: WindowConfig,
    calib: SiteCalibration | None,
    cfg: AnalysisConfig = AnalysisConfig(),
    source_name: str = "<memory>",
    model_name: str = "",
    frame_features: tuple[dict, dict, float] | None = None,
) -> dict:
    """The whole analysis of one recording as a JSON-ready report dict; ``frame_features``
    (``recording_features(rec, wcfg)``, e.g. from the site's feature cache) saves computing
    them again."""
    if frame_features is None:
        w = windows_from_recording(rec, [], wcfg)
    else:
        w = assemble_windows([(*frame_features, [])], wcfg)
    out = predict_windows(model, w["x"], w["mask"], cfg.batch_size)
    t0, prob = w["t0"], out["detect_prob"].astype(np.float64)
    centres = t0 + wcfg.seconds / 2
    temp = calib.temperature if calib else 1.0
    probs = cal.softmax(out["type_logits"], temp)
    events = _detected_events(t0, prob, wcfg, cfg)
    alarms = causal_alarms(t0 + wcfg.seconds, prob, cfg.alarm)
    spans = [(e.onset, e.offset) for e in events]

    sig = region_signals(rec)
    ecfg, scfg = EvolutionConfig(), SemiologyConfig()
    moving, thr = abnormal_masks(sig, spans, ecfg)
    base = baseline_mask(sig.times, spans, ecfg)
    if base is None:  # short clip: the lower-activity half of the recording is the baseline
        total = np.nansum(np.stack([sig.speed[r] for r in sig.speed]), axis=0)
        base = total <= np.nanmedian(total)
    tracks = rhythm_tracks(sig, scfg)

    rest = np.argsort(prob)[: max(1, len(prob) // 4)]
    rest = rest[prob[rest] < cfg.detect_threshold]
    ev_reports = []
    for k, ev in enumerate(events):
        inside = (centres >= ev.onset) & (centres <= ev.offset)
        if not inside.any():
            inside = np.abs(centres - 0.5 * (ev.onset + ev.offset)) == np.min(
                np.abs(centres - 0.5 * (ev.onset + ev.offset))
            )
        p_ev = probs[inside].mean(0)
        seiz = np.array(SEIZURE_CLASSES)
        top = int(seiz[np.argmax(p_ev[seiz])])
        pset = (
            [CLASSES[c] for c in np.flatnonzero(cal.prediction_set(p_ev, calib.set_thresholds()))]
            if calib
            else []
        )
        aberrant: dict = {"score": None, "threshold": None, "flagged": False}
        if calib and calib.openset:
            score = _aberrant_score(calib.openset, w, out, inside)
            aberrant = {
                "score": round(score, 4),
                "threshold": round(calib.openset.threshold, 4),
                "flagged": bool(score > calib.openset.threshold),
            }
        peak = int(np.flatnonzero(inside)[np.argmax(prob[inside])])
        item = {
            "id": f"E{k + 1}",
            "onset_s": round(ev.onset, 2),
            "offset_s": round(ev.offset, 2),
            "duration_s": round(ev.duration, 2),
            "predicted_type": CLASSES[top],
            "event_type": CANONICAL_EVENT_TYPE[CLASSES[top]],
            "type_probability": round(float(p_ev[top]), 4),
            "type_probabilities": {
                c: round(float(p), 4) for c, p in zip(CLASSES, p_ev, strict=True)
            },
            "prediction_set": pset,
            "peak_probability": round(float(prob[peak]), 4),
            "peak_window_t0_s": round(float(t0[peak]), 2),
            "aberrant": aberrant,
            "evolution": event_evolution(sig, ev.onset, ev.offset, moving, ecfg),
            "semiology": event_semiology(rec, sig, tracks, ev.onset, ev.offset, base, scfg),
            "skeletons": [
                skeleton_snapshot(rec, ev.onset),
                skeleton_snapshot(rec, 0.5 * (ev.onset + ev.offset)),
                skeleton_snapshot(rec, t0[peak] + wcfg.seconds / 2),
            ],
        }
        if cfg.explain:
            fallback = {s: np.asarray(w["x"][s][peak]) for s in STREAM_NAMES}
            neutral = resting_baseline(w["x"], w["mask"], rest, fallback)
            dev = next(model.parameters()).device
            window = {}
            for s in STREAM_NAMES:
                window[f"x_{s}"] = torch.as_tensor(np.array(w["x"][s][peak : peak + 1]), device=dev)
                window[f"m_{s}"] = torch.as_tensor(
                    np.array(w["mask"][s][peak : peak + 1]), device=dev
                )
            item["explanation"] = explain_window(model, window, neutral, wcfg.seconds, cfg.ig_steps)
        ev_reports.append(item)

    primary = max(ev_reports, key=lambda e: e["peak_probability"]) if ev_reports else None
    whole = (
        primary["semiology"]
        if primary
        else event_semiology(
            rec, sig, tracks, float(rec.timestamps[0]), float(rec.timestamps[-1]), base, scfg
        )
    )
    return {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "generated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "input": {
            "file": source_name,
            "source_sha256": rec.source_sha256,
            "duration_s": round(rec.duration, 2),
            "fps": rec.fps,
            "n_frames": rec.n_frames,
        },
        "model": {"name": model_name, "window_s": wcfg.seconds, "hop_s": wcfg.hop},
        "timeline": {
            "t_center_s": [round(float(x), 2) for x in centres],
            "seizure_probability": [round(float(x), 4) for x in prob],
            "threshold": cfg.detect_threshold,
        },
        "alarms": {
            "times_s": [round(float(a), 2) for a in alarms],
            "rule": asdict(cfg.alarm),
            "causal": "each alarm uses only windows that end at or before its time",
        },
        "events": ev_reports,
        "primary_event": primary["id"] if primary else None,
        "evolution": primary["evolution"] if primary else None,
        "evolution_thresholds_body_units_per_s": {r: round(v, 4) for r, v in thr.items()},
        "semiology": whole,
        "confidence": {
            "calibrated": calib is not None,
            "temperature": temp,
            "coverage": calib.coverage if calib else None,
            "conformal_threshold": calib.conformal_threshold if calib else None,
            "class_thresholds": calib.class_thresholds if calib else None,
            "source": calib.source if calib else "uncalibrated: run `semiofed site calibrate`",
        },
        "aberrant": {
            "available": bool(calib and calib.openset),
            "threshold": calib.openset.threshold if calib and calib.openset else None,
            "flag_rate": calib.openset.flag_rate if calib and calib.openset else 0.05,
            "flagged_events": [e["id"] for e in ev_reports if e["aberrant"]["flagged"]],
        },
    }
