"""Synthetic consortium: generation time, recording size/load time, motion-energy baseline."""

from __future__ import annotations

import json
import os
import resource
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from semiofed.shared import baseline
from semiofed.shared.events import read_events
from semiofed.shared.labels import CLASSES, class_of
from semiofed.shared.recording import SUFFIX, load_recording, save_recording
from semiofed.shared.synth import detector, generate_consortium
from semiofed.shared.synth.consortium import COMPRESS_LEVEL, simulate_recording
from semiofed.shared.synth.profiles import make_patient, make_site

SITES, PATIENTS, MINUTES, WORKERS = 3, 12, 30.0, 2
TRAIN_FRACTION = 2 / 3


def _median_time(fn, repeats: int = 3) -> tuple[float, float]:
    """Median wall and CPU seconds of ``fn()`` (CPU time is robust on a shared machine)."""
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _hour_at_15fps(jitter_scale: float = 1.0, noise_scale: float = 1.0):
    rng = np.random.default_rng(0)
    site = make_site(0, rng)
    site = replace(site, fps=15.0, jitter_px=site.jitter_px * jitter_scale)
    patient = make_patient(site, 0, "automatisms", rng)
    saved = detector.LANDMARK_NOISE_PX
    detector.LANDMARK_NOISE_PX = saved * noise_scale
    detector._BANKS.clear()
    try:
        rec, _, _ = simulate_recording(site, patient, 3600.0, np.random.default_rng(1))
    finally:
        detector.LANDMARK_NOISE_PX = saved
        detector._BANKS.clear()
    return rec, site


def _recording_format(work: Path) -> tuple[list[str], dict[str, float]]:
    rec, site = _hour_at_15fps()
    out = {}
    rows = []
    raw = np.concatenate(
        [rec.pose.reshape(rec.n_frames, -1)]
        + [getattr(rec, s).reshape(rec.n_frames, -1) for s in ("face", "left_hand", "right_hand")],
        axis=1,
    ).astype(np.float32)
    raw_path = work / "hour_raw.npy"
    np.save(raw_path, raw)
    raw_mb = raw_path.stat().st_size / 1e6
    raw_load, raw_cpu = _median_time(lambda: np.load(raw_path))
    for level in (COMPRESS_LEVEL, 6):
        path = work / f"hour_l{level}{SUFFIX}"
        t0 = time.perf_counter()
        save_recording(rec, path, compress_level=level)
        save_s = time.perf_counter() - t0
        mb = path.stat().st_size / 1e6
        load_s, load_cpu = _median_time(lambda p=path: load_recording(p))
        out[f"mb_l{level}"] = mb
        rows.append(
            f"| {level} | {mb:.1f} | {raw_mb / mb:.0f}× | {save_s:.2f} | {load_s:.2f} | "
            f"{load_cpu:.2f} | {load_s / raw_load:.1f}× |"
        )
    sens = []
    for label, js, ns in (("no detector jitter", 0.0, 0.0), ("jitter ×2", 2.0, 2.0)):
        r2, _ = _hour_at_15fps(js, ns)
        path = work / f"hour_sens{SUFFIX}"
        save_recording(r2, path, compress_level=6)
        sens.append(f"{label}: {path.stat().st_size / 1e6:.1f} MB")
    lines = [
        f"One hour at 15 fps ({rec.n_frames} frames × 543 landmarks, site-01 profile, detector "
        f"wobble {site.jitter_px:.2f} px + per-landmark noise {detector.LANDMARK_NOISE_PX} px at "
        f"640 px). Raw float32 .npy: {raw_mb:.0f} MB, loads in {raw_load:.2f} s wall / "
        f"{raw_cpu:.2f} s CPU (median of 3, page cache warm).",
        "",
        "| deflate level | size MB | smaller than raw | save s | load s wall (median of 3) "
        "| load s CPU | load wall vs raw |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "The size depends on detector jitter (level 6): " + "; ".join(sens) + ".",
    ]
    out["load_s"] = load_s
    return lines, out


