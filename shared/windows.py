"""Fixed-length windows over a recording: resampling, features, labels.

A recording is first resampled to ``WindowConfig.fps`` (linear interpolation between the
two nearest source frames, by timestamp). Masks are resampled conservatively: a resampled
frame is present only when every source frame it interpolates from is present and the two
are no more than ``max_gap_frames`` source frames apart (no bridging of dropped stretches).
Windows of ``seconds`` start every ``hop`` seconds, from ``seconds - hop`` before a
recording's start (``t0 < 0``) until the last window that still holds one of its frames: every
frame lies in the same number of windows, and the first and last seconds of a recording (or a
recording shorter than a window) appear in windows that are zero-padded and masked where
they run past its ends. Several recordings of a patient are laid out in one frame buffer with
masked gaps, so that all windows are one read-only strided view (no copy), yet no window
mixes two recordings and none is padding only.

Label rule: a window takes the type of the event of interest (seizure or PNES, i.e. not
``bckg``) that covers the largest fraction of it, provided that fraction is at least
``min_event_coverage`` (default 0.5); otherwise the window is background. ``y_detect`` is 1
for such a window, ``y_type`` is :func:`labels.class_of` of the event type (``IGNORE_INDEX``
for an unlabelled seizure such as ``sz``) and ``lateralization`` is the event's
(``unknown`` when not annotated); background windows get ``n/a``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .events import Event
from .features import STREAM_NAMES, Frames, compute_features, frames_from_recording
from .labels import CLASS_INDEX, class_of, is_event_of_interest
from .recording import Recording

LAT_DTYPE = "<U9"


@dataclass(frozen=True)
class WindowConfig:
    seconds: float = 5.0  # window length
    fps: float = 15.0  # frame rate after resampling
    hop: float = 1.0  # seconds between window starts
    min_event_coverage: float = 0.5  # fraction of a window an event must cover to label it
    rotate: bool = True  # rotation normalisation (torso points up)
    reference_seconds: float = 5.0  # span over which the body reference is averaged
    max_gap_frames: float = 2.5  # source frames beyond which interpolation is refused

    @property
    def frames(self) -> int:
        return max(1, round(self.seconds * self.fps))

    @property
    def hop_frames(self) -> int:
        return max(1, round(self.hop * self.fps))


def resample(frames: Frames, fps: float, max_gap_frames: float = 2.5) -> Frames:
    """Resample every stream of ``frames`` to ``fps`` on a grid starting at the first timestamp."""
    ts = frames.times
    if frames.n_frames < 2:
        return replace(frames, fps=fps)
    duration = float(ts[-1] - ts[0])
    n = int(np.floor(duration * fps + 1e-6)) + 1
    tt = ts[0] + np.arange(n, dtype=np.float64) / fps
    hi = np.clip(np.searchsorted(ts, tt, side="left"), 1, len(ts) - 1)
    lo = hi - 1
    gap = ts[hi] - ts[lo]
    w = np.clip((tt - ts[lo]) / gap, 0.0, 1.0)
    uses_lo, uses_hi = w < 1.0 - 1e-6, w > 1e-6
    close = gap <= max_gap_frames / frames.fps + 1e-9

    def interp(a: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a0 = np.where(valid.reshape(-1, *([1] * (a.ndim - 1))), a, 0.0)
        ww = w.reshape(-1, *([1] * (a.ndim - 1))).astype(np.float32)
        out = a0[lo] * (1.0 - ww) + a0[hi] * ww
        ok = (valid[lo] | ~uses_lo) & (valid[hi] | ~uses_hi) & (close | ~(uses_lo & uses_hi))
        return out.astype(np.float32), ok

    out: dict[str, np.ndarray] = {}
    valid: dict[str, np.ndarray] = {}
    for name in ("pose", "face", "left_hand", "right_hand", "motion"):
        out[name], valid[name] = interp(getattr(frames, name), frames.valid[name])
    return Frames(times=tt, valid=valid, fps=fps, aspect=frames.aspect, **out)


def _window_view(a: np.ndarray, length: int, hop: int) -> np.ndarray:
    """Read-only strided view (N, length, ...) of windows of ``a`` along axis 0."""
    view = np.lib.stride_tricks.sliding_window_view(a, length, axis=0)[::hop]
    return np.moveaxis(view, -1, 1)


def window_labels(
    t0: np.ndarray, events: list[Event], cfg: WindowConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y_detect, y_type, lateralization) of windows starting at ``t0`` (see module docstring)."""
    n = len(t0)
    y_detect = np.zeros(n, dtype=np.int64)
    y_type = np.full(n, CLASS_INDEX["bckg"], dtype=np.int64)
    lat = np.full(n, "n/a", dtype=LAT_DTYPE)
    best = np.zeros(n)
    for ev in events:
        if not is_event_of_interest(ev.event_type):
            continue
        cover = np.clip(
            np.minimum(t0 + cfg.seconds, ev.offset) - np.maximum(t0, ev.onset), 0.0, None
        )
        cover /= cfg.seconds
        take = (cover >= cfg.min_event_coverage - 1e-9) & (cover > best)
        best[take] = cover[take]
        y_detect[take] = 1
        y_type[take] = class_of(ev.event_type)
        lat[take] = ev.lateralization or "unknown"
    return y_detect, y_type, lat


