"""``report.json`` and a self-contained ``report.html`` (inline SVG and CSS, no scripts, no
external resources, no video frames: people are shown only as keypoint skeletons)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_json, atomic_write_text
from ..recording import Recording
from ..skeleton import HAND_EDGES, POSE_EDGES, REGION_NAMES
from .signals import xy

REPORT_FORMAT = "semiofed-analysis-report"
REPORT_VERSION = 1

CSS = """
body{font-family:DejaVu Sans,Arial,sans-serif;margin:24px;color:#1d2330;max-width:1100px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ccd}
h3{font-size:14px;margin:16px 0 6px} .muted{color:#667}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0} td,th{border:1px solid #ccd;padding:3px 7px;text-align:left}
th{background:#eef1f6} .flag{background:#ffe3d6;color:#a33;font-weight:bold;padding:2px 6px;border-radius:4px}
.ok{background:#dff3e3;color:#265;padding:2px 6px;border-radius:4px}
.row{display:flex;gap:18px;flex-wrap:wrap;align-items:flex-start} svg{background:#fbfcfe;border:1px solid #dde}
"""

STREAM_COLOURS = {
    "face": "#d9822b",
    "body": "#2b6cd9",
    "left_hand": "#2ba84a",
    "right_hand": "#a82b9c",
    "motion": "#777777",
}


def _e(x: Any) -> str:
    return html.escape(str(x))


def _fmt(x: Any, nd: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return _e(x)


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


def _svg_skeleton(snap: dict, weights: dict[int, float] | None = None, size: int = 220) -> str:
    """Stick figure of a snapshot; pose joints sized by ``weights`` (0..1) when given."""
    all_pts = [p for k in ("pose", "left_hand", "right_hand") if snap.get(k) for p in snap[k]]
    if not all_pts:
        return f'<svg width="{size}" height="{size}"><text x="10" y="20" font-size="12">no pose</text></svg>'
    a = np.asarray(all_pts)
    lo, hi = a.min(0), a.max(0)
    scale = (size - 20) / max(float((hi - lo).max()), 1e-6)

    def tr(p: list[float]) -> tuple[float, float]:
        return 10 + (p[0] - lo[0]) * scale, 10 + (p[1] - lo[1]) * scale

    parts = [f'<svg width="{size}" height="{size}" viewBox="0 0 {size} {size}">']
    for key, edges, col in (
        ("pose", POSE_EDGES, "#2b6cd9"),
        ("left_hand", HAND_EDGES, "#2ba84a"),
        ("right_hand", HAND_EDGES, "#a82b9c"),
    ):
        pts = snap.get(key)
        if not pts:
            continue
        for i, j in edges:
            (x1, y1), (x2, y2) = tr(pts[i]), tr(pts[j])
            parts.append(
                f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{col}" stroke-width="2"/>'
            )
    if snap.get("pose"):
        for i, p in enumerate(snap["pose"]):
            x, y = tr(p)
            w = (weights or {}).get(i, 0.0)
            r = 2.0 + 7.0 * w
            fill = "#d62728" if w > 0 else "#1d2330"
            parts.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="{fill}" fill-opacity="{0.35 + 0.6 * w:.2f}"/>'
            )
    parts.append(
        f'<text x="6" y="{size - 6}" font-size="11" fill="#556">t = {snap["t"]} s</text></svg>'
    )
    return "".join(parts)


def _svg_timeline(report: dict, width: int = 1000, height: int = 190) -> str:
    tl = report["timeline"]
    t = np.asarray(tl["t_center_s"], dtype=float)
    p = np.asarray(tl["seizure_probability"], dtype=float)
    dur = max(float(report["input"]["duration_s"]), 1e-6)
    left, right, top, bottom = 45, 10, 10, 30
    w, h = width - left - right, height - top - bottom

    def X(v: float) -> float:
        return left + w * v / dur

    def Y(v: float) -> float:
        return top + h * (1 - v)

    parts = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">']
    for ev in report["events"]:
        cls = "#ffb38a" if ev["aberrant"]["flagged"] else "#9ecbff"
        parts.append(
            f'<rect x="{X(ev["onset_s"]):.1f}" y="{top}" width="{max(X(ev["offset_s"]) - X(ev["onset_s"]), 1):.1f}" '
            f'height="{h}" fill="{cls}" fill-opacity="0.55"><title>{_e(ev["id"])}: {_e(ev["predicted_type"])}</title></rect>'
        )
        parts.append(
            f'<text x="{X(ev["onset_s"]) + 2:.1f}" y="{top + 12}" font-size="11">{_e(ev["id"])} {_e(ev["predicted_type"])}</text>'
        )
    for a in report.get("alarms", {}).get("times_s", []):
        parts.append(
            f'<path d="M{X(a) - 5:.1f},{top} L{X(a) + 5:.1f},{top} L{X(a):.1f},{top + 9}Z" fill="#c33">'
            f"<title>live alarm at {a:.1f} s</title></path>"
        )
    thr = tl["threshold"]
    parts.append(
        f'<line x1="{left}" x2="{left + w}" y1="{Y(thr):.1f}" y2="{Y(thr):.1f}" stroke="#c33" stroke-dasharray="4 3"/>'
    )
    if len(t):
        pts = " ".join(f"{X(a):.1f},{Y(b):.1f}" for a, b in zip(t, p, strict=True))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="#1f4fa3" stroke-width="1.6"/>')
    parts.append(f'<line x1="{left}" x2="{left + w}" y1="{top + h}" y2="{top + h}" stroke="#333"/>')
    parts.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + h}" stroke="#333"/>')
    for v in (0.0, 0.5, 1.0):
        parts.append(
            f'<text x="{left - 6}" y="{Y(v) + 4:.1f}" font-size="10" text-anchor="end">{v:.1f}</text>'
        )
    for s in np.linspace(0, dur, 7):
        parts.append(
            f'<text x="{X(s):.1f}" y="{top + h + 14}" font-size="10" text-anchor="middle">{s:.0f}s</text>'
        )
    parts.append(
        f'<text x="{left + w / 2}" y="{height - 2}" font-size="11" text-anchor="middle">seizure probability per window (dashed: threshold; red marks: live alarms)</text></svg>'
    )
    return "".join(parts)


def _svg_evolution(evo: dict, onset: float, offset: float, width: int = 640) -> str:
    regions = list(REGION_NAMES)
    row, left = 18, 90
    lo = min([onset - 5] + [r["onset_s"] for r in evo["regions"].values() if r["involved"]])
    hi = max([offset + 5] + [r["offset_s"] for r in evo["regions"].values() if r["involved"]])
    w = width - left - 10
    height = row * len(regions) + 30

    def X(v: float) -> float:
        return left + w * (v - lo) / max(hi - lo, 1e-6)

    parts = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}">']
    parts.append(
        f'<rect x="{X(onset):.1f}" y="0" width="{X(offset) - X(onset):.1f}" height="{row * len(regions)}" fill="#9ecbff" fill-opacity="0.3"/>'
    )
    for k, r in enumerate(regions):
        y = k * row
        parts.append(f'<text x="4" y="{y + 13}" font-size="11">{r}</text>')
        info = evo["regions"][r]
        if info["involved"]:
            parts.append(
                f'<rect x="{X(info["onset_s"]):.1f}" y="{y + 4}" width="{max(X(info["offset_s"]) - X(info["onset_s"]), 2):.1f}" '
                f'height="{row - 7}" fill="#d9822b"><title>{r}: {info["onset_s"]}–{info["offset_s"]} s</title></rect>'
            )
    for s in np.linspace(lo, hi, 6):
        parts.append(
            f'<text x="{X(s):.1f}" y="{height - 8}" font-size="10" text-anchor="middle">{s:.0f}s</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _svg_lines(
    series: list[tuple[str, list[float], list[float], str]],
    xlabel: str,
    width: int = 320,
    height: int = 180,
) -> str:
    xs = [x for _, xx, _, _ in series for x in xx]
    ys = [y for _, _, yy, _ in series for y in yy if y is not None]
    if not xs or not ys:
        return ""
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(0.0, min(ys)), max(ys) * 1.05 + 1e-9
    left, bottom = 38, 30

    def X(v: float) -> float:
        return left + (width - left - 8) * (v - x0) / max(x1 - x0, 1e-9)

    def Y(v: float) -> float:
        return 8 + (height - bottom - 8) * (1 - (v - y0) / max(y1 - y0, 1e-9))

    parts = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}">']
    for k, (name, xx, yy, col) in enumerate(series):
        pts = " ".join(
            f"{X(a):.1f},{Y(b):.1f}" for a, b in zip(xx, yy, strict=True) if b is not None
        )
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{col}" stroke-width="1.8"/>')
        parts.append(
            f'<text x="{left + 6}" y="{20 + 13 * k}" font-size="11" fill="{col}">{_e(name)}</text>'
        )
    parts.append(
        f'<text x="{left - 4}" y="{Y(y1) + 8:.1f}" font-size="10" text-anchor="end">{y1:.2g}</text>'
    )
    parts.append(
        f'<text x="{left - 4}" y="{Y(y0):.1f}" font-size="10" text-anchor="end">{y0:.2g}</text>'
    )
    parts.append(
        f'<text x="{width / 2}" y="{height - 6}" font-size="11" text-anchor="middle">{_e(xlabel)}</text></svg>'
    )
    return "".join(parts)


def _svg_bars(values: dict[str, float], width: int = 320, height: int = 150) -> str:
    if not values:
        return ""
    m = max(abs(v) for v in values.values()) or 1.0
    row = (height - 10) / len(values)
    mid = 110 + (width - 120) / 2
    parts = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}">']
    for k, (name, v) in enumerate(values.items()):
        y = 5 + k * row
        bw = (width - 120) / 2 * v / m
        x = mid if bw >= 0 else mid + bw
        parts.append(f'<text x="4" y="{y + row * 0.65:.1f}" font-size="11">{_e(name)}</text>')
        parts.append(
            f'<rect x="{x:.1f}" y="{y + 2:.1f}" width="{abs(bw):.1f}" height="{row - 4:.1f}" fill="{STREAM_COLOURS.get(name, "#2b6cd9")}"/>'
        )
        parts.append(
            f'<text x="{width - 4}" y="{y + row * 0.65:.1f}" font-size="10" text-anchor="end">{v:+.3f}</text>'
        )
    parts.append(f'<line x1="{mid}" x2="{mid}" y1="0" y2="{height}" stroke="#333"/></svg>')
    return "".join(parts)


def _event_table(events: list[dict]) -> str:
    rows = [
        "<table><tr><th>id</th><th>onset (s)</th><th>offset (s)</th><th>type</th><th>p(type)</th>"
        "<th>prediction set</th><th>peak p(seizure)</th><th>aberrant</th></tr>"
    ]
    for ev in events:
        flag = (
            f'<span class="flag">flagged ({ev["aberrant"]["score"]:.2f})</span>'
            if ev["aberrant"]["flagged"]
            else f'<span class="ok">known ({_fmt(ev["aberrant"]["score"])})</span>'
        )
        rows.append(
            f"<tr><td>{_e(ev['id'])}</td><td>{ev['onset_s']:.1f}</td><td>{ev['offset_s']:.1f}</td>"
            f"<td>{_e(ev['predicted_type'])}</td><td>{ev['type_probability']:.2f}</td>"
            f"<td>{_e(', '.join(ev['prediction_set']))}</td><td>{ev['peak_probability']:.2f}</td><td>{flag}</td></tr>"
        )
    rows.append("</table>")
    return "".join(rows) if events else '<p class="muted">No seizure detected.</p>'


def _semiology_html(sem: dict) -> str:
    rows = [
        "<table><tr><th>region</th><th>dominant frequency (Hz)</th><th>trend τ (p)</th>"
        "<th>rhythmic windows</th><th>amplitude</th><th>amplitude decay (late/early)</th></tr>"
    ]
    for r, v in sem["regions"].items():
        tau = v.get("frequency_trend_tau")
        rows.append(
            f"<tr><td>{r}</td><td>{_fmt(v.get('dominant_frequency_hz'))}</td>"
            f"<td>{_fmt(tau, 3)} ({_fmt(v.get('frequency_trend_p'), 3)})</td><td>{v.get('rhythmic_windows', 0)}</td>"
            f"<td>{_fmt(v.get('amplitude_body_units'), 4)}</td><td>{_fmt(v.get('amplitude_decay_ratio'))}</td></tr>"
        )
    rows.append("</table>")
    hv = sem["head_version"]
    version = (
        f"{hv['angle_deg']}° to the {hv['side']} for {hv['duration_s']} s"
        if hv["present"]
        else "none"
    )
    asym = sem["asymmetry_right_minus_left"]
    rows.append(
        "<table><tr><th>head version</th><th>asymmetry R−L (arm/hand/leg/overall)</th>"
        "<th>eye closure</th><th>oral automatisms /min</th><th>manual automatisms /min</th></tr>"
        f"<tr><td>{version}</td>"
        f"<td>{_fmt(asym['arm'])} / {_fmt(asym['hand'])} / {_fmt(asym['leg'])} / {_fmt(asym['overall'])}</td>"
        f"<td>{_fmt(sem['eye_closure_fraction'])}</td><td>{_fmt(sem['oral_automatism_per_min'])}</td>"
        f"<td>{_fmt(sem['manual_automatism_per_min'])}</td></tr></table>"
    )
    series = []
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    ranked = sorted(
        (r for r, v in sem["regions"].items() if v.get("rhythmic_windows", 0) > 0),
        key=lambda r: -sem["regions"][r]["rhythmic_windows"],
    )
    for k, r in enumerate(ranked[:4]):
        fot = sem["regions"][r].get("frequency_over_time") or []
        if fot:
            series.append((r, [a for a, _ in fot], [b for _, b in fot], palette[k]))
    if series:
        rows.append("<h3>Dominant frequency over time (rhythmic regions)</h3>")
        rows.append(_svg_lines(series, "time (s)", width=480))
    return "".join(rows)


def _explanation_html(ex: dict, snap: dict | None) -> str:
    parts = ['<div class="row"><div><h3>Per-stream contribution (exact Shapley)</h3>']
    parts.append(_svg_bars(ex["shapley"]["values"]))
    parts.append(
        f'<p class="muted">baseline p = {ex["shapley"]["baseline_probability"]:.3f}, '
        f"full p = {ex['shapley']['full_probability']:.3f}</p></div>"
    )
    joints = ex["integrated_gradients"]["body_joints"]
    m = max([abs(v) for v in joints.values()] or [1.0]) or 1.0
    weights = {int(k): max(v, 0.0) / m for k, v in joints.items()}
    if snap is not None:
        parts.append("<div><h3>Body joints driving the detection (IG)</h3>")
        parts.append(_svg_skeleton(snap, weights))
        parts.append("</div>")
    pt = ex["integrated_gradients"]["per_time"]
    parts.append("<div><h3>Attribution over the window (IG)</h3>")
    parts.append(
        _svg_lines([("attribution", pt["t_s"], pt["values"], "#d62728")], "time in window (s)")
    )
    parts.append("</div>")
    dc = ex["deletion"]
    parts.append("<div><h3>Faithfulness: deletion curve</h3>")
    parts.append(
        _svg_lines(
            [
                (
                    f"top-attributed first (AUC {dc['top_auc']:.3f})",
                    dc["fractions"],
                    dc["top"],
                    "#d62728",
                ),
                (
                    f"random order (AUC {dc['random_auc']:.3f})",
                    dc["fractions"],
                    dc["random"],
                    "#7f7f7f",
                ),
            ],
            "fraction of joint-frames replaced by the resting pose",
        )
    )
    parts.append("</div></div>")
    top = ex["integrated_gradients"].get("top_joints", [])
    if top:
        parts.append(
            "<p>Top joints: "
            + ", ".join(f"{_e(j['stream'])}:{_e(j['joint'])} ({j['value']:+.3f})" for j in top)
            + "</p>"
        )
    return "".join(parts)


def render_html(report: dict) -> str:
    inp = report["input"]
    conf = report["confidence"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>SemioFed analysis — {_e(inp['file'])}</title><style>{CSS}</style></head><body>",
        "<h1>SemioFed seizure video analysis</h1>",
        f"<p class='muted'>{_e(inp['file'])} · {inp['duration_s']:.1f} s at {inp['fps']:.1f} fps · "
        f"model {_e(report['model']['name'])} · generated {_e(report['generated_utc'])}. "
        "Only keypoints are shown; no video frame is stored in this report.</p>",
        "<h2>Detection timeline</h2>",
        _svg_timeline(report),
        "<h2>Detected events</h2>",
        _event_table(report["events"]),
        f"<p class='muted'>Type probabilities are temperature-scaled (T = {conf['temperature']:.2f}); prediction sets "
        f"are split-conformal at {_fmt(conf['coverage'])} coverage ({_e(conf['source'])}). Aberrant: open-set score "
        f"above {_fmt(report['aberrant']['threshold'])} (≈{report['aberrant']['flag_rate']:.0%} of known-type events flagged).</p>",
    ]
    for ev in report["events"]:
        parts.append(
            f"<h2>{_e(ev['id'])}: {_e(ev['predicted_type'])} {ev['onset_s']:.1f}–{ev['offset_s']:.1f} s</h2>"
        )
        parts.append("<div class='row'>")
        for snap in ev.get("skeletons", []):
            parts.append(_svg_skeleton(snap))
        parts.append("</div>")
        evo = ev["evolution"]
        parts.append(f"<h3>Evolution: {_e(evo['order_text'] or 'no region above baseline')}</h3>")
        parts.append(_svg_evolution(evo, ev["onset_s"], ev["offset_s"]))
        parts.append("<h3>Semiology</h3>")
        parts.append(_semiology_html(ev["semiology"]))
        if ev.get("explanation"):
            parts.append("<h3>Explanation (window of peak probability)</h3>")
            snaps = ev.get("skeletons") or [None]
            parts.append(_explanation_html(ev["explanation"], snaps[-1]))
    if not report["events"]:
        parts.append("<h2>Semiology (whole recording)</h2>")
        parts.append(_semiology_html(report["semiology"]))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` atomically into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.html", render_html(report))
    json.loads((out / "report.json").read_text())  # fail loudly if not valid JSON
    return out / "report.json", out / "report.html"
