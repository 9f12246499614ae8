"""Body-centric trajectories of the body regions in :data:`semiofed.shared.skeleton.REGIONS`.

Each region's position is the mean of its landmarks (image x, y; MediaPipe's z is too noisy
for kinematics) relative to an *anchor* that removes the movement of the body part it hangs
from, so that e.g. a clonic arm shows up in the arm and not in the trunk:

==============  =========================================================================
region          anchor
==============  =========================================================================
head            mid-shoulder point (head turning and nodding relative to the torso)
face            centroid of the whole face mesh (facial muscles, not head movement)
left/right_arm  shoulder of the same side
left/right_hand pose wrist of the same side (grip, wrist and finger movement)
trunk           the recording's median trunk position (whole-body rocking, pelvic thrusting)
left/right_leg  hip of the same side
==============  =========================================================================

Coordinates are aspect-corrected (x × width/height) and divided by the recording's median
shoulder width ("body units"), so speeds read in shoulder widths per second and do not depend
on camera distance. A hand frame whose wrist lies more than ``MAX_HAND_OFFSET`` body units
from the pose wrist of its side is dropped (swapped hands, a staff member's hand). Short gaps
(≤ 0.5 s) are linearly interpolated; longer gaps stay NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from semiofed.shared.features import frame_aspect
from semiofed.shared.recording import Recording
from semiofed.shared.skeleton import POSE, REGIONS

MAX_GAP_S = 0.5
MAX_HAND_OFFSET = 0.5  # body units between hand-model wrist and pose wrist

_ANCHORS: dict[str, tuple[tuple[str, int], ...] | str] = {
    "head": (("pose", POSE["left_shoulder"]), ("pose", POSE["right_shoulder"])),
    "face": "face_centroid",
    "left_arm": (("pose", POSE["left_shoulder"]),),
    "right_arm": (("pose", POSE["right_shoulder"]),),
    "left_hand": (("pose", POSE["left_wrist"]),),
    "right_hand": (("pose", POSE["right_wrist"]),),
    "trunk": "recording_median",
    "left_leg": (("pose", POSE["left_hip"]),),
    "right_leg": (("pose", POSE["right_hip"]),),
}


@dataclass
class RegionSignals:
    """Per-region body-centric positions (T, 2) and speeds (T,), NaN where unobserved."""

    times: np.ndarray
    fps: float
    positions: dict[str, np.ndarray]
    speed: dict[str, np.ndarray]
    body_unit: float  # shoulder width in normalised image units

    def observed(self, region: str) -> float:
        """Fraction of frames where the region was observed."""
        return float(np.mean(np.isfinite(self.positions[region][:, 0])))


def xy(rec: Recording, stream: str, index: int | slice = slice(None)) -> np.ndarray:
    """Landmark x, y with x scaled by the frame's aspect ratio (isotropic, height units)."""
    p = rec.stream(stream)[:, index, :2].astype(np.float64)
    p[..., 0] *= frame_aspect(rec)
    return p


def _points(rec: Recording, refs: tuple[tuple[str, int], ...]) -> np.ndarray:
    """Mean xy (T, 2) of the given landmarks; NaN where any is absent."""
    return np.mean(np.stack([xy(rec, stream, idx) for stream, idx in refs], axis=0), axis=0)


def interpolate_gaps(x: np.ndarray, max_gap: int) -> np.ndarray:
    """Linearly fill NaN runs of at most ``max_gap`` samples inside the observed span (per column)."""
    x = np.array(x, dtype=np.float64, copy=True)
    flat = x.reshape(len(x), -1)
    idx = np.arange(len(x))
    for c in range(flat.shape[1]):
        col = flat[:, c]
        ok = np.isfinite(col)
        if ok.sum() < 2 or ok.all():
            continue
        filled = np.interp(idx, idx[ok], col[ok])
        bad = ~ok
        starts = np.flatnonzero(bad & ~np.r_[False, bad[:-1]])
        ends = np.flatnonzero(bad & ~np.r_[bad[1:], False]) + 1
        for s, e in zip(starts, ends, strict=True):
            if s > 0 and e < len(col) and e - s <= max_gap:
                col[s:e] = filled[s:e]
    return flat.reshape(x.shape)


def body_unit(rec: Recording) -> float:
    """Median shoulder width in normalised image units (0.25 of the frame when no pose)."""
    left = xy(rec, "pose", POSE["left_shoulder"])
    right = xy(rec, "pose", POSE["right_shoulder"])
    width = np.linalg.norm(left - right, axis=1)
    width = width[np.isfinite(width) & (width > 1e-4)]
    return float(np.median(width)) if width.size else 0.25


def smooth(x: np.ndarray, n: int) -> np.ndarray:
    """Centred moving average over ``n`` samples that ignores NaN (NaN where all are NaN)."""
    if n <= 1:
        return x.astype(np.float64)
    ok = np.isfinite(x)
    kernel = np.ones(n)
    num = np.convolve(np.where(ok, x, 0.0), kernel, mode="same")
    den = np.convolve(ok.astype(np.float64), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[den == 0] = np.nan
    return out


def region_signals(rec: Recording, smooth_s: float = 0.2) -> RegionSignals:
    """Body-centric region trajectories and speeds of one recording."""
    fps = float(rec.fps)
    unit = body_unit(rec)
    max_gap = max(1, round(MAX_GAP_S * fps))
    positions: dict[str, np.ndarray] = {}
    speed: dict[str, np.ndarray] = {}
    for region, refs in REGIONS.items():
        pos = _points(rec, refs)
        anchor = _ANCHORS[region]
        if anchor == "face_centroid":
            pos = pos - np.mean(xy(rec, "face"), axis=1)
        elif anchor == "recording_median":
            pos = pos - (np.nanmedian(pos, axis=0) if np.isfinite(pos).any() else 0.0)
        else:
            ref = _points(rec, anchor)
            if region.endswith("_hand"):
                off = np.linalg.norm(xy(rec, region, 0) - ref, axis=1) / unit
                pos[off > MAX_HAND_OFFSET] = np.nan
            pos = pos - ref
        pos = interpolate_gaps(pos / unit, max_gap)
        positions[region] = pos
        vel = np.gradient(pos, axis=0) * fps if len(pos) > 1 else np.zeros_like(pos)
        speed[region] = smooth(np.linalg.norm(vel, axis=1), max(1, round(smooth_s * fps)))
    return RegionSignals(rec.timestamps.copy(), fps, positions, speed, unit)
