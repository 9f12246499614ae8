"""Optical-flow motion energy per body region (the model's optional motion stream).

Dense Farnebäck flow is computed between consecutive analysed frames, downscaled to
``FLOW_WIDTH`` pixels wide. For each body region of :data:`semiofed.shared.skeleton.REGIONS`
the energy is the mean squared flow speed inside the box around that region's landmarks,
in (frame widths per second)². It is NaN where the region was not located or when there
is no previous frame (the first analysed frame of a video or chunk).
"""

from __future__ import annotations

import cv2
import numpy as np

from semiofed.shared.skeleton import REGION_NAMES, REGIONS

from .backends import Landmarks

FLOW_WIDTH = 160
BOX_PAD = 0.04  # padding around a region's landmarks, in frame widths
UNITS = "mean squared optical-flow speed in (frame widths / s)^2"


def _points(lm: Landmarks, region: str) -> np.ndarray | None:
    pts = []
    for stream, index in REGIONS[region]:
        arr = getattr(lm, stream)
        if arr is None or (stream == "pose" and arr[index, 3] < 0.5):
            continue
        pts.append(arr[index, :2])
    return np.array(pts) if pts else None


class MotionMeter:
    """Feed analysed frames in order; returns one energy per region for each."""

    regions: tuple[str, ...] = REGION_NAMES

    def __init__(self) -> None:
        self._prev: np.ndarray | None = None
        self._prev_t = 0.0

    def update(self, rgb: np.ndarray, t: float, lm: Landmarks) -> np.ndarray:
        h, w = rgb.shape[:2]
        size = (FLOW_WIDTH, max(1, round(h * FLOW_WIDTH / w)))
        gray = cv2.cvtColor(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
        energy = np.full(len(self.regions), np.nan, dtype=np.float32)
        if self._prev is not None and t > self._prev_t:
            flow = cv2.calcOpticalFlowFarneback(self._prev, gray, None, 0.5, 2, 9, 2, 5, 1.1, 0)
            speed2 = (flow**2).sum(axis=2) * (1.0 / (FLOW_WIDTH * (t - self._prev_t))) ** 2
            gh, gw = gray.shape
            for i, region in enumerate(self.regions):
                pts = _points(lm, region)
                if pts is None:
                    continue
                x0 = int(np.clip((pts[:, 0].min() - BOX_PAD) * gw, 0, gw - 1))
                x1 = int(np.clip((pts[:, 0].max() + BOX_PAD) * gw, x0 + 1, gw))
                pad_y = BOX_PAD * gw / gh
                y0 = int(np.clip((pts[:, 1].min() - pad_y) * gh, 0, gh - 1))
                y1 = int(np.clip((pts[:, 1].max() + pad_y) * gh, y0 + 1, gh))
                energy[i] = float(speed2[y0:y1, x0:x1].mean())
        self._prev, self._prev_t = gray, t
        return energy
