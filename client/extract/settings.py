"""Defaults and choices of ``semiofed site extract`` (kept import-light for the CLI parser)."""

from __future__ import annotations

import os

BACKENDS = ("holistic", "tasks")
DEVICES = ("auto", "cpu", "gpu")
#: Analysed frames per second. 10 Hz resolves movements up to 5 Hz (clonic jerks are
#: ~1–4 Hz) and keeps extraction well above real time on two cores (bench_extract).
DEFAULT_FPS = 10.0


def default_workers() -> int:
    """One worker process per CPU core available to this process."""
    return max(1, len(os.sched_getaffinity(0)))
