"""Background behaviour of a patient in bed and the confounders a detector must not flag.

Every episode writes into the kinematic :class:`~.body.Controls` of a :class:`Scene` and returns
its ground truth (``kind``, ``onset``/``offset`` in seconds, ``regions`` with per-region
onset/offset). Confounders are *not* written to events.tsv (the time is background, SzCORE
style); they are listed under ``confounders`` in the recording's ``_truth.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import exact as ex
from .body import SIDES, Controls

Truth = dict[str, Any]


@dataclass
class Scene:
    """Everything an episode generator needs: controls, clock, randomness and side channels."""

    ctrl: Controls
    fps: float
    rng: np.random.Generator
    amplitude: float = 1.0  # patient movement amplitude factor
    staff: list[tuple[int, int]] = field(default_factory=list)  # frames with staff hands
    occluded: list[tuple[int, int]] = field(default_factory=list)  # frames with face hidden
    quiet: list[tuple[int, int]] = field(default_factory=list)  # frames without fidgets/blinks

    @property
    def n(self) -> int:
        return self.ctrl.n

    def seconds(self, frame: int) -> float:
        return round(frame / self.fps, 3)


# ---------------------------------------------------------------- signal helpers


def envelope(n: int, fps: float, rise_s: float, fall_s: float | None = None) -> np.ndarray:
    """Raised-cosine ramp up over ``rise_s`` and down over ``fall_s`` (0..1, length n)."""
    env = np.ones(n, dtype=np.float32)
    for secs, rev in ((rise_s, False), (rise_s if fall_s is None else fall_s, True)):
        k = min(n // 2, max(1, int(secs * fps)))
        ramp = 0.5 - 0.5 * ex.cos(np.linspace(0, np.pi, k, dtype=np.float32))
        if rev:
            env[n - k :] *= ramp[::-1]
        else:
            env[:k] *= ramp
    return env


def smooth_noise(rng: np.random.Generator, n: int, fps: float, hz: float) -> np.ndarray:
    """Band-limited noise (unit scale) with knots every 1/hz s, cosine-interpolated."""
    step = max(1.0, fps / hz)
    knots = rng.standard_normal(int(n / step) + 3).astype(np.float32)
    x = np.arange(n, dtype=np.float32) / np.float32(step)
    i = x.astype(np.int64)
    w = 0.5 - 0.5 * ex.cos(np.pi * (x - i))
    return knots[i] * (1 - w) + knots[i + 1] * w


def level_change(ctrl: Controls, name: str, start: int, frames: int, delta: float) -> None:
    """Move a control smoothly by ``delta`` over ``frames`` from ``start``; it then stays."""
    row = ctrl[name][start:]
    k = min(max(frames, 1), len(row))
    ramp = 0.5 - 0.5 * ex.cos(np.linspace(0, np.pi, k, dtype=np.float32))
    row[:k] += np.float32(delta) * ramp
    row[k:] += np.float32(delta)


def go_to(ctrl: Controls, name: str, start: int, frames: int, value: float) -> None:
    """Move a control smoothly to ``value`` (from its value at ``start``)."""
    if start < ctrl.n:
        level_change(ctrl, name, start, frames, value - float(ctrl[name][start]))


def pulse_train(
    freq: np.ndarray, fps: float, width_s: float, rng: np.random.Generator, jitter: float
) -> tuple[np.ndarray, np.ndarray]:
    """Jerk waveform (0..1) for an instantaneous frequency profile, and the jerk times (s).

    Each jerk is a fast contraction and slower relaxation (alpha function, peak after
    ``width_s``); the interval jitter is a multiplicative log-normal per cycle.
    """
    n = len(freq)
    cycles = np.cumsum(freq / fps, dtype=np.float64)
    k = np.floor(cycles).astype(np.int64)
    mult = ex.exp(jitter * rng.standard_normal(int(k[-1]) + 2))
    # Cycle-level jitter: each cycle's duration is scaled; re-integrate with it.
    cycles = np.cumsum(freq / fps / mult[np.minimum(k, len(mult) - 1)], dtype=np.float64)
    k = np.floor(cycles).astype(np.int64)
    onsets = np.flatnonzero(np.diff(k, prepend=-1) > 0)
    last = np.maximum.accumulate(np.where(np.diff(k, prepend=-1) > 0, np.arange(n), 0))
    tau = (np.arange(n) - last) / fps / width_s
    wave = (tau * ex.exp(1 - tau)).astype(np.float32)
    return wave, onsets / fps


def region_span(scene: Scene, a: int, b: int) -> list[float]:
    return [scene.seconds(a), scene.seconds(b)]


# ---------------------------------------------------------------- background


def background(scene: Scene, sleeping: list[tuple[int, int]]) -> None:
    """Breathing, blinks, slow head drift, sleep and small fidgets over the whole recording."""
    c, fps, rng, n = scene.ctrl, scene.fps, scene.rng, scene.n
    t = np.arange(n, dtype=np.float32) / np.float32(fps)
    f_breath = rng.uniform(0.2, 0.33)
    phase = 2 * np.pi * f_breath * t + 0.6 * smooth_noise(rng, n, fps, 0.05)
    c["breath"][:] += np.float32(rng.uniform(0.003, 0.006)) * ex.sin(phase)
    c["head_yaw"][:] += 0.015 * smooth_noise(rng, n, fps, 0.05)
    c["head_pitch"][:] += 0.01 * smooth_noise(rng, n, fps, 0.05)
    quiet = np.zeros(n, dtype=bool)
    for a, b in scene.quiet:
        quiet[a:b] = True
    asleep = np.zeros(n, dtype=bool)
    for a, b in sleeping:
        asleep[a:b] = True
        c["eye_close"][a:b] += envelope(b - a, fps, 2.0)
    # Blinks every 2-8 s while awake (Bentivoglio et al. 1997: ~15-20 blinks/min at rest).
    f = int(rng.uniform(1, 4) * fps)
    blink = envelope(max(4, int(0.25 * fps)), fps, 0.1)
    while f < n - len(blink):
        if not (asleep[f] or quiet[f]):
            c["eye_close"][f : f + len(blink)] += blink
        f += int(rng.uniform(2.0, 8.0) * fps)
    # Small postural fidgets every 20-90 s (fewer asleep).
    f = int(rng.uniform(5, 30) * fps)
    while f < n:
        if not quiet[f] and (not asleep[f] or rng.random() < 0.3):
            side = SIDES[rng.integers(2)]
            name = f"{side}_{rng.choice(['elbow', 'sh_abd', 'knee', 'hip_abd', 'grip'])}"
            level_change(c, name, f, int(rng.uniform(0.7, 2.0) * fps), rng.normal(0, 0.12))
            if rng.random() < 0.5:
                level_change(c, "head_yaw", f, int(fps), rng.normal(0, 0.1))
        f += int(rng.uniform(20, 90) * fps)


# ---------------------------------------------------------------- confounders


def turning_over(scene: Scene, a: int, n: int) -> Truth:
    """Roll onto one side (or back), limbs repositioning, 3-8 s."""
    c, rng, fps = scene.ctrl, scene.rng, scene.fps
    roll_now = float(c["trunk_roll"][a])
    target = 0.0 if abs(roll_now) > 0.4 else rng.choice([-1, 1]) * rng.uniform(0.7, 1.3)
    level_change(c, "trunk_roll", a, n, target - roll_now)
    level_change(c, "head_yaw", a, n, 0.6 * (target - roll_now))
    env = envelope(n, fps, 0.3 * n / fps)
    for side in SIDES:
        for name, amp in (("sh_flex", 0.6), ("elbow", 0.5), ("hip_flex", 0.5), ("knee", 0.8)):
            c[f"{side}_{name}"][a : a + n] += amp * env * rng.uniform(0.5, 1.2)
    c["shift_x"][a : a + n] += 0.05 * env * np.sign(target - roll_now + 1e-3)
    regions = ("trunk", "head", "left_arm", "right_arm", "left_leg", "right_leg")
    return {"kind": "turning_over", **_span(scene, a, n, regions)}


def scratching(scene: Scene, a: int, n: int) -> Truth:
    """One hand reaches head, face, chest or thigh and scratches at 3-6 Hz, 3-15 s."""
    c, rng, fps = scene.ctrl, scene.rng, scene.fps
    side = SIDES[rng.integers(2)]
    targets = {"head": (0.05, -0.72, 0.12), "face": (0.0, -0.66, 0.14), "chest": (0.0, -0.35, 0.12)}
    targets["thigh"] = (0.1 if side == "left" else -0.1, 0.25, 0.1)
    where = list(targets)[rng.integers(len(targets))]
    tx, ty, tz = targets[where]
    env = envelope(n, fps, 1.0)
    for name, v in (("tx", tx), ("ty", ty), ("tz", tz)):
        c[f"{side}_{name}"][a : a + n] = v
    c[f"{side}_reach"][a : a + n] += env
    t = np.arange(n, dtype=np.float32) / np.float32(fps)
    f = rng.uniform(3.0, 6.0)
    inner = envelope(n, fps, 1.4)
    osc = 0.012 * scene.amplitude * ex.sin(2 * np.pi * f * t) * inner
    c[f"{side}_wy"][a : a + n] += osc
    c[f"{side}_wx"][a : a + n] += 0.5 * osc
    c[f"{side}_grip"][a : a + n] += 0.4 * env + 0.2 * inner * ex.sin(2 * np.pi * f * t)
    regions = (f"{side}_arm", f"{side}_hand")
    return {"kind": "scratching", "frequency_hz": round(f, 3), "target": where,
            **_span(scene, a, n, regions)}  # fmt: skip


def eating_drinking(scene: Scene, a: int, n: int) -> Truth:
    """Half-sitting, repeated hand-to-mouth every 8-20 s, chewing at 1-2 Hz in between."""
    c, rng, fps = scene.ctrl, scene.rng, scene.fps
    env = envelope(n, fps, 4.0)
    c["trunk_pitch"][a : a + n] += 0.45 * env
    side = SIDES[rng.integers(2)]
    c[f"{side}_tx"][a : a + n] = 0.0
    c[f"{side}_ty"][a : a + n] = -0.62
    c[f"{side}_tz"][a : a + n] = 0.16
    f = a + int(rng.uniform(3, 8) * fps)
    bite = int(3.5 * fps)
    while f + bite < a + n - 2 * fps:
        c[f"{side}_reach"][f : f + bite] += envelope(bite, fps, 1.2)
        c[f"{side}_grip"][f : f + bite] += 0.5 * envelope(bite, fps, 0.6)
        c["head_pitch"][f : f + bite] += 0.15 * envelope(bite, fps, 1.0)
        f += bite + int(rng.uniform(5, 17) * fps)
    t = np.arange(n, dtype=np.float32) / np.float32(fps)
    fc = rng.uniform(1.0, 2.0)
    chew = np.clip(smooth_noise(rng, n, fps, 0.1) + 0.3, 0, 1) * env
    c["mouth_open"][a : a + n] += 0.25 * chew * (0.5 + 0.5 * ex.sin(2 * np.pi * fc * t))
    c["jaw_lat"][a : a + n] += 0.4 * chew * ex.sin(2 * np.pi * fc * t + 1.0)
    regions = ("trunk", "face", f"{side}_arm", f"{side}_hand", "head")
    return {"kind": "eating_drinking", "chewing_hz": round(fc, 3),
            **_span(scene, a, n, regions)}  # fmt: skip


def talking(scene: Scene, a: int, n: int) -> Truth:
    """Syllabic mouth movement (3-6 Hz, irregular), nods and hand gestures, 10-90 s."""
    c, rng, fps = scene.ctrl, scene.rng, scene.fps
    env = envelope(n, fps, 0.5)
    speech = np.clip(smooth_noise(rng, n, fps, 4.5), 0, None) * (
        smooth_noise(rng, n, fps, 0.3) > -0.4
    )
    c["mouth_open"][a : a + n] += 0.35 * speech * env
    c["head_pitch"][a : a + n] += 0.05 * smooth_noise(rng, n, fps, 1.5) * env
    c["head_yaw"][a : a + n] += 0.12 * smooth_noise(rng, n, fps, 0.4) * env
    side = SIDES[rng.integers(2)]
    c[f"{side}_elbow"][a : a + n] += 0.4 * np.clip(smooth_noise(rng, n, fps, 0.8), 0, None) * env
    c[f"{side}_sh_flex"][a : a + n] += 0.2 * np.clip(smooth_noise(rng, n, fps, 0.6), 0, None) * env
    regions = ("face", "head", f"{side}_arm", f"{side}_hand")
    return {"kind": "talking", **_span(scene, a, n, regions)}


def sitting_up(scene: Scene, a: int, n: int) -> Truth:
    """Sit up over 3-6 s, stay (shifting, looking around), lie back down over 3-6 s."""
    c, rng, fps = scene.ctrl, scene.rng, scene.fps
    rise = int(rng.uniform(3, 6) * fps)
    lift = rng.uniform(0.6, 1.1)
    c["trunk_pitch"][a : a + n] += lift * envelope(n, fps, rise / fps)
    env = envelope(n, fps, rise / fps)
    for side in SIDES:
        c[f"{side}_hip_flex"][a : a + n] += 0.3 * env
        c[f"{side}_knee"][a : a + n] += 0.6 * env
        c[f"{side}_sh_abd"][a : a + n] += 0.25 * env
    c["head_yaw"][a : a + n] += 0.3 * smooth_noise(rng, n, fps, 0.2) * env
    regions = ("trunk", "head", "left_arm", "right_arm", "left_leg", "right_leg")
    return {"kind": "sitting_up", **_span(scene, a, n, regions)}


def staff_examining(scene: Scene, a: int, n: int) -> Truth:
    """A nurse or doctor examines the patient: a second person's hands enter the view
    (detected as the patient's hands), the patient's arm is lifted passively and the
    face is intermittently occluded. 20-90 s."""
    c, rng, fps = scene.ctrl, scene.rng, scene.fps
    scene.staff.append((a, a + n))
    side = SIDES[rng.integers(2)]
    env = envelope(n, fps, 3.0)
    t = np.arange(n, dtype=np.float32) / np.float32(fps)
    passive = 0.5 + 0.5 * ex.sin(2 * np.pi * rng.uniform(0.3, 0.7) * t)
    c[f"{side}_sh_flex"][a : a + n] += 0.8 * env * passive
    c[f"{side}_elbow"][a : a + n] += 0.7 * env * (1 - passive)
    c["head_yaw"][a : a + n] += 0.3 * env * smooth_noise(rng, n, fps, 0.3)
    f = a + int(rng.uniform(2, 10) * fps)
    while f < a + n - fps:
        length = int(rng.uniform(1, 6) * fps)
        scene.occluded.append((f, min(f + length, a + n)))
        f += length + int(rng.uniform(3, 15) * fps)
    regions = ("head", f"{side}_arm", f"{side}_hand")
    return {"kind": "staff_examining", **_span(scene, a, n, regions)}


def _span(scene: Scene, a: int, n: int, regions: tuple[str, ...]) -> Truth:
    span = region_span(scene, a, a + n)
    return {"onset": span[0], "offset": span[1], "regions": {r: list(span) for r in regions}}


#: Confounders with their duration range (s).
CONFOUNDERS: dict[str, tuple[Callable[[Scene, int, int], Truth], tuple[float, float]]] = {
    "turning_over": (turning_over, (3.0, 8.0)),
    "scratching": (scratching, (3.0, 15.0)),
    "eating_drinking": (eating_drinking, (60.0, 200.0)),
    "talking": (talking, (10.0, 90.0)),
    "sitting_up": (sitting_up, (30.0, 150.0)),
    "staff_examining": (staff_examining, (20.0, 90.0)),
}
