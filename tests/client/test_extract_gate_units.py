"""Fast tests of the motion gate, the bridging of unanalysed frames and format version 2."""

from __future__ import annotations

import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from semiofed.client.extract import smoothing
from semiofed.client.extract.gate import ActivityMeter, Gate, GateSettings
from semiofed.shared.errors import FormatError
from semiofed.shared.features import frames_from_recording
from semiofed.shared.recording import (
    FULL_RATE,
    KEEPALIVE,
    NOT_ANALYSED,
    empty_recording,
    load_recording,
    read_header,
    save_recording,
)
from tests.clips import bursts, render_frame

FPS = 10.0


def _run_gate(scores: np.ndarray, settings: GateSettings) -> np.ndarray:
    """Codes per frame of a gate fed ``scores`` at ``FPS``; checks every frame is decided once,
    in order."""
    gate = Gate[int](FPS, settings)
    decided: list[tuple[int, int]] = []
    for i, score in enumerate(scores):
        decided += gate.push(i / FPS, float(score), i)
    decided += gate.finish()
    assert [i for i, _ in decided] == list(range(len(scores)))
    return np.array([code for _, code in decided])


def test_gate_keeps_alive_when_still_and_looks_back_at_an_onset() -> None:
    settings = GateSettings(keepalive_fps=1.0, lookback_s=1.0, hold_s=1.5)
    t = np.arange(120) / FPS
    active = (t >= 4.5) & (t < 7.0)
    scores = np.where(active, 0.05, 0.0)
    codes = _run_gate(scores, settings)
    still = t < 4.0
    assert set(codes[still]) == {KEEPALIVE, NOT_ANALYSED}
    np.testing.assert_allclose(np.diff(t[still][codes[still] == KEEPALIVE]), 1.0)
    # the frames since the last keep-alive frame before the onset were buffered, then analysed
    last_keepalive = t[(codes == KEEPALIVE) & (t < 4.5)].max()
    full = t[codes == FULL_RATE]
    assert full.min() <= 4.5 - 0.3 and full.min() == pytest.approx(last_keepalive + 0.1)
    assert (codes[(t > last_keepalive) & (t < 7.0 + 1.5)] == FULL_RATE).all()  # hold
    assert (codes[t > 7.0 + 1.6] != FULL_RATE).all()  # closed again
    assert codes[-1] == KEEPALIVE  # the stream ends on an analysed frame


def test_gate_does_not_flicker_between_jerks_and_never_looks_back_further_than_lookback() -> None:
    settings = GateSettings(keepalive_fps=0.25, lookback_s=0.5, hold_s=1.5)
    t = np.arange(150) / FPS
    jerks = (t >= 6.0) & (t < 11.0) & (np.sin(2 * np.pi * 1.0 * t) > 0)  # 0.5 s on, 0.5 s off
    codes = _run_gate(np.where(jerks, 0.05, 0.0), settings)
    full = np.flatnonzero(codes == FULL_RATE)
    assert np.all(np.diff(full) == 1)  # one open stretch over all jerks
    assert t[full[0]] == pytest.approx(6.0 - 0.5)  # look-back is at most lookback_s
    assert codes[0] == codes[40] == KEEPALIVE  # 4 s between keep-alive frames
    assert (codes[(t > 0) & (t < 4.0)] == NOT_ANALYSED).all()


def test_gate_hysteresis_keeps_it_open_on_low_but_not_still_scores() -> None:
    settings = GateSettings(open_fraction=0.01, close_fraction=0.002, hold_s=1.0)
    t = np.arange(80) / FPS
    scores = np.where(t < 2.0, 0.0, np.where(t < 2.2, 0.05, 0.005))  # opens, then stays above close
    codes = _run_gate(scores, settings)
    assert (codes[t >= 2.0] == FULL_RATE).all()


def test_activity_meter_ignores_camera_noise_and_sees_a_small_movement() -> None:
    settings = GateSettings()
    meter = ActivityMeter(15.0, settings)
    rng = np.random.default_rng(1)
    rest = render_frame(0.0, bursts([]))

    def noisy(frame: np.ndarray) -> np.ndarray:
        grain = rng.normal(0, 4.0, (*frame.shape[:2], 1))
        return cv2.cvtColor(np.clip(frame + grain, 0, 255).astype(np.uint8), cv2.COLOR_BGR2RGB)

    assert meter.score(noisy(rest)) == 0.0  # nothing to compare with yet
    assert max(meter.score(noisy(rest)) for _ in range(10)) < settings.close_fraction
    moved = render_frame(0.2, bursts([(0.0, 1.0)], amplitude=10.0))  # a few pixels
    assert meter.score(noisy(moved)) >= settings.open_fraction


def test_unanalysed_frames_are_bridged_between_analysed_detections_only() -> None:
    t = np.arange(12) / 15.0
    analysed = np.array([1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1], bool)
    present = analysed & np.array([1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1], bool)
    values = np.full((12, 1, 3), np.nan, np.float32)
    values[present] = np.arange(present.sum())[:, None, None]
    out, bridged = smoothing.bridge_unanalysed(values, present, analysed, t)
    assert bridged.tolist() == [0, 1, 1, 1] + [0] * 8  # never next to a frame that lost it
    np.testing.assert_allclose(out[1:4, 0, 0], [0.25, 0.5, 0.75], rtol=1e-6)
    assert np.isnan(out[5:11]).all()


def _gated_recording(n: int = 60) -> object:
    rec = empty_recording(n, 15.0)
    rec.analysed = np.full(n, NOT_ANALYSED, np.uint8)
    rec.analysed[::15] = KEEPALIVE
    rec.analysed[30:45] = FULL_RATE
    rec.analysed[-1] = KEEPALIVE
    rec.pose[:] = 0.5
    rec.present[rec.analysed != NOT_ANALYSED, 0] = True
    rec.filled[rec.analysed == NOT_ANALYSED, 0] = True  # bridged
    return rec


def test_format_version_2_keeps_how_frames_were_analysed(tmp_path: Path) -> None:
    rec = _gated_recording()
    path = save_recording(rec, tmp_path / "g_keypoints.npz")
    assert read_header(path)["version"] == 2
    back = load_recording(path)
    np.testing.assert_array_equal(back.analysed, rec.analysed)
    assert frames_from_recording(back).valid["pose"].all()  # bridged frames are usable
    # every frame at full rate: no member, written as version 1 (what older readers read)
    rec.analysed[:] = FULL_RATE
    rec.present[:, 0], rec.filled[:, 0] = True, False
    path = save_recording(rec, tmp_path / "f_keypoints.npz")
    assert read_header(path)["version"] == 1
    assert "analysed.npy" not in zipfile.ZipFile(path).namelist()
    assert (load_recording(path).analysed == FULL_RATE).all()


def test_invalid_analysed_codes_are_refused(tmp_path: Path) -> None:
    rec = _gated_recording()
    rec.present[1, 0] = True  # a frame that was not analysed cannot be a detection
    with pytest.raises(FormatError, match="not analysed are marked detected"):
        save_recording(rec, tmp_path / "a_keypoints.npz")
    rec = _gated_recording()
    rec.analysed[3] = 7
    with pytest.raises(FormatError, match="codes other than"):
        save_recording(rec, tmp_path / "b_keypoints.npz")
