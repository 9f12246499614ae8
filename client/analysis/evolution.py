"""Seizure evolution: when abnormal movement starts and ends in each body region, and in what order.

A region is *abnormal* when, for at least ``min_duration_s`` (gaps shorter than
``merge_gap_s`` bridged), either its smoothed body-centric speed (see :mod:`.signals`) or its
displacement from its median baseline position (forced postures: head version, tonic limbs)
exceeds the patient's own baseline — median + ``k`` robust standard deviations
(1.4826 × MAD) of the same quantity in this recording outside the analysed events, and at
least ``floor`` / ``displacement_floor``. Comparing each patient with themselves avoids a
population threshold that would mistake a restless patient for a seizing one. A region's
onset is the start of its first abnormal stretch starting within ``[onset − margin_s,
offset]`` (stretches already under way before are not this event's); its offset the end of
its last abnormal *movement* (speed) stretch, since a posture may outlast the seizure.

The order of involvement lists regions by onset; regions starting within ``tie_s`` of each
other share a step, and the step where both body sides have become involved is marked
``bilateral`` (e.g. ``face → right_hand → right_arm → bilateral``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from semiofed.shared.skeleton import REGION_NAMES

from .signals import RegionSignals, smooth

LEFT_REGIONS = ("left_arm", "left_hand", "left_leg")
RIGHT_REGIONS = ("right_arm", "right_hand", "right_leg")


@dataclass(frozen=True)
class EvolutionConfig:
    k: float = 6.0  # robust SDs above the baseline median
    floor: float = 0.03  # body units/s: threshold never below (a perfectly still baseline)
    displacement_floor: float = 0.02  # body units: smallest posture change counted
    pre_s: float = 12.0  # posture reference: [onset - pre_s, onset - pre_gap_s]
    pre_gap_s: float = 2.0
    activity_s: float = 0.5  # smoothing of the speed before thresholding
    min_duration_s: float = 1.0
    merge_gap_s: float = 1.0
    margin_s: float = 5.0  # seconds searched before/after an event; excluded from baseline
    min_baseline_s: float = 10.0
    tie_s: float = 0.5


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Start/stop (exclusive) indices of the True runs of a boolean array."""
    m = np.r_[False, np.asarray(mask, bool), False].astype(np.int8)
    d = np.diff(m)
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1), strict=True))


def clean_mask(mask: np.ndarray, min_len: int, merge_gap: int) -> np.ndarray:
    """Bridge False gaps shorter than ``merge_gap`` then drop True runs shorter than ``min_len``."""
    out = np.asarray(mask, bool).copy()
    r = runs(out)
    for (_, e0), (s1, _) in itertools.pairwise(r):
        if s1 - e0 < merge_gap:
            out[e0:s1] = True
    for s, e in runs(out):
        if e - s < min_len:
            out[s:e] = False
    return out


def baseline_mask(
    times: np.ndarray, events: list[tuple[float, float]], cfg: EvolutionConfig
) -> np.ndarray | None:
    """Frames outside every event (± margin); None when that leaves too little baseline."""
    mask = np.ones(len(times), bool)
    for on, off in events:
        mask &= ~((times >= on - cfg.margin_s) & (times <= off + cfg.margin_s))
    if len(times) < 2:
        return None
    dt = float(np.median(np.diff(times)))
    return mask if mask.sum() * dt >= cfg.min_baseline_s else None


def activity(sig: RegionSignals, cfg: EvolutionConfig) -> dict[str, np.ndarray]:
    n = max(1, round(cfg.activity_s * sig.fps))
    return {r: smooth(sig.speed[r], n) for r in REGION_NAMES}


def thresholds(
    act: dict[str, np.ndarray], base: np.ndarray | None, k: float, floor: float
) -> dict[str, float]:
    """Per-region threshold from the patient's own baseline: median + k robust SDs, ≥ floor.

    Without enough event-free frames the lower half of the region's values stands in for
    the baseline (a seizure rarely fills more than half of a recording).
    """
    out = {}
    for region, a in act.items():
        vals = a[base] if base is not None else a
        vals = vals[np.isfinite(vals)]
        if base is None and vals.size:
            vals = vals[vals <= np.median(vals)]
        if vals.size < 3:
            out[region] = float("inf")
            continue
        med = float(np.median(vals))
        mad = 1.4826 * float(np.median(np.abs(vals - med)))
        out[region] = max(med + k * mad, floor)
    return out


