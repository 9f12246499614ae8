"""Body-centric normalisation of keypoints.

Body, hands: the origin is the mid-point between the shoulder mid-point and the hip mid-point,
the unit is the torso length (shoulder mid-point to hip mid-point, in the image plane), and —
with rotation normalisation on — the image plane is rotated so the torso points up (−y).
All three are *averaged over a centred span* (default 5 s) of frames with a detected pose
rather than taken frame by frame: per-frame centring would erase whole-body movement
(hyperkinetic seizures), while a slowly moving reference still removes where the patient lies,
how far the camera is and how it is turned. Frames whose span holds no pose take the nearest
reference in time; a recording with no pose at all is centred on the image with a nominal torso
of ``NOMINAL_TORSO`` of the frame height. ``z`` (already relative in MediaPipe) is only scaled.

Face: face-centric per frame, origin the nose bridge, unit the 3-D distance between the outer
eye corners (nearly invariant to head turns), rotated like the body so head roll relative to the
body stays visible.

Translation, scaling (and, with rotation on, in-plane rotation) of a recording leave the
normalised coordinates unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .skeleton import POSE

NOMINAL_TORSO = 0.3  # fraction of the frame height, when a recording has no pose at all
_EPS = 1e-6


@dataclass
class Reference:
    """Per-frame body reference: xy origin (T, 2), scale (T,), rotation cos/sin (T,)."""

    origin: np.ndarray
    scale: np.ndarray
    cos: np.ndarray
    sin: np.ndarray


def aspect_correct(points: np.ndarray, aspect: float) -> np.ndarray:
    """x and z times width/height, so a unit along x equals a unit along y (float32 copy)."""
    out = np.array(points[..., :3], dtype=np.float32)
    if aspect != 1.0:
        out[..., 0] *= aspect
        out[..., 2] *= aspect
    return out


def _centred_mean(
    values: np.ndarray, valid: np.ndarray, span: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``values`` (T, K) over valid frames within ±span/2; and whether any was valid."""
    t = values.shape[0]
    v = np.where(valid[:, None], values, 0.0).astype(np.float64)
    csum = np.concatenate([np.zeros((1, v.shape[1])), np.cumsum(v, axis=0)])
    ccnt = np.concatenate([[0], np.cumsum(valid.astype(np.int64))])
    half = span // 2
    lo = np.clip(np.arange(t) - half, 0, t)
    hi = np.clip(np.arange(t) + half + 1, 0, t)
    cnt = ccnt[hi] - ccnt[lo]
    mean = (csum[hi] - csum[lo]) / np.maximum(cnt, 1)[:, None]
    return mean, cnt > 0


def _hold_nearest(values: np.ndarray, has: np.ndarray) -> np.ndarray:
    """Fill frames without a value with the value of the nearest frame that has one."""
    t = len(has)
    idx = np.arange(t)
    prev = np.maximum.accumulate(np.where(has, idx, -1))
    nxt = np.minimum.accumulate(np.where(has, idx, t)[::-1])[::-1]
    use_prev = (prev >= 0) & ((nxt >= t) | (idx - prev <= nxt - idx))
    src = np.where(use_prev, prev, nxt)
    return values[src]


def body_reference(
    pose: np.ndarray, valid: np.ndarray, span: int, rotate: bool, aspect: float = 1.0
) -> Reference:
    """Smoothed body reference from aspect-corrected pose xyz (T, 33, 3) and its validity (T,)."""
    t = pose.shape[0]
    xy = pose[..., :2].astype(np.float64)
    shoulders = 0.5 * (xy[:, POSE["left_shoulder"]] + xy[:, POSE["right_shoulder"]])
    hips = 0.5 * (xy[:, POSE["left_hip"]] + xy[:, POSE["right_hip"]])
    origin = 0.5 * (shoulders + hips)
    axis = shoulders - hips
    length = np.linalg.norm(axis, axis=-1)
    ok = valid & np.isfinite(length) & (length > _EPS)
    unit = axis / np.maximum(length, _EPS)[:, None]
    stacked = np.concatenate([origin, length[:, None], unit], axis=1)
    mean, has = _centred_mean(np.nan_to_num(stacked), ok, span)
    if not has.any():
        return Reference(
            origin=np.tile(np.array([0.5 * aspect, 0.5], dtype=np.float32), (t, 1)),
            scale=np.full(t, NOMINAL_TORSO, dtype=np.float32),
            cos=np.ones(t, dtype=np.float32),
            sin=np.zeros(t, dtype=np.float32),
        )
    mean = _hold_nearest(mean, has)
    if rotate:
        # rotate by alpha so the mean torso direction phi maps to -pi/2 (up in image coordinates)
        phi = np.arctan2(mean[:, 4], mean[:, 3])
        alpha = -0.5 * np.pi - phi
        cos, sin = np.cos(alpha), np.sin(alpha)
    else:
        cos, sin = np.ones(t), np.zeros(t)
    return Reference(
        origin=mean[:, :2].astype(np.float32),
        scale=np.maximum(mean[:, 2], _EPS).astype(np.float32),
        cos=cos.astype(np.float32),
        sin=sin.astype(np.float32),
    )


def _rotate_xy(pts: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    out = pts.copy()
    c, s = cos[:, None], sin[:, None]
    out[..., 0] = c * pts[..., 0] - s * pts[..., 1]
    out[..., 1] = s * pts[..., 0] + c * pts[..., 1]
    return out


def apply_reference(points: np.ndarray, ref: Reference) -> np.ndarray:
    """Normalise aspect-corrected xyz points (T, V, 3) into the body frame."""
    out = points.astype(np.float32, copy=True)
    out[..., :2] -= ref.origin[:, None, :]
    out = _rotate_xy(out, ref.cos, ref.sin)
    out /= ref.scale[:, None, None]
    return out


def face_centric(
    face: np.ndarray, ref: Reference, origin_node: int, eye_a: int, eye_b: int
) -> tuple[np.ndarray, np.ndarray]:
    """Face landmarks (T, V, 3) centred on ``origin_node``, unit = |eye_a - eye_b| (3-D),
    rotated like the body; returns the points and a (T,) bool of frames with a usable scale."""
    scale = np.linalg.norm(face[:, eye_a] - face[:, eye_b], axis=-1)
    ok = np.isfinite(scale) & (scale > _EPS)
    out = face - face[:, origin_node : origin_node + 1, :]
    out = _rotate_xy(out, ref.cos, ref.sin)
    out /= np.where(ok, scale, 1.0)[:, None, None]
    return out.astype(np.float32), ok
