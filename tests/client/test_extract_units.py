"""Fast unit tests of the extraction helpers (no MediaPipe)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest

from semiofed.client.extract import smoothing
from semiofed.client.extract.backends import Landmarks, assign_hands
from semiofed.client.extract.pipeline import plan_chunks
from semiofed.client.extract.roi import Roi, RoiTracker, fit_roi, parse_roi, to_frame_coords
from semiofed.client.extract.video import VideoInfo, find_videos, is_sampled
from semiofed.shared.errors import SemioFedError


def test_sampling_grid_is_even_and_chunk_independent() -> None:
    picked = [i for i in range(300) if is_sampled(i, 30.0, 10.0)]
    assert picked == list(range(0, 300, 3))
    picked = [i for i in range(100) if is_sampled(i, 25.0, 15.0)]
    assert len(picked) == 60 and np.all(np.diff(picked) >= 1) and np.all(np.diff(picked) <= 2)
    assert all(is_sampled(i, 10.0, 15.0) for i in range(20))  # never more than every frame


def test_gap_filling_is_flagged_and_never_present() -> None:
    t = np.arange(10) / 10.0
    present = np.array([1, 1, 0, 0, 1, 0, 0, 0, 0, 0], bool)  # gap of 2 (0.3 s), then end
    values = np.full((10, 1, 3), np.nan, np.float32)
    values[present] = np.arange(present.sum())[:, None, None]
    out, filled = smoothing.fill_gaps(values, present, t)
    assert filled.tolist() == [False, False, True, True] + [False] * 6
    assert not np.any(filled & present)
    np.testing.assert_allclose(out[2:4, 0, 0], [1 + 1 / 3, 1 + 2 / 3], rtol=1e-6)
    assert np.isnan(out[5:]).all()  # trailing gap: nothing to interpolate from
    long_gap = np.array([1, 0, 0, 0, 0, 0, 0, 1, 0, 0], bool)
    assert not smoothing.fill_gaps(values, long_gap, t)[1].any()  # 0.7 s > MAX_GAP_S


def test_one_euro_reduces_jitter_but_follows_fast_motion() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(200) / 10.0
    still = 0.5 + 0.002 * rng.standard_normal((200, 1, 1))
    assert smoothing.one_euro(still, t)[20:].std() < 0.6 * still[20:].std()
    jerk = 0.5 + 0.05 * np.sign(np.sin(2 * np.pi * 3 * t))[:, None, None]  # 3 Hz jerks
    out = smoothing.one_euro(jerk, t)
    assert np.corrcoef(out[10:, 0, 0], jerk[10:, 0, 0])[0, 1] > 0.8


def test_roi_parsing_and_mapping() -> None:
    assert parse_roi("10,20,300,200") == Roi(10, 20, 300, 200)
    for bad in ("10,20,300", "a,b,c,d", "-1,0,10,10", "0,0,0,10"):
        with pytest.raises(SemioFedError, match="--roi"):
            parse_roi(bad)
    assert fit_roi(Roi(600, 0, 100, 100), 640, 480) == Roi(600, 0, 40, 100)
    with pytest.raises(SemioFedError, match="outside"):
        fit_roi(Roi(700, 0, 10, 10), 640, 480)
    pose = np.zeros((33, 4), np.float32)
    pose[:, :2] = 0.5
    mapped = to_frame_coords(Landmarks(pose, None, None, None), Roi(100, 0, 320, 240), 640, 480)
    np.testing.assert_allclose(mapped.pose[0, :2], [(100 + 160) / 640, 120 / 480])


def test_auto_roi_found_then_dropped_when_tracking_is_lost() -> None:
    tracker = RoiTracker(640, 480)
    pose = np.zeros((33, 4), np.float32)
    pose[:, 0], pose[:, 1], pose[:, 3] = np.linspace(0.4, 0.6, 33), np.linspace(0.3, 0.7, 33), 0.9
    assert tracker.current is None
    assert tracker.update(Landmarks(pose, None, None, None))
    roi = tracker.current
    assert roi is not None and roi.x < 0.4 * 640 and roi.x + roi.w > 0.6 * 640
    none = Landmarks(None, None, None, None)
    assert not tracker.update(none) and not tracker.update(none)
    assert tracker.update(none) and tracker.current is None and tracker.redetections == 1


def test_hands_go_to_the_nearer_wrist() -> None:
    pose = np.zeros((33, 4), np.float32)
    pose[15, :2], pose[16, :2] = (0.7, 0.5), (0.3, 0.5)  # person's left wrist on image right
    hand_a = np.full((21, 3), 0.31, np.float32)
    hand_b = np.full((21, 3), 0.69, np.float32)
    left, right = assign_hands([hand_a, hand_b], ["Left", "Right"], pose)
    assert left is hand_b and right is hand_a


def test_chunk_plan_covers_the_video_once() -> None:
    info = VideoInfo(Path("x.mp4"), frames=30 * 600, fps=30.0, width=640, height=480)
    plan = plan_chunks(info, workers=2)
    assert len(plan) == 5 and plan[0][0] == 0 and plan[-1][1] is None
    assert all(a[1] == b[0] for a, b in itertools.pairwise(plan))
    short = VideoInfo(Path("y.mp4"), frames=90, fps=30.0, width=640, height=480)
    assert plan_chunks(short, workers=8) == [(0, None)]


def test_folder_expansion_skips_output_folder_and_non_videos(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.mp4").write_bytes(b"1")
    (tmp_path / "a" / "notes.txt").write_text("n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x_preview.mp4").write_bytes(b"1")
    found = find_videos([tmp_path], exclude=tmp_path / "out")
    assert [p.name for p in found.videos] == ["x.mp4"]
    assert [(p.name, why) for p, why in found.ignored] == [("notes.txt", "not a video file name")]


def test_folder_entries_not_processed_are_reported_with_why(tmp_path: Path) -> None:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    (src / "ok.mp4").write_bytes(b"1")
    (src / "dangling.mp4").symlink_to(tmp_path / "nowhere.mp4")
    (src / "loop.mp4").symlink_to(src / "loop.mp4")
    os.mkfifo(src / "pipe.mp4")
    (src / "zero.mp4").symlink_to("/dev/zero")
    (src / "folder-link").symlink_to(src / "sub")
    (src / ".hidden.mp4").write_bytes(b"1")
    found = find_videos([src, src / "pipe.mp4"])
    assert [p.name for p in found.videos] == ["ok.mp4"]
    assert sorted((p.name, why) for p, why in found.ignored) == [
        (".hidden.mp4", "hidden file"),
        ("dangling.mp4", "dangling symbolic link (its target does not exist)"),
        ("folder-link", "symbolic link to a folder (not followed)"),
        ("loop.mp4", "symbolic link loop"),
        ("pipe.mp4", "a FIFO (named pipe), not a file"),
        ("pipe.mp4", "a FIFO (named pipe), not a file"),  # given as an input too
        ("zero.mp4", "a device, not a file"),
    ]
