"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test``: two workers on two cores) each worker computes on
    one torch thread, so two workers do not oversubscribe the cores; a test that pins two
    threads (for its weights' sake) gets OpenMP threads that sleep rather than spin while the
    other worker holds a core (set before torch loads; results do not change)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Long end-to-end tests (marked ``slow``) first, in collection order, then the rest.
    ``make test`` runs pytest-xdist with ``--dist loadscope --no-loadscope-reorder``: each
    worker takes the next scope (module or class) as it frees, so no long scope is taken last
    and runs alone while the other worker idles (xdist's own reorder sorts scopes by their
    number of tests, which put the one-test SuperNode-crash class last)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable


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
