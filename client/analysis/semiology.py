"""Quantified semiology of one event: rhythm, its trend, amplitude decay, head version,
asymmetry, eye closure and automatisms — all from keypoints, per body region.

Dominant frequency: each region's body-centric trajectory (:mod:`.signals`) is band-passed
(0.4–10 Hz), cut into ``window_s`` windows every ``hop_s``, and the peak of the summed x/y
Hann-windowed, zero-padded power spectrum in 0.5–8 Hz is refined by parabolic interpolation.
A window counts as *rhythmic* when its peak holds at least ``min_peak_share`` of the band's
power and its amplitude exceeds the region's baseline. The event's dominant frequency is the
median over its rhythmic windows (over all its windows if none is rhythmic).

Trend: Kendall τ of frequency against time over the rhythmic windows (slowing clonic jerks,
τ < 0, are typical of epileptic seizures; a stable frequency suggests PNES).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal, stats

from semiofed.shared.recording import Recording
from semiofed.shared.skeleton import FACE_SUBSET, POSE, REGION_NAMES

from .evolution import clean_mask, runs
from .signals import RegionSignals, interpolate_gaps, xy

BAND = (0.5, 8.0)
FILTER_BAND = (0.4, 10.0)


@dataclass(frozen=True)
class SemiologyConfig:
    window_s: float = 4.0
    hop_s: float = 0.5
    min_peak_share: float = 0.25
    version_deg: float = 20.0  # head turned at least this far from baseline counts as version
    min_version_s: float = 1.0


@dataclass
class RhythmTrack:
    """Short-time dominant frequency of one region."""

    times: np.ndarray  # window centres (s)
    freq: np.ndarray  # Hz, NaN where the window was not observed
    amplitude: np.ndarray  # RMS of the band-passed trajectory (body units)
    peak_share: np.ndarray  # fraction of in-band power in the peak (±0.25 Hz)


def _bandpass(x: np.ndarray, fps: float) -> np.ndarray:
    hi = min(FILTER_BAND[1], 0.45 * fps)
    sos = signal.butter(2, [FILTER_BAND[0], hi], btype="band", fs=fps, output="sos")
    return signal.sosfiltfilt(sos, x, axis=0)


def rhythm_track(pos: np.ndarray, fps: float, cfg: SemiologyConfig) -> RhythmTrack:
    """Dominant frequency over time of a (T, 2) trajectory."""
    n = round(cfg.window_s * fps)
    hop = max(1, round(cfg.hop_s * fps))
    t_total = len(pos)
    starts = list(range(0, max(t_total - n, 0) + 1, hop)) if t_total >= n else []
    ok = np.isfinite(pos).all(axis=1)
    filled = interpolate_gaps(pos, t_total) if ok.sum() >= 2 else np.zeros_like(pos)
    filled = np.nan_to_num(filled)
    bp = _bandpass(filled, fps) if t_total > 15 else filled - filled.mean(0)
    nfft = max(4096, 1 << int(np.ceil(np.log2(n * 8))))
    freqs = np.fft.rfftfreq(nfft, 1.0 / fps)
    band = (freqs >= BAND[0]) & (freqs <= min(BAND[1], 0.45 * fps))
    hann = np.hanning(n)[:, None]
    out_t, out_f, out_a, out_s = [], [], [], []
    for s in starts:
        seg = bp[s : s + n]
        out_t.append((s + n / 2) / fps)
        if ok[s : s + n].mean() < 0.8:
            out_f.append(np.nan)
            out_a.append(np.nan)
            out_s.append(0.0)
            continue
        seg = seg - seg.mean(0)
        power = (np.abs(np.fft.rfft(seg * hann, nfft, axis=0)) ** 2).sum(1)
        pb = power[band]
        fb = freqs[band]
        i = int(np.argmax(pb))
        f = fb[i]
        if 0 < i < len(pb) - 1:
            a, b, c = np.log(pb[i - 1 : i + 2] + 1e-30)
            denom = a - 2 * b + c
            if denom < 0:
                f += 0.5 * (a - c) / denom * (fb[1] - fb[0])
        near = np.abs(fb - fb[i]) <= 0.25
        out_f.append(float(f))
        out_a.append(float(np.sqrt(np.mean(np.sum(seg**2, axis=1)))))
        out_s.append(float(pb[near].sum() / max(pb.sum(), 1e-30)))
    return RhythmTrack(np.array(out_t), np.array(out_f), np.array(out_a), np.array(out_s))


def _kendall(x: np.ndarray, y: np.ndarray) -> tuple[float | None, float | None]:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 4 or np.ptp(y[ok]) == 0:
        return None, None
    res = stats.kendalltau(x[ok], y[ok])
    return round(float(res.statistic), 3), round(float(res.pvalue), 4)


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), nd)


def region_rhythm(
    track: RhythmTrack,
    onset: float,
    offset: float,
    baseline_amp: float,
    cfg: SemiologyConfig,
) -> dict:
    """Dominant frequency, its trend and amplitude decay of one region within [onset, offset]."""
    inside = (track.times >= onset) & (track.times <= offset) & np.isfinite(track.freq)
    if not inside.any():  # event shorter than a window: take the window nearest its centre
        if not np.isfinite(track.freq).any():
            return {"dominant_frequency_hz": None, "rhythmic_windows": 0}
        centre = 0.5 * (onset + offset)
        dist = np.where(np.isfinite(track.freq), np.abs(track.times - centre), np.inf)
        inside = np.zeros_like(inside)
        inside[int(np.argmin(dist))] = True
    rhythmic = inside & (track.peak_share >= cfg.min_peak_share)
    rhythmic &= track.amplitude > 2.0 * baseline_amp
    use = rhythmic if rhythmic.any() else inside
    t, f, a = track.times[use], track.freq[use], track.amplitude[use]
    tau, p = _kendall(t, f)
    tau_a, _ = _kendall(t, a)
    third = max(1, len(a) // 3)
    decay = float(np.median(a[-third:]) / np.median(a[:third])) if len(a) >= 3 else None
    return {
        "dominant_frequency_hz": _r(float(np.median(f))),
        "frequency_over_time": [[_r(ti, 2), _r(fi)] for ti, fi in zip(t, f, strict=True)],
        "frequency_trend_tau": tau,
        "frequency_trend_p": p,
        "rhythmic_windows": int(rhythmic.sum()),
        "amplitude_body_units": _r(float(np.median(a)), 4),
        "amplitude_decay_ratio": _r(decay),
        "amplitude_trend_tau": tau_a,
    }


def head_yaw(rec: Recording) -> np.ndarray:
    """Head yaw (degrees, + = turned to the patient's left) from pose nose and ears, per frame.

    The nose's offset from the ear midpoint along the right→left ear axis is ``D sin φ`` and the
    projected ear distance ``W cos φ``; with the nose ≈ 0.55 W in front of the ear axis,
    ``tan φ = offset / (0.55 · ear distance)``.
    """
    p = xy(rec, "pose")
    nose, le, re = p[:, POSE["nose"]], p[:, POSE["left_ear"]], p[:, POSE["right_ear"]]
    axis = le - re
    dist = np.linalg.norm(axis, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = axis / dist[:, None]
        offset = np.sum((nose - 0.5 * (le + re)) * unit, axis=1)
        return np.degrees(np.arctan2(offset / 0.55, dist))


def _face_ratio(rec: Recording, a: str, b: str, c: str, d: str) -> np.ndarray:
    f = xy(rec, "face")
    num = np.linalg.norm(f[:, FACE_SUBSET[a]] - f[:, FACE_SUBSET[b]], axis=1)
    den = np.linalg.norm(f[:, FACE_SUBSET[c]] - f[:, FACE_SUBSET[d]], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def eye_aperture(rec: Recording) -> np.ndarray:
    """Mean eyelid opening / eye width of both eyes, per frame."""
    r = _face_ratio(rec, "right_eye_top", "right_eye_bottom", "right_eye_outer", "right_eye_inner")
    left = _face_ratio(rec, "left_eye_top", "left_eye_bottom", "left_eye_outer", "left_eye_inner")
    return 0.5 * (r + left)


def mouth_opening(rec: Recording) -> np.ndarray:
    return _face_ratio(rec, "lip_top", "lip_bottom", "mouth_right", "mouth_left")


def finger_extension(rec: Recording, side: str) -> np.ndarray:
    """Fingertip (index, middle) to wrist distance / palm length, per frame."""
    h = xy(rec, f"{side}_hand")
    tips = 0.5 * (
        np.linalg.norm(h[:, 8] - h[:, 0], axis=1) + np.linalg.norm(h[:, 12] - h[:, 0], axis=1)
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        return tips / np.linalg.norm(h[:, 9] - h[:, 0], axis=1)


def cycle_rate(x: np.ndarray, fps: float, sel: np.ndarray, base: np.ndarray) -> float | None:
    """Movement cycles per minute of a 1-D signal within ``sel`` (peaks of the 0.4–4 Hz band
    with a prominence above 4 robust SDs of the baseline band-passed signal)."""
    ok = np.isfinite(x)
    if sel.sum() < fps * 2 or ok[sel].mean() < 0.5:
        return None
    y = interpolate_gaps(x, len(x))
    y = np.nan_to_num(y, nan=float(np.nanmedian(x)))
    sos = signal.butter(2, [0.4, min(4.0, 0.45 * fps)], btype="band", fs=fps, output="sos")
    y = signal.sosfiltfilt(sos, y) if len(y) > 15 else y - y.mean()
    b = y[base & ok] if (base & ok).sum() > fps else y[ok]
    noise = 1.4826 * float(np.median(np.abs(b - np.median(b))))
    prom = max(4.0 * noise, 0.03 * float(np.nanmedian(np.abs(x))) + 1e-6)
    peaks, _ = signal.find_peaks(
        np.where(sel, y, 0.0), prominence=prom, distance=max(1, round(fps / 4))
    )
    return round(60.0 * len(peaks) / (sel.sum() / fps), 2)


def head_version(
    yaw: np.ndarray, fps: float, sel: np.ndarray, base: np.ndarray, cfg: SemiologyConfig
) -> dict:
    """Sustained head turning to one side, away from the baseline yaw, within ``sel``.

    Each side is measured on its own, so side-to-side shaking (PNES), whose excursions to
    either side are brief, is not mistaken for version; the side turned to longest wins."""
    ref = yaw[base & np.isfinite(yaw)]
    ref_val = float(np.median(ref)) if ref.size else 0.0
    dev = np.nan_to_num(yaw - ref_val, nan=0.0)
    min_len, gap = max(1, round(cfg.min_version_s * fps)), max(1, round(0.2 * fps))
    best: dict = {"present": False, "angle_deg": None, "side": None, "duration_s": 0.0}
    longest_run = 0
    for sign, side in ((1.0, "left"), (-1.0, "right")):
        turned = clean_mask(sign * dev > cfg.version_deg, min_len, gap) & sel
        for start, stop in runs(turned):
            if stop - start > longest_run:
                longest_run = stop - start
                best = {
                    "present": True,
                    "angle_deg": round(float(np.median(dev[start:stop])), 1),
                    "side": side,
                    "duration_s": round(float(turned.sum() / fps), 2),
                }
    return best


def asymmetry(sig: RegionSignals, sel: np.ndarray) -> dict:
    """(right − left) / (right + left) of mean squared speed per limb, in [-1, 1]."""
    out = {}
    total = {"left": 0.0, "right": 0.0}
    for part in ("arm", "hand", "leg"):
        e = {}
        for side in ("left", "right"):
            v = sig.speed[f"{side}_{part}"][sel]
            e[side] = float(np.nanmean(v**2)) if np.isfinite(v).any() else 0.0
            total[side] += e[side]
        s = e["left"] + e["right"]
        out[part] = round((e["right"] - e["left"]) / s, 3) if s > 0 else None
    s = total["left"] + total["right"]
    out["overall"] = round((total["right"] - total["left"]) / s, 3) if s > 0 else None
    return out


def event_semiology(
    rec: Recording,
    sig: RegionSignals,
    tracks: dict[str, RhythmTrack],
    onset: float,
    offset: float,
    base: np.ndarray,
    cfg: SemiologyConfig | None = None,
) -> dict:
    """Quantified semiology of [onset, offset] against the recording's baseline frames ``base``."""
    cfg = cfg or SemiologyConfig()
    t, fps = sig.times, sig.fps
    sel = (t >= onset) & (t <= offset)
    regions = {}
    for r in REGION_NAMES:
        tr = tracks[r]
        base_t = np.interp(tr.times, t, base.astype(float)) > 0.5
        amp = tr.amplitude[base_t & np.isfinite(tr.amplitude)]
        base_amp = float(np.median(amp)) if amp.size else 0.0
        regions[r] = region_rhythm(tr, onset, offset, base_amp, cfg)
    eyes = eye_aperture(rec)
    eye_ref = eyes[base & np.isfinite(eyes)]
    eye_sel = eyes[sel]
    closed = None
    if eye_ref.size and np.isfinite(eye_sel).any():
        closed = float(np.mean(eye_sel[np.isfinite(eye_sel)] < 0.5 * np.median(eye_ref)))
    manual = [cycle_rate(finger_extension(rec, s), fps, sel, base) for s in ("left", "right")]
    manual_vals = [m for m in manual if m is not None]
    return {
        "window_s": [round(onset, 2), round(offset, 2)],
        "regions": regions,
        "head_version": head_version(head_yaw(rec), fps, sel, base, cfg),
        "asymmetry_right_minus_left": asymmetry(sig, sel),
        "eye_closure_fraction": _r(closed),
        "oral_automatism_per_min": cycle_rate(mouth_opening(rec), fps, sel, base),
        "manual_automatism_per_min": max(manual_vals) if manual_vals else None,
        "manual_automatism_per_min_by_hand": dict(zip(("left", "right"), manual, strict=True)),
    }


def rhythm_tracks(sig: RegionSignals, cfg: SemiologyConfig | None = None) -> dict[str, RhythmTrack]:
    cfg = cfg or SemiologyConfig()
    return {r: rhythm_track(sig.positions[r], sig.fps, cfg) for r in REGION_NAMES}
