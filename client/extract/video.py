"""Finding, probing and decoding videos; frames are sampled at a target rate in a thread.

Decoding runs in a background thread (OpenCV releases the GIL while decoding) so that it
overlaps with landmark inference in the calling thread. Every frame is grabbed (demuxed and
decoded) but only the sampled ones are converted to RGB and handed on.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from semiofed.shared.errors import SemioFedError

VIDEO_SUFFIXES = frozenset(
    {
        ".mp4",
        ".m4v",
        ".mov",
        ".avi",
        ".mkv",
        ".webm",
        ".mpg",
        ".mpeg",
        ".wmv",
        ".flv",
        ".ts",
        ".mts",
    }
)
QUEUE_FRAMES = 8  # decoded frames buffered ahead of inference

# Bad files are reported by VideoError; FFmpeg's and OpenCV's own console chatter is silenced.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


class VideoError(SemioFedError):
    """A video cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def find_videos(inputs: list[str | Path], exclude: Path | None = None) -> list[Path]:
    """Expand ``inputs``: a file is taken as given, a folder means every video file under it
    (except under ``exclude``, the output folder).

    Missing paths are returned too (as given) so that the caller reports them per input.
    """
    skip = exclude.resolve() if exclude is not None else None
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found.extend(
                sorted(
                    p
                    for p in item.rglob("*")
                    if p.is_file()
                    and p.suffix.lower() in VIDEO_SUFFIXES
                    and not p.name.startswith(".")
                    and (skip is None or not p.resolve().is_relative_to(skip))
                )
            )
        else:
            found.append(item)
    unique: dict[Path, None] = {}
    for p in found:
        unique.setdefault(p.resolve() if p.exists() else p, None)
    return list(unique)


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    frames: int  # frame count from the container (may be an estimate)
    fps: float
    width: int
    height: int

    @property
    def duration(self) -> float:
        return self.frames / self.fps


def open_capture(path: Path) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        raise VideoError(
            path,
            "OpenCV cannot open it as a video (not a video file, truncated, or an unsupported codec)",
        )
    return cap


def probe(path: Path) -> VideoInfo:
    """Check that ``path`` is a readable video and read its size, rate and length."""
    if not path.exists():
        raise VideoError(path, "file does not exist")
    if not path.is_file():
        raise VideoError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise VideoError(path, "file is empty (0 bytes)")
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise VideoError(path, f"cannot read the file ({exc.strerror or exc})") from None
    cap = open_capture(path)
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        ok, frame = cap.read()
    finally:
        cap.release()
    if not ok or frame is None:
        raise VideoError(path, "no frame could be decoded (truncated or corrupt video)")
    if not (math.isfinite(fps) and 0 < fps <= 1000):
        raise VideoError(path, f"the container reports an invalid frame rate ({fps})")
    if frames <= 0:
        raise VideoError(path, "the container reports no frames (truncated or corrupt video)")
    return VideoInfo(path, frames, fps, width or frame.shape[1], height or frame.shape[0])


def is_sampled(index: int, src_fps: float, target_fps: float) -> bool:
    """Whether frame ``index`` is on the sampling grid ``round(k · src_fps / target_fps)``.

    The grid depends only on the frame index, so chunks of one video agree on it.
    """
    if target_fps >= src_fps:
        return True
    ratio = src_fps / target_fps
    k = math.floor(index / ratio + 0.5)
    return any(round(j * ratio) == index for j in (k - 1, k, k + 1) if j >= 0)


def count_sampled(start: int, stop: int, src_fps: float, target_fps: float) -> int:
    return sum(is_sampled(i, src_fps, target_fps) for i in range(start, stop))


@dataclass
class DecodeStats:
    read: int = 0  # frames demuxed and decoded
    decoded: int = 0  # sampled frames converted to images for analysis
    dropped: int = 0  # sampled frames that failed to convert


class FrameReader:
    """Iterate ``(frame_index, rgb)`` over sampled frames of ``[start, stop)`` (``stop=None``:
    to the end), decoding in a background thread."""

    def __init__(
        self, path: Path, start: int, stop: int | None, src_fps: float, target_fps: float
    ) -> None:
        self.path, self.start, self.stop = path, start, stop
        self.src_fps, self.target_fps = src_fps, target_fps
        self.stats = DecodeStats()
        self._queue: queue.Queue[tuple[int, np.ndarray] | BaseException | None] = queue.Queue(
            QUEUE_FRAMES
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="decode", daemon=True)

    def __enter__(self) -> FrameReader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)
        self._thread.join()

    def _put(self, item: tuple[int, np.ndarray] | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            cap = open_capture(self.path)
            try:
                index = self._seek(cap)
                while (self.stop is None or index < self.stop) and not self._stop.is_set():
                    if not cap.grab():
                        break
                    self.stats.read += 1
                    if is_sampled(index, self.src_fps, self.target_fps):
                        ok, bgr = cap.retrieve()
                        if ok and bgr is not None:
                            self.stats.decoded += 1
                            if not self._put((index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))):
                                return
                        else:
                            self.stats.dropped += 1
                    index += 1
            finally:
                cap.release()
            self._put(None)
        except BaseException as exc:  # handed to the consuming thread
            self._put(exc)

    def _seek(self, cap: cv2.VideoCapture) -> int:
        if self.start == 0:
            return 0
        cap.set(cv2.CAP_PROP_POS_FRAMES, self.start)
        if int(cap.get(cv2.CAP_PROP_POS_FRAMES)) == self.start:
            return self.start
        cap.set(cv2.CAP_PROP_POS_FRAMES, 0)  # inexact seek: decode forward instead
        for _ in range(self.start):
            if not cap.grab():
                raise VideoError(self.path, f"video ended before frame {self.start}")
        return self.start

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
