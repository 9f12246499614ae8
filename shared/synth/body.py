"""Body model of a patient in a hospital bed: templates, kinematic controls and rendering.

Bed coordinates (metres): origin at the pelvis, ``x`` towards the patient's left, ``y`` towards
the feet, ``z`` up towards the ceiling. A movement is a set of per-frame *controls* (joint
angles, face deformations, hand targets); :func:`render` turns them into MediaPipe Holistic
landmarks in normalised image coordinates through a weak-perspective camera.

The 468-point face is a rigid, scaled transform of a procedural template plus four
deformation modes (eye closure, mouth opening, jaw lateral shift, lip pucker), computed for all
frames as one matrix product ``coeffs (T, 27) @ basis (27, 1404)`` in cache-sized chunks, exact
on every machine (:mod:`.exact`), like every other product here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..skeleton import N_FACE, N_POSE, POSE
from . import exact as ex
from .exact import GridProduct, apply_matrix, matmul

SIDES = ("left", "right")
SIDE_SIGN = {"left": 1.0, "right": -1.0}
_LIMB = (
    "sh_abd", "sh_flex", "elbow", "wx", "wy", "wz", "reach", "tx", "ty", "tz",
    "grip", "hand_roll", "hip_flex", "hip_abd", "knee",
)  # fmt: skip
#: Names of the per-frame controls, in row order of :class:`Controls`.
CONTROL_NAMES: tuple[str, ...] = (
    "shift_x", "shift_y", "trunk_roll", "trunk_pitch", "breath", "pelvis_lift",
    "head_yaw", "head_pitch", "head_roll",
    "eye_close", "mouth_open", "jaw_lat", "pucker",
    *(f"{s}_{n}" for s in SIDES for n in _LIMB),
)  # fmt: skip
CONTROL_INDEX = {n: i for i, n in enumerate(CONTROL_NAMES)}

#: Resting values of the joint controls (radians) for a patient lying supine.
REST = {"sh_abd": 0.15, "elbow": 0.35, "knee": 0.08, "hip_abd": 0.06, "grip": 0.3}

# Segment lengths (m) for body scale 1.
UPPER_ARM, FOREARM, THIGH, SHIN = 0.30, 0.26, 0.43, 0.42


class Controls:
    """Per-frame kinematic controls, one float32 row per name of :data:`CONTROL_NAMES`."""

    def __init__(self, n_frames: int) -> None:
        self.n = n_frames
        self.values = np.zeros((len(CONTROL_NAMES), n_frames), dtype=np.float32)
        for side in SIDES:
            for name, v in REST.items():
                self[f"{side}_{name}"][:] = v

    def __getitem__(self, name: str) -> np.ndarray:
        return self.values[CONTROL_INDEX[name]]


# ---------------------------------------------------------------- face template

_FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378,
              400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54,
              103, 67, 109)  # fmt: skip
# Eye contours: 9 points along the lower lid from outer to inner corner, then 7 along the upper.
_RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
_LEFT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
# Lips: 11 along the bottom from the right corner to the left, then 9 along the top.
_LIPS_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37,
               39, 40, 185)  # fmt: skip
_LIPS_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82,
               81, 80, 191)  # fmt: skip
_FIXED = {1: (0.0, 0.012), 168: (0.0, -0.022), 105: (-0.03, -0.036), 334: (0.03, -0.036)}
FACE_MODES = ("eye_close", "mouth_open", "jaw_lat", "pucker")
_MOUTH_Y = 0.045


def _surface_z(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    z = 0.05 * np.sqrt(np.clip(1 - (x / 0.075) ** 2 - (y / 0.1) ** 2, 0, 1))
    return z + 0.022 * ex.exp(-(x**2) / 0.012**2 - (y - 0.0) ** 2 / 0.03**2)


def _build_face() -> tuple[np.ndarray, np.ndarray]:
    """Template (468, 3) in head coordinates and deformation modes (4, 468, 3)."""
    xy = np.full((N_FACE, 2), np.nan)
    for k, i in enumerate(_FACE_OVAL):
        th = 2 * np.pi * k / len(_FACE_OVAL)
        xy[i] = (0.07 * ex.sin(th), -0.095 * ex.cos(th))
    upper_lid: dict[int, float] = {}
    for eye, sign in ((_RIGHT_EYE, -1.0), (_LEFT_EYE, 1.0)):
        outer, inner = sign * 0.047, sign * 0.017
        for k, i in enumerate(eye[:9]):
            u = k / 8
            xy[i] = (outer + u * (inner - outer), -0.01 + 0.006 * ex.sin(np.pi * u))
        for j, i in enumerate(eye[9:], start=1):
            u = 1 - j / 8
            xy[i] = (outer + u * (inner - outer), -0.01 - 0.006 * ex.sin(np.pi * u))
            upper_lid[i] = 0.012 * ex.sin(np.pi * u)
    lower_lip: list[int] = []
    for lips, half_h in ((_LIPS_OUTER, 0.012), (_LIPS_INNER, 0.002)):
        half_w = 0.025 if half_h > 0.005 else 0.02
        for k, i in enumerate(lips[:11]):
            u = k / 10
            xy[i] = (-half_w + 2 * half_w * u, _MOUTH_Y + half_h * ex.sin(np.pi * u))
            lower_lip.append(i)
        for j, i in enumerate(lips[11:], start=1):
            u = 1 - j / 10
            xy[i] = (-half_w + 2 * half_w * u, _MOUTH_Y - half_h * ex.sin(np.pi * u))
    for i, p in _FIXED.items():
        xy[i] = p
    # The remaining points fill the face on a golden-angle spiral, avoiding eyes and mouth.
    free = np.flatnonzero(np.isnan(xy[:, 0]))
    cand, k = [], 0
    while len(cand) < len(free):
        r, th = np.sqrt((k + 0.5) / 700), k * 2.399963
        x, y = 0.066 * r * ex.sin(th), 0.09 * r * ex.cos(th)
        k += 1
        if min(abs(x - 0.032), abs(x + 0.032)) < 0.02 and abs(y + 0.01) < 0.01:
            continue
        if abs(x) < 0.03 and abs(y - _MOUTH_Y) < 0.015:
            continue
        cand.append((x, y))
    xy[free] = np.array(cand[: len(free)])
    template = np.column_stack([xy, _surface_z(xy[:, 0], xy[:, 1])])

    modes = np.zeros((len(FACE_MODES), N_FACE, 3))
    for i, dy in upper_lid.items():
        modes[0, i, 1] = dy
    below = np.clip((template[:, 1] - (_MOUTH_Y - 0.004)) / 0.06, 0, 1)
    jaw = np.where(template[:, 1] > _MOUTH_Y - 0.004, 0.4 + 0.6 * below, 0.0)
    jaw[lower_lip] = 1.0
    modes[1, :, 1] = 0.02 * jaw
    modes[2, :, 0] = 0.01 * jaw
    mouth = ex.exp(-((template[:, 0] / 0.03) ** 2) - ((template[:, 1] - _MOUTH_Y) / 0.015) ** 2)
    modes[3, :, 0] = -0.2 * template[:, 0] * mouth
    modes[3, :, 2] = 0.006 * mouth
    return template.astype(np.float32), modes.astype(np.float32)


FACE_TEMPLATE, FACE_DEFORM = _build_face()
_EYE_CENTRE = {
    "left": FACE_TEMPLATE[list(_LEFT_EYE)].mean(0),
    "right": FACE_TEMPLATE[list(_RIGHT_EYE)].mean(0),
}

# ---------------------------------------------------------------- hand template


def _build_hand() -> tuple[np.ndarray, np.ndarray]:
    """Right-hand template (21, 3) in hand coordinates (y along the fingers) and grip mode."""
    pts = [(0.0, 0.0, 0.0)]
    pts += [(0.022, 0.02, 0.005), (0.038, 0.042, 0.01), (0.048, 0.062, 0.012), (0.055, 0.08, 0.012)]
    for x, length in ((0.022, 0.075), (0.004, 0.082), (-0.014, 0.077), (-0.03, 0.062)):
        base = 0.085 if x > -0.025 else 0.078
        for k in range(4):
            pts.append((x * (1 + 0.05 * k), base + length * k / 3, 0.0))
    tmpl = np.array(pts, dtype=np.float32)
    grip = np.zeros_like(tmpl)
    for f in range(4):
        mcp = 5 + 4 * f
        for k in range(1, 4):
            d = tmpl[mcp + k, 1] - tmpl[mcp, 1]
            grip[mcp + k] = (0.0, -0.6 * d, 0.8 * d)
    grip[2:5] = (-0.012, -0.01, 0.01)
    return tmpl, grip


HAND_TEMPLATE, HAND_GRIP = _build_hand()

# ---------------------------------------------------------------- rotations


def _rot(axis: int, a: np.ndarray) -> np.ndarray:
    c, s = ex.cos(a), ex.sin(a)
    r = np.zeros((a.shape[0], 3, 3), dtype=np.float32)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    r[:, axis, axis] = 1
    r[:, i, i] = c
    r[:, j, j] = c
    r[:, i, j] = -s
    r[:, j, i] = s
    return r


def _apply(r: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Rotate points: r (T,3,3) with p (T,3), (T,N,3) or a constant (3,) / (N,3)."""
    if p.ndim == 3 or (p.ndim == 2 and p.shape[0] != r.shape[0]):
        return apply_matrix(r[:, None], p)
    return apply_matrix(r, p)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-6)


