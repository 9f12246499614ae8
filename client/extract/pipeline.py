"""Run extraction over many videos: worker processes, chunks, manifest, resumability.

Each video is split into chunks (at most ``MAX_CHUNK_S`` long, and into as many as there
are workers when it is long enough) that worker processes analyse independently; a chunk's
landmarks are saved atomically under ``DIR/.partial/`` as soon as it is done, so an
interrupted run resumes a long video at chunk granularity. When all chunks of a video are
in, the parent smooths, fills short gaps, writes the recording and its quality summary
atomically and updates ``DIR/manifest.json``. A video whose recording already exists with
the same content hash and settings (under any name in DIR) is skipped.

With the motion gate (:mod:`.gate`, on by default) a chunk's still stretches are analysed at
the keep-alive rate only; the recording keeps every sampled frame, marks how each was analysed
and bridges the frames that were not.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import multiprocessing as mp
import os
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from semiofed.privacy.keys import sha256_file
from semiofed.shared.atomic import atomic_path, atomic_write_json
from semiofed.shared.errors import FormatError, SemioFedError
from semiofed.shared.recording import (
    FULL_RATE,
    KEEPALIVE,
    NOT_ANALYSED,
    STREAMS,
    SUFFIX,
    Recording,
    read_header,
    save_recording,
)
from semiofed.shared.skeleton import N_FACE, N_HAND, N_POSE

from . import smoothing
from .backends import BackendSpec, Landmarks, make_backend, quiet_stderr
from .flow import UNITS, MotionMeter
from .gate import ActivityMeter, Gate, GateSettings
from .preview import write_preview
from .roi import Roi, RoiTracker, crop, to_frame_coords
from .settings import DEFAULT_FPS, default_workers
from .video import FrameReader, VideoError, VideoInfo, find_videos, probe

MIN_CHUNK_S = 5.0
MAX_CHUNK_S = 120.0
MANIFEST = "manifest.json"
NOTHING_DETECTED = "nothing detected in any frame (no person found): check the camera and --roi"
PARTIAL_DIR = ".partial"
QUALITY_SUFFIX = "_quality.json"
PREVIEW_SUFFIX = "_preview.mp4"
WORKER_LOG = "extract_workers.log"  # MediaPipe's native log lines from worker processes
PROGRESS_EVERY = 5  # analysed frames per progress message from a worker


@dataclass(frozen=True)
class ExtractOptions:
    out: Path
    workers: int = field(default_factory=default_workers)
    fps: float = DEFAULT_FPS
    backend: BackendSpec = field(default_factory=BackendSpec)
    roi: Roi | None = None
    preview: bool = False
    motion: bool = False
    progress: bool = True
    gate: GateSettings | None = field(default_factory=GateSettings)  # None: analyse every frame

    def settings(self) -> dict[str, Any]:
        """What determines a recording's content; a change means the video is redone."""
        gate = {"gate": self.gate.as_dict()} if self.gate is not None else {}
        return {
            "backend": self.backend.name,
            "fps": self.fps,
            "roi": str(self.roi) if self.roi else "auto",
            "motion": self.motion,
            "smoothing": {
                "min_cutoff_hz": smoothing.MIN_CUTOFF_HZ,
                "beta": smoothing.BETA,
                "max_gap_s": smoothing.MAX_GAP_S,
            },
            **gate,
        }


@dataclass(frozen=True)
class ChunkTask:
    video: Path
    start: int
    stop: int | None
    src_fps: float
    target_fps: float
    backend: BackendSpec
    roi: Roi | None
    motion: bool
    partial: Path
    gate: GateSettings | None = None


@dataclass
class Job:
    video: Path
    info: VideoInfo
    sha256: str
    output: Path
    chunks: list[ChunkTask]
    futures: list[Future[dict[str, Any]]] = field(default_factory=list)
    t0: float = 0.0

    @property
    def frames(self) -> int:
        """Frames expected to be analysed (for the progress bar)."""
        return math.ceil(self.info.frames * min(1.0, self.chunks[0].target_fps / self.info.fps))


# ---------------------------------------------------------------- worker process side

_WORKER: dict[str, Any] = {}


def _init_worker(progress: Any, parent_pid: int, log: str, spec: BackendSpec) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    with open(log, "a") as fh:  # keep MediaPipe's native logging off the console
        os.dup2(fh.fileno(), 2)
    _WORKER["progress"] = progress

    def watch_parent() -> None:  # exit when the parent dies (e.g. killed), never linger
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch_parent, daemon=True).start()
    # Load the models while the parent is still probing and hashing; an error here is
    # raised again, with its message, by the first chunk instead of breaking the pool.
    with contextlib.suppress(Exception):
        _backend(spec)


