"""Synthetic test clips made from a real photograph of a person (scikit-image's astronaut).

The photo is pasted on a plain background and moved, rotated and scaled over time by a
``motion(t) -> (dx, dy, angle, scale)`` callable (pixels, degrees, factor), then written with
OpenCV's ``mp4v`` encoder. Tests use the known motion to check recovered keypoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

Motion = Callable[[float], tuple[float, float, float, float]]


@lru_cache(maxsize=1)
def astronaut_rgb() -> np.ndarray:
    """The 512×512 RGB astronaut photo (Eileen Collins), bundled with scikit-image."""
    from skimage import data

    return data.astronaut()


def still(t: float) -> tuple[float, float, float, float]:
    return 0.0, 0.0, 0.0, 1.0


def sway(amplitude: float = 40.0, period: float = 2.0) -> Motion:
    """Horizontal and vertical sway with a slight rotation, one cycle per ``period`` s."""

    def motion(t: float) -> tuple[float, float, float, float]:
        phase = 2 * math.pi * t / period
        return (
            amplitude * math.sin(phase),
            0.5 * amplitude * math.sin(2 * phase + 0.5),
            8.0 * math.sin(phase + 1.0),
            1.0,
        )

    return motion


def render_frame(
    t: float, motion: Motion, size: tuple[int, int] = (640, 480), person_scale: float = 0.85
) -> np.ndarray:
    """One BGR frame at time ``t``: the photo centred, then moved by ``motion(t)``."""
    width, height = size
    photo = astronaut_rgb()[..., ::-1]  # RGB → BGR for OpenCV
    dx, dy, angle, scale = motion(t)
    s = person_scale * min(width, height) / photo.shape[0] * scale
    centre = (photo.shape[1] / 2, photo.shape[0] / 2)
    m = cv2.getRotationMatrix2D(centre, angle, s)
    m[0, 2] += width / 2 - centre[0] + dx
    m[1, 2] += height / 2 - centre[1] + dy
    return cv2.warpAffine(
        photo, m, (width, height), flags=cv2.INTER_LINEAR, borderValue=(90, 100, 110)
    )


def make_moving_clip(
    path: str | Path,
    seconds: float,
    fps: float,
    motion: Motion = still,
    size: tuple[int, int] = (640, 480),
    fourcc: str = "mp4v",
) -> Path:
    """Write a clip (codec ``fourcc``) of ``seconds`` at ``fps`` of the moving astronaut;
    returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    try:
        for i in range(round(seconds * fps)):
            writer.write(render_frame(i / fps, motion, size))
    finally:
        writer.release()
    return path


#: Pixel position of the nose in the 512×512 astronaut photo (MediaPipe Pose on the photo).
NOSE_IN_PHOTO = (222.0, 129.0)


def nose_track(
    times: np.ndarray,
    motion: Motion,
    size: tuple[int, int] = (640, 480),
    person_scale: float = 0.85,
) -> np.ndarray:
    """Where :func:`render_frame` puts the photo's nose at ``times``: (T, 2), normalised x, y."""
    photo = astronaut_rgb()
    centre = (photo.shape[1] / 2, photo.shape[0] / 2)
    out = []
    for t in times:
        dx, dy, angle, scale = motion(float(t))
        m = cv2.getRotationMatrix2D(
            centre, angle, person_scale * min(size) / photo.shape[0] * scale
        )
        m[0, 2] += size[0] / 2 - centre[0] + dx
        m[1, 2] += size[1] / 2 - centre[1] + dy
        out.append(m @ np.array([*NOSE_IN_PHOTO, 1.0]))
    return np.array(out) / np.array(size, dtype=float)
