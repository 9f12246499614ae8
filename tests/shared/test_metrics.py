"""Window metrics, windows → events, and SzCORE event scoring on hand-written files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from semiofed.shared.cli import main
from semiofed.shared.events import Event, write_events
from semiofed.shared.labels import IGNORE_INDEX
from semiofed.shared.metrics import (
    DEFAULT_THRESHOLD,
    auroc,
    paired_bootstrap,
    score_events,
    select_threshold,
    smooth_scores,
    threshold_counts,
    window_metrics,
    windows_to_events,
)


def test_window_metrics_by_hand() -> None:
    y_type = np.array([0, 0, 0, 2, 2, 3, IGNORE_INDEX])
    pred = np.array([0, 0, 2, 2, 0, 3, 5])
    y_det = np.array([0, 0, 0, 1, 1, 1, 1])
    prob = np.array([0.1, 0.2, 0.7, 0.9, 0.4, 0.8, 0.6])
    m = window_metrics(y_type, pred, y_det, prob)
    # class 0: tp 2, true 3, pred 3 -> F1 2/3; class 2: tp 1, true 2, pred 2 -> 1/2; class 3: 1
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert m["per_class_recall"] == pytest.approx({"bckg": 2 / 3, "clonic": 1 / 2, "f2b": 1.0})
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert m["type_windows"] == 6
    # AUROC: positives {0.9, 0.4, 0.8, 0.6} vs negatives {0.1, 0.2, 0.7}: 10 of 12 pairs
    assert m["auroc_seizure"] == pytest.approx(10 / 12)
    assert m["detect_sensitivity"] == pytest.approx(3 / 4)
    assert auroc([1, 1], [0.2, 0.3]) != auroc([1, 1], [0.2, 0.3])  # NaN with one class
    assert auroc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5


def test_windows_to_events() -> None:
    t0 = np.arange(0, 20, 1.0)  # 5 s windows, 1 s hop: centres at t0 + 2.5
    probs = np.zeros(20)
    probs[5:9] = [0.6, 0.9, 0.7, 0.8]
    probs[15] = 0.95
    events = windows_to_events(t0, probs, window_s=5.0, hop_s=1.0, threshold=0.5)
    assert [(e.onset, e.offset) for e in events] == [(7.0, 11.0), (17.0, 18.0)]
    assert events[0].confidence == pytest.approx(0.9) and events[0].event_type == "sz"
    assert windows_to_events(t0, np.zeros(20), 5.0, 1.0) == []
    # the post-processing of `site analyze`: join gaps < 7 s, then drop events < 2 s
    joined = windows_to_events(t0, probs, 5.0, 1.0, 0.5, merge_gap_s=7.0, min_event_s=2.0)
    assert [(e.onset, e.offset) for e in joined] == [(7.0, 18.0)]
    assert [
        (e.onset, e.offset) for e in windows_to_events(t0, probs, 5.0, 1.0, min_event_s=2.0)
    ] == [(7.0, 11.0)]


def test_event_scoring_hand_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref = [
        Event(0, 3600, "bckg"),
        Event(100, 40, "sz_foc_a_m_clonic"),  # detected 5 s late
        Event(1000, 60, "sz_foc_f2b"),  # detected 10 s early (within the 30 s tolerance)
        Event(2000, 30, "pnes"),  # missed
    ]
    hyp = [
        Event(105, 20, "sz"),
        Event(990, 30, "sz"),
        Event(3000, 10, "sz"),  # false alarm
        Event(3300, 10, "sz"),  # false alarm
    ]
    r = score_events([(ref, hyp, 3600.0)])
    assert (r["ref_events"], r["true_detections"], r["false_detections"]) == (3, 2, 2)
    assert r["sensitivity"] == pytest.approx(2 / 3)
    assert r["precision"] == pytest.approx(0.5)
    assert r["f1"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 1))
    assert r["false_alarms_per_hour"] == pytest.approx(2.0)
    assert r["onset_latency_s"] == pytest.approx((5 - 10) / 2)
    # two recordings are summed before rates are computed
    r2 = score_events([(ref, hyp, 3600.0), (ref[:1], [], 3600.0)])
    assert r2["false_alarms_per_hour"] == pytest.approx(1.0) and r2["sensitivity"] == pytest.approx(
        2 / 3
    )

    write_events(tmp_path / "ref.tsv", ref)
    write_events(tmp_path / "hyp.tsv", hyp)
    argv = [
        "eval",
        "events",
        "--ref",
        str(tmp_path / "ref.tsv"),
        "--hyp",
        str(tmp_path / "hyp.tsv"),
    ]
    assert main([*argv, "--json"]) == 0  # duration inferred from the bckg row: 3600 s
    assert json.loads(capsys.readouterr().out) == pytest.approx(r)


def test_eval_events_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ref.tsv").write_text(
        "onset\tduration\teventType\n0\t600\tbckg\n100\t40\tsz_foc_a_m_clonic\n"
    )
    (tmp_path / "hyp.tsv").write_text("onset\tduration\teventType\n300\t10\tsz\n")
    argv = [
        "eval",
        "events",
        "--ref",
        str(tmp_path / "ref.tsv"),
        "--hyp",
        str(tmp_path / "hyp.tsv"),
        "--json",
    ]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sensitivity"] == 0.0 and out["false_detections"] == 1
    assert out["false_alarms_per_hour"] == pytest.approx(6.0)  # 1 in 600 s
    assert out["onset_latency_s"] is None  # nothing detected
    (tmp_path / "bad.tsv").write_text("onset\tduration\n1\t2\n")
    assert (
        main(
            [
                "eval",
                "events",
                "--ref",
                str(tmp_path / "bad.tsv"),
                "--hyp",
                str(tmp_path / "hyp.tsv"),
            ]
        )
        == 2
    )
    assert "bad.tsv" in capsys.readouterr().err


def test_unmerged_false_alarms_sample_scoring_and_specificity() -> None:
    ref = [Event(1000, 60, "sz_foc_f2b")]
    # three detections 20 s apart, far from the seizure: SzCORE merges them into one alarm
    hyp = [
        Event(2000, 10, "sz"),
        Event(2030, 10, "sz"),
        Event(2060, 10, "sz"),
        Event(1010, 30, "sz"),
    ]
    r = score_events([(ref, hyp, 3600.0), ([], [], 3600.0)])  # + a seizure-free hour
    assert r["recordings"] == 2 and r["recordings_without_events"] == 1
    assert r["false_detections"] == 1 and r["false_detections_unmerged"] == 3
    assert r["false_alarms_per_hour"] == pytest.approx(0.5)
    assert r["false_alarms_per_hour_unmerged"] == pytest.approx(1.5)
    assert r["sample_sensitivity"] == pytest.approx(30 / 60)
    assert r["sample_precision"] == pytest.approx(30 / 60)
    assert r["background_hours"] == pytest.approx((7200 - 60) / 3600)
    assert r["specificity"] == pytest.approx(1 - 30 / (7200 - 60))
    # flagging a whole seizure-free hour: SzCORE splits it into 5-min alarms, specificity 0
    everything = score_events([([], [Event(0, 3600, "sz")], 3600.0)])
    assert everything["false_alarms_per_hour_unmerged"] == pytest.approx(12.0)
    assert everything["specificity"] == 0.0


def test_per_class_f1_confusion_and_threshold_choice() -> None:
    y_type = np.array([0, 0, 2, 2, 3])
    m = window_metrics(y_type, np.array([0, 2, 2, 0, 3]), y_type > 0, np.full(5, 0.6), 0.7)
    assert m["per_class_f1"] == pytest.approx({"bckg": 0.5, "clonic": 0.5, "f2b": 1.0})
    counts = np.array(m["confusion"]["counts"])
    assert counts[2, 0] == 1 and counts[0, 2] == 1 and counts.sum() == 5
    assert m["threshold"] == 0.7 and m["detect_sensitivity"] == 0.0  # 0.6 < 0.7
    y = np.array([0, 0, 0, 0, 1, 1])
    prob = np.array([0.1, 0.2, 0.3, 0.42, 0.45, 0.9])
    counts = threshold_counts(y, prob, (0.4, 0.44))
    assert counts.tolist() == [[2, 0, 1, 3], [2, 0, 0, 4]]  # tp fn fp tn
    assert select_threshold(y, prob) == 0.45  # F1 1.0 at 0.45; ties go to the higher one
    assert select_threshold(np.zeros(4), prob[:4]) == DEFAULT_THRESHOLD


def test_smoothing_removes_isolated_spikes_and_keeps_a_sustained_event() -> None:
    """A centred moving average over 5 windows: two one-window spikes (false alarms) fall
    below the threshold, a 20-window event stays one detection; order follows t0."""
    t0 = np.arange(100, dtype=float)
    probs = np.zeros(100)
    probs[[10, 70]] = 1.0
    probs[40:60] = 0.9
    shuffled = np.random.default_rng(0).permutation(100)
    smooth = smooth_scores(t0[shuffled], probs[shuffled], 5)[np.argsort(shuffled)]
    assert smooth[10] == pytest.approx(0.2) and smooth[50] == pytest.approx(0.9)
    raw = windows_to_events(t0, probs, 5.0, 1.0, 0.5)
    kept = windows_to_events(t0, smooth, 5.0, 1.0, 0.5)
    assert len(raw) == 3 and len(kept) == 1 and kept[0].onset == pytest.approx(42.0)
    np.testing.assert_array_equal(smooth_scores(t0, probs, 1), probs)


def test_paired_bootstrap_resamples_whole_patients() -> None:
    """The interval of a difference that is the same in every patient is that value; a
    statistic that depends on which patients are drawn gets an interval around it."""
    groups = [np.arange(3 * i, 3 * i + 3) for i in range(10)]
    x = np.repeat(np.arange(10.0), 3)
    assert paired_bootstrap(groups, lambda i: 0.25) == (0.25, 0.25)
    lo, hi = paired_bootstrap(groups, lambda i: float(x[i].mean()), resamples=300)
    assert lo < 4.5 < hi and hi - lo < 5
    assert np.isnan(paired_bootstrap(groups, lambda i: math.nan)[0])
