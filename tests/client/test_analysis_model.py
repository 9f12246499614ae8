"""The analysis with a real (small, quickly trained) model on the synthetic consortium:
conformal coverage on held-out patients, faithful explanations, the analyze → report → review
loop through the CLI, and report.html rendered by headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from semiofed.client.analysis.pipeline import fit_calibration, outputs_for
from semiofed.client.dp_training import TrainConfig, train_local
from semiofed.shared.analysis import calibration as cal
from semiofed.shared.analysis.explain import explain_window, resting_baseline
from semiofed.shared.cli import main
from semiofed.shared.dataset import load_patient_windows
from semiofed.shared.features import STREAM_NAMES
from semiofed.shared.labels import IGNORE_INDEX
from semiofed.shared.model import ModelConfig, SemioNet
from semiofed.shared.recording import save_recording
from semiofed.shared.synth import generate_consortium, simulate_event_clip
from semiofed.shared.windows import WindowConfig

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
HELD_OUT = ("sub-01-008", "sub-01-009", "sub-01-010")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """10 synthetic patients of one site (3 min each), a small SemioNet trained on 7 (non-DP)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("analysis")
    generate_consortium(
        root / "data", sites=1, patients_per_site=10, minutes_per_patient=3, seed=3, workers=2
    )
    site = root / "data" / "site-01"
    wcfg = WindowConfig()
    patients = load_patient_windows(site, wcfg)
    train = [p for p in patients if p.patient not in HELD_OUT]
    held = [p for p in patients if p.patient in HELD_OUT]
    mcfg = ModelConfig(
        channels=(16, 32),
        strides=(2, 2),
        motion_channels=(16,),
        motion_strides=(2,),
        embed_dim=32,
        temporal_kernel=5,
    )
    model = SemioNet(mcfg)
    cfg = TrainConfig(
        epochs=2, dp=False, batch_size=32, steps_per_epoch=40, lr=5e-3, augment=False, device="cpu"
    )
    train_local(model, train, cfg, progress=False)
    model.eval()
    model_dir = root / "model"
    model_dir.mkdir()
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(model_dir / "model.safetensors"),
    )
    (model_dir / "model_config.json").write_text(
        json.dumps({"model": asdict(mcfg), "window": asdict(wcfg)})
    )
    return {
        "root": root,
        "site": site,
        "model": model,
        "model_dir": model_dir,
        "train": train,
        "held": held,
        "wcfg": wcfg,
    }


def test_conformal_coverage_on_held_out_patients(trained: dict) -> None:
    """Calibrate on two held-out patients, check coverage on the third (and rotate)."""
    covs = []
    for k in range(3):
        test_p = [trained["held"][k]]
        cal_p = [p for i, p in enumerate(trained["held"]) if i != k]
        calib = fit_calibration(trained["model"], cal_p, trained["train"], coverage=0.9)
        out = outputs_for(trained["model"], test_p)
        lab = out["y_type"] != IGNORE_INDEX
        probs = cal.softmax(out["type_logits"][lab], calib.temperature)
        cov, size = cal.coverage_and_size(probs, out["y_type"][lab], calib.conformal_threshold)
        covs.append(cov)
        assert size < 6.0  # sets are informative, not every class
    # Marginal 90 % guarantee over patients; each single patient may deviate, their mean must not.
    assert np.mean(covs) >= 0.8, covs


def test_deletion_curve_beats_random(trained: dict) -> None:
    model, held = trained["model"], trained["held"]
    out = outputs_for(model, held)
    order = np.argsort(-out["detect_prob"])
    offsets = np.cumsum([0] + [len(p) for p in held])
    wins = 0
    for flat in order[:3]:  # the three most confidently detected windows
        pi = int(np.searchsorted(offsets, flat, side="right") - 1)
        p, i = held[pi], int(flat - offsets[pi])
        rest = np.flatnonzero(p.y_detect == 0)[:50]
        neutral = resting_baseline(p.x, p.mask, rest, {s: p.x[s][i] for s in STREAM_NAMES})
        window = {}
        for s in STREAM_NAMES:
            window[f"x_{s}"] = torch.as_tensor(np.array(p.x[s][i : i + 1]))
            window[f"m_{s}"] = torch.as_tensor(np.array(p.mask[s][i : i + 1]))
        ex = explain_window(model, window, neutral, trained["wcfg"].seconds, n_steps=16)
        shap = ex["shapley"]
        total = sum(shap["values"].values())
        assert total == pytest.approx(
            shap["full_probability"] - shap["baseline_probability"], abs=1e-3
        )
        wins += ex["deletion"]["top_auc"] < ex["deletion"]["random_auc"]
    assert wins == 3


