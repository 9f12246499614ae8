"""Per-stream model inputs computed from a keypoint recording.

Streams (``STREAM_NAMES``) and their per-frame tensors ``(V, C)``:

=============  =====  ==  ========================================================================
stream         V      C   nodes
=============  =====  ==  ========================================================================
``face``       24     3   the 22 landmarks of :data:`skeleton.FACE_SUBSET` (face-centric: origin
                          nose bridge, unit = 3-D distance between the outer eye corners), then two
                          *derived-signal nodes*: ``expression`` = (eye opening left, eye opening
                          right, mouth opening) as height/width ratios, and ``head`` = (yaw, pitch,
                          roll) in radians, estimated from the eye line and the forehead-chin axis
``body``       33     3   MediaPipe Pose landmarks, body-centric (see :mod:`.normalize`)
``left_hand``  21     3   MediaPipe hand landmarks, in the same body-centric frame
``right_hand`` 21     3   idem
``motion``     9      1   optical-flow energy per region of :data:`skeleton.REGION_NAMES`, as
                          ``log1p(energy / MOTION_REFERENCE)`` (energy in (frame widths/s)²);
                          a region without a value is 0; masked when no region has one
=============  =====  ==  ========================================================================

Every stream has a per-frame mask (1 = present). A frame counts as present when the
extractor detected *or* gap-filled that stream (gap-filling is flagged in the recording and
interpolates between detections). Absent frames are all zeros. Lateral names follow
MediaPipe: ``left`` is the patient's left.

Coordinates are first corrected for the frame's aspect ratio (``meta["width"]`` /
``meta["height"]`` when the recording has them, else square), so that distances and angles
are isotropic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import normalize
from .recording import Recording
from .skeleton import (
    FACE_SUBSET,
    FACE_SUBSET_EDGES,
    FACE_SUBSET_INDEX,
    HAND_EDGES,
    N_HAND,
    N_POSE,
    POSE_EDGES,
    POSE_MIRROR,
    REGION_NAMES,
    adjacency,
)

STREAM_NAMES: tuple[str, ...] = ("face", "body", "left_hand", "right_hand", "motion")

#: Motion energy, (frame widths / s)², that maps to log1p(1): a slow ~0.03 widths/s movement.
MOTION_REFERENCE = 1e-3

FACE_NAMES: tuple[str, ...] = (*FACE_SUBSET, "expression", "head")
FACE_NODE = {name: i for i, name in enumerate(FACE_NAMES)}

#: Nodes and channels of each stream's per-frame tensor.
STREAM_SHAPES: dict[str, tuple[int, int]] = {
    "face": (len(FACE_NAMES), 3),
    "body": (N_POSE, 3),
    "left_hand": (N_HAND, 3),
    "right_hand": (N_HAND, 3),
    "motion": (len(REGION_NAMES), 1),
}

#: Graph edges of the derived-signal nodes to the landmarks they are computed from.
_FACE_DERIVED_EDGES: tuple[tuple[str, str], ...] = (
    ("expression", "left_eye_top"),
    ("expression", "left_eye_bottom"),
    ("expression", "right_eye_top"),
    ("expression", "right_eye_bottom"),
    ("expression", "lip_top"),
    ("expression", "lip_bottom"),
    ("head", "nose_bridge"),
    ("head", "forehead"),
    ("head", "chin"),
    ("head", "left_cheek"),
    ("head", "right_cheek"),
)


def _swap_side(name: str) -> str:
    return name.replace("left", "§").replace("right", "left").replace("§", "right")


#: Left/right permutations of each stream's nodes (for mirror augmentation).
STREAM_MIRROR: dict[str, tuple[int, ...]] = {
    "face": tuple(FACE_NODE[_swap_side(n)] for n in FACE_NAMES),
    "body": POSE_MIRROR,
    "left_hand": tuple(range(N_HAND)),
    "right_hand": tuple(range(N_HAND)),
    "motion": tuple(REGION_NAMES.index(_swap_side(n)) for n in REGION_NAMES),
}


def stream_edges(stream: str) -> tuple[tuple[int, int], ...]:
    """Skeleton edges of a stream's nodes (motion regions have none)."""
    if stream == "face":
        pairs = (*FACE_SUBSET_EDGES, *_FACE_DERIVED_EDGES)
        return tuple((FACE_NODE[a], FACE_NODE[b]) for a, b in pairs)
    if stream == "body":
        return POSE_EDGES
    if stream in ("left_hand", "right_hand"):
        return HAND_EDGES
    if stream == "motion":
        return ()
    raise ValueError(f"unknown stream {stream!r}")


def stream_adjacency(stream: str) -> np.ndarray:
    """Normalised adjacency with self loops, (V, V) float32 (identity for motion)."""
    return adjacency(STREAM_SHAPES[stream][0], stream_edges(stream))


@dataclass
class Frames:
    """The raw per-frame inputs the features need, at one frame rate.

    ``valid`` holds a (T,) bool per source stream: pose, face, left_hand, right_hand, motion.
    Invalid frames may hold anything (NaN included).
    """

    times: np.ndarray  # (T,) float64 seconds
    pose: np.ndarray  # (T, 33, 4) x, y, z, visibility
    face: np.ndarray  # (T, 22, 3) FACE_SUBSET landmarks
    left_hand: np.ndarray  # (T, 21, 3)
    right_hand: np.ndarray  # (T, 21, 3)
    motion: np.ndarray  # (T, len(REGION_NAMES)) raw energies
    valid: dict[str, np.ndarray]
    fps: float
    aspect: float = 1.0  # frame width / height

    @property
    def n_frames(self) -> int:
        return int(self.times.shape[0])