# ---------------------------------------------------------------- camera and rendering


@dataclass(frozen=True)
class Camera:
    """Weak-perspective camera: image = centre + zoom * diag(1, aspect, 1) @ R @ bed point."""

    zoom: float  # image widths per metre
    centre: tuple[float, float]  # image position of the pelvis
    rotation_deg: float  # in-plane rotation of the bed in the image
    tilt_deg: float  # camera elevation away from straight above the bed
    aspect: float = 4 / 3  # frame width / height

    def matrix(self) -> np.ndarray:
        t, r = np.radians(self.tilt_deg), np.radians(self.rotation_deg)
        tilt = np.array([[1, 0, 0], [0, ex.cos(t), ex.sin(t)], [0, -ex.sin(t), ex.cos(t)]])
        roll = np.array([[ex.cos(r), -ex.sin(r), 0], [ex.sin(r), ex.cos(r), 0], [0, 0, 1]])
        flip = np.diag([1.0, 1.0, -1.0])  # MediaPipe z: smaller is closer to the camera
        scale = self.zoom * np.diag([1.0, self.aspect, 1.0])
        return matmul(matmul(matmul(scale, roll), flip), tilt).astype(np.float32)


@dataclass
class Rendered:
    """Noise-free landmarks in image coordinates plus what the detector needs to know."""

    pose: np.ndarray  # (T, 33, 3)
    face: np.ndarray  # (T, 468, 3)
    left_hand: np.ndarray  # (T, 21, 3)
    right_hand: np.ndarray  # (T, 21, 3)
    facing: np.ndarray  # (T,) cosine between the face normal and the camera axis


