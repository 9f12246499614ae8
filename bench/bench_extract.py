"""Keypoint extraction speed: ``semiofed site extract`` at default settings vs the naive loop.

The clip is 20 s of scikit-image's astronaut photo (a real person) swaying and rotating,
640×480 at 30 fps. The naive loop decodes every frame and runs MediaPipe Holistic on each
in one process; the pipeline samples frames (``--fps``), decodes in a thread and spreads
chunks over worker processes. Both are timed in this run, wall clock, including start-up.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from semiofed.client.extract.backends import HOLISTIC_MODEL_COMPLEXITY, import_mediapipe
from semiofed.client.extract.pipeline import ExtractOptions, extract
from semiofed.client.extract.settings import DEFAULT_FPS, default_workers
from semiofed.shared.recording import Recording, load_recording

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.clips import make_moving_clip, nose_track, sway

SECONDS, FPS, SIZE = 20.0, 30.0, (640, 480)
MOTION = sway(amplitude=40.0, period=2.0)
FPS_ROWS = (DEFAULT_FPS, 10.0, 8.0)


def naive_loop(path: Path) -> dict[str, object]:
    """Holistic (library defaults) on every frame in one process; landmarks and timings."""
    mp = import_mediapipe()
    t0, c0 = time.perf_counter(), time.process_time()
    holistic = mp.solutions.holistic.Holistic(model_complexity=HOLISTIC_MODEL_COMPLEXITY)
    cap = cv2.VideoCapture(str(path))
    poses, faces = [], []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        res = holistic.process(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        pose = np.full((33, 4), np.nan, np.float32)
        face = np.full((468, 3), np.nan, np.float32)
        if res.pose_landmarks:
            pose[:] = [(p.x, p.y, p.z, p.visibility) for p in res.pose_landmarks.landmark]
        if res.face_landmarks:
            face[:] = [(p.x, p.y, p.z) for p in res.face_landmarks.landmark]
        poses.append(pose)
        faces.append(face)
    cap.release()
    holistic.close()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"wall": wall, "cpu": cpu, "pose": np.stack(poses), "face": np.stack(faces)}


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the worker processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _px(a: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a[..., :2] * np.array(SIZE), axis=-1)


def compare(rec: Recording, naive: dict[str, object]) -> dict[str, float]:
    """Mean pixel distances to the naive loop on the same frames, and nose error vs truth."""
    idx = np.rint(rec.timestamps * FPS).astype(int)
    n_pose, n_face = naive["pose"][idx], naive["face"][idx]
    vis = (rec.pose[:, :, 3] >= 0.5) & (n_pose[:, :, 3] >= 0.5)
    truth = nose_track(rec.timestamps, MOTION, SIZE)
    return {
        "pose": float(np.nanmean(_px(rec.pose[..., :2] - n_pose[..., :2])[vis])),
        "head": float(np.nanmean(_px(rec.pose[:, :11, :2] - n_pose[:, :11, :2])[vis[:, :11]])),
        "face": float(np.nanmean(_px(rec.face - n_face))),
        "nose_truth": float(np.nanmean(_px(rec.pose[:, 0, :2] - truth))),
    }


def run(ctx) -> str:
    work = ctx.path("extract")
    load_before = os.getloadavg()[0]
    clip = make_moving_clip(work / "astronaut_sway.mp4", SECONDS, FPS, MOTION, SIZE)
    naive = naive_loop(clip)
    n_frames = len(naive["pose"])
    naive_truth = float(
        np.nanmean(
            _px(naive["pose"][:, 0, :2] - nose_track(np.arange(n_frames) / FPS, MOTION, SIZE))
        )
    )
    rows = []
    for fps in FPS_ROWS:
        out = work / f"out_fps{fps:g}"
        t0, c0 = time.perf_counter(), _cpu()
        report = extract([clip], ExtractOptions(out=out, fps=fps, progress=False))
        wall, cpu = time.perf_counter() - t0, _cpu() - c0
        if report.failed:
            raise RuntimeError(f"extraction failed: {report.failed}")
        rec = load_recording(out / f"{clip.stem}_keypoints.npz")
        rows.append((fps, wall, cpu, rec, compare(rec, naive)))
    naive_rtf = SECONDS / naive["wall"]
    workers = default_workers()
    cpu_ms = 1000 * naive["cpu"] / n_frames
    lines = [
        "## Keypoint extraction (`semiofed site extract`)\n",
        f"Clip: {SECONDS:g} s, {SIZE[0]}×{SIZE[1]}, {FPS:g} fps, astronaut photo swaying ±40 px, "
        f"rotating ±8°. {os.cpu_count()} cores, 1-min load average {load_before:.1f} at the start "
        f"and {os.getloadavg()[0]:.1f} at the end of this benchmark (other jobs share the cores); default "
        f"workers = {default_workers()}, default `--fps` = {DEFAULT_FPS:g}, Holistic model "
        f"complexity {HOLISTIC_MODEL_COMPLEXITY} (the only pose model in the wheel). Wall clock "
        "includes process start-up, hashing, decoding, smoothing and writing.\n",
        "| run | frames analysed | wall s | real-time factor | × naive throughput | CPU s "
        "| CPU-bound real-time factor | pose / face found | pose Δ px | head Δ px | face Δ px "
        "| nose vs truth px |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| naive loop (every frame, 1 process) | {n_frames} | {naive['wall']:.1f} | {naive_rtf:.2f}× "
        f"| 1.00 | {naive['cpu']:.1f} | – | {np.isfinite(naive['pose'][:, 0, 0]).mean():.0%} / "
        f"{np.isfinite(naive['face'][:, 0, 0]).mean():.0%} | – | – | – | {naive_truth:.1f} |",
    ]
    for fps, wall, cpu, rec, d in rows:
        label = f"pipeline `--fps {fps:g}`" + (" (default)" if fps == DEFAULT_FPS else "")
        rtf = SECONDS / wall
        lines.append(
            f"| {label} | {rec.n_frames} | {wall:.1f} | {rtf:.2f}× | {rtf / naive_rtf:.2f} "
            f"| {cpu:.1f} | {SECONDS / (cpu / workers):.2f}× "
            f"| {rec.present[:, 0].mean():.0%} / {rec.present[:, 1].mean():.0%} "
            f"| {d['pose']:.1f} | {d['head']:.1f} | {d['face']:.1f} | {d['nose_truth']:.1f} |"
        )
    fps, wall, cpu, rec, d = rows[0]
    rtf = SECONDS / wall
    lines += [
        "",
        "Δ px: mean distance to the naive loop's landmarks on the same frames, in pixels of the "
        "640×480 frame (pose: landmarks with visibility ≥ 0.5 in both; head: pose 0–10). "
        "Nose vs truth: distance to the nose position known from the applied motion. "
        "CPU s: CPU time of the run including worker processes; CPU-bound real-time factor = "
        "video seconds ÷ (CPU s ÷ workers), what the run would reach if its workers had the "
        "cores to themselves (an upper bound; the wall-clock figures are the measured ones).",
        "",
        f"Holistic costs {cpu_ms:.0f} ms of CPU per frame (naive loop), so {os.cpu_count()} "
        f"cores can analyse at most ≈{(os.cpu_count() or 1) * 1000 / cpu_ms:.0f} frames/s.",
        "",
        f"Goals at default settings: ≥ 4× real time — **{'met' if rtf >= 4 else 'NOT met'}** "
        f"({rtf:.2f}×); ≥ 3× the naive loop — **{'met' if rtf / naive_rtf >= 3 else 'NOT met'}** "
        f"({rtf / naive_rtf:.2f}×); landmarks: nose {d['nose_truth']:.1f} px from truth "
        f"(naive {naive_truth:.1f} px), face Δ {d['face']:.1f} px.",
    ]
    return "\n".join(lines) + "\n"
