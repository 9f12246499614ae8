"""``report.json`` and a self-contained ``report.html`` (inline SVG and CSS, no scripts, no
external resources, no video frames: people are shown only as keypoint skeletons). The page
is the template ``client/templates/analysis_report.html`` (:mod:`semiofed.shared.html`); its
plots come from :mod:`semiofed.shared.svgplot`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from markupsafe import Markup

from semiofed.shared import svgplot
from semiofed.shared.atomic import atomic_write_json, atomic_write_text
from semiofed.shared.html import render
from semiofed.shared.recording import Recording
from semiofed.shared.skeleton import HAND_EDGES, POSE_EDGES, REGION_NAMES

from .signals import xy

REPORT_FORMAT = "semiofed-analysis-report"
REPORT_VERSION = 1

STREAM_COLOURS = {
    "face": "#d9822b",
    "body": "#2b6cd9",
    "left_hand": "#2ba84a",
    "right_hand": "#a82b9c",
    "motion": "#777777",
}
_LIMBS = (("pose", POSE_EDGES), ("left_hand", HAND_EDGES), ("right_hand", HAND_EDGES))
_LIMB_COLOURS = {"pose": "#2b6cd9", "left_hand": "#2ba84a", "right_hand": "#a82b9c"}


def skeleton_snapshot(rec: Recording, t: float) -> dict:
    """Keypoints (pose and hands, aspect-corrected xy) of the frame nearest ``t``, for rendering."""
    i = int(np.argmin(np.abs(rec.timestamps - t)))

    def pts(stream: str) -> list | None:
        p = xy(rec, stream)[i]
        return None if not np.isfinite(p).all() else np.round(p, 4).tolist()

    return {
        "t": round(float(rec.timestamps[i]), 2),
        "pose": pts("pose"),
        "left_hand": pts("left_hand"),
        "right_hand": pts("right_hand"),
    }


def skeleton_plot(snap: dict, weights: dict[int, float] | None = None) -> Markup:
    """Stick figure of a snapshot; pose joints sized by ``weights`` (0..1) when given."""
    limbs = [(snap[k], edges, _LIMB_COLOURS[k]) for k, edges in _LIMBS if snap.get(k)]
    pose = snap.get("pose") or []
    w = [(weights or {}).get(i, 0.0) for i in range(len(pose))]
    return svgplot.skeleton(limbs, f"t = {snap['t']} s", joints=pose, weights=w)


def timeline_plot(report: dict) -> Markup:
    """Seizure probability per window over the recording, the threshold, the events (flagged
    ones orange) and the live alarms."""
    tl = report["timeline"]
    spans = [
        (ev["onset_s"], ev["offset_s"], f"{ev['id']} {ev['predicted_type']}",
         "#ffb38a" if ev["aberrant"]["flagged"] else "#9ecbff")
        for ev in report["events"]
    ]  # fmt: skip
    marks = [(a, f"live alarm at {a:.1f} s") for a in report.get("alarms", {}).get("times_s", [])]
    return svgplot.line_plot(
        {"p(seizure)": list(zip(tl["t_center_s"], tl["seizure_probability"], strict=True))},
        "Seizure probability per window (bands: detected events; red marks: live alarms)",
        "time (s)",
        "p(seizure)",
        width=1000,
        height=230,
        hlines={"threshold": tl["threshold"]},
        spans=spans,
        marks=marks,
        x_range=(0.0, float(report["input"]["duration_s"])),
        y_range=(0.0, 1.0),
        markers=False,
    )


def evolution_plot(evo: dict, onset: float, offset: float) -> Markup:
    rows = {
        r: (evo["regions"][r]["onset_s"], evo["regions"][r]["offset_s"])
        if evo["regions"][r]["involved"]
        else None
        for r in REGION_NAMES
    }
    return svgplot.interval_chart(rows, (onset, offset))


def frequency_plot(sem: dict) -> Markup:
    """Dominant frequency over time of the (up to 4) most rhythmic regions."""
    ranked = sorted(
        (r for r, v in sem["regions"].items() if v.get("rhythmic_windows", 0) > 0),
        key=lambda r: -sem["regions"][r]["rhythmic_windows"],
    )
    series = {
        r: [tuple(p) for p in sem["regions"][r].get("frequency_over_time") or []]
        for r in ranked[:4]
    }
    series = {r: pts for r, pts in series.items() if pts}
    if not series:
        return Markup("")
    return svgplot.line_plot(
        series, "Dominant frequency over time (rhythmic regions)", "time (s)", "Hz", width=480
    )


def explanation_plots(ex: dict, snap: dict | None) -> dict[str, Markup]:
    """The plots of an event's explanation: per-stream Shapley bars, the body joints (IG) on
    the skeleton, the attribution over the window and the deletion curves."""
    joints = ex["integrated_gradients"]["body_joints"]
    m = max([abs(v) for v in joints.values()] or [1.0]) or 1.0
    weights = {int(k): max(v, 0.0) / m for k, v in joints.items()}
    pt = ex["integrated_gradients"]["per_time"]
    dc = ex["deletion"]
    return {
        "shapley": svgplot.bar_chart(ex["shapley"]["values"], STREAM_COLOURS),
        "joints": skeleton_plot(snap, weights) if snap is not None else Markup(""),
        "per_time": svgplot.line_plot(
            {"attribution": list(zip(pt["t_s"], pt["values"], strict=True))},
            "Attribution over the window (IG)",
            "time in window (s)",
            "attribution",
            width=420,
            height=220,
            y_from_zero=False,
            markers=False,
        ),
        "deletion": svgplot.line_plot(
            {
                f"top-attributed first (AUC {dc['top_auc']:.3f})": list(
                    zip(dc["fractions"], dc["top"], strict=True)
                ),
                f"random order (AUC {dc['random_auc']:.3f})": list(
                    zip(dc["fractions"], dc["random"], strict=True)
                ),
            },
            "Faithfulness: deletion curve",
            "fraction of joint-frames replaced by the resting pose",
            "p(seizure)",
            width=640,
            height=240,
            markers=False,
        ),
    }


def render_html(report: dict) -> str:
    events: list[dict[str, Any]] = []
    for ev in report["events"]:
        snaps = ev.get("skeletons") or []
        events.append(
            {
                "ev": ev,
                "skeletons": [skeleton_plot(s) for s in snaps],
                "evolution": evolution_plot(ev["evolution"], ev["onset_s"], ev["offset_s"]),
                "frequency": frequency_plot(ev["semiology"]),
                "explanation": explanation_plots(ev["explanation"], snaps[-1] if snaps else None)
                if ev.get("explanation")
                else None,
            }
        )
    return render(
        "semiofed.client",
        "analysis_report.html",
        report=report,
        timeline=timeline_plot(report),
        events=events,
        whole_frequency=frequency_plot(report["semiology"]),
    )


def write_report(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` atomically into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.html", render_html(report))
    json.loads((out / "report.json").read_text())  # fail loudly if not valid JSON
    return out / "report.json", out / "report.html"