def frame_aspect(rec: Recording) -> float:
    """Width/height of the source frame from ``meta``; 1.0 when unknown."""
    try:
        w, h = float(rec.meta["width"]), float(rec.meta["height"])
    except (KeyError, TypeError, ValueError):
        return 1.0
    return w / h if w > 0 and h > 0 else 1.0


def frames_from_recording(rec: Recording) -> Frames:
    """Select what the features use: face subset, motion regions in ``REGION_NAMES`` order."""
    valid = rec.present | rec.filled
    n = rec.n_frames
    motion = np.zeros((n, len(REGION_NAMES)), dtype=np.float32)
    motion_valid = np.zeros(n, dtype=bool)
    if rec.motion is not None:
        cols = {name: i for i, name in enumerate(rec.motion_regions)}
        known = [(j, cols[r]) for j, r in enumerate(REGION_NAMES) if r in cols]
        if known:
            dst, src = zip(*known, strict=True)
            picked = rec.motion[:, list(src)]
            motion_valid = np.any(np.isfinite(picked), axis=1)
            motion[:, list(dst)] = np.nan_to_num(picked, nan=0.0, posinf=0.0, neginf=0.0)
    return Frames(
        times=rec.timestamps,
        pose=rec.pose.astype(np.float32, copy=False),
        face=rec.face[:, FACE_SUBSET_INDEX, :].astype(np.float32),
        left_hand=rec.left_hand.astype(np.float32, copy=False),
        right_hand=rec.right_hand.astype(np.float32, copy=False),
        motion=motion,
        valid={
            "pose": valid[:, 0],
            "face": valid[:, 1],
            "left_hand": valid[:, 2],
            "right_hand": valid[:, 3],
            "motion": motion_valid,
        },
        fps=rec.fps,
        aspect=frame_aspect(rec),
    )


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 1e-9, num / np.maximum(den, 1e-9), 0.0)


def _face_signals(face: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, 3) expression (eye L, eye R, mouth openings) and (T, 3) head (yaw, pitch, roll)."""

    def p(name: str) -> np.ndarray:
        return face[:, FACE_NODE[name], :]

    def dist(a: str, b: str) -> np.ndarray:
        return np.linalg.norm(p(a) - p(b), axis=-1)

    expression = np.stack(
        [
            _ratio(
                dist("left_eye_top", "left_eye_bottom"), dist("left_eye_outer", "left_eye_inner")
            ),
            _ratio(
                dist("right_eye_top", "right_eye_bottom"),
                dist("right_eye_outer", "right_eye_inner"),
            ),
            _ratio(dist("lip_top", "lip_bottom"), dist("mouth_left", "mouth_right")),
        ],
        axis=-1,
    )
    ex = p("left_eye_outer") - p("right_eye_outer")  # patient's right→left: image right if frontal
    ex /= np.maximum(np.linalg.norm(ex, axis=-1, keepdims=True), 1e-9)
    ey = p("chin") - p("forehead")
    ey -= np.sum(ey * ex, axis=-1, keepdims=True) * ex
    ey /= np.maximum(np.linalg.norm(ey, axis=-1, keepdims=True), 1e-9)
    yaw = np.arcsin(np.clip(ex[:, 2], -1.0, 1.0))
    pitch = np.arcsin(np.clip(ey[:, 2], -1.0, 1.0))
    roll = np.arctan2(ex[:, 1], ex[:, 0])
    return expression, np.stack([yaw, pitch, roll], axis=-1)


def compute_features(
    frames: Frames, rotate: bool = True, reference_seconds: float = 5.0
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-frame stream tensors ``{stream: (T, V, C) float32}`` and masks ``{stream: (T,) float32}``."""
    n = frames.n_frames
    pose = normalize.aspect_correct(frames.pose[..., :3], frames.aspect)
    span = max(1, round(reference_seconds * frames.fps))
    ref = normalize.body_reference(pose, frames.valid["pose"], span, rotate, frames.aspect)

    x: dict[str, np.ndarray] = {}
    mask: dict[str, np.ndarray] = {}
    x["body"] = normalize.apply_reference(pose, ref)
    mask["body"] = frames.valid["pose"].copy()
    for hand in ("left_hand", "right_hand"):
        pts = normalize.aspect_correct(getattr(frames, hand), frames.aspect)
        x[hand] = normalize.apply_reference(pts, ref)
        mask[hand] = frames.valid[hand].copy()

    face_pts = normalize.aspect_correct(frames.face, frames.aspect)
    face_norm, face_ok = normalize.face_centric(
        face_pts,
        ref,
        FACE_NODE["nose_bridge"],
        FACE_NODE["left_eye_outer"],
        FACE_NODE["right_eye_outer"],
    )
    face = np.zeros((n, *STREAM_SHAPES["face"]), dtype=np.float32)
    n_lm = len(FACE_SUBSET)
    face[:, :n_lm] = face_norm
    face[:, FACE_NODE["expression"]], face[:, FACE_NODE["head"]] = _face_signals(face_norm)
    x["face"] = face
    mask["face"] = frames.valid["face"] & face_ok

    energy = np.maximum(frames.motion, 0.0) / MOTION_REFERENCE
    x["motion"] = np.log1p(energy)[..., None].astype(np.float32)
    mask["motion"] = frames.valid["motion"].copy()

    for s in STREAM_NAMES:
        m = mask[s]
        arr = np.where(m[:, None, None] & np.isfinite(x[s]), x[s], 0.0).astype(np.float32)
        x[s] = arr
        mask[s] = m.astype(np.float32)
    return x, mask
