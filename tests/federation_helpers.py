"""Shared settings for the federation tests: a tiny model and a tiny synthetic consortium."""

from __future__ import annotations

from pathlib import Path

# round-timeout: generous, so a slow (loaded) machine never drops a live site from a round.
TINY: dict = {
    "federation": {"rounds": 2, "min-nodes": 2, "round-timeout": 600.0, "seed": 0},
    "training": {"local-epochs": 1, "batch-size": 2, "test-fraction": 0.34},
    "model": {
        "channels": [8],
        "strides": [3],
        "motion-channels": [8],
        "motion-strides": [3],
        "embed-dim": 16,
        "groups": 4,
    },
    "privacy": {"noise-multiplier": 1.0, "clip-norm": 1.0, "delta": 1e-3, "site-budget": 50.0},
    "secagg": {"enabled": True, "num-shares": 3, "reconstruction-threshold": 2},
}


def synth_consortium(out: Path, sites: int, patients: int) -> Path:
    """OUT/site-XX/<patient>/… of the synthetic generator (1 minute per patient)."""
    from semiofed.shared.synth.consortium import generate_consortium

    generate_consortium(out, sites, patients, 1.0, seed=1, workers=1)
    return out
