"""`semiofed site train` on a small synthetic site: refusal before training, ledger entries,
safetensors output; and a short training run that beats the motion-energy baseline
(seizure-type macro-F1 and balanced accuracy on held-out patients)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from semiofed.client.dp_training import TrainConfig, train_local
from semiofed.client.evaluation import evaluate
from semiofed.privacy.accounting import epsilon
from semiofed.privacy.audit_trail import TRAIL_FILE, read_entries
from semiofed.privacy.ledger import PrivacyLedger
from semiofed.shared import baseline
from semiofed.shared.cli import main
from semiofed.shared.dataset import load_patient_windows
from semiofed.shared.labels import IGNORE_INDEX
from semiofed.shared.metrics import window_metrics
from semiofed.shared.model import ModelConfig, SemioNet
from semiofed.shared.recording import SUFFIX, load_recording
from semiofed.shared.synth.consortium import generate_consortium
from tests.ledger_helpers import new_ledger


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("consortium")
    generate_consortium(out, sites=1, patients_per_site=6, minutes_per_patient=2, seed=3, workers=1)
    return out


def _train(site: Path, out: Path, state: Path, *extra: str) -> int:
    argv = ["site", "train", "--data", str(site), "--out", str(out), "--state", str(state)]
    return main([*argv, "--no-progress", "--batch-size", "1", "--windows-per-patient", "2", *extra])


def test_site_train_refuses_then_trains_within_budget(
    consortium: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site, state = consortium / "site-01", tmp_path / "state"
    new_ledger(state, 1.0, 1e-5, "rdp", site)  # the officer creates the site's ledger
    refused = tmp_path / "refused"
    assert (
        _train(
            site,
            refused,
            state,
            "--epsilon-budget",
            "1.0",
            "--noise-multiplier",
            "0.5",
            "--epochs",
            "20",
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "refused before training" in err and "remaining 1.000" in err and "What would fit" in err
    assert not (refused / "model.safetensors").exists() and not (refused / "metrics.json").exists()
    ledger = PrivacyLedger(state)
    (record,) = ledger.load()["runs"]
    assert record["status"] == "refused" and record["steps_counted"] == 0 and ledger.history() == []

    run = tmp_path / "run"
    assert _train(site, run, state, "--epsilon-target", "0.9", "--epochs", "2") == 0
    metrics = json.loads((run / "metrics.json").read_text())
    priv = metrics["privacy"]
    assert (
        priv["privacy_unit"] == "patient" and priv["delta"] == 1e-5 and priv["accountant"] == "rdp"
    )
    hist = ledger.history()
    assert len(hist) == 1 and hist[0][2] == priv["steps"] > 0
    assert priv["epsilon_cumulative_site"] == pytest.approx(epsilon(hist, 1e-5, "rdp"))
    assert 0.8 <= priv["epsilon_cumulative_site"] <= 0.9
    weights = load_file(str(run / "model.safetensors"))  # safetensors: no pickle involved
    assert weights and json.loads((run / "model_config.json").read_text())["architecture_hash"]
    for key in ("macro_f1", "balanced_accuracy", "per_class_recall", "auroc_seizure", "events"):
        assert key in metrics["test"]
    assert {"sensitivity", "precision", "f1", "false_alarms_per_hour", "onset_latency_s"} <= set(
        metrics["test"]["events"]
    )
    # with DP no epoch is chosen on validation patients (that choice would not be covered by ε)
    assert metrics["split"]["val"] == [] and "model_selection_warning" not in priv
    split = [p for part in metrics["split"].values() for p in part]
    assert sorted(split) == sorted(p.name for p in site.iterdir() if p.is_dir())
    (entry,) = [e for e in read_entries(state / TRAIL_FILE) if e["kind"] == "budget_state"]
    assert entry["payload"]["epsilon_spent"]["rdp"] == pytest.approx(
        priv["epsilon_cumulative_site"]
    )

    # the budget is now nearly spent: the same run again is refused, nothing more counted
    assert _train(site, tmp_path / "again", state, "--epsilon-target", "2.0", "--epochs", "2") == 2
    assert "ε ≤ 1" in capsys.readouterr().err
    assert ledger.history() == hist and not (tmp_path / "again" / "model.safetensors").exists()


SMALL = ModelConfig(
    channels=(16, 32), strides=(2, 2), motion_channels=(16,), motion_strides=(2,), embed_dim=32
)


def _baseline_on_windows(site: Path, train: list, test: list) -> dict:
    """The motion-energy baseline on the model's own test windows: threshold fitted on the
    training patients' windows; a flagged window gets the most frequent training seizure type."""

    def energy_and_labels(patients: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        energies = []
        for pw in patients:
            per_rec = {}
            for path in (site / pw.patient).rglob("*" + SUFFIX):
                rec = load_recording(path)
                per_rec[path.name[: -len(SUFFIX)]] = (baseline.motion_energy(rec), rec.fps)
            for t0, rec_id in zip(pw.t0, pw.recording, strict=True):
                e, fps = per_rec[str(rec_id)]
                a = max(0, round(t0 * fps))  # the first window may start before the recording
                energies.append(float(e[a : a + round(5.0 * fps)].mean()))
        y_detect = np.concatenate([p.y_detect for p in patients])
        y_type = np.concatenate([p.y_type for p in patients])
        return np.array(energies), y_detect, y_type

    e_tr, d_tr, t_tr = energy_and_labels(train)
    threshold = baseline.fit_threshold(e_tr, d_tr.astype(bool))
    seizure_types = t_tr[(d_tr == 1) & (t_tr != IGNORE_INDEX)]
    majority = int(np.bincount(seizure_types).argmax())
    e_te, d_te, t_te = energy_and_labels(test)
    flagged = baseline.predict(e_te, threshold)
    return window_metrics(t_te, np.where(flagged, majority, 0), d_te, e_te)


def test_short_training_beats_motion_energy_baseline(consortium: Path) -> None:
    site = consortium / "site-01"
    patients = load_patient_windows(site)
    train, test = patients[:4], patients[4:]  # by patient: the test patients are never seen
    torch.manual_seed(0)
    model = SemioNet(SMALL)
    cfg = TrainConfig(epochs=3, dp=False, batch_size=16, lr=3e-3, augment=False, device="cpu")
    train_local(model, train, cfg, progress=False)
    ours = evaluate(model, test, device="cpu")
    base = _baseline_on_windows(site, train, test)
    assert np.isfinite(base["auroc_seizure"]) and base["per_class_recall"]  # a working baseline
    # seizure-type macro-F1 over the model classes, on the same held-out windows
    assert ours["macro_f1"] > base["macro_f1"] + 0.1, (ours["macro_f1"], base["macro_f1"])
    assert ours["balanced_accuracy"] > base["balanced_accuracy"]
    # and it finds the held-out patients' events (SzCORE event scoring)
    assert ours["events"]["sensitivity"] == 1.0
