"""Synthetic keypoint windows for the empirical audits (no patient data).

A window is ``frames × joints × 2`` (x, y) coordinates, flattened. Each class moves the
joints with its own frequency and amplitude pattern; every window has a random phase,
a random body offset and per-coordinate noise, so the classes overlap and a small model
can overfit its training windows (which is what membership inference exploits).
"""

from __future__ import annotations

import numpy as np

FRAMES = 16
JOINTS = 8
N_CLASSES = 6


def synthetic_windows(
    n: int,
    seed: int,
    noise: float = 1.0,
    frames: int = FRAMES,
    joints: int = JOINTS,
    n_classes: int = N_CLASSES,
) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)``: ``X`` float32 ``(n, frames*joints*2)`` standardised, ``y`` int64 ``(n,)``."""
    rng = np.random.default_rng(seed)
    pattern = np.random.default_rng(12345).normal(size=(n_classes, joints, 2))  # fixed per class
    y = rng.integers(0, n_classes, size=n)
    t = np.linspace(0.0, 1.0, frames)[None, :, None, None]
    freq = (1.0 + y)[:, None, None, None]
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1, 1))
    motion = pattern[y][:, None] * np.sin(2 * np.pi * freq * t + phase)
    offset = rng.normal(scale=0.5, size=(n, 1, 1, 2))
    x = motion + offset + rng.normal(scale=noise, size=(n, frames, joints, 2))
    x = x.reshape(n, -1)
    x = (x - x.mean()) / x.std()
    return x.astype(np.float32), y.astype(np.int64)


def window_shape() -> tuple[int, int, int]:
    return FRAMES, JOINTS, 2