def _backend(spec: BackendSpec) -> Any:
    if _WORKER.get("spec") != spec:
        if "backend" in _WORKER:
            _WORKER["backend"].close()
        _WORKER["backend"], _WORKER["spec"] = make_backend(spec), spec
    return _WORKER["backend"]


def run_chunk(task: ChunkTask) -> dict[str, Any]:
    """Analyse one chunk of a video and save its landmarks to ``task.partial``; returns stats."""
    backend = _backend(task.backend)
    backend.reset()
    progress = _WORKER.get("progress")
    tracker: RoiTracker | None = None
    meter = MotionMeter() if task.motion else None
    rows: dict[str, list[np.ndarray]] = {
        k: [] for k in ("index", *STREAMS, "present", "motion", "analysed")
    }
    held = Landmarks(None, None, None, None)  # the last analysed frame's landmarks
    pending = 0

    def emit(index: int, rgb: np.ndarray, code: int) -> None:
        """Record one sampled frame, running the landmark model on it unless NOT_ANALYSED."""
        nonlocal held, pending
        assert tracker is not None
        h, w = rgb.shape[:2]
        t = index / task.src_fps
        lm = Landmarks(None, None, None, None)
        if code != NOT_ANALYSED:
            roi = tracker.current
            lm = backend.process(np.ascontiguousarray(crop(rgb, roi)), round(t * 1000))
            lm = to_frame_coords(lm, roi, w, h)
            if tracker.update(lm):
                backend.reset()
            held = lm
        rows["index"].append(np.int64(index))
        for name, arr, n, c in zip(
            STREAMS, lm, (N_POSE, N_FACE, N_HAND, N_HAND), (4, 3, 3, 3), strict=True
        ):
            rows[name].append(arr if arr is not None else np.full((n, c), np.nan, np.float32))
        rows["present"].append(np.array([a is not None for a in lm]))
        rows["analysed"].append(np.uint8(code))
        if meter is not None:  # every sampled frame; regions of the last analysed landmarks
            rows["motion"].append(meter.update(rgb, t, held))
        pending += 1
        if progress is not None and pending >= PROGRESS_EVERY:
            progress.put(pending)
            pending = 0

    fps = min(task.src_fps, task.target_fps)
    gate = Gate[tuple[int, np.ndarray]](fps, task.gate) if task.gate is not None else None
    activity = ActivityMeter(fps, task.gate) if task.gate is not None else None
    with FrameReader(task.video, task.start, task.stop, task.src_fps, task.target_fps) as reader:
        for index, rgb in reader:
            if tracker is None:
                tracker = RoiTracker(rgb.shape[1], rgb.shape[0], task.roi)
            if gate is None or activity is None:
                emit(index, rgb, FULL_RATE)
                continue
            score = activity.score(crop(rgb, tracker.fixed))
            for (i, frame), code in gate.push(index / task.src_fps, score, (index, rgb)):
                emit(i, frame, code)
        for (i, frame), code in gate.finish() if gate is not None else []:
            emit(i, frame, code)
    if progress is not None and pending:
        progress.put(pending)
    stats = {
        "start": task.start,
        "read": reader.stats.read,
        "decoded": reader.stats.decoded,
        "dropped": reader.stats.dropped,
        "redetections": tracker.redetections if tracker else 0,
        "roi": str(tracker.current) if tracker and tracker.current else None,
        "extractor": {
            "name": backend.name,
            "version": backend.version,
            "device": backend.device,
            "note": backend.note,
        },
    }
    arrays = {k: np.stack(v) for k, v in rows.items() if v}
    with atomic_path(task.partial) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, stats=np.frombuffer(_json(stats), dtype=np.uint8), **arrays)
    return stats


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


# ---------------------------------------------------------------- parent side


