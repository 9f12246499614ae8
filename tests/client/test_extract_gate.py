"""The motion gate of ``site extract`` with real MediaPipe: no movement onset is lost."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from semiofed.shared.features import frames_from_recording
from semiofed.shared.recording import FULL_RATE, NOT_ANALYSED, load_recording, read_header
from tests.clips import brick_wall, bursts, make_moving_clip
from tests.extract_helpers import run_extract

ONSET, MOVING_S, SIZE = 2.35, 2.0, (640, 480)
HEAD = slice(0, 11)  # pose landmarks of the head


def _px(a: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a[..., :2] * np.array(SIZE), axis=-1)


def test_gate_analyses_a_movement_from_its_onset_like_the_ungated_run(tmp_path: Path) -> None:
    motion = bursts([(ONSET, MOVING_S)])  # still, then moving from a known time, still again
    clip = make_moving_clip(
        tmp_path / "in" / "onset.mp4",
        5.0,
        30.0,
        motion,
        SIZE,
        background=brick_wall(SIZE),
        noise=3.0,
    )
    recs = {}
    for gate in ("on", "off"):
        out = tmp_path / gate
        argv = [str(clip), "--out", str(out), "--workers", "1", "--fps", "10", "--no-progress"]
        assert run_extract(*argv, "--gate", gate) == 0
        recs[gate] = load_recording(out / "onset_keypoints.npz")
    on, off = recs["on"], recs["off"]
    t = on.timestamps
    np.testing.assert_array_equal(t, off.timestamps)  # every sampled frame is in the recording
    # gated: still frames mostly not analysed; the first full-rate frame is at or before the
    # onset and every frame of the movement is analysed at full rate
    before = t < ONSET
    assert (on.analysed[before] == NOT_ANALYSED).mean() > 0.6
    assert t[on.analysed == FULL_RATE].min() <= ONSET
    moving = (t >= ONSET) & (t < ONSET + MOVING_S)
    assert (on.analysed[moving] == FULL_RATE).all()
    # on the moving stretch its face and head landmarks agree with the ungated run's within
    # 2 px (body landmarks the photo does not show are guesses that depend on the tracking
    # history; bench_extract reports them)
    head = _px(on.pose[moving, HEAD] - off.pose[moving, HEAD])
    assert np.isfinite(head).all() and head.mean() < 2.0
    assert np.nanmean(_px(on.face[moving] - off.face[moving])) < 2.0
    # frames not analysed are bridged (flagged filled, never detected): the features see a
    # person lying still, not an absent one
    assert not on.present[on.analysed == NOT_ANALYSED].any()
    assert frames_from_recording(on).valid["pose"].mean() > 0.95
    quality = json.loads((tmp_path / "on" / "onset_quality.json").read_text())
    assert quality["frames_analysed"] == int((on.analysed != NOT_ANALYSED).sum()) < len(t)
    assert quality["gate"]["not_analysed_frames"] == int((on.analysed == NOT_ANALYSED).sum())
    # --gate off: every frame analysed, the version-1 file of before the gate
    path = tmp_path / "off" / "onset_keypoints.npz"
    assert (off.analysed == FULL_RATE).all() and read_header(path)["version"] == 1
    assert "analysed.npy" not in zipfile.ZipFile(path).namelist()
    assert "gate" not in read_header(path)["meta"]["extract_settings"]