def _face_basis(head_offset: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """Basis rows for coefficients [M (9), M[i, j] * a_k (nonzero (k, j) only), t (3)].

    Output coordinate i of every point is ``sum_j M[i, j] * (base[:, j] + sum_k a_k D_k[:, j])
    + t[i]``; deformation columns that are all zero are skipped (27 rows instead of 48).
    """
    base = FACE_TEMPLATE + head_offset
    rows, mode_terms = [], []

    def row(i: int, column: np.ndarray) -> np.ndarray:
        r = np.zeros((N_FACE, 3), dtype=np.float32)
        r[:, i] = column
        return r.ravel()

    for i in range(3):
        for j in range(3):
            rows.append(row(i, base[:, j]))
    for k in range(len(FACE_MODES)):
        for j in range(3):
            if np.any(FACE_DEFORM[k, :, j]):
                for i in range(3):
                    rows.append(row(i, FACE_DEFORM[k, :, j]))
                    mode_terms.append((k, i, j))
    for i in range(3):
        rows.append(row(i, np.ones(N_FACE, dtype=np.float32)))
    return np.stack(rows), mode_terms


_HEAD_OFFSET = np.array([0.0, 0.0, 0.045], dtype=np.float32)
_FACE_BASIS, _MODE_TERMS = _face_basis(_HEAD_OFFSET)
_FACE_PRODUCT = GridProduct(_FACE_BASIS)
FACE_CHUNK = 256  # frames per matrix product (≈1.4 MB of output: stays in cache)


@dataclass
class FaceNoise:
    """Detector noise fused into face rendering: per-frame shift and per-landmark noise bank."""

    shift: np.ndarray  # (T, 3) correlated wobble, image units
    bank: np.ndarray  # (B, 468 * 3) independent noise
    offsets: np.ndarray  # bank start row per chunk of FACE_CHUNK frames


def render_face(
    m: np.ndarray,
    modes: np.ndarray,
    t: np.ndarray,
    noise: FaceNoise | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Face landmarks (T, 468, 3) = M (T,3,3) @ (template + modes·deform) + t, chunked.

    ``out`` (at least T * 1404 float32) lets a caller reuse one buffer across recordings.
    """
    n = m.shape[0]
    coeff = np.empty((n, _FACE_BASIS.shape[0]), dtype=np.float32)
    coeff[:, :9] = m.reshape(n, 9)
    for r, (k, i, j) in enumerate(_MODE_TERMS, start=9):
        coeff[:, r] = m[:, i, j] * modes[:, k]
    coeff[:, -3:] = t if noise is None else t + noise.shift
    if out is None:
        out = np.empty((n, N_FACE * 3), dtype=np.float32)
    else:
        out = out.reshape(-1)[: n * N_FACE * 3].reshape(n, N_FACE * 3)
    for c, a in enumerate(range(0, n, FACE_CHUNK)):
        block = out[a : a + FACE_CHUNK]
        block[:] = _FACE_PRODUCT(coeff[a : a + FACE_CHUNK])
        if noise is not None:
            block += noise.bank[noise.offsets[c] : noise.offsets[c] + len(block)]
    return out.reshape(n, N_FACE, 3)


def render(
    ctrl: Controls,
    camera: Camera,
    body_scale: float = 1.0,
    face_noise: FaceNoise | None = None,
    face_out: np.ndarray | None = None,
) -> Rendered:
    """Landmarks of every frame for the given controls (noise-free unless ``face_noise``)."""
    n = ctrl.n
    s = np.float32(body_scale)
    cam = camera.matrix()
    centre = np.array([camera.centre[0], camera.centre[1], 0.0], dtype=np.float32)

    roll, pitch = ctrl["trunk_roll"], ctrl["trunk_pitch"]
    r_roll = _rot(1, roll)
    r_trunk = matmul(_rot(0, -pitch), r_roll)
    origin = np.zeros((n, 3), dtype=np.float32)
    origin[:, 0] = ctrl["shift_x"]
    origin[:, 1] = ctrl["shift_y"]
    origin[:, 2] = ctrl["pelvis_lift"]
    breath = ctrl["breath"]

    def trunk_point(p: tuple[float, float, float], lift: np.ndarray | float = 0.0) -> np.ndarray:
        local = np.zeros((n, 3), dtype=np.float32)
        local[:] = np.asarray(p, dtype=np.float32) * s
        local[:, 2] += lift
        return origin + _apply(r_trunk, local)

    pose = np.zeros((n, N_POSE, 3), dtype=np.float32)
    neck = trunk_point((0.0, -0.55, 0.02), breath * 0.15)
    for side in SIDES:
        sg = SIDE_SIGN[side]
        pose[:, POSE[f"{side}_hip"]] = trunk_point((0.1 * sg, 0.0, 0.0))
        pose[:, POSE[f"{side}_shoulder"]] = trunk_point((0.19 * sg, -0.5, 0.0), breath)

    # Head and face: head frame = trunk frame @ head rotation.
    r_head = matmul(
        r_trunk,
        matmul(
            _rot(1, ctrl["head_yaw"]),
            matmul(_rot(0, ctrl["head_pitch"]), _rot(2, ctrl["head_roll"])),
        ),
    )
    head_centre = neck + _apply(r_trunk, np.float32([0, -0.13, 0.04]) * s)
    modes = np.stack([ctrl[m] for m in FACE_MODES], axis=1)
    m_img = matmul(cam[None], r_head) * s
    t_img = centre + apply_matrix(cam, head_centre)
    face = render_face(m_img, modes, t_img, face_noise, face_out)
    facing = -m_img[:, 2, 2] / (s * camera.zoom)  # face normal (head z) towards the camera
    for side in SIDES:
        c = _EYE_CENTRE[side] + _HEAD_OFFSET
        sg = SIDE_SIGN[side]
        for name, dx in (("eye_inner", -0.012), ("eye", 0.0), ("eye_outer", 0.012)):
            p = c + np.float32([dx * sg, 0, 0])
            pose[:, POSE[f"{side}_{name}"]] = _apply(r_head, p * s) + head_centre
        ear = np.float32([0.075 * sg, -0.01, -0.02]) * s
        pose[:, POSE[f"{side}_ear"]] = _apply(r_head, ear) + head_centre

    hands = {}
    for side in SIDES:
        sg = SIDE_SIGN[side]
        g = {k: ctrl[f"{side}_{k}"] for k in _LIMB}
        sh = pose[:, POSE[f"{side}_shoulder"]]
        ca, sa = ex.cos(g["sh_abd"]), ex.sin(g["sh_abd"])
        cf, sf = ex.cos(g["sh_flex"]), ex.sin(g["sh_flex"])
        u = np.stack([sg * sa * cf, ca * cf, sf], axis=1)
        ref = np.tile(np.float32([-0.55 * sg, -0.6, 0.55]), (n, 1))
        p = _unit(ref - (ref * u).sum(1, keepdims=True) * u)
        e = g["elbow"][:, None]
        f = ex.cos(e) * u + ex.sin(e) * p
        u, f = _apply(r_trunk, u), _apply(r_trunk, f)
        elbow = sh + UPPER_ARM * s * u
        wrist = elbow + FOREARM * s * f + np.stack([g["wx"], g["wy"], g["wz"]], axis=1)
        w = g["reach"][:, None]
        if np.any(w):
            target = origin + _apply(r_trunk, np.stack([g["tx"], g["ty"], g["tz"]], axis=1) * s)
            bulge = _apply(r_trunk, np.float32([0.12 * sg, 0.05, 0.08]) * s)
            wrist = (1 - w) * wrist + w * target
            elbow = (1 - w) * elbow + w * (0.5 * (sh + target) + bulge)
        pose[:, POSE[f"{side}_elbow"]] = elbow
        pose[:, POSE[f"{side}_wrist"]] = wrist
        # Hand frame: y along the forearm, z the back of the hand, rolled by hand_roll.
        hy = _unit(wrist - elbow)
        up = r_trunk[:, :, 2]
        hx = _unit(np.cross(hy, up) + 1e-3)
        hz = np.cross(hx, hy)
        cr, sr = ex.cos(g["hand_roll"])[:, None], ex.sin(g["hand_roll"])[:, None]
        hx, hz = cr * hx + sr * hz, cr * hz - sr * hx
        r_hand = np.stack([hx * sg, hy, hz], axis=2)
        local = HAND_TEMPLATE[None] + g["grip"][:, None, None] * HAND_GRIP[None]
        pts = wrist[:, None, :] + _apply(r_hand, local * s)
        hands[side] = pts
        for name, hi in (("pinky", 17), ("index", 5), ("thumb", 3)):
            pose[:, POSE[f"{side}_{name}"]] = pts[:, hi]
        # Legs hang from the hips and roll with the pelvis, not with the sitting trunk.
        hip = pose[:, POSE[f"{side}_hip"]]
        hf, ha, kn = g["hip_flex"], g["hip_abd"], g["knee"]
        thigh = np.stack([sg * ex.sin(ha), ex.cos(hf) * ex.cos(ha), ex.sin(hf)], axis=1)
        shin = np.stack([sg * ex.sin(ha), ex.cos(hf - kn), ex.sin(hf - kn)], axis=1)
        knee = hip + THIGH * s * _apply(r_roll, thigh)
        ankle = knee + SHIN * s * _apply(r_roll, shin)
        heel = ankle + _apply(r_roll, np.float32([0, 0.03, -0.04]) * s)
        toe = ankle + _apply(r_roll, np.float32([0, 0.06, 0.15]) * s)
        for name, pt in (("knee", knee), ("ankle", ankle), ("heel", heel), ("foot_index", toe)):
            pose[:, POSE[f"{side}_{name}"]] = pt

    pose_img = centre + apply_matrix(cam, pose)
    for name, fi in (("nose", 1), ("mouth_left", 291), ("mouth_right", 61)):
        pose_img[:, POSE[name]] = face[:, fi]
    lh = centre + apply_matrix(cam, hands["left"])
    rh = centre + apply_matrix(cam, hands["right"])
    return Rendered(pose_img, face, lh, rh, facing)
