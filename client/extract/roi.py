"""Region of interest: the bed or person area that landmarks are searched in.

A fixed ROI comes from ``--roi X,Y,W,H`` (pixels). Otherwise the ROI is found automatically:
frames are analysed whole until the first confident pose, whose landmarks (with a generous
margin) define the ROI. When the person is lost inside an automatic ROI for a few analysed
frames, the ROI is dropped and the whole frame is searched again (re-detection).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from semiofed.shared.errors import SemioFedError

from .backends import Landmarks

CONFIDENT_VISIBILITY = 0.6  # mean visibility of the upper body for a "confident" pose
MARGIN = 0.6  # ROI = landmark box grown by this fraction of its size on every side
MIN_FRACTION = 0.4  # an automatic ROI covers at least this fraction of each frame side
LOST_FRAMES = 3  # analysed frames without a pose before the whole frame is searched again
UPPER_BODY = np.arange(0, 25)  # face, shoulders, arms, hips


@dataclass(frozen=True)
class Roi:
    x: int
    y: int
    w: int
    h: int

    def __str__(self) -> str:
        return f"{self.x},{self.y},{self.w},{self.h}"


def parse_roi(text: str) -> Roi:
    """Parse ``X,Y,W,H`` (pixels, W and H > 0)."""
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise SemioFedError(f"--roi {text!r}: expected X,Y,W,H as four integers (pixels)") from None
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise SemioFedError(f"--roi {text!r}: X and Y must be ≥ 0, W and H > 0")
    return Roi(x, y, w, h)


def fit_roi(roi: Roi, width: int, height: int) -> Roi:
    """Clip ``roi`` to a ``width``×``height`` frame; error if nothing is left."""
    x0, y0 = min(roi.x, width), min(roi.y, height)
    x1, y1 = min(roi.x + roi.w, width), min(roi.y + roi.h, height)
    if x1 - x0 < 16 or y1 - y0 < 16:
        raise SemioFedError(f"--roi {roi} lies outside the {width}×{height} video")
    return Roi(x0, y0, x1 - x0, y1 - y0)


def crop(frame: np.ndarray, roi: Roi | None) -> np.ndarray:
    if roi is None:
        return frame
    return frame[roi.y : roi.y + roi.h, roi.x : roi.x + roi.w]


def to_frame_coords(lm: Landmarks, roi: Roi | None, width: int, height: int) -> Landmarks:
    """Map landmarks normalised to the ROI crop back to normalised whole-frame coordinates."""
    if roi is None:
        return lm
    scale = np.array([roi.w / width, roi.h / height, roi.w / width], dtype=np.float32)
    offset = np.array([roi.x / width, roi.y / height, 0.0], dtype=np.float32)

    def one(a: np.ndarray | None) -> np.ndarray | None:
        if a is None:
            return None
        out = a.copy()
        out[:, :3] = a[:, :3] * scale + offset
        return out

    return Landmarks(*(one(a) for a in lm))


def confident(lm: Landmarks) -> bool:
    return lm.pose is not None and float(np.mean(lm.pose[UPPER_BODY, 3])) >= CONFIDENT_VISIBILITY


def roi_around(lm: Landmarks, width: int, height: int) -> Roi:
    """A ROI around the visible landmarks of ``lm`` (whole-frame coordinates), with margin."""
    pts = [lm.pose[lm.pose[:, 3] >= 0.5, :2]] if lm.pose is not None else []
    pts += [a[:, :2] for a in (lm.face, lm.left_hand, lm.right_hand) if a is not None]
    xy = np.concatenate(pts) * np.array([width, height])
    (x0, y0), (x1, y1) = xy.min(0), xy.max(0)
    w = max((x1 - x0) * (1 + 2 * MARGIN), MIN_FRACTION * width)
    h = max((y1 - y0) * (1 + 2 * MARGIN), MIN_FRACTION * height)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = int(max(0, cx - w / 2)), int(max(0, cy - h / 2))
    right, bottom = int(min(width, cx + w / 2)), int(min(height, cy + h / 2))
    return Roi(left, top, right - left, bottom - top)


class RoiTracker:
    """Which part of the frame to analyse next; tells the caller when tracking must restart."""

    def __init__(self, width: int, height: int, fixed: Roi | None = None) -> None:
        self.width, self.height = width, height
        self.fixed = fit_roi(fixed, width, height) if fixed is not None else None
        self.current: Roi | None = self.fixed
        self.lost = 0
        self.redetections = 0

    def update(self, lm: Landmarks) -> bool:
        """Feed the whole-frame landmarks of the last frame; True if the ROI changed."""
        if self.fixed is not None:
            return False
        if self.current is None:
            if confident(lm):
                self.current = roi_around(lm, self.width, self.height)
                self.lost = 0
                return True
            return False
        self.lost = 0 if lm.pose is not None else self.lost + 1
        if self.lost >= LOST_FRAMES:
            self.current, self.lost = None, 0
            self.redetections += 1
            return True
        return False
