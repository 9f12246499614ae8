"""Detector realism: what MediaPipe Holistic would report for a rendered patient.

* jitter: per stream, a temporally correlated wobble (band-limited, ~1.5 Hz, the crop
  jitter that moves a whole face mesh or hand together) plus small independent noise per
  landmark (σ ``LANDMARK_NOISE_PX``), taken from a fixed noise bank at random offsets;
* dropped detections: face lost when turned away from the camera or occluded, hands missed
  in bursts and during fast movement, rare pose dropouts;
* swapped hands: short bursts where the left and right hand streams are exchanged;
* a second person's hands (staff examining) reported as the patient's hands;
* legs under a blanket: leg landmarks barely follow the legs and have low visibility.

Recording size depends mostly on the jitter (see PARAMETERS.md and bench_synth).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..recording import Recording
from ..skeleton import N_FACE, POSE
from . import exact as ex
from .behaviours import Scene, smooth_noise
from .body import FACE_CHUNK, HAND_TEMPLATE, FaceNoise, Rendered
from .exact import apply_matrix
from .profiles import SiteProfile

REFERENCE_WIDTH_PX = 640.0
LANDMARK_NOISE_PX = 0.03  # independent per-landmark noise (σ, px at 640 px width)
WOBBLE_HZ = 0.5
FACE_LOST_COS = 0.3  # face not detected when turned more than ~72° away from the camera
FAST_HAND = 1.5  # image widths per second above which hands are often missed
_BANK_FRAMES = 1024
_LEG_POINTS = [POSE[f"{s}_{p}"] for s in ("left", "right") for p in ("knee", "ankle", "heel", "foot_index")]  # fmt: skip


def _noise_bank(n_points: int) -> np.ndarray:
    """Fixed bank of independent landmark noise (same for every run: deterministic)."""
    if n_points not in _BANKS:
        bank = np.random.default_rng(12345 + n_points).standard_normal((_BANK_FRAMES, n_points * 3))
        _BANKS[n_points] = (bank * (LANDMARK_NOISE_PX / REFERENCE_WIDTH_PX)).astype(np.float32)
    return _BANKS[n_points]


_BANKS: dict[int, np.ndarray] = {}


def _wobble(scene: Scene, n: int, px: float) -> np.ndarray:
    scale = np.float32(px / REFERENCE_WIDTH_PX)
    return np.stack([smooth_noise(scene.rng, n, scene.fps, WOBBLE_HZ) for _ in range(3)], 1) * scale


def face_noise(scene: Scene, n: int, px: float) -> FaceNoise:
    """Face jitter, applied while the face is rendered (one pass, in cache)."""
    offsets = scene.rng.integers(0, _BANK_FRAMES - FACE_CHUNK, size=-(-n // FACE_CHUNK))
    return FaceNoise(_wobble(scene, n, px), _noise_bank(N_FACE), offsets)


def _add_jitter(arr: np.ndarray, scene: Scene, px: float) -> None:
    """In place: shared wobble per frame plus per-landmark noise (pose and hands)."""
    n, k = arr.shape[0], arr.shape[1]
    arr += _wobble(scene, n, px)[:, None, :]
    bank = _noise_bank(k).reshape(_BANK_FRAMES, k, 3)
    for a in range(0, n, _BANK_FRAMES // 2):
        start = int(scene.rng.integers(0, _BANK_FRAMES // 2))
        block = arr[a : a + _BANK_FRAMES // 2]
        block += bank[start : start + len(block)]


def _bursts(
    scene: Scene, n: int, per_min: float, dur_s: tuple[float, float]
) -> list[tuple[int, int]]:
    count = scene.rng.poisson(per_min * n / scene.fps / 60)
    out = []
    for _ in range(count):
        a = int(scene.rng.integers(0, max(1, n)))
        out.append((a, min(n, a + int(scene.rng.uniform(*dur_s) * scene.fps))))
    return sorted(out)


def _mask(n: int, spans: list[tuple[int, int]]) -> np.ndarray:
    m = np.zeros(n, dtype=bool)
    for a, b in spans:
        m[a:b] = True
    return m


def _spans(mask: np.ndarray) -> list[tuple[int, int]]:
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist(), strict=True))


def detect(
    rend: Rendered, scene: Scene, site: SiteProfile, blanket: bool
) -> tuple[Recording, dict[str, Any]]:
    """Turn rendered landmarks into a detector-like :class:`Recording` and its truth."""
    rng, fps = scene.rng, scene.fps
    n = rend.pose.shape[0]
    px = site.jitter_px
    pose, face, lh, rh = rend.pose, rend.face, rend.left_hand, rend.right_hand
    for arr in (pose, lh, rh):  # the face got its jitter while rendering (face_noise)
        _add_jitter(arr, scene, px)

    # Staff hands: a second person's hand replaces one of the patient's hand streams.
    staff_spans: list[list[Any]] = []
    centre = pose[:, [POSE["left_hip"], POSE["right_shoulder"]]].mean(1)
    hand_size = np.linalg.norm(rend.left_hand[:, 9] - rend.left_hand[:, 0], axis=1, keepdims=True)
    for a, b in scene.staff:
        for stream, target in (("left_hand", lh), ("right_hand", rh)):
            if rng.random() < 0.7:
                m = b - a
                path = np.stack([0.08 * smooth_noise(rng, m, fps, 0.4) for _ in range(2)], 1)
                ang = rng.uniform(0, 2 * np.pi) + 0.5 * smooth_noise(rng, m, fps, 0.3)
                rot = np.stack([ex.cos(ang), -ex.sin(ang), ex.sin(ang), ex.cos(ang)], 1)
                rot = rot.reshape(m, 2, 2)
                local = HAND_TEMPLATE[:, :2] / 0.16 * hand_size[a:b, None]
                xy = apply_matrix(rot[:, None], local) + (centre[a:b, :2] + path)[:, None]
                target[a:b, :, :2] = xy
                target[a:b, :, 2] = 0.0
                staff_spans.append([scene.seconds(a), scene.seconds(b), stream])

    # Presence.
    present = np.ones((n, 4), dtype=bool)
    pose_drop = _mask(n, _bursts(scene, n, 0.3, (0.1, 0.8)))
    present[:, 0] = ~pose_drop
    occl = _mask(n, scene.occluded)
    present[:, 1] = (rend.facing > FACE_LOST_COS) & ~occl & ~pose_drop
    present[:, 1] &= ~_mask(n, _bursts(scene, n, 0.5, (0.1, 1.0)))
    for col, hand in ((2, lh), (3, rh)):
        speed = np.zeros(n, dtype=np.float32)
        speed[1:] = np.linalg.norm(np.diff(hand[:, 0, :2], axis=0), axis=1) * fps
        fast = (speed > FAST_HAND) & (rng.random(n) < 0.6)
        rate = site.hand_drop * 60 / 1.5  # bursts/min of mean 1.5 s: ~hand_drop of frames
        drop = _mask(n, _bursts(scene, n, rate, (0.3, 2.7)))
        outside = (
            (hand[:, 0, 0] < 0) | (hand[:, 0, 0] > 1) | (hand[:, 0, 1] < 0) | (hand[:, 0, 1] > 1)
        )
        present[:, col] = ~(fast | drop | outside | pose_drop)

    # Swapped hands.
    swaps = _bursts(scene, n, site.swap_rate, (0.2, 2.0))
    for a, b in swaps:
        lh[a:b], rh[a:b] = rh[a:b].copy(), lh[a:b].copy()
        present[a:b, 2], present[a:b, 3] = present[a:b, 3].copy(), present[a:b, 2].copy()

    # Visibility and blanket.
    vis = np.clip(0.93 + 0.04 * smooth_noise(rng, n, fps, 0.2), 0, 0.995).astype(np.float32)
    visibility = np.repeat(vis[:, None], pose.shape[1], axis=1)
    outside = (pose[..., 0] < 0) | (pose[..., 0] > 1) | (pose[..., 1] < 0) | (pose[..., 1] > 1)
    visibility[outside] *= 0.25
    if blanket:
        legs = pose[:, _LEG_POINTS]
        rest = np.median(legs[:: max(1, n // 200)], axis=0)
        pose[:, _LEG_POINTS] = rest + 0.15 * (legs - rest)
        visibility[:, _LEG_POINTS] = rng.uniform(0.05, 0.3)

    pose4 = np.empty((n, pose.shape[1], 4), dtype=np.float32)
    pose4[..., :3] = pose
    pose4[..., 3] = visibility
    pose4[~present[:, 0]] = np.nan
    for col, arr in ((1, face), (2, lh), (3, rh)):
        arr[~present[:, col]] = np.nan
    rec = Recording(
        timestamps=np.arange(n, dtype=np.float64) / fps,
        pose=pose4,
        face=face,
        left_hand=lh,
        right_hand=rh,
        present=present,
        fps=fps,
        extractor_name="semiofed-synth",
        extractor_version="1",
    )
    truth = {
        "staff_hands": staff_spans,
        "swapped_hands": [[scene.seconds(a), scene.seconds(b)] for a, b in swaps],
        "face_occluded": [[scene.seconds(a), scene.seconds(b)] for a, b in _spans(occl)],
        "present_fraction": {
            s: round(float(present[:, i].mean()), 4)
            for i, s in enumerate(("pose", "face", "left_hand", "right_hand"))
        },
    }
    return rec, truth