def _baseline(root: Path) -> list[str]:
    recs = sorted(root.rglob(f"*{SUFFIX}"))
    patients = sorted({p.parent for p in recs})
    by_site: dict[str, list[Path]] = {}
    for p in patients:
        by_site.setdefault(p.parent.name, []).append(p)
    train = {p for ps in by_site.values() for p in ps[: round(len(ps) * TRAIN_FRACTION)]}
    feats: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    labels: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    kinds: list[np.ndarray] = []
    for path in recs:
        base = str(path)[: -len(SUFFIX)]
        rec = load_recording(path)
        events = read_events(base + "_events.tsv")
        f, y = baseline.windows(rec, events)
        split = "train" if path.parent in train else "test"
        feats[split].append(f)
        labels[split].append(y)
        if split == "test":
            kinds.append(_window_kinds(rec, events, base, len(f)))
    thr = baseline.fit_threshold(np.concatenate(feats["train"]), np.concatenate(labels["train"]))
    f, y = np.concatenate(feats["test"]), np.concatenate(labels["test"])
    pred = baseline.predict(f, thr)
    kind = np.concatenate(kinds)
    per = []
    for k in [*CLASSES[1:], "confounder", "quiet background"]:
        m = kind == k
        if m.any():
            per.append(f"{k} {pred[m].mean():.0%} ({m.sum()})")
    return [
        f"Windows of {baseline.WINDOW_S:.0f} s (hop {baseline.HOP_S:.0f} s); threshold fitted on "
        f"{len(train)} train patients (first {TRAIN_FRACTION:.0%} of each site), scored on "
        f"{len(patients) - len(train)} held-out patients ({len(y)} windows, {y.mean():.1%} events).",
        "",
        f"- balanced accuracy **{baseline.balanced_accuracy(pred, y):.3f}**, "
        f"macro-F1 **{baseline.macro_f1(pred, y):.3f}**",
        "- fraction of windows flagged, by what is happening (n windows): " + ", ".join(per),
    ]


def _window_kinds(rec, events, base: str, n_windows: int) -> np.ndarray:
    fps = rec.fps
    w, h = round(baseline.WINDOW_S * fps), round(baseline.HOP_S * fps)
    centre = (np.arange(n_windows) * h + w / 2) / fps
    kind = np.full(n_windows, "quiet background", dtype=object)
    truth = json.loads(Path(base + "_truth.json").read_text())
    for c in truth["confounders"]:
        kind[(centre >= c["onset"]) & (centre < c["offset"])] = "confounder"
    for e in events:
        if e.event_type != "bckg":
            kind[(centre >= e.onset) & (centre < e.offset)] = CLASSES[class_of(e.event_type)]
    return kind


def run(ctx) -> str:
    work = ctx.path("synth")
    out = work / "consortium"
    load_before = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), _cpu_seconds()
    summary = generate_consortium(
        out, sites=SITES, patients_per_site=PATIENTS, minutes_per_patient=MINUTES, seed=0,
        workers=WORKERS,
    )  # fmt: skip
    gen_s, gen_cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    total_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
    frames = sum(json.loads(p.read_text())["n_frames"] for p in out.rglob("*_truth.json"))
    fmt_lines, _ = _recording_format(work)
    base_lines = _baseline(out)
    return "\n".join(
        [
            "## Synthetic consortium (bench_synth)",
            "",
            f"Generation of {SITES} sites × {PATIENTS} patients × {MINUTES:.0f} min "
            f"({frames:,} frames at source fps, {summary.recordings} recordings, "
            f"{total_mb:.0f} MB) with {WORKERS} workers on {os.cpu_count()} cores: "
            f"**{gen_s:.1f} s** wall (target < 30 s); CPU time of all processes "
            f"{gen_cpu:.1f} s, i.e. {gen_cpu / WORKERS:.1f} s per worker if the cores were free "
            f"(1-min load average before the run: {load_before:.1f}).",
            "",
            "```",
            summary.table(),
            "```",
            "",
            "### Recording format",
            "",
            *fmt_lines,
            "",
            "### Motion-energy threshold baseline (event vs background)",
            "",
            *base_lines,
            "",
        ]
    )
