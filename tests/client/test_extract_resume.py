"""Killing ``site extract`` mid-run and re-running redoes only what was not finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.clips import make_moving_clip, sway
from tests.extract_helpers import manifest, run_extract

REPO = Path(__file__).resolve().parents[2]
RUNNER = "import sys; from tests.extract_helpers import run_extract; sys.exit(run_extract(*sys.argv[1:]))"


def _statuses(out: Path) -> dict[str, str]:
    try:
        return {k: e["status"] for k, e in manifest(out).items()}
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def test_killed_run_resumes_with_only_the_unfinished_videos(tmp_path: Path) -> None:
    src = tmp_path / "in"
    for i in range(3):
        make_moving_clip(src / f"clip{i}.mp4", 3.0, 30.0, sway(period=2.0 + i))
    out = tmp_path / "out"
    args = [str(src), "--out", str(out), "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER, *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while "ok" not in _statuses(out).values():
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no video finished within 120 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    at_kill = _statuses(out)
    done = sorted(k for k, s in at_kill.items() if s == "ok")
    unfinished = sorted(k for k, s in at_kill.items() if s != "ok")
    assert done and unfinished, at_kill
    stamps = {k: (out / f"{Path(k).stem}_keypoints.npz").stat().st_mtime_ns for k in done}
    assert not list(out.glob("*.tmp*"))  # no half-written output under its final name

    assert run_extract(*args) == 0
    after = _statuses(out)
    assert {k: after[k] for k in done} == dict.fromkeys(done, "skipped")
    assert {k: after[k] for k in unfinished} == dict.fromkeys(unfinished, "ok")
    for k, stamp in stamps.items():  # finished work was not redone
        assert (out / f"{Path(k).stem}_keypoints.npz").stat().st_mtime_ns == stamp
    assert run_extract(*args) == 0
    assert set(_statuses(out).values()) == {"skipped"}
