"""Order of involvement on synthetic focal-to-bilateral tonic-clonic seizures vs the simulator's truth."""

from __future__ import annotations

import pytest

from semiofed.client.analysis.evolution import (
    EvolutionConfig,
    abnormal_masks,
    event_evolution,
    involvement_order,
)
from semiofed.client.analysis.signals import region_signals
from semiofed.shared.synth import simulate_event_clip


def test_involvement_order_groups_ties_and_marks_bilateral() -> None:
    steps = involvement_order({"face": 1.0, "right_hand": 3.0, "right_arm": 5.0, "left_arm": 5.2})
    assert steps == [["face"], ["right_hand"], ["right_arm", "left_arm", "bilateral"]]


@pytest.mark.parametrize(("seed", "hemisphere"), [(0, "right"), (1, "left"), (2, "right")])
def test_f2b_progression_follows_truth(seed: int, hemisphere: str) -> None:
    rec, events, truth = simulate_event_clip("f2b", 80.0, seed, fps=15.0, lateralization=hemisphere)
    te = truth["events"][0]
    side = te["body_side"]  # version and first arm: contralateral to the onset hemisphere
    other = "left" if side == "right" else "right"
    sig, cfg = region_signals(rec), EvolutionConfig()
    moving, _ = abnormal_masks(sig, [(e.onset, e.offset) for e in events], cfg)
    evo = event_evolution(sig, events[0].onset, events[0].offset, moving, cfg)
    on = {r: v["onset_s"] for r, v in evo["regions"].items() if v["involved"]}

    # Truth: head (version) → contralateral arm → everything else (tonic phase, bilateral).
    assert {"head", f"{side}_arm", f"{other}_arm"} <= set(on), evo["order_text"]
    assert on["head"] < on[f"{side}_arm"] < on[f"{other}_arm"], evo["order_text"]
    assert abs(on["head"] - te["regions"]["head"][0]) < 4.0
    assert abs(on[f"{side}_arm"] - te["regions"][f"{side}_arm"][0]) < 4.0
    assert abs(on[f"{other}_arm"] - te["regions"][f"{other}_arm"][0]) < 4.0
    first = evo["order"][0]
    assert "head" in first and f"{other}_arm" not in first
    assert evo["bilateral_onset_s"] >= on[f"{side}_arm"]
