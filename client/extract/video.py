"""Finding, probing and decoding videos; frames are sampled at a target rate in a thread.

Decoding runs in a background thread (OpenCV releases the GIL while decoding) so that it
overlaps with landmark inference in the calling thread. Every frame is grabbed (demuxed and
decoded) but only the sampled ones are converted to RGB and handed on.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import queue
import stat
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
NOT_A_VIDEO = "not a video file name"
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


def _not_a_file(path: Path) -> str | None:
    """Why ``path`` (followed through symbolic links) is not a regular file, or None."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "dangling symbolic link (its target does not exist)"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        return f"cannot read it ({exc.strerror})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe), not a file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not a file"
    if stat.S_ISSOCK(mode):
        return "a socket, not a file"
    if stat.S_ISDIR(mode):
        return "symbolic link to a folder (not followed)"
    return "not a regular file"


def _folder_entries(folder: Path, skip: Path | None) -> Iterator[tuple[Path, str | None]]:
    """Every entry under ``folder`` with why it is not a video to process (None: it is one)."""
    failures: list[OSError] = []
    for root, dirs, files in os.walk(folder, onerror=failures.append):
        here = Path(root)
        if skip is not None and here.resolve().is_relative_to(skip):
            dirs.clear()
            continue
        links = [d for d in dirs if (here / d).is_symlink()]
        for name in sorted(links):
            dirs.remove(name)
            files.append(name)
        dirs.sort()
        for name in sorted(files):
            path = here / name
            why = _not_a_file(path)
            if why is None and path.name.startswith("."):
                why = "hidden file"
            elif why is None and path.suffix.lower() not in VIDEO_SUFFIXES:
                why = NOT_A_VIDEO
            yield path, why
    for exc in failures:
        yield Path(exc.filename), f"cannot list this folder ({exc.strerror})"


@dataclass(frozen=True)
class Inputs:
    """What ``inputs`` expand to: videos to process and every entry left out, with why."""

    videos: list[Path]
    ignored: list[tuple[Path, str]]


def find_videos(inputs: list[str | Path], exclude: Path | None = None) -> Inputs:
    """Expand ``inputs``: a file is taken as given, a folder means every video file under it
    (except under ``exclude``, the output folder). Every other entry of a folder, and a given
    path that is not a regular file (a FIFO, a device, a dangling link), is in ``ignored``.

    Missing paths are returned as videos (as given) so that the caller reports them per input.
    """
    skip = exclude.resolve() if exclude is not None else None
    found: list[Path] = []
    ignored: list[tuple[Path, str]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            for path, why in _folder_entries(item, skip):
                if why is None:
                    found.append(path)
                else:
                    ignored.append((path, why))
        elif item.exists() or item.is_symlink():
            why = _not_a_file(item)
            if why is None:
                found.append(item)
            else:
                ignored.append((item, why))
        else:
            found.append(item)
    unique: dict[Path, None] = {}
    for p in found:
        unique.setdefault(p.resolve() if p.exists() else p, None)
    return Inputs(list(unique), ignored)


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
