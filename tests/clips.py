"""Synthetic test clips made from a real photograph of a person (scikit-image's astronaut).

The photo is pasted on a plain background (or a real texture, :func:`brick_wall`) and moved,
rotated and scaled over time by a ``motion(t) -> (dx, dy, angle, scale)`` callable (pixels,
degrees, factor), optionally with camera noise, then written with OpenCV's ``mp4v`` encoder.
Tests use the known motion to check recovered keypoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

Motion = Callable[[float], tuple[float, float, float, float]]
PERSON_SCALE = 0.85  # photo height as a fraction of the frame's smaller side


@lru_cache(maxsize=1)
def astronaut_rgb() -> np.ndarray:
    """The 512×512 RGB astronaut photo (Eileen Collins), bundled with scikit-image."""
    from skimage import data

    return data.astronaut()


def still(t: float) -> tuple[float, float, float, float]:
    return 0.0, 0.0, 0.0, 1.0


def bursts(
    spans: Sequence[tuple[float, float]], amplitude: float = 40.0, period: float = 2.0
) -> Motion:
    """Still, except during each ``(start, seconds)`` span: from rest at ``start`` the photo
    sways, rotates and breathes in scale (one cycle per ``period`` s); spans lasting a multiple
    of ``period / 2`` end at rest, so the picture never jumps."""

    def motion(t: float) -> tuple[float, float, float, float]:
        for start, seconds in spans:
            if start <= t < start + seconds:
                phase = 2 * math.pi * (t - start) / period
                return (
                    amplitude * math.sin(phase),
                    0.5 * amplitude * math.sin(2 * phase),
                    8.0 * math.sin(phase),
                    1.0 + 0.05 * math.sin(phase),
                )
        return still(t)

    return motion


def brick_wall(size: tuple[int, int] = (640, 480)) -> np.ndarray:
    """A BGR background of ``size``: scikit-image's photo of a brick wall, dimmed."""
    from skimage import data

    wall = cv2.resize(data.brick(), size, interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor((wall * 0.6 + 40).astype(np.uint8), cv2.COLOR_GRAY2BGR)


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
    t: float,
    motion: Motion,
    size: tuple[int, int] = (640, 480),
    person_scale: float = PERSON_SCALE,
    background: np.ndarray | None = None,
) -> np.ndarray:
    """One BGR frame at time ``t``: the photo centred, then moved by ``motion(t)``, on a
    plain background or on ``background`` (BGR, of ``size``)."""
    return _render(motion(t), size, person_scale, background)


def _render(
    params: tuple[float, float, float, float],
    size: tuple[int, int],
    person_scale: float,
    background: np.ndarray | None,
) -> np.ndarray:
    width, height = size
    photo = astronaut_rgb()[..., ::-1]  # RGB → BGR for OpenCV
    dx, dy, angle, scale = params
    s = person_scale * min(width, height) / photo.shape[0] * scale
    centre = (photo.shape[1] / 2, photo.shape[0] / 2)
    m = cv2.getRotationMatrix2D(centre, angle, s)
    m[0, 2] += width / 2 - centre[0] + dx
    m[1, 2] += height / 2 - centre[1] + dy
    if background is None:
        return cv2.warpAffine(
            photo, m, (width, height), flags=cv2.INTER_LINEAR, borderValue=(90, 100, 110)
        )
    out = background.copy()
    cv2.warpAffine(
        photo,
        m,
        (width, height),
        dst=out,
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_TRANSPARENT,
    )
    return out


def make_moving_clip(
    path: str | Path,
    seconds: float,
    fps: float,
    motion: Motion = still,
    size: tuple[int, int] = (640, 480),
    fourcc: str = "mp4v",
    background: np.ndarray | None = None,
    noise: float = 0.0,
) -> Path:
    """Write a clip (codec ``fourcc``) of ``seconds`` at ``fps`` of the moving astronaut;
    returns ``path``. ``noise``: standard deviation (grey levels) of the camera noise added
    to every frame (a fixed, seeded pattern per frame, cycling through 8)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    rng = np.random.default_rng(0)
    grain = [rng.normal(0.0, noise, (size[1], size[0], 1)).astype(np.int16) for _ in range(8)]
    last: tuple[float, float, float, float] | None = None
    frames: dict[int, np.ndarray] = {}  # the current picture with each noise pattern
    try:
        for i in range(round(seconds * fps)):
            params = motion(i / fps)
            if params != last:  # still stretches reuse the rendered frames
                last, frames = params, {}
                clean = _render(params, size, PERSON_SCALE, background)
            k = i % len(grain)
            if k not in frames:
                frames[k] = (
                    np.clip(clean + grain[k], 0, 255).astype(np.uint8) if noise > 0 else clean
                )
            writer.write(frames[k])
    finally:
        writer.release()
    return path


#: Pixel position of the nose in the 512×512 astronaut photo (MediaPipe Pose on the photo).
NOSE_IN_PHOTO = (222.0, 129.0)


def nose_track(
    times: np.ndarray,
    motion: Motion,
    size: tuple[int, int] = (640, 480),
    person_scale: float = PERSON_SCALE,
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