def plan_chunks(info: VideoInfo, workers: int) -> list[tuple[int, int | None]]:
    """Frame ranges ``[start, stop)`` for one video; the last runs to the end of the file."""
    n = max(1, math.ceil(info.duration / MAX_CHUNK_S))
    n = max(n, min(workers, int(info.duration // MIN_CHUNK_S)))
    bounds = [round(i * info.frames / n) for i in range(n + 1)]
    return [(bounds[i], bounds[i + 1] if i < n - 1 else None) for i in range(n)]


def _quality_path(output: Path) -> Path:
    return output.with_name(output.name.removesuffix(SUFFIX) + QUALITY_SUFFIX)


def _done(output: Path, sha: str, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The quality summary of a finished recording of this content and settings, else None."""
    quality = _quality_path(output)
    if not quality.exists():
        return None
    try:
        header = read_header(output)
        summary = json.loads(quality.read_text(encoding="utf-8"))
    except (FormatError, ValueError):
        return None
    meta = header.get("meta", {})
    if header.get("source_sha256") == sha and meta.get("extract_settings") == settings:
        return summary
    return None


def _finished_index(out: Path, settings: dict[str, Any]) -> dict[str, Path]:
    """Recordings already in ``out`` made with ``settings``, by their video's SHA-256."""
    index: dict[str, Path] = {}
    for path in sorted(Path(out).glob("*" + SUFFIX)):
        try:
            header = read_header(path)
        except FormatError:
            continue
        sha = header.get("source_sha256")
        if header.get("meta", {}).get("extract_settings") == settings and isinstance(sha, str):
            index.setdefault(sha, path)
    return index


def _load_chunk(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "stats"}
        stats = json.loads(z["stats"].tobytes())
    return arrays, stats


def _assemble(job: Job, opts: ExtractOptions, wall: float) -> tuple[Recording, dict[str, Any]]:
    parts = [_load_chunk(c.partial) for c in job.chunks]
    stats = [s for _, s in parts]
    arrays = [a for a, _ in parts if "index" in a]
    decoded = sum(s["decoded"] for s in stats)
    if not arrays:
        raise VideoError(job.video, "no frame could be decoded (truncated or corrupt video)")
    cat = {k: np.concatenate([a[k] for a in arrays]) for k in arrays[0]}
    times = cat["index"] / job.info.fps
    present = cat["present"].astype(bool)
    analysed = cat.get("analysed", np.full(len(times), FULL_RATE, np.uint8))
    ran = analysed != NOT_ANALYSED
    filled = np.zeros_like(present)
    streams = {}
    for s, name in enumerate(STREAMS):
        values = cat[name].copy()
        values[ran] = smoothing.smooth_stream(cat[name][ran], present[ran, s], times[ran])
        values, bridged = smoothing.bridge_unanalysed(values, present[:, s], ran, times)
        streams[name], gaps = smoothing.fill_gaps(values, present[:, s] | bridged, times)
        filled[:, s] = bridged | gaps
    extractor = stats[0]["extractor"]
    settings = opts.settings()
    rec = Recording(
        timestamps=times.astype(np.float64),
        pose=streams["pose"],
        face=streams["face"],
        left_hand=streams["left_hand"],
        right_hand=streams["right_hand"],
        present=present,
        fps=min(opts.fps, job.info.fps),
        source_sha256=job.sha256,
        extractor_name=extractor["name"],
        extractor_version=extractor["version"],
        filled=filled,
        motion=cat.get("motion"),
        motion_regions=list(MotionMeter.regions) if opts.motion else [],
        analysed=analysed,
        meta={
            "source_name": job.video.name,
            "source_fps": job.info.fps,
            "width": job.info.width,
            "height": job.info.height,
            "extract_settings": settings,
            "device": extractor["device"],
            **({"motion_units": UNITS} if opts.motion else {}),
        },
    )
    read = sum(s["read"] for s in stats)
    lost = max(0, job.info.frames - read)
    vis = rec.pose[present[:, 0], :, 3]
    gate = {
        "full_rate_frames": int((analysed == FULL_RATE).sum()),
        "keepalive_frames": int((analysed == KEEPALIVE).sum()),
        "not_analysed_frames": int((~ran).sum()),
    }
    quality = {
        "source": str(job.video),
        "source_sha256": job.sha256,
        "frames_in_container": job.info.frames,
        "frames_read": read,
        "frames_decoded": decoded,
        "frames_dropped": sum(s["dropped"] for s in stats) + lost,
        "frames_analysed": int(ran.sum()),
        "analysis_fps": rec.fps,
        **({"gate": gate} if opts.gate is not None else {}),
        "duration_s": round(job.info.duration, 3),
        "detection_rate": {  # of the analysed frames
            n: round(float(present[ran, s].mean()), 4) for s, n in enumerate(STREAMS)
        },
        "filled_rate": {n: round(float(filled[:, s].mean()), 4) for s, n in enumerate(STREAMS)},
        "mean_pose_visibility": round(float(vis.mean()), 4) if vis.size else None,
        "roi": [s["roi"] for s in stats],
        "redetections": sum(s["redetections"] for s in stats),
        "chunks": len(stats),
        "extractor": extractor,
        "settings": settings,
        "elapsed_s": round(wall, 2),  # from queueing to assembly
    }
    if lost > max(2, 0.02 * job.info.frames):
        quality["truncated"] = (
            f"the video ended after {read} of {job.info.frames} frames (truncated or corrupt?); "
            "the keypoints of the readable part were kept"
        )
    return rec, quality


@dataclass
class RunReport:
    entries: list[dict[str, Any]]
    manifest: Path

    @property
    def failed(self) -> list[dict[str, Any]]:
        """Inputs that failed, and truncated ones (their readable part was kept)."""
        return [e for e in self.entries if e["status"] in ("failed", "truncated")]

    def count(self, status: str) -> int:
        return sum(e["status"] == status for e in self.entries)


class _Run:
    """State of one ``extract`` call: manifest entries, progress bars, output names."""

    def __init__(
        self, opts: ExtractOptions, videos: list[Path], ignored: list[tuple[Path, str]]
    ) -> None:
        self.opts = opts
        self.manifest = opts.out / MANIFEST
        self.started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.entries: dict[Path, dict[str, Any]] = {
            v: {"input": str(v), "status": "pending", "error": None, "sha256": None, "output": None}
            for v in videos
        }
        for path, why in ignored:  # every folder entry not processed, with why
            self.entries[path] = {"input": str(path), "status": "ignored", "error": why}
        self.names: set[str] = set()
        self.finished = _finished_index(opts.out, opts.settings())
        bar = {"file": sys.stderr, "disable": not opts.progress, "dynamic_ncols": True}
        self.files = tqdm(total=len(videos), desc="videos", unit="video", position=0, **bar)
        self.frames = tqdm(total=0, desc="frames", unit="frame", position=1, **bar)

    def output_for(self, video: Path, sha: str) -> Path:
        stem = video.stem
        if stem in self.names:
            stem = f"{stem}-{sha[:8]}"
        self.names.add(stem)
        return self.opts.out / f"{stem}{SUFFIX}"

    def finish(self, video: Path, status: str, error: str | None = None, **extra: Any) -> None:
        self.entries[video].update(status=status, error=error, **extra)
        if status in ("failed", "truncated"):
            tqdm.write(f"semiofed: {status.upper()} {video}: {error}", file=sys.stderr)
        if extra.get("warning"):
            tqdm.write(f"semiofed: WARNING {video}: {extra['warning']}", file=sys.stderr)
        self.files.update(1)
        self.write_manifest()

    def write_manifest(self, finished: bool = False) -> None:
        entries = list(self.entries.values())
        atomic_write_json(
            self.manifest,
            {
                "format": "semiofed-extract-manifest",
                "version": 1,
                "started": self.started,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                if finished
                else None,
                "settings": self.opts.settings(),
                "counts": {
                    s: sum(e["status"] == s for e in entries)
                    for s in ("ok", "skipped", "truncated", "failed", "pending", "ignored")
                },
                "inputs": entries,
            },
        )


def extract(inputs: list[str | Path], opts: ExtractOptions) -> RunReport:
    """Extract keypoint recordings from ``inputs`` (files or folders) into ``opts.out``.

    Videos are probed and hashed one by one while the workers already analyse the chunks of
    earlier ones; recordings are finished in input order.
    """
    opts.out.mkdir(parents=True, exist_ok=True)
    found = find_videos(inputs, exclude=opts.out)
    videos = found.videos
    if not videos:
        left = "".join(f"; {path}: {why}" for path, why in found.ignored[:5])
        raise SemioFedError(f"no video files found in {', '.join(map(str, inputs))}{left}")
    if opts.backend.name == "tasks" or opts.backend.device == "gpu":
        with quiet_stderr():  # fail fast on missing or invalid model files
            backend = make_backend(opts.backend)
        backend.close()
        if backend.note:
            print(f"semiofed: note: {backend.note}", file=sys.stderr)
    run = _Run(opts, videos, found.ignored)
    run.write_manifest()
    with _Workers(opts, run.frames) as workers:
        jobs: list[Job] = []
        for video in videos:
            job = _plan(video, run)
            if job is not None:
                workers.submit(job)
                jobs.append(job)
                run.frames.total += job.frames
                run.frames.refresh()
        for job in jobs:
            _finish_job(job, run)
    run.write_manifest(finished=True)
    run.files.close()
    run.frames.close()
    return RunReport(list(run.entries.values()), run.manifest)


def _plan(video: Path, run: _Run) -> Job | None:
    """Probe and hash ``video``; a Job if it needs work, else its manifest entry is final."""
    opts = run.opts
    try:
        info = probe(video)
        sha = sha256_file(video)
    except VideoError as exc:
        run.finish(video, "failed", exc.problem)
        return None
    except OSError as exc:
        run.finish(video, "failed", f"cannot read the file ({exc.strerror or exc})")
        return None
    output = run.output_for(video, sha)
    settings = opts.settings()
    earlier = run.finished.get(sha, output)  # the same content, perhaps under another name
    done = _done(earlier, sha, settings)
    if done is not None:  # a truncated video stays reported as such
        status = "truncated" if done.get("truncated") else "skipped"
        run.finish(video, status, done.get("truncated"), sha256=sha, output=str(earlier))
        return None
    run.entries[video]["sha256"] = sha
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    partial = opts.out / PARTIAL_DIR / f"{output.name.removesuffix(SUFFIX)}-{sha[:16]}-{key}"
    chunks = [
        ChunkTask(
            video,
            a,
            b,
            info.fps,
            opts.fps,
            opts.backend,
            opts.roi,
            opts.motion,
            partial / f"chunk_{a:09d}_{b if b is not None else 'end'}.npz",
            opts.gate,
        )
        for a, b in plan_chunks(info, opts.workers)
    ]
    return Job(video, info, sha, output, chunks)


class _Workers:
    """The worker pool, started at the first submitted job, with a progress queue."""

    def __init__(self, opts: ExtractOptions, bar: tqdm) -> None:
        self.opts, self.bar = opts, bar
        self.pool: ProcessPoolExecutor | None = None
        self.progress: Any = None
        self.drain: threading.Thread | None = None

    def __enter__(self) -> _Workers:
        return self

    def submit(self, job: Job) -> None:
        if self.pool is None:
            ctx = mp.get_context("spawn")  # MediaPipe's threads do not survive fork()
            self.progress = ctx.Queue()
            self.pool = ProcessPoolExecutor(
                self.opts.workers,
                mp_context=ctx,
                initializer=_init_worker,
                initargs=(
                    self.progress,
                    os.getpid(),
                    str(self.opts.out / WORKER_LOG),
                    self.opts.backend,
                ),
            )
            self.drain = threading.Thread(
                target=_drain, args=(self.progress, self.bar), daemon=True
            )
            self.drain.start()
        job.t0 = time.perf_counter()
        for chunk in job.chunks:
            if chunk.partial.exists():  # finished by an interrupted earlier run
                done: Future[dict[str, Any]] = Future()
                done.set_result({})
                job.futures.append(done)
            else:
                job.futures.append(self.pool.submit(run_chunk, chunk))

    def __exit__(self, *exc: object) -> None:
        if self.pool is None:
            return
        self.pool.shutdown(wait=exc[0] is None, cancel_futures=True)
        self.progress.put(None)
        if self.drain is not None:
            self.drain.join(timeout=5)


def _drain(progress: Any, bar: tqdm) -> None:
    while (n := progress.get()) is not None:
        bar.update(n)


def _finish_job(job: Job, run: _Run) -> None:
    try:
        for fut in job.futures:
            fut.result()
        rec, quality = _assemble(job, run.opts, time.perf_counter() - job.t0)
        save_recording(rec, job.output)
        stem = job.output.name.removesuffix(SUFFIX)
        atomic_write_json(_quality_path(job.output), quality)
        preview = None
        if run.opts.preview:
            preview = write_preview(
                rec, job.output.with_name(stem + PREVIEW_SUFFIX), (job.info.width, job.info.height)
            )
        shutil.rmtree(job.chunks[0].partial.parent, ignore_errors=True)
    except BrokenProcessPool:
        run.finish(
            job.video,
            "failed",
            "a worker process crashed while decoding or analysing this video",
            sha256=job.sha256,
        )
        return
    except (VideoError, FormatError) as exc:
        run.finish(job.video, "failed", getattr(exc, "problem", str(exc)), sha256=job.sha256)
        return
    except Exception as exc:  # one bad video must not stop the others
        run.finish(job.video, "failed", f"{type(exc).__name__}: {exc}", sha256=job.sha256)
        return
    run.finish(
        job.video,
        "truncated" if quality.get("truncated") else "ok",
        quality.get("truncated"),
        sha256=job.sha256,
        output=str(job.output),
        detection_rate=quality["detection_rate"],
        warning=NOTHING_DETECTED if not any(quality["detection_rate"].values()) else None,
        quality_file=str(_quality_path(job.output)),
        preview=str(preview) if preview else None,
    )
