"""Training-time augmentation of normalised windows (numpy, one window at a time).

- :func:`mirror`: left/right mirror. Flips x, permutes pose landmarks by
  ``skeleton.POSE_MIRROR``, the face subset and motion regions by their left/right names,
  swaps the ``left_hand`` and ``right_hand`` streams (and masks), swaps left/right eye
  opening, negates head yaw and roll, and swaps the lateralisation label
  (``labels.mirror_lateralization``).
- :func:`rotate_scale`: small in-plane rotation and isotropic scaling of every coordinate
  stream about the body origin (head roll follows the rotation; ratios are unchanged).
- :func:`temporal_jitter`: random time stretch and shift of the window (linear interpolation,
  clamped at the window's edges, masks taken conservatively).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .features import FACE_NODE, STREAM_MIRROR
from .labels import mirror_lateralization

COORD_STREAMS = ("face", "body", "left_hand", "right_hand")
_N_FACE_LANDMARKS = FACE_NODE["expression"]
_EXPR, _HEAD = FACE_NODE["expression"], FACE_NODE["head"]


@dataclass(frozen=True)
class AugmentConfig:
    p_mirror: float = 0.5
    max_rotation_deg: float = 10.0
    max_scale: float = 0.1  # scale drawn from [1 - max_scale, 1 + max_scale]
    max_stretch: float = 0.1  # time stretch drawn from [1 - max_stretch, 1 + max_stretch]
    max_shift_frames: int = 3


def mirror(
    x: dict[str, np.ndarray], mask: dict[str, np.ndarray], lateralization: str
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], str]:
    """Left/right mirror image of a window (arrays ``(..., T, V, C)``, masks ``(..., T)``)."""
    out: dict[str, np.ndarray] = {}
    for stream, arr in x.items():
        m = arr[..., list(STREAM_MIRROR[stream]), :].copy()
        if stream in COORD_STREAMS:
            m[..., 0] *= -1.0
        if stream == "face":  # derived nodes are not coordinates: undo the flip, then mirror
            m[..., _EXPR, :] = arr[..., _EXPR, [1, 0, 2]]
            m[..., _HEAD, :] = arr[..., _HEAD, :] * np.array([-1.0, 1.0, -1.0], np.float32)
        out[stream] = m
    out["left_hand"], out["right_hand"] = out["right_hand"], out["left_hand"]
    new_mask = dict(mask)
    new_mask["left_hand"], new_mask["right_hand"] = mask["right_hand"], mask["left_hand"]
    return out, new_mask, mirror_lateralization(lateralization)


def rotate_scale(
    x: dict[str, np.ndarray], mask: dict[str, np.ndarray], angle: float, scale: float
) -> dict[str, np.ndarray]:
    """Rotate xy by ``angle`` radians and scale xyz by ``scale`` (derived face nodes adapted)."""
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    out = dict(x)
    for stream in COORD_STREAMS:
        arr = x[stream]
        pts = arr[..., :_N_FACE_LANDMARKS, :] if stream == "face" else arr
        rot = np.empty_like(pts)
        rot[..., 0] = c * pts[..., 0] - s * pts[..., 1]
        rot[..., 1] = s * pts[..., 0] + c * pts[..., 1]
        rot[..., 2] = pts[..., 2]
        rot *= np.float32(scale)
        if stream == "face":
            face = arr.copy()
            face[..., :_N_FACE_LANDMARKS, :] = rot
            roll = face[..., _HEAD, 2] + np.float32(angle)
            face[..., _HEAD, 2] = ((roll + np.pi) % (2 * np.pi) - np.pi) * mask["face"]
            rot = face
        out[stream] = rot
    return out


def temporal_jitter(
    x: dict[str, np.ndarray], mask: dict[str, np.ndarray], stretch: float, shift: float
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Resample one window (``(T, V, C)``) at times ``c + (t - c) * stretch + shift``."""
    t = next(iter(mask.values())).shape[0]
    centre = 0.5 * (t - 1)
    src = np.clip(centre + (np.arange(t) - centre) * stretch + shift, 0.0, t - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, t - 1)
    w = (src - lo).astype(np.float32)
    out_x, out_m = {}, {}
    for stream, arr in x.items():
        m = mask[stream]
        new_m = np.where(w > 1e-6, np.minimum(m[lo], m[hi]), m[lo]).astype(np.float32)
        ww = w[:, None, None]
        vals = arr[lo] * (1.0 - ww) + arr[hi] * ww
        out_x[stream] = (vals * new_m[:, None, None]).astype(np.float32)
        out_m[stream] = new_m
    return out_x, out_m


def augment(
    x: dict[str, np.ndarray],
    mask: dict[str, np.ndarray],
    lateralization: str,
    rng: np.random.Generator,
    cfg: AugmentConfig = AugmentConfig(),
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], str]:
    """Random mirror, rotation/scale and temporal jitter of one window."""
    if rng.random() < cfg.p_mirror:
        x, mask, lateralization = mirror(x, mask, lateralization)
    angle = np.deg2rad(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg))
    x = rotate_scale(x, mask, angle, rng.uniform(1 - cfg.max_scale, 1 + cfg.max_scale))
    x, mask = temporal_jitter(
        x,
        mask,
        rng.uniform(1 - cfg.max_stretch, 1 + cfg.max_stretch),
        rng.uniform(-cfg.max_shift_frames, cfg.max_shift_frames),
    )
    return x, mask, lateralization
