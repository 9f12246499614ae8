"""One generator per model class of event: automatisms, clonic, f2b, hyperkinetic, pnes.

``lateralization`` is the *hemisphere of onset* (SzCORE/EEG convention). Motor signs follow
clinical lateralizing rules: clonic jerks, head version and dystonic posturing appear on the
contralateral body side, manual automatisms on the ipsilateral side; ``body_side`` in the
ground truth names the side where the dominant motor signs are. PNES have no hemisphere
(``lateralization`` None, ``body_side`` "bilateral"). Sources for every value: PARAMETERS.md.

A generator is called as ``gen(scene, a, n, tail, hemisphere, p)`` with the event's first
frame ``a``, its length ``n`` in frames, ``tail`` frames after the event it may use (the
postictal phase of f2b), and the patient's seizure parameters ``p``; it returns the event's
ground truth (times in seconds from the recording start).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import exact as ex
from .behaviours import Scene, Truth, envelope, go_to, pulse_train, smooth_noise

OTHER = {"left": "right", "right": "left"}


def _frequency_truth(scene: Scene, a: int, jerks: np.ndarray) -> dict[str, Any]:
    """Jerk times, instantaneous frequency every 0.5 s and its coefficient of variation."""
    t0 = a / scene.fps
    if len(jerks) < 3:
        return {"jerk_times": [round(t0 + j, 3) for j in jerks], "t": [], "hz": [], "cv": None}
    inst = 1.0 / np.diff(jerks)
    mid = (jerks[1:] + jerks[:-1]) / 2
    grid = np.arange(mid[0], mid[-1], 0.5)
    hz = np.interp(grid, mid, inst)
    return {
        "jerk_times": [round(t0 + j, 3) for j in jerks],
        "t": [round(t0 + g, 3) for g in grid],
        "hz": [round(float(h), 3) for h in hz],
        "cv": round(float(inst.std() / inst.mean()), 3),
    }


def _phase(name: str, scene: Scene, a: int, b: int) -> dict[str, Any]:
    return {"name": name, "onset": scene.seconds(a), "offset": scene.seconds(b)}


def _regions(scene: Scene, spans: dict[str, tuple[int, int]]) -> dict[str, list[float]]:
    return {r: [scene.seconds(a), scene.seconds(b)] for r, (a, b) in spans.items()}


def _eyes_open(scene: Scene, a: int, n: int, rise_s: float = 0.5) -> None:
    """Seizure onset wakes the patient: cancel sleep and blinks during the event."""
    scene.ctrl["eye_close"][a : a + n] *= 1 - envelope(n, scene.fps, rise_s)
    scene.quiet.append((a, a + n))


def clonic(scene: Scene, a: int, n: int, tail: int, hemisphere: str, p: dict) -> Truth:
    """Unilateral rhythmic jerks (start 3-5 Hz, slowing), hand → arm → face march."""
    c, fps, rng = scene.ctrl, scene.fps, scene.rng
    side = OTHER[hemisphere]
    u = np.linspace(0, 1, n, dtype=np.float32)
    freq = p["clonic_f0"] * ex.power(p["clonic_f_end"] / p["clonic_f0"], ex.power(u, 0.8))
    wave, jerks = pulse_train(freq, fps, 0.06, rng, jitter=0.35)
    amp = scene.amplitude * p["amplitude"]
    _eyes_open(scene, a, n)
    order = ["hand", "arm", "face"] if rng.random() < 0.7 else ["face", "hand", "arm"]
    starts = {order[0]: 0}
    starts[order[1]] = int(rng.uniform(1, 4) * fps)
    starts[order[2]] = starts[order[1]] + int(rng.uniform(1, 5) * fps)
    spans = {}
    for part, s0 in starts.items():
        env = np.zeros(n, dtype=np.float32)
        env[s0:] = envelope(n - s0, fps, 1.5, 0.3)
        w = wave * env * amp
        sl = slice(a, a + n)
        if part == "hand":
            c[f"{side}_grip"][sl] += 0.7 * w
            c[f"{side}_wz"][sl] += 0.015 * w
            c[f"{side}_hand_roll"][sl] += 0.25 * w
            spans[f"{side}_hand"] = (a + s0, a + n)
        elif part == "arm":
            c[f"{side}_elbow"][sl] += 0.45 * w + 0.3 * env
            c[f"{side}_sh_flex"][sl] += 0.25 * w + 0.2 * env
            spans[f"{side}_arm"] = (a + s0, a + n)
        else:
            sign = 1.0 if side == "left" else -1.0
            c["jaw_lat"][sl] += 0.5 * sign * w
            c["mouth_open"][sl] += 0.2 * w
            c["eye_close"][sl] += 0.35 * w
            c["head_yaw"][sl] += sign * (0.06 * w + 0.15 * env)
            spans["face"] = (a + s0, a + n)
            spans["head"] = (a + s0, a + n)
    return {
        "body_side": side,
        "phases": [_phase("clonic", scene, a, a + n)],
        "regions": _regions(scene, spans),
        "frequency": _frequency_truth(scene, a, jerks),
    }


def automatisms(scene: Scene, a: int, n: int, tail: int, hemisphere: str, p: dict) -> Truth:
    """Arrest, oro-alimentary automatisms, ipsilateral manual automatisms, contralateral
    dystonic posturing (in some patients)."""
    c, fps, rng = scene.ctrl, scene.fps, scene.rng
    ipsi, contra = hemisphere, OTHER[hemisphere]
    _eyes_open(scene, a, n, 1.0)
    t = np.arange(n, dtype=np.float32) / np.float32(fps)
    sl = slice(a, a + n)
    spans: dict[str, tuple[int, int]] = {}
    oral0 = int(rng.uniform(2, 8) * fps)
    env = np.zeros(n, dtype=np.float32)
    env[oral0:] = envelope(n - oral0, fps, 3.0, 2.0)
    f_chew = rng.uniform(0.9, 1.6)
    bursts = np.clip(smooth_noise(rng, n, fps, 0.2) + 0.6, 0, 1)
    c["mouth_open"][sl] += 0.3 * env * bursts * (0.5 + 0.5 * ex.sin(2 * np.pi * f_chew * t))
    c["jaw_lat"][sl] += 0.35 * env * bursts * ex.sin(2 * np.pi * f_chew * t + 0.8)
    smack = np.clip(smooth_noise(rng, n, fps, 2.5), 0, None)
    c["pucker"][sl] += 0.6 * env * (1 - bursts) * smack
    spans["face"] = (a + oral0, a + n)
    man0 = oral0 + int(rng.uniform(3, 12) * fps)
    if man0 < n - fps:
        env_m = np.zeros(n, dtype=np.float32)
        env_m[man0:] = envelope(n - man0, fps, 2.0)
        amp = 0.03 * scene.amplitude * p["amplitude"]
        for axis, hz in (("wx", 1.2), ("wy", 0.9), ("wz", 1.5)):
            c[f"{ipsi}_{axis}"][sl] += amp * env_m * smooth_noise(rng, n, fps, hz)
        c[f"{ipsi}_grip"][sl] += 0.4 * env_m * smooth_noise(rng, n, fps, 1.5)
        c[f"{ipsi}_hand_roll"][sl] += 0.4 * env_m * smooth_noise(rng, n, fps, 0.8)
        c[f"{ipsi}_elbow"][sl] += 0.5 * env_m
        spans[f"{ipsi}_hand"] = (a + man0, a + n)
        spans[f"{ipsi}_arm"] = (a + man0, a + n)
    if p["dystonia"]:
        d0 = int(rng.uniform(10, 25) * fps)
        if d0 < n - 2 * fps:
            env_d = np.zeros(n, dtype=np.float32)
            env_d[d0:] = envelope(n - d0, fps, 3.0)
            c[f"{contra}_elbow"][sl] += 0.9 * env_d
            c[f"{contra}_grip"][sl] += 0.7 * env_d
            c[f"{contra}_hand_roll"][sl] += 0.8 * env_d
            spans[f"{contra}_arm"] = (a + d0, a + n)
            spans[f"{contra}_hand"] = (a + d0, a + n)
    sign = 1.0 if ipsi == "left" else -1.0
    c["head_yaw"][sl] += sign * 0.25 * envelope(n, fps, 5.0)
    spans["head"] = (a, a + n)
    return {
        "body_side": ipsi,
        "phases": [
            _phase("arrest", scene, a, a + oral0),
            _phase("automatisms", scene, a + oral0, a + n),
        ],
        "regions": _regions(scene, spans),
    }


def f2b(scene: Scene, a: int, n: int, tail: int, hemisphere: str, p: dict) -> Truth:
    """Head version → tonic stiffening → bilateral clonic jerks slowing with growing pauses
    → postictal stillness (the ``tail`` after the event)."""
    c, fps, rng = scene.ctrl, scene.fps, scene.rng
    side = OTHER[hemisphere]
    sign = 1.0 if side == "left" else -1.0
    fr = np.array([rng.uniform(0.12, 0.2), rng.uniform(0.15, 0.25)])
    n_v, n_t = int(fr[0] * n), int(fr[1] * n)
    n_c = n - n_v - n_t
    tv, tt, tc = a, a + n_v, a + n_v + n_t
    _eyes_open(scene, a, n + tail)
    amp = scene.amplitude * p["amplitude"]
    # Version: forced head (and eye) turn to the contralateral side, arm extending.
    go_to(c, "head_yaw", tv, int(0.6 * n_v), sign * rng.uniform(0.9, 1.3))
    go_to(c, f"{side}_sh_flex", tv + n_v // 2, n_v // 2, 0.7)
    go_to(c, f"{side}_elbow", tv + n_v // 2, n_v // 2, 0.05)
    # Tonic: all limbs stiffen, mouth open (tonic cry), vibratory tremor building up.
    for s in ("left", "right"):
        go_to(c, f"{s}_sh_abd", tt, int(0.3 * n_t), 0.7)
        go_to(c, f"{s}_sh_flex", tt, int(0.3 * n_t), 0.6)
        go_to(c, f"{s}_elbow", tt, int(0.3 * n_t), rng.uniform(0.05, 1.3))
        go_to(c, f"{s}_grip", tt, int(0.3 * n_t), 1.0)
        go_to(c, f"{s}_knee", tt, int(0.3 * n_t), 0.0)
    go_to(c, "mouth_open", tt, int(0.2 * n_t), 0.7)
    t_all = np.arange(n_t + n_c, dtype=np.float32) / np.float32(fps)
    vib = ex.sin(2 * np.pi * rng.uniform(8, 10) * t_all)
    grow = np.clip(t_all / max(n_t / fps, 1e-3), 0, 1) * envelope(len(t_all), fps, 0.1, 2.0)
    for s in ("left", "right"):
        c[f"{s}_elbow"][tt : tc + n_c] += 0.04 * amp * vib * grow
        c[f"{s}_sh_flex"][tt : tc + n_c] += 0.03 * amp * vib * grow
    # Clonic: bilateral synchronous jerks, frequency slowing, pauses growing.
    u = np.linspace(0, 1, n_c, dtype=np.float32)
    freq = p["f2b_f0"] * ex.power(p["f2b_f_end"] / p["f2b_f0"], u)
    wave, jerks = pulse_train(freq, fps, 0.07, rng, jitter=0.3)
    w = wave * envelope(n_c, fps, 0.5, 0.05) * amp * (1 - 0.4 * u)
    sl = slice(tc, tc + n_c)
    for s in ("left", "right"):
        c[f"{s}_elbow"][sl] += 0.5 * w
        c[f"{s}_sh_flex"][sl] += 0.3 * w
        c[f"{s}_hip_flex"][sl] += 0.25 * w
        c[f"{s}_knee"][sl] += 0.35 * w
    c["head_pitch"][sl] += 0.15 * w
    c["mouth_open"][sl] += 0.3 * w
    c["eye_close"][sl] += 0.4 * w
    c["trunk_pitch"][sl] += 0.06 * w
    # Postictal: limbs go flaccid, eyes close, deep slow breathing, no movement.
    end = a + n
    post = min(tail, c.n - end)
    if post > 0:
        for name, rest in (("head_yaw", sign * 0.3), ("mouth_open", 0.15), ("eye_close", 1.0)):
            go_to(c, name, end, int(2 * fps), rest)
        for s in ("left", "right"):
            for name, rest in (("sh_abd", 0.35), ("sh_flex", 0.0), ("elbow", 0.2), ("grip", 0.2),
                               ("knee", 0.15)):  # fmt: skip
                go_to(c, f"{s}_{name}", end, int(3 * fps), rest)
        c["breath"][end : end + post] *= 2.0
        scene.quiet.append((end, end + post))
    full = (a, end)
    spans = {"head": full, f"{side}_arm": (tv + n_v // 2, end), "face": (tt, end)}
    for r in ("trunk", "left_leg", "right_leg", f"{OTHER[side]}_arm", "left_hand", "right_hand"):
        spans.setdefault(r, (tt, end))
    phases = [
        _phase("version", scene, tv, tt),
        _phase("tonic", scene, tt, tc),
        _phase("clonic", scene, tc, end),
    ]
    if post > 0:
        phases.append(_phase("postictal", scene, end, end + post))
    return {
        "body_side": side,
        "phases": phases,
        "regions": _regions(scene, spans),
        "frequency": _frequency_truth(scene, tc, jerks),
    }


def hyperkinetic(scene: Scene, a: int, n: int, tail: int, hemisphere: str, p: dict) -> Truth:
    """Abrupt, violent proximal movements: rocking trunk, pedalling legs, flailing arms."""
    c, fps, rng = scene.ctrl, scene.fps, scene.rng
    _eyes_open(scene, a, n, 0.2)
    env = envelope(n, fps, 0.6, 0.8)
    amp = scene.amplitude * p["amplitude"]
    t = np.arange(n, dtype=np.float32) / np.float32(fps)
    sl = slice(a, a + n)
    contra = OTHER[hemisphere]
    c["trunk_roll"][sl] += 0.45 * amp * env * smooth_noise(rng, n, fps, 1.2)
    c["pelvis_lift"][sl] += 0.06 * amp * env * np.clip(smooth_noise(rng, n, fps, 1.5), 0, None)
    c["head_yaw"][sl] += 0.5 * env * smooth_noise(rng, n, fps, 1.5)
    c["mouth_open"][sl] += 0.6 * env * np.clip(smooth_noise(rng, n, fps, 2.0), 0, None)
    f_ped = rng.uniform(0.8, 2.0)
    for s, ph in (("left", 0.0), ("right", np.pi)):
        k = 1.3 if s == contra else 1.0
        pedal = ex.sin(2 * np.pi * f_ped * t + ph + 0.5 * smooth_noise(rng, n, fps, 0.5))
        c[f"{s}_hip_flex"][sl] += k * 0.5 * amp * env * (0.6 + 0.5 * pedal)
        c[f"{s}_knee"][sl] += k * 0.8 * amp * env * (0.6 + 0.5 * pedal)
        c[f"{s}_sh_flex"][sl] += k * 0.8 * amp * env * np.abs(smooth_noise(rng, n, fps, 1.8))
        c[f"{s}_sh_abd"][sl] += k * 0.5 * amp * env * smooth_noise(rng, n, fps, 1.4)
        c[f"{s}_elbow"][sl] += k * 0.6 * amp * env * np.abs(smooth_noise(rng, n, fps, 2.0))
    regions = ("trunk", "head", "face", "left_arm", "right_arm", "left_leg", "right_leg")
    lag = {r: a + int(rng.uniform(0, 1.0) * fps) for r in regions}
    return {
        "body_side": contra,
        "phases": [_phase("hyperkinetic", scene, a, a + n)],
        "regions": _regions(scene, {r: (lag[r], a + n) for r in regions}),
    }


def pnes(scene: Scene, a: int, n: int, tail: int, hemisphere: str, p: dict) -> Truth:
    """Eyes closed, side-to-side head movement, asynchronous limb movements at a stable
    frequency with waxing and waning amplitude, gradual onset, long duration."""
    c, fps, rng = scene.ctrl, scene.fps, scene.rng
    sl = slice(a, a + n)
    env = envelope(n, fps, rng.uniform(5, 15), rng.uniform(3, 10))
    t = np.arange(n, dtype=np.float32) / np.float32(fps)
    c["eye_close"][sl] = np.maximum(c["eye_close"][sl], env) + 0.1 * env * smooth_noise(
        rng, n, fps, 3.0
    )
    scene.quiet.append((a, a + n))
    period = rng.uniform(10, 40)
    wax = np.clip(0.55 + 0.45 * ex.sin(2 * np.pi * t / period + rng.uniform(0, 6)), 0.05, 1)
    wax *= env * scene.amplitude * p["amplitude"]
    f_head = rng.uniform(0.7, 1.5)
    c["head_yaw"][sl] += 0.35 * wax * ex.sin(2 * np.pi * f_head * t)
    f0 = p["pnes_f"]
    slow, fast = smooth_noise(rng, n, fps, 0.05), smooth_noise(rng, n, fps, 1.0)
    freq = f0 * (1 + 0.8 * p["pnes_cv"] * slow) * (1 + 0.8 * p["pnes_cv"] * fast)
    spans = {"head": (a, a + n), "face": (a, a + n)}
    jerks = None
    for k, (s, limb) in enumerate(
        (("left", "arm"), ("right", "arm"), ("left", "leg"), ("right", "leg"))
    ):
        if limb == "leg" and rng.random() < 0.4:
            continue
        detune = 1 + 0.06 * rng.standard_normal()
        phase = 2 * np.pi * np.cumsum(freq * detune / fps) + rng.uniform(0, 2 * np.pi)
        osc = ex.sin(phase).astype(np.float32) * wax
        if limb == "arm":
            c[f"{s}_elbow"][sl] += 0.35 * osc
            c[f"{s}_sh_flex"][sl] += 0.15 * osc
            spans[f"{s}_arm"] = (a, a + n)
        else:
            c[f"{s}_knee"][sl] += 0.35 * (osc + wax)
            c[f"{s}_hip_flex"][sl] += 0.2 * (osc + wax)
            spans[f"{s}_leg"] = (a, a + n)
        if k == 0:
            crossings = np.flatnonzero(np.diff(np.floor(phase / (2 * np.pi))) > 0)
            jerks = crossings / fps
    if p["pelvic_thrust"]:
        c["pelvis_lift"][sl] += 0.05 * wax * (0.5 + 0.5 * ex.sin(2 * np.pi * f0 * 0.5 * t))
        spans["trunk"] = (a, a + n)
    return {
        "body_side": "bilateral",
        "phases": [_phase("pnes", scene, a, a + n)],
        "regions": _regions(scene, spans),
        "frequency": _frequency_truth(scene, a, jerks if jerks is not None else np.array([])),
    }


Generator = Callable[[Scene, int, int, int, str, dict], Truth]
#: Generator per model class.
GENERATORS: dict[str, Generator] = {
    "automatisms": automatisms,
    "clonic": clonic,
    "f2b": f2b,
    "hyperkinetic": hyperkinetic,
    "pnes": pnes,
}

#: Median duration (s) and log-normal spread of each class; f2b adds a postictal tail.
DURATION: dict[str, tuple[float, float]] = {
    "automatisms": (68.0, 0.35),
    "clonic": (45.0, 0.35),
    "f2b": (80.0, 0.25),
    "hyperkinetic": (30.0, 0.35),
    "pnes": (143.0, 0.4),
}
POSTICTAL_S = (60.0, 180.0)


def sample_duration(
    rng: np.random.Generator, cls: str, scale: float, max_s: float
) -> tuple[float, float]:
    """Event duration and postictal tail (s) for one event, capped to ``max_s`` in total."""
    median, spread = DURATION[cls]
    dur = float(median * scale * ex.exp(spread * rng.standard_normal()))
    tail = float(rng.uniform(*POSTICTAL_S)) if cls == "f2b" else 0.0
    dur = max(8.0, min(dur, 0.8 * max_s))
    tail = max(0.0, min(tail, max_s - dur))
    return dur, tail


def hemisphere_for(cls: str, patient_hemisphere: str) -> str | None:
    """Event lateralization written to events.tsv (None for PNES)."""
    return None if cls == "pnes" else patient_hemisphere