def recording_features(
    rec: Recording, cfg: WindowConfig
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], float]:
    """Per-frame stream tensors and masks at ``cfg.fps``, and the time of their first frame."""
    if rec.n_frames == 0:
        raise ValueError("recording has no frames")
    frames = resample(frames_from_recording(rec), cfg.fps, cfg.max_gap_frames)
    x, mask = compute_features(frames, cfg.rotate, cfg.reference_seconds)
    return x, mask, float(frames.times[0])


Segment = tuple[dict[str, np.ndarray], dict[str, np.ndarray], float, list[Event]]


def assemble_windows(segments: list[Segment], cfg: WindowConfig) -> dict:
    """Windows over consecutive recordings ``(x, mask, first_time, events)`` (see module doc).

    Returns ``{"x": {stream: (N, T, V, C)}, "mask": {stream: (N, T)}, "y_detect": (N,),
    "y_type": (N,), "lateralization": (N,), "t0": (N,), "segment": (N,)}``; ``x`` and ``mask``
    are read-only float32 strided views; ``t0`` is relative to the window's own recording,
    whose index in ``segments`` is ``segment``.
    """
    length, hop = cfg.frames, cfg.hop_frames
    lead = max(0, -(-(length - hop) // hop) * hop)  # T - hop rounded up to the hop grid
    starts, cursor = [], lead
    for seg_x, _, _, _ in segments:
        n = len(next(iter(seg_x.values())))
        starts.append(cursor)
        cursor += n + (-n) % hop + lead
    total = max(cursor, length)
    buf_x = {s: np.zeros((total, *segments[0][0][s].shape[1:]), np.float32) for s in STREAM_NAMES}
    buf_m = {s: np.zeros(total, np.float32) for s in STREAM_NAMES}
    for a0, (seg_x, seg_m, _, _) in zip(starts, segments, strict=True):
        for s in STREAM_NAMES:
            buf_x[s][a0 : a0 + len(seg_x[s])] = seg_x[s]
            buf_m[s][a0 : a0 + len(seg_m[s])] = seg_m[s]
    win_start = np.arange(0, total - length + 1, hop)
    owner = np.searchsorted(np.asarray(starts), win_start + length - 1, side="right") - 1
    owner = np.clip(owner, 0, len(segments) - 1)
    t0 = (win_start - np.asarray(starts)[owner]) / cfg.fps
    y_detect = np.zeros(len(win_start), np.int64)
    y_type = np.zeros(len(win_start), np.int64)
    lat = np.zeros(len(win_start), LAT_DTYPE)
    for k, (_, _, first_time, events) in enumerate(segments):
        sel = owner == k
        t0[sel] += first_time
        y_detect[sel], y_type[sel], lat[sel] = window_labels(t0[sel], events, cfg)
    return {
        "x": {s: _window_view(buf_x[s], length, hop) for s in STREAM_NAMES},
        "mask": {s: _window_view(buf_m[s], length, hop) for s in STREAM_NAMES},
        "y_detect": y_detect,
        "y_type": y_type,
        "lateralization": lat,
        "t0": t0.astype(np.float64),
        "segment": owner.astype(np.int64),
    }


def windows_from_recording(rec: Recording, events: list[Event], cfg: WindowConfig) -> dict:
    """Windows of one recording (the dict of :func:`assemble_windows`).

    ``events`` may be empty (analysis of an unlabelled video: everything is background).
    """
    x, mask, first_time = recording_features(rec, cfg)
    return assemble_windows([(x, mask, first_time, events)], cfg)
