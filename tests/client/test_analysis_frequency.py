"""Dominant movement frequency through the real video → MediaPipe → semiology path."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from semiofed.client.analysis.semiology import SemiologyConfig, event_semiology, rhythm_tracks
from semiofed.client.analysis.signals import region_signals
from semiofed.client.extract.pipeline import ExtractOptions, extract
from semiofed.shared.recording import load_recording
from tests.clips import make_moving_clip

FREQ_HZ = 1.7  # not on a spectral bin of the 4 s windows


def _rock(t: float) -> tuple[float, float, float, float]:
    """The photo rocks ±6° about its centre at FREQ_HZ, plus a slow sideways drift the
    body-centric trajectories must ignore."""
    return (
        25.0 * math.sin(2 * math.pi * 0.2 * t),
        0.0,
        6.0 * math.sin(2 * math.pi * FREQ_HZ * t),
        1.0,
    )


def test_dominant_frequency_of_a_rocking_person_is_recovered(tmp_path: Path) -> None:
    clip = make_moving_clip(tmp_path / "rocking.mp4", seconds=10.0, fps=30.0, motion=_rock)
    run = extract([clip], ExtractOptions(out=tmp_path / "kp", workers=1, fps=15.0, progress=False))
    assert run.count("ok") == 1, run.entries
    rec = load_recording(run.entries[0]["output"])
    assert rec.present[:, 0].mean() > 0.9  # MediaPipe found the astronaut in (almost) every frame

    sig = region_signals(rec)
    tracks = rhythm_tracks(sig, SemiologyConfig())
    base = np.ones(rec.n_frames, bool)
    sem = event_semiology(rec, sig, tracks, 0.0, rec.duration, base)
    head = sem["regions"]["head"]["dominant_frequency_hz"]
    assert head is not None and abs(head - FREQ_HZ) <= 0.3, head
    # Rocking at a steady rate: no frequency trend worth the name.
    tau = sem["regions"]["head"]["frequency_trend_tau"]
    assert tau is None or abs(tau) < 0.8
