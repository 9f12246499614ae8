"""The synthetic seizure consortium: determinism, layout, ground truth, non-IID sites, CLI."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from semiofed.shared.baseline import fit_threshold, motion_energy, predict, windows
from semiofed.shared.events import read_events
from semiofed.shared.labels import CANONICAL_EVENT_TYPE, CLASSES, class_of
from semiofed.shared.recording import (
    DEFAULT_QUANT_STEP,
    SUFFIX,
    load_recording,
    read_header,
    save_recording,
)
from semiofed.shared.skeleton import REGION_NAMES
from semiofed.shared.synth import generate_consortium, simulate_event_clip

VENV_BIN = Path(sys.executable).parent


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_identical_bytes_other_seed_differs(tmp_path: Path) -> None:
    kw = {"sites": 2, "patients_per_site": 3, "minutes_per_patient": 3.0}
    generate_consortium(tmp_path / "a", seed=5, workers=2, **kw)
    generate_consortium(tmp_path / "b", seed=5, workers=1, **kw)
    generate_consortium(tmp_path / "c", seed=6, workers=2, **kw)
    a, b, c = (_digests(tmp_path / x) for x in "abc")
    assert len(a) == 1 + 2 * 3 * 3  # summary + 3 files per (single) recording
    assert a == b
    common = [k for k in a if k.endswith(SUFFIX) and k in c]
    assert common and all(a[k] != c[k] for k in common)


_GENERATE = """
import hashlib, sys
from pathlib import Path
from semiofed.shared.synth import generate_consortium
out = Path(sys.argv[1])
generate_consortium(out, sites=2, patients_per_site=2, minutes_per_patient=2.0, seed=5,
                    workers=int(sys.argv[2]))
h = hashlib.sha256()
for p in sorted(out.rglob("*")):
    if p.is_file():
        h.update(str(p.relative_to(out)).encode()); h.update(p.read_bytes())
print(h.hexdigest())
"""


def _machine_like(**env: str) -> dict[str, str]:
    """This environment with BLAS/OpenMP settings replaced by ``env``."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("OPENBLAS", "OMP_", "NPY_"))}
    return keep | env


def _all_numpy_simd_off() -> str:
    """numpy's dispatched CPU features found on this machine: switching all of them off
    runs its baseline loops, as on the oldest CPU it supports."""
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    return " ".join(f for f in __cpu_dispatch__ if __cpu_features__.get(f))


