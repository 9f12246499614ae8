"""End-to-end tests of ``semiofed site extract`` with real MediaPipe on astronaut clips."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from semiofed.shared.recording import STREAMS, load_recording
from tests.clips import make_moving_clip, nose_track, sway
from tests.extract_helpers import manifest, run_extract


def test_moving_astronaut_is_tracked_in_chunks(tmp_path: Path) -> None:
    motion = sway(amplitude=40.0, period=2.5)
    clip = make_moving_clip(tmp_path / "in" / "astronaut.mp4", 10.5, 30.0, motion)
    out = tmp_path / "out"
    argv = [str(clip), "--out", str(out), "--workers", "2", "--fps", "10"]
    rc = run_extract(*argv, "--preview", "--motion")
    assert rc == 0
    rec = load_recording(out / "astronaut_keypoints.npz")
    quality = json.loads((out / "astronaut_quality.json").read_text())
    assert quality["chunks"] == 2  # the clip was split over both workers
    assert rec.fps == 10.0 and rec.n_frames == 105
    np.testing.assert_allclose(np.diff(rec.timestamps), 0.1, atol=1e-9)  # no gap at the seam
    assert rec.present[:, 0].mean() >= 0.9 and rec.present[:, 1].mean() >= 0.9
    assert not np.any(rec.present & rec.filled)
    nose = rec.pose[:, 0, :2]
    want = nose_track(rec.timestamps, motion)
    ok = rec.present[:, 0]
    for axis in (0, 1):
        assert np.corrcoef(nose[ok, axis], want[ok, axis])[0, 1] > 0.9
    assert np.abs(nose[ok] - want[ok]).mean() < 0.03  # within ~15 px on average
    assert rec.source_sha256 == manifest(out)["astronaut.mp4"]["sha256"]
    assert rec.extractor_name == "mediapipe-holistic"
    # quality summary
    assert quality["frames_read"] == quality["frames_in_container"] == 315
    assert quality["frames_decoded"] == 105 and quality["frames_dropped"] == 0
    assert set(quality["detection_rate"]) == set(STREAMS)
    assert 0.3 < quality["mean_pose_visibility"] <= 1.0
    # motion stream: one column per region, head moves, values finite where located
    assert rec.motion is not None and rec.motion.shape == (105, len(rec.motion_regions))
    head = rec.motion[1:, rec.motion_regions.index("head")]
    assert np.isfinite(head).mean() > 0.9 and np.nanmean(head) > 0
    # the preview is a skeleton on black: no pixel of the video
    cap = cv2.VideoCapture(str(out / "astronaut_preview.mp4"))
    ok_read, frame = cap.read()
    cap.release()
    assert ok_read and frame.shape == (480, 640, 3)
    assert (frame.max(axis=2) < 30).mean() > 0.9
    assert not list(out.glob(".partial/*/*.npz"))  # partial chunks cleaned up


def test_bad_files_fail_clearly_while_good_file_finishes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in"
    good = make_moving_clip(src / "good.mp4", 2.0, 30.0, sway())
    data = good.read_bytes()
    (src / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (src / "zero.mp4").write_bytes(b"")
    (src / "notes.mp4").write_text("ward round notes, not a video\n" * 20)
    # a video cut in the middle that still opens: its readable part is kept, but it is an error
    mjpg = make_moving_clip(tmp_path / "whole.avi", 2.0, 30.0, sway(), fourcc="MJPG").read_bytes()
    (src / "cut.avi").write_bytes(mjpg[: len(mjpg) // 2])
    # a 16×16 black video (nothing to detect) and a dangling link among the videos
    writer = cv2.VideoWriter(str(src / "tiny.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (16, 16))
    for _ in range(10):
        writer.write(np.zeros((16, 16, 3), np.uint8))
    writer.release()
    (src / "gone.mp4").symlink_to(tmp_path / "missing.mp4")
    out = tmp_path / "out"
    rc = run_extract(str(src), "--out", str(out), "--no-progress")
    assert rc == 1
    entries = manifest(out)
    assert entries["tiny.avi"]["status"] == "ok"
    assert "nothing detected" in entries["tiny.avi"]["warning"]
    assert entries["gone.mp4"]["status"] == "ignored"
    assert "dangling symbolic link" in entries["gone.mp4"]["error"]
    assert entries["cut.avi"]["status"] == "truncated"
    assert "the video ended after" in entries["cut.avi"]["error"]
    assert load_recording(out / "cut_keypoints.npz").n_frames > 0
    assert entries["good.mp4"]["status"] == "ok"
    assert load_recording(out / "good_keypoints.npz").present[:, 0].mean() >= 0.9
    assert entries["zero.mp4"]["status"] == "failed"
    assert "empty (0 bytes)" in entries["zero.mp4"]["error"]
    for name in ("truncated.mp4", "notes.mp4"):
        assert entries[name]["status"] == "failed"
        assert "cannot open it as a video" in entries[name]["error"]
    console = capsys.readouterr()
    for name in ("truncated.mp4", "zero.mp4", "notes.mp4", "cut.avi"):
        assert f"{name}:" in console.err or f"{name}:" in console.out
    assert "WARNING" in console.err and "tiny.avi" in console.err
    assert "ignored:" in console.out and "gone.mp4" in console.out
    assert not list(out.glob("*notes*")) and not list(out.glob("*zero*"))
    # re-running skips what is done (by content: a renamed copy too) and still reports the
    # truncated video
    (src / "renamed.mp4").write_bytes(data)
    assert run_extract(str(src), "--out", str(out), "--no-progress") == 1
    again = manifest(out)
    assert again["cut.avi"]["status"] == "truncated" and again["good.mp4"]["status"] == "skipped"
    assert again["renamed.mp4"]["status"] == "skipped"
    assert again["renamed.mp4"]["output"] == str(out / "good_keypoints.npz")


def test_tasks_backend_reports_missing_and_invalid_models(tmp_path: Path) -> None:
    from semiofed.shared.errors import SemioFedError

    clip = make_moving_clip(tmp_path / "c.mp4", 0.5, 10.0)
    out = str(tmp_path / "out")
    with pytest.raises(SemioFedError, match="needs --model-dir"):
        run_extract(str(clip), "--out", out, "--backend", "tasks")
    models = tmp_path / "models"
    models.mkdir()
    with pytest.raises(
        SemioFedError, match=r"missing MediaPipe model file\(s\) pose_landmarker_full.task"
    ):
        run_extract(str(clip), "--out", out, "--backend", "tasks", "--model-dir", str(models))
    for name in ("pose_landmarker_full.task", "face_landmarker.task", "hand_landmarker.task"):
        (models / name).write_bytes(b"this is not a model")
    with pytest.raises(
        SemioFedError, match=r"pose_landmarker_full\.task: not a valid MediaPipe pose"
    ):
        run_extract(str(clip), "--out", out, "--backend", "tasks", "--model-dir", str(models))


TASK_MODELS = Path(os.environ.get("SEMIOFED_TASK_MODELS", "/nonexistent"))


@pytest.mark.skipif(
    not any(TASK_MODELS.glob("*.task")),
    reason="no MediaPipe .task files (set SEMIOFED_TASK_MODELS to a folder with "
    "pose_landmarker_full.task, face_landmarker.task, hand_landmarker.task; they cannot be "
    "downloaded here). The loading path is covered by the missing/invalid-model test.",
)
def test_both_backends_produce_the_same_layout(tmp_path: Path) -> None:
    clip = make_moving_clip(tmp_path / "in" / "a.mp4", 2.0, 30.0, sway())
    recs = {}
    for backend in ("holistic", "tasks"):
        out = tmp_path / backend
        extra = ["--model-dir", str(TASK_MODELS)] if backend == "tasks" else []
        assert run_extract(str(clip), "--out", str(out), "--backend", backend, *extra) == 0
        recs[backend] = load_recording(out / "a_keypoints.npz")
    h, t = recs["holistic"], recs["tasks"]
    np.testing.assert_array_equal(h.timestamps, t.timestamps)
    for name in (*STREAMS, "present", "filled"):
        assert getattr(h, name).shape == getattr(t, name).shape
    assert t.present[:, 0].mean() >= 0.9 and t.present[:, 1].mean() >= 0.9
    assert np.nanmean(np.abs(h.pose[:, 0, :2] - t.pose[:, 0, :2])) < 0.03
