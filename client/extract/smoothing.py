"""Temporal smoothing and gap filling of landmark streams.

Smoothing is a One-Euro filter (Casiez et al., CHI 2012), run forwards over each run of
detected frames: strong at rest, where landmark jitter dominates, and nearly transparent
during fast movement, so clonic jerks are not flattened. Gaps of up to ``MAX_GAP_S``
between two detections are filled by linear interpolation and flagged in ``filled``;
filled frames are never marked present. Frames the motion gate did not analyse are bridged
the same way between the analysed frames around them (:func:`bridge_unanalysed`).
"""

from __future__ import annotations

import math

import numpy as np

MIN_CUTOFF_HZ = 1.0  # cutoff at rest
BETA = 20.0  # cutoff increase per unit of speed (frame widths per second)
DERIVATIVE_CUTOFF_HZ = 1.0
MAX_GAP_S = 0.5  # longest gap that is filled


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    tau = 1.0 / (2 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


def one_euro(values: np.ndarray, times: np.ndarray) -> np.ndarray:
    """One-Euro filter over axis 0 of ``values`` (T, ...), sampled at ``times`` (s)."""
    out = values.astype(np.float32, copy=True)
    if len(values) < 2:
        return out
    deriv = np.zeros_like(out[0])
    for i in range(1, len(values)):
        dt = max(float(times[i] - times[i - 1]), 1e-3)
        raw_deriv = (values[i] - out[i - 1]) / dt
        deriv += _alpha(DERIVATIVE_CUTOFF_HZ, dt) * (raw_deriv - deriv)
        cutoff = MIN_CUTOFF_HZ + BETA * np.abs(deriv)
        out[i] = out[i - 1] + _alpha(cutoff, dt) * (values[i] - out[i - 1])
    return out


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` of each run of True in a 1-D mask."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def smooth_stream(values: np.ndarray, present: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Smooth x, y, z (first 3 channels) within each run of detected frames."""
    out = values.copy()
    for start, stop in runs(present):
        out[start:stop, :, :3] = one_euro(values[start:stop, :, :3], times[start:stop])
    return out


def fill_gaps(
    values: np.ndarray, present: np.ndarray, times: np.ndarray, max_gap_s: float = MAX_GAP_S
) -> tuple[np.ndarray, np.ndarray]:
    """Linearly interpolate gaps of at most ``max_gap_s`` between detections.

    Returns the filled values and the ``filled`` mask (True only on interpolated frames).
    """
    out = values.copy()
    filled = np.zeros_like(present)
    for start, stop in runs(~present):
        if start == 0 or stop == len(present):
            continue  # not between two detections: nothing to interpolate from
        if times[stop] - times[start - 1] > max_gap_s + 1e-9:
            continue
        _interpolate(out, values, times, start, stop)
        filled[start:stop] = True
    return out, filled


def bridge_unanalysed(
    values: np.ndarray, present: np.ndarray, analysed: np.ndarray, times: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate each run of frames the motion gate did not analyse (``analysed`` False:
    the patient was still) between the analysed frames around it, when both detected the
    stream, however long the run. Returns the values and the mask of bridged frames."""
    out = values.copy()
    bridged = np.zeros_like(present)
    for start, stop in runs(~analysed):
        if start == 0 or stop == len(present) or not (present[start - 1] and present[stop]):
            continue
        _interpolate(out, values, times, start, stop)
        bridged[start:stop] = True
    return out, bridged


def _interpolate(
    out: np.ndarray, values: np.ndarray, times: np.ndarray, start: int, stop: int
) -> None:
    """Linear interpolation of frames ``[start, stop)`` between frames ``start - 1`` and ``stop``."""
    before, after = start - 1, stop
    w = ((times[start:stop] - times[before]) / (times[after] - times[before]))[:, None, None]
    out[start:stop] = (1 - w) * values[before] + w * values[after]