def test_bytes_do_not_depend_on_workers_threads_blas_kernel_or_cpu_features(
    tmp_path: Path,
) -> None:
    """The same seed gives the same bytes with 1 or 2 workers, 1 or 2 BLAS/OpenMP threads,
    another OpenBLAS kernel and numpy's SIMD loops switched off (another CPU)."""
    variants: dict[str, tuple[int, dict[str, str]]] = {
        "1 worker, 1 thread": (1, {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}),
        "1 worker, 2 threads": (1, {"OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}),
        "2 workers, no SIMD": (2, {"NPY_DISABLE_CPU_FEATURES": _all_numpy_simd_off()}),
    }
    if platform.machine() in ("x86_64", "AMD64"):
        variants["1 worker, SSE3 BLAS kernel"] = (1, {"OPENBLAS_CORETYPE": "Prescott"})
    digests = {}
    for i, (name, (workers, env)) in enumerate(variants.items()):
        proc = subprocess.run(
            [sys.executable, "-c", _GENERATE, str(tmp_path / str(i)), str(workers)],
            env=_machine_like(**env), capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, f"{name}: {proc.stderr[-2000:]}"
        digests[name] = proc.stdout.split()[-1]
    assert len(set(digests.values())) == 1, digests


def test_layout_and_ground_truth_match_events(small_consortium: Path) -> None:
    summary = json.loads((small_consortium / "summary.json").read_text())
    recs = sorted(small_consortium.rglob(f"*{SUFFIX}"))
    assert len(recs) == summary["recordings"] == 2 * 4
    for path in recs:
        patient = path.parent.name.removeprefix("sub-")
        site = path.parent.parent.name.removeprefix("site-")
        assert path.name == f"sub-{patient}_rec-01{SUFFIX}"
        base = str(path)[: -len(SUFFIX)]
        header = read_header(path)
        assert header["meta"]["site"] == site and header["meta"]["patient"] == patient
        assert header["fps"] in (25.0, 30.0)
        truth = json.loads(Path(base + "_truth.json").read_text())
        events = read_events(base + "_events.tsv")
        assert truth["n_frames"] == header["n_frames"]
        if not truth["events"]:
            assert [e.event_type for e in events] == ["bckg"]
            continue
        assert len(events) == len(truth["events"])
        for ev, gt in zip(events, truth["events"], strict=True):
            assert ev.event_type == CANONICAL_EVENT_TYPE[gt["class"]]
            assert class_of(ev.event_type) == CLASSES.index(gt["class"])
            assert ev.onset == pytest.approx(gt["onset"], abs=1e-3)
            assert ev.offset == pytest.approx(gt["offset"], abs=2e-3)
            assert ev.lateralization == gt["lateralization"]
            assert set(gt["regions"]) <= set(REGION_NAMES) and gt["regions"]
            for on, off in gt["regions"].values():
                assert gt["onset"] - 1e-3 <= on < off <= truth["duration"] + 1e-3
            phases = gt["phases"]
            assert phases[0]["onset"] == pytest.approx(gt["onset"], abs=1e-3)
            assert all(p["onset"] < p["offset"] for p in phases)
            if gt["class"] in ("clonic", "f2b", "pnes"):
                assert len(gt["frequency"]["hz"]) > 0
        for cf in truth["confounders"]:
            assert set(cf["regions"]) <= set(REGION_NAMES)


def test_every_class_present_and_sites_non_iid(small_consortium: Path) -> None:
    summary = json.loads((small_consortium / "summary.json").read_text())
    totals = {c: sum(per[c] for per in summary["counts"].values()) for c in CLASSES}
    assert all(totals[c] > 0 for c in CLASSES), totals
    prev = [np.array(list(s["prevalence"].values())) for s in summary["sites"]]
    assert 0.5 * np.abs(prev[0] - prev[1]).sum() > 0.2  # total-variation distance
    counts = [np.array([per[c] for c in CLASSES[1:]]) for per in summary["counts"].values()]
    assert not np.array_equal(counts[0], counts[1])
    cams = [s["camera"] for s in summary["sites"]]
    assert cams[0] != cams[1]


def test_cli_synth_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    proc = subprocess.run(
        [str(VENV_BIN / "semiofed"), "synth", "--out", str(out), "--sites", "1",
         "--patients-per-site", "2", "--minutes-per-patient", "2", "--seed", "3",
         "--workers", "2"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr  # the pool's workers end quietly
    assert "automatisms" in proc.stdout and "site" in proc.stdout
    assert (out / "summary.json").exists()
    assert len(list(out.rglob(f"*{SUFFIX}"))) == 2
    bad = subprocess.run(
        [str(VENV_BIN / "semiofed"), "synth", "--out", str(out), "--sites", "0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "--sites" in bad.stderr


@pytest.mark.parametrize("cls", CLASSES)
def test_clip_has_one_event_of_the_class(cls: str) -> None:
    rec, events, _ = simulate_event_clip(cls, 60.0, seed=1, fps=25.0)
    assert rec.fps == 25.0 and rec.n_frames == 1500
    assert len(events) == 1 and events[0].event_type == CANONICAL_EVENT_TYPE[cls]
    assert events[0].onset > 0 and events[0].offset <= 60.0
    rec.validate()


def test_f2b_clip_evolution_order_and_slowing() -> None:
    rec, _, truth = simulate_event_clip("f2b", 180.0, seed=2, lateralization="left")
    gt = truth["events"][0]
    assert gt["lateralization"] == "left" and gt["body_side"] == "right"
    assert [p["name"] for p in gt["phases"]] == ["version", "tonic", "clonic", "postictal"]
    regions = gt["regions"]
    assert regions["head"][0] < regions["right_arm"][0] < regions["left_leg"][0]
    hz = np.array(gt["frequency"]["hz"])
    quarter = len(hz) // 4
    assert hz[:quarter].mean() > 1.8 * hz[-quarter:].mean()  # clonic slowing
    # Head version towards the body side: the nose moves to the patient's right.
    nose = rec.pose[:, 0, 0]
    fps = rec.fps
    before = np.nanmean(nose[: int(gt["onset"] * fps)])
    tonic = next(p for p in gt["phases"] if p["name"] == "tonic")
    during = np.nanmean(nose[int(tonic["onset"] * fps) : int(tonic["offset"] * fps)])
    assert abs(during - before) > 0.01


def test_clonic_frequency_variability_epileptic_vs_pnes() -> None:
    cv = {"clonic": [], "pnes": []}
    for seed in range(4):
        for cls in cv:
            _, _, truth = simulate_event_clip(cls, 150.0, seed=seed)
            cv[cls].append(truth["events"][0]["frequency"]["cv"])
    # Bayly et al. 2013: CV ≈ 52% in epileptic clonic movements vs ≈ 17% in PNES.
    assert np.mean(cv["clonic"]) > 0.35 and 0.08 < np.mean(cv["pnes"]) < 0.25, cv


def test_recording_coding_roundtrip_and_escapes(tmp_path: Path) -> None:
    rec, _, _ = simulate_event_clip("hyperkinetic", 30.0, seed=3, fps=15.0)
    rec.face[40, :, :2] += 0.5  # a jump far beyond the small codes
    rec.present[10:20, 2] = False
    rec.left_hand[10:20] = np.nan
    a = save_recording(rec, tmp_path / "a_keypoints.npz", compress_level=1)
    b = save_recording(rec, tmp_path / "b_keypoints.npz", compress_level=1)
    assert a.read_bytes() == b.read_bytes()
    back = load_recording(a)
    for name in ("pose", "face", "left_hand", "right_hand"):
        x, y = rec.stream(name), back.stream(name)
        assert np.array_equal(np.isnan(x), np.isnan(y))
        assert np.nanmax(np.abs(x - y)) <= DEFAULT_QUANT_STEP / 2 + 1e-6


def test_motion_energy_baseline_flags_hyperkinetic() -> None:
    rec, events, _ = simulate_event_clip("hyperkinetic", 90.0, seed=4)
    energy = motion_energy(rec)
    assert energy.shape == (rec.n_frames,) and np.all(np.isfinite(energy))
    feat, label = windows(rec, events)
    assert label.any() and (~label).any()
    thr = fit_threshold(feat, label)
    pred = predict(feat, thr)
    assert pred[label].mean() > 0.8 and (~pred[~label]).mean() > 0.8
