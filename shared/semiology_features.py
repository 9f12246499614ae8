"""The semiology-feature stream: quantified signs of one window, computed from its streams.

:func:`semiology_features` maps a batch of windows (the ``x_<stream>`` / ``m_<stream>``
tensors of :mod:`.dataset`, at :data:`FPS`) to ``(B, N_FEATURES)`` float32 features, in the
order of :data:`FEATURE_NAMES`. It has no parameters and no learned or data-derived
statistics: every value goes through a fixed transform (``log1p`` of a fixed public scale,
a ratio in [0, 1] or [-1, 1], a frequency divided by a fixed band edge, an angle in
radians), so the same window always gives the same features at every site. It runs inside
the model's forward pass (torch, deterministic, no gradient needed), on every window.

Signals (body-centric coordinates of :mod:`.features`: torso lengths, image plane x, y):

* ``REGIONS`` — head (relative to the shoulder mid-point), arms (elbow + wrist relative to the
  shoulder), trunk (shoulders + hips), legs (knee + ankle relative to the hip), hands (wrist,
  index and middle fingertips of the hand streams) and mouth (mouth opening ratio);
  per region: ``speed`` = log1p(mean speed / ``SPEED_SCALE``), ``speed_sd`` = log1p(speed s.d. /
  ``SPEED_SCALE``), ``f_dom`` = dominant frequency of the detrended trajectory in
  ``BAND`` (Hann window, zero-padded FFT) / ``BAND[1]``, ``p_low`` (0.5–2 Hz) and ``p_mid``
  (2–6 Hz) power fractions of the band, ``peak`` = power share within ±``PEAK_HZ`` of the
  peak (rhythmicity), ``seen`` = fraction of the window's frames where it was observed;
* ``asym_arm``, ``asym_hand``, ``asym_leg`` — (left − right) / (left + right) mean speed;
* face: mean eye opening left/right, the smaller eye opening, mouth opening mean and s.d.,
  head yaw mean and s.d., pitch and roll means (radians), mean |yaw rate| (rad/s, log1p);
* ``motion_<region>`` — mean of the motion stream per region (already log1p of energy),
  ``motion_peak`` — the window's largest region-mean frame value;
* ``present_<stream>`` — fraction of the window's frames where each input stream is present.

A signal absent from the whole window gives 0 for all its features (``seen`` = 0 tells it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .features import FACE_NODE, STREAM_NAMES
from .skeleton import POSE, REGION_NAMES
from .windows import WindowConfig

FPS = WindowConfig().fps
SPEED_SCALE = 0.1  # torso lengths / s that map to log1p(1)
BAND = (0.5, 7.5)  # Hz; the upper edge is the Nyquist frequency at 15 fps
LOW_BAND = (0.5, 2.0)
MID_BAND = (2.0, 6.0)
PEAK_HZ = 0.3
N_FFT = 256

#: Body regions: (stream, node indices, anchor node indices in the body stream or ()).
REGIONS: dict[str, tuple[str, tuple[int, ...], tuple[int, ...]]] = {
    "head": ("body", (POSE["nose"], POSE["left_ear"], POSE["right_ear"]),
             (POSE["left_shoulder"], POSE["right_shoulder"])),
    "left_arm": ("body", (POSE["left_elbow"], POSE["left_wrist"]), (POSE["left_shoulder"],)),
    "right_arm": ("body", (POSE["right_elbow"], POSE["right_wrist"]), (POSE["right_shoulder"],)),
    "trunk": ("body", (POSE["left_shoulder"], POSE["right_shoulder"], POSE["left_hip"],
                       POSE["right_hip"]), ()),
    "left_leg": ("body", (POSE["left_knee"], POSE["left_ankle"]), (POSE["left_hip"],)),
    "right_leg": ("body", (POSE["right_knee"], POSE["right_ankle"]), (POSE["right_hip"],)),
    "left_hand": ("left_hand", (0, 8, 12), ()),
    "right_hand": ("right_hand", (0, 8, 12), ()),
}  # fmt: skip
SIGNALS: tuple[str, ...] = (*REGIONS, "mouth")
PER_SIGNAL: tuple[str, ...] = ("speed", "speed_sd", "f_dom", "p_low", "p_mid", "peak", "seen")
FACE_FEATURES: tuple[str, ...] = (
    "eye_left", "eye_right", "eye_min", "mouth_mean", "mouth_sd",
    "yaw_mean", "yaw_sd", "pitch_mean", "roll_mean", "yaw_rate",
)  # fmt: skip
FEATURE_NAMES: tuple[str, ...] = (
    *(f"{s}_{f}" for s in SIGNALS for f in PER_SIGNAL),
    "asym_arm",
    "asym_hand",
    "asym_leg",
    *FACE_FEATURES,
    *(f"motion_{r}" for r in REGION_NAMES),
    "motion_peak",
    *(f"present_{s}" for s in STREAM_NAMES),
)
N_FEATURES = len(FEATURE_NAMES)

_EXPR, _HEAD = FACE_NODE["expression"], FACE_NODE["head"]
_EPS = 1e-12  # inside square roots: finite gradients for the explanations (integrated gradients)


def _masked_mean(v: Tensor, m: Tensor) -> Tensor:
    """Mean of ``v`` (B, T) over frames where ``m`` (B, T) is 1; 0 where none is."""
    return (v * m).sum(1) / m.sum(1).clamp(min=1.0)


def _masked_sd(v: Tensor, m: Tensor) -> Tensor:
    mu = _masked_mean(v, m)
    return (_masked_mean((v - mu[:, None]) ** 2, m) + _EPS).sqrt() - _EPS**0.5


def _spectrum(sig: Tensor, m: Tensor, fps: float) -> Tensor:
    """``f_dom``, ``p_low``, ``p_mid``, ``peak`` (B, 4) of a (B, T, C) signal observed where m = 1."""
    t = sig.shape[1]
    mean = (sig * m[..., None]).sum(1, keepdim=True) / m.sum(1).clamp(min=1.0)[:, None, None]
    centred = (sig - mean) * m[..., None]
    hann = torch.hann_window(t, periodic=False, dtype=sig.dtype, device=sig.device)
    power = torch.fft.rfft(centred * hann[None, :, None], n=N_FFT, dim=1).abs().square().sum(2)
    freqs = torch.fft.rfftfreq(N_FFT, 1.0 / fps, device=sig.device).to(sig.dtype)
    band = (freqs >= BAND[0]) & (freqs <= BAND[1])
    pb, fb = power[:, band], freqs[band]
    total = pb.sum(1)
    ok = total > 1e-12
    denom = total.clamp(min=1e-12)
    f_peak = fb[pb.argmax(1)]
    low = pb[:, (fb >= LOW_BAND[0]) & (fb < LOW_BAND[1])].sum(1) / denom
    mid = pb[:, (fb >= MID_BAND[0]) & (fb < MID_BAND[1])].sum(1) / denom
    near = (fb[None, :] - f_peak[:, None]).abs() <= PEAK_HZ
    peak = (pb * near).sum(1) / denom
    out = torch.stack([f_peak / BAND[1], low, mid, peak], dim=1)
    return torch.where(ok[:, None], out, torch.zeros_like(out))


def _signal_features(sig: Tensor, m: Tensor, fps: float) -> tuple[Tensor, Tensor]:
    """(B, 7) features of :data:`PER_SIGNAL` and the raw mean speed (B,) of a (B, T, C) signal."""
    both = m[:, 1:] * m[:, :-1]
    speed = ((sig[:, 1:] - sig[:, :-1]).square().sum(2) + _EPS).sqrt() * fps
    mean_speed = _masked_mean(speed, both)
    seen = m.mean(1)
    has = (both.sum(1) > 0).to(sig.dtype)
    feats = torch.cat(
        [
            torch.log1p(mean_speed / SPEED_SCALE)[:, None],
            torch.log1p(_masked_sd(speed, both) / SPEED_SCALE)[:, None],
            _spectrum(sig, m, fps),
            seen[:, None],
        ],
        dim=1,
    )
    return feats * has[:, None], mean_speed * has


def _asymmetry(left: Tensor, right: Tensor) -> Tensor:
    return (left - right) / (left + right).clamp(min=1e-6)


def semiology_features(batch: dict[str, Tensor], fps: float = FPS) -> Tensor:
    """(B, :data:`N_FEATURES`) features of a batch of windows (see module docstring)."""
    body, m_body = batch["x_body"].float(), batch["m_body"].float()
    face, m_face = batch["x_face"].float(), batch["m_face"].float()
    parts: list[Tensor] = []
    speeds: dict[str, Tensor] = {}
    for name, (stream, nodes, anchor) in REGIONS.items():
        x = body if stream == "body" else batch[f"x_{stream}"].float()
        m = m_body if stream == "body" else batch[f"m_{stream}"].float()
        if stream != "body":  # a hand is placed only when the pose is there too
            m = m * m_body
        pos = x[:, :, list(nodes), :2].mean(2)
        if anchor:
            pos = pos - body[:, :, list(anchor), :2].mean(2)
        feats, speeds[name] = _signal_features(pos, m, fps)
        parts.append(feats)
    expr, head = face[:, :, _EXPR], face[:, :, _HEAD]
    mouth = expr[:, :, 2:3]
    feats, _ = _signal_features(mouth, m_face, fps)
    parts.append(feats)
    parts.append(
        torch.stack(
            [
                _asymmetry(speeds["left_arm"], speeds["right_arm"]),
                _asymmetry(speeds["left_hand"], speeds["right_hand"]),
                _asymmetry(speeds["left_leg"], speeds["right_leg"]),
            ],
            dim=1,
        )
    )
    both = m_face[:, 1:] * m_face[:, :-1]
    yaw_rate = (head[:, 1:, 0] - head[:, :-1, 0]).abs() * fps
    eye_l = _masked_mean(expr[:, :, 0], m_face)
    eye_r = _masked_mean(expr[:, :, 1], m_face)
    parts.append(
        torch.stack(
            [
                eye_l,
                eye_r,
                torch.minimum(eye_l, eye_r),
                _masked_mean(expr[:, :, 2], m_face),
                _masked_sd(expr[:, :, 2], m_face),
                _masked_mean(head[:, :, 0], m_face),
                _masked_sd(head[:, :, 0], m_face),
                _masked_mean(head[:, :, 1], m_face),
                _masked_mean(head[:, :, 2], m_face),
                torch.log1p(_masked_mean(yaw_rate, both)),
            ],
            dim=1,
        )
    )
    motion, m_motion = batch["x_motion"].float()[..., 0], batch["m_motion"].float()
    region_means = (motion * m_motion[..., None]).sum(1) / m_motion.sum(1).clamp(min=1.0)[:, None]
    peak = (motion.mean(2) * m_motion).amax(1)
    parts += [region_means, peak[:, None]]
    parts.append(torch.stack([batch[f"m_{s}"].float().mean(1) for s in STREAM_NAMES], dim=1))
    return torch.cat(parts, dim=1)
