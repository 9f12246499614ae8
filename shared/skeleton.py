"""MediaPipe Holistic landmark layout: counts, named indices, skeleton edges, body regions."""

from __future__ import annotations

import numpy as np

N_POSE = 33
N_FACE = 468
N_HAND = 21

#: MediaPipe Pose landmark names, in index order.
POSE_NAMES: tuple[str, ...] = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_pinky",
    "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "left_heel",
    "right_heel", "left_foot_index", "right_foot_index",
)  # fmt: skip
POSE = {name: i for i, name in enumerate(POSE_NAMES)}

POSE_EDGES: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 3), (3, 7), (0, 4), (4, 5), (5, 6), (6, 8), (9, 10),
    (11, 12), (11, 13), (13, 15), (15, 17), (15, 19), (15, 21), (17, 19),
    (12, 14), (14, 16), (16, 18), (16, 20), (16, 22), (18, 20),
    (11, 23), (12, 24), (23, 24), (23, 25), (24, 26), (25, 27), (26, 28),
    (27, 29), (28, 30), (29, 31), (30, 32), (27, 31), (28, 32),
)  # fmt: skip

HAND_EDGES: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (5, 9), (9, 10),
    (10, 11), (11, 12), (9, 13), (13, 14), (14, 15), (15, 16), (13, 17), (0, 17),
    (17, 18), (18, 19), (19, 20),
)  # fmt: skip

#: Face-mesh landmarks the model uses (of 468), chosen to cover eyes, brows, mouth, nose
#: and the face outline: enough for eye/mouth opening and head orientation.
FACE_SUBSET: dict[str, int] = {
    "forehead": 10, "chin": 152, "nose_tip": 1, "nose_bridge": 168,
    "left_cheek": 454, "right_cheek": 234,
    "right_eye_outer": 33, "right_eye_inner": 133, "right_eye_top": 159, "right_eye_bottom": 145,
    "left_eye_outer": 263, "left_eye_inner": 362, "left_eye_top": 386, "left_eye_bottom": 374,
    "right_brow": 105, "left_brow": 334,
    "mouth_right": 61, "mouth_left": 291, "lip_top": 13, "lip_bottom": 14,
    "upper_lip_outer": 0, "lower_lip_outer": 17,
}  # fmt: skip
FACE_SUBSET_INDEX: tuple[int, ...] = tuple(FACE_SUBSET.values())

FACE_SUBSET_EDGES: tuple[tuple[str, str], ...] = (
    ("forehead", "nose_bridge"), ("nose_bridge", "nose_tip"), ("nose_tip", "upper_lip_outer"),
    ("upper_lip_outer", "lip_top"), ("lip_top", "lip_bottom"), ("lip_bottom", "lower_lip_outer"),
    ("lower_lip_outer", "chin"), ("mouth_right", "lip_top"), ("mouth_left", "lip_top"),
    ("mouth_right", "lip_bottom"), ("mouth_left", "lip_bottom"),
    ("right_eye_outer", "right_eye_top"), ("right_eye_top", "right_eye_inner"),
    ("right_eye_inner", "right_eye_bottom"), ("right_eye_bottom", "right_eye_outer"),
    ("left_eye_outer", "left_eye_top"), ("left_eye_top", "left_eye_inner"),
    ("left_eye_inner", "left_eye_bottom"), ("left_eye_bottom", "left_eye_outer"),
    ("right_brow", "right_eye_top"), ("left_brow", "left_eye_top"),
    ("right_eye_inner", "nose_bridge"), ("left_eye_inner", "nose_bridge"),
    ("right_cheek", "right_eye_outer"), ("left_cheek", "left_eye_outer"),
    ("right_cheek", "chin"), ("left_cheek", "chin"), ("forehead", "right_brow"),
    ("forehead", "left_brow"),
)  # fmt: skip

#: Body regions used by evolution/semiology analysis, with the landmarks that move them.
#: ``("pose", i)`` is a pose landmark, ``("face", i)`` a face-mesh landmark,
#: ``("left_hand"|"right_hand", i)`` a hand landmark.
REGIONS: dict[str, tuple[tuple[str, int], ...]] = {
    "head": (("pose", 0), ("pose", 7), ("pose", 8)),
    "face": (
        ("face", 13),
        ("face", 14),
        ("face", 159),
        ("face", 145),
        ("face", 386),
        ("face", 374),
    ),
    "left_arm": (("pose", 13), ("pose", 15)),
    "right_arm": (("pose", 14), ("pose", 16)),
    "left_hand": (("left_hand", 0), ("left_hand", 8), ("left_hand", 12)),
    "right_hand": (("right_hand", 0), ("right_hand", 8), ("right_hand", 12)),
    "trunk": (("pose", 11), ("pose", 12), ("pose", 23), ("pose", 24)),
    "left_leg": (("pose", 25), ("pose", 27)),
    "right_leg": (("pose", 26), ("pose", 28)),
}
REGION_NAMES: tuple[str, ...] = tuple(REGIONS)

#: Left/right pose index permutation for mirror augmentation.
POSE_MIRROR: tuple[int, ...] = tuple(
    POSE[n.replace("left", "§").replace("right", "left").replace("§", "right")] for n in POSE_NAMES
)


def adjacency(n: int, edges: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Symmetrically normalised adjacency with self loops, D^-1/2 (A + I) D^-1/2."""
    a = np.eye(n, dtype=np.float32)
    for i, j in edges:
        a[i, j] = a[j, i] = 1.0
    d = 1.0 / np.sqrt(a.sum(1))
    return (a * d[:, None] * d[None, :]).astype(np.float32)
