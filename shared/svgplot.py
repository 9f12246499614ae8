"""Inline SVG plots for every HTML page SemioFed writes (no JavaScript, no plotting library,
no external resource): the registry's pages, the site's analysis report and the privacy
officer's report. Each function returns escaped :class:`~markupsafe.Markup` for a template.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import pairwise

from markupsafe import Markup, escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
Point = tuple[float, float]


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering ``[lo, hi]``."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(count - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, value = [], start
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < hi:
        ticks.append(round(value, 12))
    return ticks


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def line_plot(
    series: Mapping[str, Sequence[Point]],
    title: str,
    x_label: str,
    y_label: str,
    width: int = 640,
    height: int = 280,
    y_from_zero: bool = True,
    *,
    bars: Mapping[str, Sequence[Point]] | None = None,
    hlines: Mapping[str, float] | None = None,
    spans: Sequence[tuple[float, float, str, str]] = (),
    marks: Sequence[tuple[float, str]] = (),
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    markers: bool = True,
) -> Markup:
    """Each named series of ``(x, y)`` points as a line (with markers), ``bars`` as bars at
    their x, ``hlines`` as dashed labelled horizontal lines, ``spans`` ``(x0, x1, label,
    colour)`` as shaded bands and ``marks`` ``(x, label)`` as red triangles on the top edge;
    ``x_range``/``y_range`` widen the axes to cover them."""
    bars = bars or {}
    hlines = hlines or {}
    points = [p for group in (series, bars) for pts in group.values() for p in pts]
    if not points:
        return Markup('<p class="muted">{}: nothing reported.</p>').format(title)
    bar_xs = sorted({x for pts in bars.values() for x, _ in pts})
    step = min((b - a for a, b in pairwise(bar_xs)), default=1.0)
    xs = [p[0] for p in points] + list(x_range or ())
    if bar_xs:  # room for the outer bars
        xs += [bar_xs[0] - step / 2, bar_xs[-1] + step / 2]
    ys = [p[1] for p in points] + list(hlines.values()) + list(y_range or ())
    x_ticks = nice_ticks(min(xs), max(xs), min(6, len(set(xs)) + 1))
    y_ticks = nice_ticks(0.0 if y_from_zero else min(ys), max(ys))
    legend = [*series, *bars, *hlines]
    left, top, bottom = 56, 28, 44
    right = max(150, 40 + 7 * max(map(len, legend))) if legend else 16
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x_ticks[0]) / (x_ticks[-1] - x_ticks[0]) * pw

    def sy(y: float) -> float:
        return top + ph - (y - y_ticks[0]) / (y_ticks[-1] - y_ticks[0]) * ph

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left}" y="16" class="plot-title">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>',
    ]
    for x0, x1, label, color in spans:
        parts.append(
            f'<rect class="span" x="{sx(x0):.1f}" y="{top}" width="{max(sx(x1) - sx(x0), 1):.1f}" '
            f'height="{ph}" fill="{color}" fill-opacity="0.45"><title>{escape(label)}</title></rect>'
            f'<text x="{sx(x0) + 2:.1f}" y="{top + 12}">{escape(label)}</text>'
        )
    for t in y_ticks:
        y = sy(t)
        parts.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
        )
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for t in x_ticks:
        x = sx(t)
        parts.append(f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle">{_fmt(t)}</text>')
    parts.append(
        f'<text x="{left + pw / 2:.1f}" y="{height - 6}" text-anchor="middle">{escape(x_label)}</text>'
    )
    parts.append(
        f'<text x="14" y="{top + ph / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + ph / 2:.1f})">{escape(y_label)}</text>'
    )
    colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(legend)}
    bar_w = 0.6 * step / (x_ticks[-1] - x_ticks[0]) * pw
    for name, pts in bars.items():
        for x, y in pts:
            parts.append(
                f'<rect class="bar" x="{sx(x) - bar_w / 2:.1f}" y="{sy(y):.1f}" width="{bar_w:.1f}" '
                f'height="{sy(y_ticks[0]) - sy(y):.1f}" fill="{colors[name]}" fill-opacity="0.5">'
                f"<title>{escape(name)}: {_fmt(y)} at {escape(x_label)} {_fmt(x)}</title></rect>"
            )
    for name, pts in series.items():
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in sorted(pts))
        parts.append(
            f'<polyline class="series" data-series="{escape(name)}" points="{coords}" '
            f'fill="none" stroke="{colors[name]}" stroke-width="2"/>'
        )
        for x, y in pts if markers else ():
            parts.append(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colors[name]}">'
                f"<title>{escape(name)}: {_fmt(y)} at {escape(x_label)} {_fmt(x)}</title></circle>"
            )
    for name, y in hlines.items():
        parts.append(
            f'<line class="hline" x1="{left}" x2="{left + pw}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" '
            f'stroke="{colors[name]}" stroke-dasharray="6 4"><title>{escape(name)}</title></line>'
        )
    for x, label in marks:
        parts.append(
            f'<path class="mark" d="M{sx(x) - 5:.1f},{top} L{sx(x) + 5:.1f},{top} '
            f'L{sx(x):.1f},{top + 9}Z" fill="#c33"><title>{escape(label)}</title></path>'
        )
    for i, name in enumerate(legend):
        ly = top + 8 + i * 18
        parts.append(
            f'<rect x="{left + pw + 12}" y="{ly}" width="12" height="3" fill="{colors[name]}"/>'
        )
        parts.append(f'<text x="{left + pw + 30}" y="{ly + 5}">{escape(name)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def bar_chart(
    values: Mapping[str, float],
    colors: Mapping[str, str] | None = None,
    width: int = 320,
    height: int = 150,
) -> Markup:
    """Signed horizontal bars, one per name, around a zero line."""
    if not values:
        return Markup("")
    m = max(abs(v) for v in values.values()) or 1.0
    row = (height - 10) / len(values)
    mid = 110 + (width - 120) / 2
    parts = [f'<svg class="plot" width="{width}" height="{height}" viewBox="0 0 {width} {height}">']
    for k, (name, v) in enumerate(values.items()):
        y = 5 + k * row
        bw = (width - 120) / 2 * v / m
        x = mid if bw >= 0 else mid + bw
        color = (colors or {}).get(name, PALETTE[0])
        parts.append(f'<text x="4" y="{y + row * 0.65:.1f}">{escape(name)}</text>')
        parts.append(
            f'<rect x="{x:.1f}" y="{y + 2:.1f}" width="{abs(bw):.1f}" height="{row - 4:.1f}" '
            f'fill="{color}"/>'
        )
        parts.append(
            f'<text x="{width - 4}" y="{y + row * 0.65:.1f}" text-anchor="end">{v:+.3f}</text>'
        )
    parts.append(f'<line x1="{mid}" x2="{mid}" y1="0" y2="{height}" stroke="#333"/></svg>')
    return Markup("".join(parts))


def interval_chart(
    rows: Mapping[str, tuple[float, float] | None],
    band: tuple[float, float],
    width: int = 640,
) -> Markup:
    """One row per name with its ``(start, end)`` interval (``None``: no bar), over a shaded
    ``band`` (e.g. an event's onset to offset); time in seconds on the x axis."""
    row, left = 18, 90
    spans = [v for v in rows.values() if v is not None]
    lo = min([band[0] - 5] + [a for a, _ in spans])
    hi = max([band[1] + 5] + [b for _, b in spans])
    w = width - left - 10
    height = row * len(rows) + 30

    def sx(v: float) -> float:
        return left + w * (v - lo) / max(hi - lo, 1e-6)

    parts = [
        f'<svg class="plot" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
        f'<rect x="{sx(band[0]):.1f}" y="0" width="{sx(band[1]) - sx(band[0]):.1f}" '
        f'height="{row * len(rows)}" fill="#9ecbff" fill-opacity="0.3"/>',
    ]
    for k, (name, span) in enumerate(rows.items()):
        y = k * row
        parts.append(f'<text x="4" y="{y + 13}">{escape(name)}</text>')
        if span is not None:
            parts.append(
                f'<rect x="{sx(span[0]):.1f}" y="{y + 4}" width="{max(sx(span[1]) - sx(span[0]), 2):.1f}" '
                f'height="{row - 7}" fill="#d9822b"><title>{escape(name)}: {span[0]}–{span[1]} s'
                "</title></rect>"
            )
    for s in nice_ticks(lo, hi, 6):
        if lo <= s <= hi:
            parts.append(
                f'<text x="{sx(s):.1f}" y="{height - 8}" text-anchor="middle">{s:.0f}s</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))


def skeleton(
    limbs: Sequence[tuple[Sequence[Point], Sequence[tuple[int, int]], str]],
    caption: str,
    joints: Sequence[Point] = (),
    weights: Sequence[float] = (),
    size: int = 220,
) -> Markup:
    """A stick figure: each ``(points, edges, colour)`` limb set drawn as lines, ``joints``
    as dots sized by ``weights`` (0..1, e.g. attributions; none: small dots)."""
    every = [p for pts, _, _ in limbs for p in pts]
    if not every:
        return Markup(f'<svg class="plot" width="{size}" height="{size}">'
                      '<text x="10" y="20">no pose</text></svg>')  # fmt: skip
    lo = [min(p[0] for p in every), min(p[1] for p in every)]
    scale = (size - 20) / max(
        max(p[0] for p in every) - lo[0], max(p[1] for p in every) - lo[1], 1e-6
    )

    def tr(p: Point) -> Point:
        return 10 + (p[0] - lo[0]) * scale, 10 + (p[1] - lo[1]) * scale

    parts = [f'<svg class="plot" width="{size}" height="{size}" viewBox="0 0 {size} {size}">']
    for pts, edges, color in limbs:
        for i, j in edges:
            (x1, y1), (x2, y2) = tr(pts[i]), tr(pts[j])
            parts.append(
                f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{color}" '
                'stroke-width="2"/>'
            )
    for i, p in enumerate(joints):
        x, y = tr(p)
        w = weights[i] if i < len(weights) else 0.0
        fill = "#d62728" if w > 0 else "#1d2330"
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{2.0 + 7.0 * w:.1f}" fill="{fill}" '
            f'fill-opacity="{0.35 + 0.6 * w:.2f}"/>'
        )
    parts.append(f'<text x="6" y="{size - 6}" fill="#556">{escape(caption)}</text></svg>')
    return Markup("".join(parts))
