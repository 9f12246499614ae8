"""Motion gate: where Holistic runs at the full analysis rate, and where a keep-alive rate will do.

Monitoring video is mostly a patient lying still. An :class:`ActivityMeter` scores every
sampled frame cheaply (downscaled to ~``GATE_WIDTH`` px wide, grey; the fraction of pixels that
changed by more than ``PIXEL_DELTA`` grey levels since the frame ``DIFF_S`` earlier; ~0.3 ms a
frame at 640×480). The :class:`Gate` turns the scores into decisions:

* closed (still): one frame every ``1 / keepalive_fps`` s is analysed (keep-alive), the others
  wait in a look-back buffer of the last ``LOOKBACK_S`` s of decoded frames;
* a score ≥ ``OPEN_FRACTION`` opens it: the buffered frames are analysed first, in order, so the
  frames just before the movement was noticed are analysed at full rate too; then every frame;
* it closes again only after ``HOLD_S`` s in which every score stayed below ``CLOSE_FRACTION``
  (hysteresis: it does not flicker between jerks).

Frames never analysed are interpolated later between the analysed frames around them (see
:func:`.smoothing.bridge_unanalysed`) and flagged in the recording
(:data:`semiofed.shared.recording.NOT_ANALYSED`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Generic, TypeVar

import cv2
import numpy as np

from semiofed.shared.recording import FULL_RATE, KEEPALIVE, NOT_ANALYSED

from .settings import KEEPALIVE_FPS

GATE_WIDTH = 80  # target width of the frames the activity is measured on (px)
PIXEL_DELTA = 12  # grey-level change that counts a downscaled pixel as changed
DIFF_S = 0.2  # frames are compared with the one this long before
OPEN_FRACTION = 0.002  # changed pixels that open the gate (≈ a 25×25 px patch at 640×480)
CLOSE_FRACTION = 0.001  # below this the frame counts as still
LOOKBACK_S = 1.0  # decoded frames kept for analysis when the gate opens
HOLD_S = 1.0  # still time before the gate closes

Item = TypeVar("Item")


@dataclass(frozen=True)
class GateSettings:
    """The gate's parameters (recorded in the extraction settings of every recording)."""

    keepalive_fps: float = KEEPALIVE_FPS
    open_fraction: float = OPEN_FRACTION
    close_fraction: float = CLOSE_FRACTION
    lookback_s: float = LOOKBACK_S
    hold_s: float = HOLD_S
    pixel_delta: int = PIXEL_DELTA
    diff_s: float = DIFF_S
    width: int = GATE_WIDTH

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ActivityMeter:
    """Feed sampled frames in order; :meth:`score` is the fraction of changed pixels."""

    def __init__(self, fps: float, settings: GateSettings) -> None:
        self.settings = settings
        self._history: deque[np.ndarray] = deque(maxlen=max(1, round(settings.diff_s * fps)))

    def score(self, rgb: np.ndarray) -> float:
        """0 for the first frame; else the changed fraction against the frame ``diff_s`` back
        (or the oldest one seen)."""
        h, w = rgb.shape[:2]
        f = max(1, w // self.settings.width)  # whole-pixel blocks: OpenCV's fast area path
        block = rgb[: h // f * f, : w // f * f]
        small = cv2.resize(block, (w // f, h // f), interpolation=cv2.INTER_AREA)
        grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        score = 0.0
        if self._history:
            diff = cv2.absdiff(grey, self._history[0])
            score = np.count_nonzero(diff > self.settings.pixel_delta) / diff.size
        self._history.append(grey)
        return score


class Gate(Generic[Item]):
    """Decides, frame by frame, which sampled frames are analysed and at which rate.

    :meth:`push` takes each sampled frame's time, activity score and payload, in order, and
    returns the frames decided so far as ``(payload, code)`` with ``code`` one of
    ``FULL_RATE``, ``KEEPALIVE``, ``NOT_ANALYSED``, in time order; :meth:`finish` decides the
    rest at the end of the stream (its last frame is analysed, so every frame that is not lies
    between two that are). ``fps`` is the rate of the sampled frames.
    """

    def __init__(self, fps: float, settings: GateSettings) -> None:
        self.settings = settings
        self._keepalive_s = 1.0 / settings.keepalive_fps - 0.5 / fps
        self._buffer: deque[tuple[float, Item]] = deque()
        self._open = False
        self._last_analysed = -float("inf")
        self._last_active = -float("inf")

    def push(self, t: float, score: float, item: Item) -> list[tuple[Item, int]]:
        s = self.settings
        out: list[tuple[Item, int]] = []
        if not self._open and score >= s.open_fraction:
            self._open, self._last_active = True, t
            out += [(b, FULL_RATE) for _, b in self._buffer]
            self._buffer.clear()
        if self._open:
            if score >= s.close_fraction:
                self._last_active = t
            out.append((item, FULL_RATE))
            self._last_analysed = t
            self._open = t - self._last_active < s.hold_s
            return out
        if t - self._last_analysed >= self._keepalive_s:
            out += [(b, NOT_ANALYSED) for _, b in self._buffer]
            self._buffer.clear()
            out.append((item, KEEPALIVE))
            self._last_analysed = t
            return out
        self._buffer.append((t, item))
        while t - self._buffer[0][0] > s.lookback_s:
            out.append((self._buffer.popleft()[1], NOT_ANALYSED))
        return out

    def finish(self) -> list[tuple[Item, int]]:
        items = [b for _, b in self._buffer]
        self._buffer.clear()
        return [(b, NOT_ANALYSED) for b in items[:-1]] + [(b, KEEPALIVE) for b in items[-1:]]
