"""Quantified semiology on synthetic seizures against what the simulator put in: head version
(sustained, to the body side of the seizure; none in PNES side-to-side shaking), clonic
slowing (negative Kendall τ of the dominant frequency), ictal eye closure in PNES."""

from __future__ import annotations

import pytest

from semiofed.client.analysis.semiology import event_semiology, rhythm_tracks
from semiofed.client.analysis.signals import region_signals
from semiofed.shared.synth import simulate_event_clip


def _semiology(kind: str, seed: int, **kw: str) -> tuple[dict, dict]:
    rec, events, truth = simulate_event_clip(kind, 120.0, seed, fps=15.0, **kw)
    sig = region_signals(rec)
    ev = events[0]
    base = (sig.times < ev.onset - 2.0) | (sig.times > ev.offset + 10.0)
    sem = event_semiology(rec, sig, rhythm_tracks(sig), ev.onset, ev.offset, base)
    return sem, truth["events"][0]


@pytest.mark.parametrize(("seed", "hemisphere"), [(0, "right"), (1, "left")])
def test_f2b_head_version_to_the_body_side(seed: int, hemisphere: str) -> None:
    sem, te = _semiology("f2b", seed, lateralization=hemisphere)
    version = sem["head_version"]
    assert version["present"] and version["side"] == te["body_side"], version
    assert abs(version["angle_deg"]) >= 20.0 and version["duration_s"] >= 5.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pnes_shaking_is_no_version_and_eyes_are_closed(seed: int) -> None:
    sem, _ = _semiology("pnes", seed)
    assert not sem["head_version"]["present"], sem["head_version"]
    assert sem["eye_closure_fraction"] > 0.5
    taus = [v["frequency_trend_tau"] for v in sem["regions"].values()]
    assert all(t is None or abs(t) < 0.4 for t in taus), taus  # stable frequency


@pytest.mark.parametrize("seed", [0, 1])
def test_clonic_jerks_slow_down_on_the_seizing_side(seed: int) -> None:
    sem, te = _semiology("clonic", seed)
    side = te["body_side"]
    assert sem["regions"][f"{side}_arm"]["frequency_trend_tau"] < -0.3
    assert sem["regions"][f"{side}_hand"]["frequency_trend_tau"] < -0.3
    assert sem["eye_closure_fraction"] < 0.2