def test_analyze_report_and_review_loop(trained: dict, tmp_path: Path) -> None:
    model_dir, site = trained["model_dir"], trained["site"]
    assert (
        main(
            [
                "site",
                "calibrate",
                "--model",
                str(model_dir),
                "--data",
                str(site),
                "--held-out",
                *HELD_OUT,
                "--per-class",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    calib = json.loads((model_dir / "calibration.json").read_text())
    assert 0.0 < calib["conformal_threshold"] <= 1.0 and calib["openset"] is not None
    # per-class (Mondrian) thresholds: one per class, the report's prediction sets use them
    assert len(calib["class_thresholds"]) == 6
    assert all(0.0 <= t <= 1.0 for t in calib["class_thresholds"])

    rec, _, _ = simulate_event_clip("f2b", 60.0, 5, fps=15.0)
    rec_path = save_recording(rec, tmp_path / "bed3_keypoints.npz")
    # Flag everything so the review loop has work: a copy of the calibration with threshold −∞.
    strict = dict(calib, openset=dict(calib["openset"], threshold=-1e9))
    (tmp_path / "strict.json").write_text(json.dumps(strict))
    out, state = tmp_path / "report", tmp_path / "state"
    args = ["site", "analyze", str(rec_path), "--model", str(model_dir), "--out", str(out)]
    assert (
        main(
            [
                *args,
                "--calibration",
                str(tmp_path / "strict.json"),
                "--state",
                str(state),
                "--device",
                "cpu",
            ]
        )
        == 0
    )

    report = json.loads((out / "report.json").read_text())
    assert report["events"], "the f2b seizure should be detected"
    assert report["confidence"]["class_thresholds"] == calib["class_thresholds"]
    for region in (
        "head",
        "face",
        "left_arm",
        "right_arm",
        "left_hand",
        "right_hand",
        "trunk",
        "left_leg",
        "right_leg",
    ):
        assert "dominant_frequency_hz" in report["semiology"]["regions"][region]
    ev = report["events"][0]
    assert ev["aberrant"]["flagged"] and ev["prediction_set"]
    assert set(ev["explanation"]["shapley"]["values"]) == set(STREAM_NAMES)
    html = (out / "report.html").read_text()
    assert (
        "<script" not in html
        and "data:image" not in html
        and "http" not in html.replace("http://www.w3.org", "")
    )
    # live (causal) alarms: each ends a window above threshold, so it lies in an offline event
    alarms = report["alarms"]["times_s"]
    spans = [(e["onset_s"], e["offset_s"]) for e in report["events"]]
    assert alarms and all(any(a <= t <= b for a, b in spans) for t in alarms), (alarms, spans)
    assert "live alarm" in html

    # Review: list, label one event, reject nothing; the labelled data is a site data folder.
    queue = json.loads((state / "review" / "queue.json").read_text())
    eid = queue["items"][0]["id"]
    review = ["site", "review", "--state", str(state), "--data", str(site)]
    label = ["--label", eid, "clonic", "--lateralization", "left"]
    # a patient the site does not know (the recording's name, or any new id) is refused
    assert main([*review, *label]) == 2
    assert main([*review, *label, "--patient", "bed3"]) == 2
    assert not (state / "review" / "data").exists()
    patient = trained["train"][0].patient
    assert main([*review, *label, "--patient", patient]) == 0
    labelled = load_patient_windows(state / "review" / "data", trained["wcfg"])
    assert [p.patient for p in labelled] == [patient] and labelled[0].y_detect.sum() > 0
    queue = json.loads((state / "review" / "queue.json").read_text())
    assert queue["items"][0]["status"] == "labelled"
    # … and it joins the next training: the ClientApp's site loader and `site train --state`
    from semiofed.client.site_task import load_site
    from semiofed.shared.run_config import RunConfig

    joined = {
        p.patient: len(p)
        for p in load_patient_windows(site, trained["wcfg"], extra_dirs=[state / "review" / "data"])
    }
    assert len(joined) == 10  # the same patients: the event joined one, no new privacy unit
    assert joined[patient] == len(trained["train"][0]) + len(labelled[0])
    site_data = load_site(site, RunConfig.parse({}), state)
    assert {p.patient for p in site_data.train + site_data.test} <= set(joined)
    run = tmp_path / "retrained"
    argv = ["site", "train", "--data", str(site), "--out", str(run), "--state", str(state)]
    argv += ["--no-dp", "--epochs", "1", "--no-progress", "--device", "cpu"]
    assert main([*argv, "--window-seconds", "4", "--window-hop", "2"]) == 0
    split = json.loads((run / "metrics.json").read_text())["split"]
    assert sorted(split["train"] + split["val"] + split["test"]) == sorted(joined)
    window = json.loads((run / "model_config.json").read_text())["window"]
    assert (window["seconds"], window["hop"], window["fps"]) == (4.0, 2.0, 15.0)

    _screenshot(out / "report.html", tmp_path)


def _screenshot(html: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        subprocess.run(["sh", str(ROOT / "tests" / "setup_browser.sh")], check=True, timeout=600)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "analysis_report.png"
    shot.unlink(missing_ok=True)
    subprocess.run(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1200,2400",
            f"--screenshot={shot}", html.resolve().as_uri(),
        ],
        check=True, timeout=120, capture_output=True,
    )  # fmt: skip
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a real page, not a blank one


def test_analyze_a_video_reports_the_dominant_frequency(trained: dict, tmp_path: Path) -> None:
    """`site analyze VIDEO`: extraction first, then report.json holds the rocking frequency
    at report["semiology"]["regions"]["head"]["dominant_frequency_hz"] (whole recording: no
    event is expected in a rocking photo, else over the detected event)."""
    from tests.client.test_analysis_frequency import FREQ_HZ, _rock
    from tests.clips import make_moving_clip

    clip = make_moving_clip(tmp_path / "rocking.mp4", seconds=10.0, fps=30.0, motion=_rock)
    out = tmp_path / "report"
    argv = ["site", "analyze", str(clip), "--model", str(trained["model_dir"]), "--out", str(out)]
    assert main([*argv, "--fps", "15", "--no-explain", "--device", "cpu"]) == 0
    report = json.loads((out / "report.json").read_text())
    head = report["semiology"]["regions"]["head"]["dominant_frequency_hz"]
    assert head is not None and abs(head - FREQ_HZ) <= 0.3, head
    assert list((out / "keypoints").glob("*_keypoints.npz"))  # keypoints only, no frames


def test_a_semiology_event_model_scores_each_event_from_its_windows_features(
    trained: dict,
) -> None:
    """The published anomaly model's representation decides what `site analyze` feeds it:
    for a semiology-event model, the mean semiology features of the event's windows."""
    from semiofed.client.analysis.pipeline import SiteCalibration, analyze_recording
    from semiofed.shared.analysis.openset import SEMIOLOGY_EVENTS, OpenSetScorer, ProjectionSpace
    from semiofed.shared.analysis.semiology_anomaly import features_of_windows
    from semiofed.shared.errors import SemioFedError
    from semiofed.shared.model_folder import load_model_folder
    from semiofed.shared.windows import windows_from_recording

    model, wcfg, _ = load_model_folder(trained["model_dir"], "cpu")
    rec, _, _ = simulate_event_clip("f2b", 60.0, 5, fps=15.0)
    w = windows_from_recording(rec, [], wcfg)
    f = features_of_windows(w["x"], w["mask"])
    d = f.shape[1]
    centre = f.mean(0, keepdims=True)  # one class mean: every window's mean
    scorer = OpenSetScorer([1], centre, np.eye(d), threshold=0.0, representation=SEMIOLOGY_EVENTS)
    scorer.space = ProjectionSpace(np.zeros(d), np.eye(d), 1.0)
    doc = SiteCalibration(1.0, 0.9, 0.5, "test", openset=scorer).to_dict()
    report = analyze_recording(rec, model, wcfg, SiteCalibration.from_dict(doc))
    ev = report["events"][0]
    centres = w["t0"] + wcfg.seconds / 2
    inside = (centres >= ev["onset_s"] - 0.01) & (centres <= ev["offset_s"] + 0.01)
    expected = float(((f[inside].mean(0) - centre[0]) ** 2).sum())
    assert ev["aberrant"]["score"] == pytest.approx(expected, rel=1e-3, abs=1e-4)
    assert ev["aberrant"]["flagged"] == (expected > 0.0)
    doc["openset"]["representation"] = "pixels"
    with pytest.raises(SemioFedError, match="representation"):
        SiteCalibration.from_dict(doc)
