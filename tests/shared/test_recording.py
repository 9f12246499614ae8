"""The keypoint recording format: round trip and every malformed-file case."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from semiofed.shared.errors import FormatError
from semiofed.shared.recording import (
    Recording,
    empty_recording,
    load_recording,
    read_header,
    save_recording,
)


def _sample(n: int = 120, fps: float = 30.0, seed: int = 0) -> Recording:
    rng = np.random.default_rng(seed)
    rec = empty_recording(n, fps)
    t = np.arange(n) / fps
    base = rng.uniform(0.3, 0.7, size=(1, 33, 3)).astype(np.float32)
    rec.pose[..., :3] = base + 0.02 * np.sin(2 * np.pi * 1.5 * t)[:, None, None]
    rec.pose[..., 3] = rng.uniform(0.5, 1.0, size=(n, 33))
    rec.face[:] = rng.uniform(0.4, 0.6, size=(1, 468, 3)) + 0.01 * np.cos(t)[:, None, None]
    rec.left_hand[:] = rng.uniform(0.2, 0.4, size=(n, 21, 3))
    rec.right_hand[:] = rng.uniform(0.6, 0.8, size=(n, 21, 3))
    rec.present[:] = True
    rec.present[40:50, 2] = False  # left hand lost for 10 frames
    rec.left_hand[40:50] = np.nan
    rec.filled[60:63, 3] = True  # right hand gap-filled (flagged, not detected)
    rec.present[60:63, 3] = False
    rec.source_sha256 = "ab" * 32
    rec.extractor_name, rec.extractor_version = "test", "1.0"
    rec.motion = rng.uniform(0, 1, size=(n, 2)).astype(np.float32)
    rec.motion_regions = ["head", "trunk"]
    rec.meta = {"site": "site-01"}
    return rec


def test_round_trip(tmp_path: Path) -> None:
    rec = _sample()
    path = save_recording(rec, tmp_path / "a_keypoints.npz")
    back = load_recording(path)
    assert back.n_frames == rec.n_frames and back.fps == rec.fps
    np.testing.assert_array_equal(back.timestamps, rec.timestamps)
    np.testing.assert_array_equal(back.present, rec.present)
    np.testing.assert_array_equal(back.filled, rec.filled)
    for name in ("face", "left_hand", "right_hand"):
        a, b = getattr(rec, name), getattr(back, name)
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_allclose(b[~np.isnan(b)], a[~np.isnan(a)], atol=1e-3)
    np.testing.assert_allclose(back.pose[..., :3], rec.pose[..., :3], atol=1e-3)
    np.testing.assert_allclose(back.pose[..., 3], rec.pose[..., 3], atol=1 / 255)
    np.testing.assert_allclose(back.motion, rec.motion, atol=1e-3)
    assert back.motion_regions == ["head", "trunk"]
    assert back.source_sha256 == rec.source_sha256
    assert (back.extractor_name, back.extractor_version) == ("test", "1.0")
    assert back.meta == {"site": "site-01"}
    assert read_header(path)["n_frames"] == rec.n_frames


def test_save_is_atomic_and_leaves_no_temp(tmp_path: Path) -> None:
    save_recording(_sample(), tmp_path / "a_keypoints.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["a_keypoints.npz"]


def _rewrite(src: Path, dst: Path, change: dict[str, np.ndarray | None]) -> Path:
    """Copy a recording replacing (or dropping, with None) some members."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.namelist():
            name = item.removesuffix(".npy")
            if name in change:
                if change[name] is None:
                    continue
                buf = io.BytesIO()
                np.lib.format.write_array(buf, change[name])
                zout.writestr(item, buf.getvalue())
            else:
                zout.writestr(item, zin.read(item))
    return dst


def _header_with(src: Path, **updates: object) -> np.ndarray:
    header = read_header(src)
    header.update(updates)
    return np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return save_recording(_sample(), tmp_path / "good_keypoints.npz")


def test_truncated_file(good: Path, tmp_path: Path) -> None:
    bad = tmp_path / "trunc_keypoints.npz"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(FormatError, match=r"trunc_keypoints\.npz"):
        load_recording(bad)


def test_empty_and_missing_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty_keypoints.npz"
    empty.write_bytes(b"")
    with pytest.raises(FormatError, match="empty"):
        load_recording(empty)
    with pytest.raises(FormatError, match="does not exist"):
        load_recording(tmp_path / "nope_keypoints.npz")


def test_not_a_recording(tmp_path: Path) -> None:
    bad = tmp_path / "text_keypoints.npz"
    bad.write_text("hello")
    with pytest.raises(FormatError, match=r"text_keypoints\.npz"):
        load_recording(bad)


def test_unknown_version(good: Path, tmp_path: Path) -> None:
    bad = _rewrite(good, tmp_path / "v9_keypoints.npz", {"header": _header_with(good, version=9)})
    with pytest.raises(FormatError, match="unknown format version 9"):
        load_recording(bad)


def test_wrong_shapes(good: Path, tmp_path: Path) -> None:
    n = read_header(good)["n_frames"]
    bad = _rewrite(
        good, tmp_path / "shape_keypoints.npz", {"face": np.zeros((n, 400, 3), np.int16)}
    )
    with pytest.raises(FormatError, match="face has shape"):
        load_recording(bad)


def test_missing_member(good: Path, tmp_path: Path) -> None:
    bad = _rewrite(good, tmp_path / "missing_keypoints.npz", {"right_hand": None})
    with pytest.raises(FormatError, match="missing member 'right_hand'"):
        load_recording(bad)


def test_nan_timestamps(good: Path, tmp_path: Path) -> None:
    ts = np.arange(read_header(good)["n_frames"], dtype=np.float64)
    ts[5] = np.nan
    bad = _rewrite(good, tmp_path / "nan_keypoints.npz", {"timestamps": ts})
    with pytest.raises(FormatError, match="NaN"):
        load_recording(bad)


def test_non_increasing_timestamps(good: Path, tmp_path: Path) -> None:
    ts = np.arange(read_header(good)["n_frames"], dtype=np.float64)
    ts[7] = ts[6]
    bad = _rewrite(good, tmp_path / "mono_keypoints.npz", {"timestamps": ts})
    with pytest.raises(FormatError, match="not increasing"):
        load_recording(bad)


def test_save_refuses_nan_in_present_frames(tmp_path: Path) -> None:
    rec = _sample()
    rec.face[3, 10, 0] = np.nan
    with pytest.raises(FormatError, match="face has NaN"):
        save_recording(rec, tmp_path / "x_keypoints.npz")
    assert not list(tmp_path.iterdir())
