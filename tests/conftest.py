"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def small_consortium(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic consortium (2 sites × 4 patients × 6 min, seed 0), generated once
    per test session; treat it as read-only."""
    from semiofed.shared.synth import generate_consortium

    out = tmp_path_factory.mktemp("consortium") / "synth"
    generate_consortium(
        out, sites=2, patients_per_site=4, minutes_per_patient=6.0, seed=0, workers=2
    )
    return out