def abnormal_masks(
    sig: RegionSignals, events: list[tuple[float, float]], cfg: EvolutionConfig | None = None
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per region, frames of sustained abnormal movement (speed), and the thresholds used."""
    cfg = cfg or EvolutionConfig()
    act = activity(sig, cfg)
    thr = thresholds(act, baseline_mask(sig.times, events, cfg), cfg.k, cfg.floor)
    min_len = max(1, round(cfg.min_duration_s * sig.fps))
    gap = max(1, round(cfg.merge_gap_s * sig.fps))
    masks = {r: clean_mask(np.nan_to_num(act[r], nan=0.0) > thr[r], min_len, gap) for r in act}
    return masks, thr


def posture_masks(sig: RegionSignals, onset: float, cfg: EvolutionConfig) -> dict[str, np.ndarray]:
    """Per region, frames whose position departs from the pre-event posture.

    Reference: median position over ``[onset − pre_s, onset − pre_gap_s]`` (the patient just
    before this event); threshold median + ``k`` robust SDs of the displacement there, at
    least ``displacement_floor``. Regions without that reference get no posture mask.
    """
    t = sig.times
    pre = (t >= onset - cfg.pre_s) & (t <= onset - cfg.pre_gap_s)
    n = max(1, round(cfg.activity_s * sig.fps))
    min_len = max(1, round(cfg.min_duration_s * sig.fps))
    gap = max(1, round(cfg.merge_gap_s * sig.fps))
    out = {}
    for r in REGION_NAMES:
        pos = sig.positions[r]
        ok = pre & np.isfinite(pos).all(1)
        if ok.sum() < 3 * sig.fps:
            out[r] = np.zeros(len(t), bool)
            continue
        d = smooth(np.linalg.norm(pos - np.median(pos[ok], axis=0), axis=1), n)
        thr = thresholds({r: d}, ok, cfg.k, cfg.displacement_floor)[r]
        out[r] = clean_mask(np.nan_to_num(d, nan=0.0) > thr, min_len, gap)
    return out


def involvement_order(onsets: dict[str, float], tie_s: float = 0.5) -> list[list[str]]:
    """Regions grouped into steps by onset; ``bilateral`` is added at the step both sides are in."""
    ordered = sorted((t, r) for r, t in onsets.items())
    steps: list[list[str]] = []
    last = -np.inf
    for t, r in ordered:
        if steps and t - last <= tie_s:
            steps[-1].append(r)
        else:
            steps.append([r])
            last = t
    seen: set[str] = set()
    bilateral_done = False
    for step in steps:
        seen.update(step)
        if (
            not bilateral_done
            and seen.intersection(LEFT_REGIONS)
            and seen.intersection(RIGHT_REGIONS)
        ):
            step.append("bilateral")
            bilateral_done = True
    return steps


def order_text(steps: list[list[str]]) -> str:
    return " → ".join(" + ".join(s) for s in steps)


def event_evolution(
    sig: RegionSignals,
    onset: float,
    offset: float,
    moving: dict[str, np.ndarray],
    cfg: EvolutionConfig | None = None,
) -> dict:
    """Onset/offset of abnormal movement or posture per region around one event, and the
    order of involvement (``moving``: speed masks from :func:`abnormal_masks`)."""
    cfg = cfg or EvolutionConfig()
    t = sig.times
    start = onset - cfg.margin_s
    posture = posture_masks(sig, onset, cfg)
    regions: dict[str, dict] = {}
    onsets: dict[str, float] = {}
    for region in REGION_NAMES:
        # stretches that start in [onset - margin, offset]: earlier ones are not this event's
        mov = [(s, e) for s, e in runs(moving[region]) if start <= t[s] <= offset]
        hit = [(s, e) for s, e in runs(moving[region] | posture[region]) if start <= t[s] <= offset]
        if not hit:
            regions[region] = {"involved": False, "onset_s": None, "offset_s": None}
            continue
        on = float(t[hit[0][0]])
        last = mov[-1] if mov else hit[-1]
        off = min(float(t[min(last[1], len(t)) - 1]), offset + cfg.margin_s)
        regions[region] = {
            "involved": True,
            "onset_s": round(on, 2),
            "offset_s": round(max(off, on), 2),
            "by": "movement" if mov else "posture",
        }
        onsets[region] = on
    steps = involvement_order(onsets, cfg.tie_s)
    bilateral_at = None
    for step in steps:
        if "bilateral" in step:
            bilateral_at = min(onsets[r] for r in step if r in onsets)
    return {
        "regions": regions,
        "order": steps,
        "order_text": order_text(steps),
        "bilateral_onset_s": None if bilateral_at is None else round(bilateral_at, 2),
    }
