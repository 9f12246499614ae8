"""Windows, labels, resampling, normalisation, augmentation, datasets and patient splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from semiofed.shared import augment
from semiofed.shared.dataset import (
    STREAM_NAMES,
    PatientDataset,
    PatientWindows,
    WindowDataset,
    collate,
    load_patient_windows,
)
from semiofed.shared.errors import SemioFedError
from semiofed.shared.events import Event, write_events
from semiofed.shared.features import STREAM_MIRROR, STREAM_SHAPES, compute_features
from semiofed.shared.labels import CLASS_INDEX, IGNORE_INDEX
from semiofed.shared.recording import Recording, empty_recording, save_recording
from semiofed.shared.skeleton import FACE_SUBSET_INDEX, POSE_MIRROR, REGION_NAMES
from semiofed.shared.splits import leave_patient_out_folds, leave_site_out_folds, patient_split
from semiofed.shared.windows import (
    WindowConfig,
    assemble_windows,
    frames_from_recording,
    recording_features,
    resample,
    window_labels,
    windows_from_recording,
)


def make_recording(seconds: float = 20.0, fps: float = 30.0, seed: int = 0) -> Recording:
    """A lying patient with random posture, moving arms, blinking, hands and motion energies."""
    rng = np.random.default_rng(seed)
    n = round(seconds * fps)
    t = (np.arange(n) / fps)[:, None, None]
    rec = empty_recording(n, fps)
    pose = rng.uniform(0.35, 0.65, size=(1, 33, 3))
    pose[0, [11, 12, 23, 24], :2] = [[0.55, 0.35], [0.45, 0.36], [0.54, 0.6], [0.46, 0.61]]
    wiggle = 0.02 * np.sin(2 * np.pi * rng.uniform(0.5, 3, size=(1, 33, 1)) * t)
    rec.pose[..., :3] = pose + wiggle
    rec.pose[..., 3] = rng.uniform(0.5, 1.0, size=(n, 33))
    rec.face[:] = rng.uniform(0.45, 0.55, size=(1, 468, 3))
    rec.face[:, FACE_SUBSET_INDEX] += 0.005 * np.sin(2 * np.pi * 0.7 * t)
    rec.left_hand[:] = rng.uniform(0.55, 0.62, size=(1, 21, 3)) + 0.01 * np.cos(3 * t)
    rec.right_hand[:] = rng.uniform(0.38, 0.45, size=(1, 21, 3)) + 0.01 * np.sin(2 * t)
    rec.present[:] = True
    rec.motion = rng.uniform(0, 2, size=(n, len(REGION_NAMES))).astype(np.float32)
    rec.motion_regions = list(REGION_NAMES)
    return rec


def transform(rec: Recording, shift=(0.0, 0.0), scale=1.0, angle=0.0) -> Recording:
    """The same scene seen by another camera: rotate/scale about (0.5, 0.5), then shift."""
    c, s = np.cos(angle), np.sin(angle)
    out = make_recording(rec.duration, rec.fps)  # same shapes
    for name in ("pose", "face", "left_hand", "right_hand"):
        src = getattr(rec, name)
        dst = src.copy()
        x, y = src[..., 0] - 0.5, src[..., 1] - 0.5
        dst[..., 0] = scale * (c * x - s * y) + 0.5 + shift[0]
        dst[..., 1] = scale * (s * x + c * y) + 0.5 + shift[1]
        dst[..., 2] = scale * src[..., 2]
        setattr(out, name, dst)
    out.motion = rec.motion.copy()
    return out


def mirror_recording(rec: Recording) -> Recording:
    """Flip the image horizontally: MediaPipe labels sides by the patient, so they swap."""
    out = make_recording(rec.duration, rec.fps)
    out.pose = rec.pose[:, list(POSE_MIRROR)].copy()
    out.pose[..., 0] = 1.0 - out.pose[..., 0]
    face = rec.face.copy()
    src = np.asarray(FACE_SUBSET_INDEX)
    face[:, src[list(STREAM_MIRROR["face"][: len(src)])]] = rec.face[:, src]
    face[..., 0] = 1.0 - face[..., 0]
    out.face = face
    out.left_hand, out.right_hand = rec.right_hand.copy(), rec.left_hand.copy()
    out.left_hand[..., 0] = 1.0 - out.left_hand[..., 0]
    out.right_hand[..., 0] = 1.0 - out.right_hand[..., 0]
    out.motion = rec.motion[:, list(STREAM_MIRROR["motion"])].copy()
    return out


def features(rec: Recording, rotate: bool = True):
    return compute_features(frames_from_recording(rec), rotate=rotate)


# ------------------------------------------------------------------ labels and resampling


def test_window_label_rule_half_coverage() -> None:
    cfg = WindowConfig()
    t0 = np.array([0.0, 7.5, 7.6, 20.0, 30.0, 40.0])
    events = [
        Event(10.0, 20.0, "sz_foc_a_m_clonic", "left"),  # covers [10, 30)
        Event(40.0, 2.4, "pnes"),  # 48 % of a window: too short
        Event(0.0, 100.0, "bckg"),  # background annotations never label a window
    ]
    y_detect, y_type, lat = window_labels(t0, events, cfg)
    # [7.5, 12.5) is covered exactly half, [7.6, 12.6) more than half, [30, 35) not at all
    assert y_detect.tolist() == [0, 1, 1, 1, 0, 0]
    assert y_type.tolist() == [0, 2, 2, 2, 0, 0]
    assert lat.tolist() == ["n/a", "left", "left", "left", "n/a", "n/a"]


def test_window_label_largest_coverage_wins_and_unlabelled_seizure() -> None:
    cfg = WindowConfig()
    events = [Event(0.0, 3.0, "pnes"), Event(2.0, 10.0, "sz")]
    y_detect, y_type, lat = window_labels(np.array([0.0, 1.0]), events, cfg)
    assert y_detect.tolist() == [1, 1]
    assert y_type.tolist() == [CLASS_INDEX["pnes"], IGNORE_INDEX]  # 60 % pnes, then 80 % sz
    assert lat.tolist() == ["unknown", "unknown"]


def test_resample_30_to_15_fps_and_conservative_masks() -> None:
    rec = make_recording(seconds=60.0, fps=30.0)
    n = rec.n_frames
    ramp = np.linspace(0.2, 0.8, n, dtype=np.float32)
    rec.left_hand[..., 0] = ramp[:, None]
    rec.present[101, 2] = False  # odd source frame: not on the 15 fps grid
    rec.present[200, 2] = False  # even source frame = 15 fps frame 100
    rec.left_hand[[101, 200]] = np.nan
    frames = resample(frames_from_recording(rec), 15.0)
    assert frames.n_frames == 900 and frames.fps == 15.0
    np.testing.assert_allclose(np.diff(frames.times), 1 / 15, atol=1e-9)
    np.testing.assert_allclose(frames.left_hand[:, 0, 0][:90], ramp[0:180:2], atol=1e-6)
    valid = frames.valid["left_hand"]
    assert not valid[100] and valid.sum() == 899

    # a non-integer ratio interpolates: one missing source frame masks the frames beside it
    rec25 = make_recording(seconds=10.0, fps=25.0)
    rec25.present[50, 0] = False
    rec25.pose[50] = np.nan
    fr = resample(frames_from_recording(rec25), 15.0)
    t_bad = fr.times[~fr.valid["pose"]]
    assert len(t_bad) >= 1 and np.all(np.abs(t_bad - 50 / 25) < 1 / 25)
    assert np.isfinite(fr.pose[fr.valid["pose"]]).all()


def test_windows_shapes_count_and_edges() -> None:
    rec = make_recording(seconds=60.0, fps=30.0)
    w = windows_from_recording(rec, [], WindowConfig())
    n = 900 // 15 + 4  # 60 s, plus 4 windows reaching before the start / past the end
    assert list(w["x"]) == list(STREAM_NAMES)
    for s in STREAM_NAMES:
        assert w["x"][s].shape == (n, 75, *STREAM_SHAPES[s])
        assert w["x"][s].dtype == np.float32 and w["mask"][s].shape == (n, 75)
    np.testing.assert_allclose(w["t0"], np.arange(-4, 60))
    assert w["y_detect"].sum() == 0
    # windows overlap: window 1 frame 0 is window 0 frame 15
    np.testing.assert_array_equal(w["x"]["body"][1, 0], w["x"]["body"][0, 15])
    present = w["mask"]["body"].sum(1)
    assert present[0] == 15 and present[4] == 75 and present[-1] == 15
    short = windows_from_recording(make_recording(seconds=2.0), [], WindowConfig())
    assert short["x"]["body"].shape[0] == 6 and short["mask"]["body"].sum(1).max() == 30


def test_several_recordings_share_one_view_without_mixing() -> None:
    cfg = WindowConfig()
    recs = [make_recording(seconds=s, seed=i) for i, s in enumerate((20.0, 7.3, 11.0))]
    segments = []
    for r in recs:
        x, m, first = recording_features(r, cfg)
        segments.append((x, m, first, []))
    w = assemble_windows(segments, cfg)
    body = w["x"]["body"]
    assert body.base is not None and not body.flags.writeable  # a view, not a copy
    seg = w["segment"]
    assert np.all(np.diff(seg) >= 0) and set(seg.tolist()) == {0, 1, 2}
    mask = w["mask"]["body"]
    assert np.all(mask.sum(1) > 0)  # no window is padding only
    for k, (x, m, _, _) in enumerate(segments):
        n = len(m["body"])
        sel = np.flatnonzero(seg == k)
        # every frame of the recording is in exactly T / hop windows, all owned by it
        assert mask[sel].sum() == 5 * n
        first = sel[0]
        t0 = w["t0"][first]
        assert t0 == -4.0
        frame = round((0 - t0) * cfg.fps)
        np.testing.assert_array_equal(body[first, frame], x["body"][0])
    assert mask.sum() == 5 * sum(len(m["body"]) for _, m, _, _ in segments)


# ------------------------------------------------------------------ normalisation


@pytest.mark.parametrize("rotate", [True, False])
def test_normalisation_invariant_to_translation_and_scale(rotate: bool) -> None:
    rec = make_recording()
    x0, m0 = features(rec, rotate)
    x1, m1 = features(transform(rec, shift=(0.13, -0.08), scale=0.6), rotate)
    for s in STREAM_NAMES:
        np.testing.assert_array_equal(m0[s], m1[s])
        np.testing.assert_allclose(x0[s], x1[s], atol=2e-4, err_msg=s)
    assert np.abs(x0["body"]).max() > 0.1  # not trivially zero


def test_rotation_normalisation_removes_camera_rotation() -> None:
    rec = make_recording()
    turned = transform(rec, angle=np.deg2rad(35.0))
    x0, _ = features(rec, rotate=True)
    x1, _ = features(turned, rotate=True)
    for s in ("body", "left_hand", "right_hand", "face"):
        np.testing.assert_allclose(x0[s], x1[s], atol=2e-4, err_msg=s)
    y0, _ = features(rec, rotate=False)
    y1, _ = features(turned, rotate=False)
    assert np.abs(y0["body"] - y1["body"]).max() > 0.1


def test_missing_streams_are_zero_and_masked() -> None:
    rec = make_recording()
    rec.present[:, 2] = False
    rec.left_hand[:] = np.nan
    rec.present[30:60, 0] = False
    rec.pose[30:60] = np.nan
    rec.motion = None
    rec.motion_regions = []
    x, m = features(rec)
    assert m["left_hand"].sum() == 0 and np.all(x["left_hand"] == 0)
    assert m["motion"].sum() == 0 and np.all(x["motion"] == 0)
    assert m["body"][30:60].sum() == 0 and np.all(x["body"][30:60] == 0)
    assert m["right_hand"].all() and np.isfinite(x["right_hand"]).all()
    for s in STREAM_NAMES:
        assert np.isfinite(x[s]).all()


# ------------------------------------------------------------------ augmentation


@pytest.mark.parametrize("rotate", [True, False])
def test_mirror_equals_features_of_mirrored_video(rotate: bool) -> None:
    rec = make_recording(seed=3)
    x, m = features(rec, rotate)
    xm, mm, lat = augment.mirror(x, m, "left")
    assert lat == "right"
    fx, fm = features(mirror_recording(rec), rotate)
    for s in STREAM_NAMES:
        np.testing.assert_allclose(xm[s], fx[s], atol=3e-4, err_msg=s)
        np.testing.assert_array_equal(mm[s], fm[s])


def test_mirror_swaps_hands_lateralisation_and_is_an_involution() -> None:
    rec = make_recording(seed=4)
    rec.present[:, 3] = False  # right hand missing
    rec.right_hand[:] = np.nan
    x, m = features(rec)
    xm, mm, lat = augment.mirror(x, m, "right")
    assert lat == "left"
    assert mm["left_hand"].sum() == 0 and mm["right_hand"].all()
    np.testing.assert_allclose(xm["right_hand"][..., 0], -x["left_hand"][..., 0])
    for lateralization in ("bilateral", "unknown", "n/a"):
        assert augment.mirror(x, m, lateralization)[2] == lateralization
    back, mback, lat2 = augment.mirror(xm, mm, lat)
    assert lat2 == "right"
    for s in STREAM_NAMES:
        np.testing.assert_allclose(back[s], x[s], atol=1e-6)
        np.testing.assert_array_equal(mback[s], m[s])


def test_rotate_scale_and_temporal_jitter() -> None:
    rec = make_recording()
    rec.present[:20, 1] = False
    rec.face[:20] = np.nan
    x, m = features(rec)
    win = {s: x[s][:75] for s in x}
    wm = {s: m[s][:75] for s in m}
    same, _ = augment.temporal_jitter(win, wm, 1.0, 0.0)
    for s in STREAM_NAMES:
        np.testing.assert_allclose(same[s], win[s], atol=1e-6)
    rot = augment.rotate_scale(win, wm, 0.2, 1.1)
    np.testing.assert_allclose(
        np.linalg.norm(rot["body"][..., :2], axis=-1),
        1.1 * np.linalg.norm(win["body"][..., :2], axis=-1),
        rtol=1e-5,
        atol=1e-6,
    )
    assert np.all(rot["face"][:20] == 0)  # absent frames stay zero (head roll included)
    rng = np.random.default_rng(0)
    for _ in range(5):
        ax, am, _ = augment.augment(win, wm, "left", rng)
        for s in STREAM_NAMES:
            assert ax[s].shape == win[s].shape and np.isfinite(ax[s]).all()
            assert np.all(ax[s][am[s] == 0] == 0)


# ------------------------------------------------------------------ site loading and datasets


def _write_site(root: Path) -> Path:
    site = root / "site-01"
    cfg_events = [Event(5.0, 8.0, "sz_foc_ia_m_automatisms", "left")]
    for p, seeds in (("sub-01-001", [1, 2]), ("sub-01-002", [3]), ("sub-01-003", [4])):
        for k, seed in enumerate(seeds):
            stem = site / p / f"{p}_run-{k + 1}"
            stem.parent.mkdir(parents=True, exist_ok=True)
            save_recording(
                make_recording(seconds=20.0, fps=30.0, seed=seed), f"{stem}_keypoints.npz"
            )
            write_events(f"{stem}_events.tsv", cfg_events)
    # sub-01-003 has a truncated file; sub-01-004 has a recording without events
    bad = site / "sub-01-003" / "sub-01-003_run-2_keypoints.npz"
    bad.write_bytes((site / "sub-01-003" / "sub-01-003_run-1_keypoints.npz").read_bytes()[:500])
    (site / "sub-01-004").mkdir()
    save_recording(make_recording(seconds=10.0), site / "sub-01-004" / "x_keypoints.npz")
    return site


def test_load_patient_windows_reports_bad_files_and_goes_on(tmp_path: Path) -> None:
    site = _write_site(tmp_path)
    errors: list[tuple[Path, Exception]] = []
    patients = load_patient_windows(site, on_error=lambda p, e: errors.append((p, e)))
    assert sorted(p.name for p, _ in errors) == [
        "sub-01-003_run-2_keypoints.npz",
        "x_keypoints.npz",
    ]
    assert "events" in str(errors[1][1]) or "events" in str(errors[0][1])
    assert [p.patient for p in patients] == ["sub-01-001", "sub-01-002", "sub-01-003"]
    per_rec = 20 + 4  # windows of a 20 s recording
    p1 = patients[0]
    assert p1.site == "site-01" and len(p1) == 2 * per_rec
    assert list(p1.x) == list(STREAM_NAMES)
    assert p1.recording.tolist() == ["sub-01-001_run-1"] * per_rec + ["sub-01-001_run-2"] * per_rec
    assert p1.lateralization.dtype == np.dtype("<U9") and p1.recording.dtype == np.dtype("<U64")
    assert p1.t0.dtype == np.float64 and p1.y_type.dtype == np.int64
    # [5, 13) covers >= 50 % of windows starting at 3 .. 10.5
    assert p1.t0[p1.y_detect == 1][:8].tolist() == [3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    assert set(p1.y_type[p1.y_detect == 1]) == {CLASS_INDEX["automatisms"]}
    assert len(patients[1]) == per_rec and not patients[1].x["body"].flags.writeable


def test_reviewed_events_join_only_an_existing_patient(tmp_path: Path) -> None:
    """A reviewed-events folder (STATE/review/data) adds windows to a known patient; a folder
    of any other name would be a second privacy unit and is refused, naming it."""
    site = _write_site(tmp_path)
    reviewed = tmp_path / "review" / "data"
    stem = reviewed / "sub-01-002" / "bed3-E1"
    stem.parent.mkdir(parents=True)
    save_recording(make_recording(seconds=20.0, seed=9), f"{stem}_keypoints.npz")
    write_events(f"{stem}_events.tsv", [Event(2.0, 6.0, "sz_foc_a_m_clonic", "left")])
    before = {p.patient: len(p) for p in load_patient_windows(site)}
    after = {p.patient: len(p) for p in load_patient_windows(site, extra_dirs=[reviewed])}
    assert set(after) == set(before)  # no new privacy unit
    assert (
        after["sub-01-002"] == before["sub-01-002"] + 24
        and after["sub-01-001"] == before["sub-01-001"]
    )

    (reviewed / "sub-01-002").rename(reviewed / "bed3")
    with pytest.raises(SemioFedError, match="'bed3' is not a patient of"):
        load_patient_windows(site, extra_dirs=[reviewed])


def _patients(n_sites: int = 2, per_site: int = 3, windows: int = 4) -> list[PatientWindows]:
    rec = make_recording(seconds=12.0)
    w = windows_from_recording(rec, [Event(0.0, 4.0, "sz_foc_a_m_clonic", "right")], WindowConfig())
    out = []
    for s in range(n_sites):
        for p in range(per_site):
            out.append(
                PatientWindows(
                    site=f"site-{s}",
                    patient=f"sub-{s}-{p}",
                    x={k: v[:windows] for k, v in w["x"].items()},
                    mask={k: v[:windows] for k, v in w["mask"].items()},
                    y_detect=w["y_detect"][:windows],
                    y_type=w["y_type"][:windows],
                    lateralization=w["lateralization"][:windows],
                    t0=w["t0"][:windows],
                    recording=np.full(windows, "r", dtype="<U64"),
                )
            )
    return out


def test_window_and_patient_datasets_and_collate() -> None:
    patients = _patients()
    wd = WindowDataset(patients, augment=True, seed=1)
    assert len(wd) == 6 * 4
    batch = collate([wd[i] for i in range(len(wd))])
    for s in STREAM_NAMES:
        assert tuple(batch[f"x_{s}"].shape) == (24, 75, *STREAM_SHAPES[s])
        assert tuple(batch[f"m_{s}"].shape) == (24, 75)
    assert batch["patient_idx"].tolist() == [i // 4 for i in range(24)]
    assert batch["y_detect"].tolist()[:4] == [0, 0, 1, 1]  # t0 = -4 .. -1 s, event 0-4 s
    assert batch["y_lat"].dtype.is_floating_point is False
    pd = PatientDataset(patients, seed=0)
    assert len(pd) == 6
    items = [pd[i] for i in range(6)]
    assert [int(it["patient_idx"]) for it in items] == list(range(6))
    with pytest.raises(ValueError, match="without windows"):
        PatientDataset(_patients(windows=0))


# ------------------------------------------------------------------ splits


def _keys(ps: list[PatientWindows]) -> set[tuple[str, str]]:
    return {(p.site, p.patient) for p in ps}


def test_splits_never_share_a_patient() -> None:
    patients = _patients(n_sites=3, per_site=4, windows=1)
    train, val, test = patient_split(patients, 0.2, 0.2, seed=3)
    assert _keys(train) | _keys(val) | _keys(test) == _keys(patients)
    assert not (_keys(train) & _keys(val) or _keys(train) & _keys(test) or _keys(val) & _keys(test))
    assert len(val) >= 1 and len(test) >= 1

    held = []
    for tr, te in leave_patient_out_folds(patients):
        assert len(te) == 1 and not (_keys(tr) & _keys(te))
        held += te
    assert _keys(held) == _keys(patients) and len(held) == len(patients)
    folds = list(leave_patient_out_folds(patients, n_folds=4, seed=1))
    assert sum(len(te) for _, te in folds) == len(patients)

    sites = []
    for site, tr, te in leave_site_out_folds(patients):
        assert {p.site for p in te} == {site} and site not in {p.site for p in tr}
        assert len(tr) + len(te) == len(patients)
        sites.append(site)
    assert sites == ["site-0", "site-1", "site-2"]
    with pytest.raises(ValueError, match="more than once"):
        patient_split([*patients, patients[0]])
