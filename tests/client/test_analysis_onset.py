"""Causal onset alarms: only the past decides, one alarm per seizure, latency and false alarms."""

from __future__ import annotations

import numpy as np
import pytest

from semiofed.client.analysis.onset import (
    MAX_FALSE_ALARMS_PER_HOUR,
    AlarmRule,
    ScoredRecording,
    alarm_counts,
    causal_alarms,
    false_alarm_rate_bound,
    score_alarms,
    select_alarm_rule,
)
from semiofed.shared.events import Event

HOP = 0.5


def _recording(seconds: float, events: list[Event], rise_s: float, seed: int) -> ScoredRecording:
    """Window scores of a detector whose probability reaches 0.9 ``rise_s`` after each onset,
    with noise on background."""
    t_end = np.arange(HOP, seconds + 1e-9, HOP)
    rng = np.random.default_rng(seed)
    prob = rng.uniform(0.0, 0.4, len(t_end))
    for e in events:
        prob[(t_end >= e.onset + rise_s) & (t_end <= e.offset)] = 0.9
    return ScoredRecording(t_end, prob, events, seconds)


def test_an_alarm_never_depends_on_later_windows() -> None:
    rec = _recording(600, [Event(100, 60, "sz_foc_f2b"), Event(400, 30, "pnes")], 3.0, 0)
    rule = AlarmRule(threshold=0.5, consecutive=2)
    alarms = causal_alarms(rec.t_end, rec.prob, rule)
    for cut in (50, 103.0, 104.5, 250, 420):
        keep = rec.t_end <= cut
        past = causal_alarms(rec.t_end[keep], rec.prob[keep], rule)
        # the future rewritten at random: the alarms up to `cut` stay as they were
        future = np.random.default_rng(int(cut)).uniform(0, 1, int((~keep).sum()))
        rewritten = causal_alarms(rec.t_end, np.concatenate([rec.prob[keep], future]), rule)
        np.testing.assert_array_equal(past, alarms[alarms <= cut])
        np.testing.assert_array_equal(rewritten[rewritten <= cut], past)


def test_one_alarm_per_seizure_and_its_latency() -> None:
    rec = _recording(600, [Event(100, 60, "sz_foc_f2b"), Event(400, 30, "pnes")], 3.0, 1)
    alarms = causal_alarms(rec.t_end, rec.prob, AlarmRule(threshold=0.5, consecutive=2))
    # 2 windows in a row at 0.9 from onset + 3 s: the alarm at onset + 3.5 s, once per event
    np.testing.assert_allclose(alarms, [103.5, 403.5])
    counts = score_alarms(alarms, rec.events, rec.duration_s)
    assert counts.latencies == pytest.approx([3.5, 3.5])
    assert counts.missed == 0 and counts.false_alarms == 0


def test_a_flickering_score_rearms_only_after_quiet_time() -> None:
    t_end = np.arange(1.0, 61.0, 1.0)
    prob = np.where(np.arange(60) % 4 == 0, 0.9, 0.1)  # high every 4 s
    assert len(causal_alarms(t_end, prob, AlarmRule(0.5, 1, rearm_s=5.0))) == 1
    assert len(causal_alarms(t_end, prob, AlarmRule(0.5, 1, rearm_s=2.0))) == 15


def test_false_alarms_misses_and_tolerances() -> None:
    events = [Event(100, 20, "sz_foc_a_m_clonic"), Event(300, 20, "pnes"), Event(500, 5, "bckg")]
    # 80 s: 20 s early (inside the 30-s tolerance); 200: outside every extended event;
    # 370: 50 s after the PNES event's end (inside 60 s); 502: a background annotation
    counts = score_alarms([80.0, 200.0, 370.0, 502.0], events, 3600.0)
    assert counts.latencies == pytest.approx([-20.0, 70.0])
    assert counts.missed == 0 and counts.false_alarms == 2
    summary = score_alarms([], events, 1800.0).summary()
    assert summary["sensitivity"] == 0.0 and summary["within_10s"] == 0.0
    assert summary["false_alarms_per_hour"] == 0.0


def test_the_rule_chosen_keeps_false_alarms_within_bound_and_beats_random() -> None:
    events = [Event(120.0 * k + 60, 40, "sz_foc_f2b") for k in range(8)]
    tune = [_recording(1200, events, 2.0, s) for s in range(3)]
    rule = select_alarm_rule(tune)
    test = alarm_counts([_recording(1200, events, 2.0, s) for s in range(10, 13)], rule).summary()
    assert test["false_alarms_per_hour"] <= MAX_FALSE_ALARMS_PER_HOUR
    assert test["sensitivity"] == 1.0 and test["median_latency_s"] <= 3.0
    rng = np.random.default_rng(7)
    coin = [ScoredRecording(r.t_end, rng.uniform(0, 1, len(r.t_end)), events, 1200) for r in tune]
    noise = alarm_counts(coin, select_alarm_rule(coin)).summary()
    assert noise["sensitivity"] < test["sensitivity"] or noise["false_alarms_per_hour"] > 2.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"threshold": 1.0}, "threshold"),
        ({"consecutive": 0}, "consecutive"),
        ({"rearm_s": -1}, "rearm_s"),
    ],
)
def test_bad_rules_are_refused(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        AlarmRule(**kwargs)


def test_the_false_alarm_bound_is_the_exact_poisson_one() -> None:
    # no false alarm in 1 h: P(0 | rate) = exp(-rate) = 0.05 at the 95 % bound
    assert false_alarm_rate_bound(0, 1.0) == pytest.approx(-np.log(0.05))
    assert false_alarm_rate_bound(0, 3.0) == pytest.approx(-np.log(0.05) / 3)
    # 1 false alarm in 2.4 h is within 2/h; 2 in 2.4 h (0.83/h measured) are not
    assert false_alarm_rate_bound(1, 2.4) <= MAX_FALSE_ALARMS_PER_HOUR
    assert false_alarm_rate_bound(2, 2.4) > MAX_FALSE_ALARMS_PER_HOUR
