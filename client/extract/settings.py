"""Defaults and choices of ``semiofed site extract`` (kept import-light for the CLI parser)."""

from __future__ import annotations

import os

BACKENDS = ("holistic", "tasks")
DEVICES = ("auto", "cpu", "gpu")
#: Analysed frames per second: the model's window rate (``WindowConfig.fps``), resolving
#: movements up to 7.5 Hz (clonic jerks are ~1–5 Hz). Holistic costs ~47 ms of CPU a frame, so
#: two cores reach at most ~2.8× real time at 15 fps; ``--fps 10`` or ``8`` trade temporal
#: resolution for speed (bench_extract measures all three).
DEFAULT_FPS = 15.0
#: Analysed frames per second while the motion gate is closed (the patient is still).
KEEPALIVE_FPS = 1.0


def default_workers() -> int:
    """One worker process per CPU core available to this process."""
    return max(1, len(os.sched_getaffinity(0)))
