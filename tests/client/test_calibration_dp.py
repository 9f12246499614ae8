"""`semiofed site calibrate --share/--merge-*` on a real site folder: each summary is a DP
release charged to the site's ledger and recorded in its signed audit trail; too few
patients, no budget or an exhausted budget release nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from semiofed.client.analysis.pipeline import SiteCalibration
from semiofed.privacy.accounting import epsilon
from semiofed.privacy.audit_trail import read_entries, site_trail, verify
from semiofed.privacy.ledger import PrivacyLedger
from semiofed.shared.analysis import calibration as cal
from semiofed.shared.cli import main
from semiofed.shared.labels import CLASSES
from semiofed.shared.model import ModelConfig, SemioNet
from semiofed.shared.model_folder import write_model_folder
from semiofed.shared.public_data import TUNING_SEED
from semiofed.shared.synth import generate_consortium
from semiofed.shared.windows import WindowConfig
from tests.ledger_helpers import new_ledger

DELTA = 1e-5
PATIENTS = cal.MIN_PATIENTS + 1


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two synthetic sites of 21 one-minute patients, a small (untrained) model and a few
    public patients (the simulator at the public tuning seed)."""
    root = tmp_path_factory.mktemp("dpcal")
    generate_consortium(
        root / "data",
        sites=2,
        patients_per_site=PATIENTS,
        minutes_per_patient=1,
        seed=4,
        workers=1,
        seizure_free_fraction=0.0,  # every patient has seizure windows (the anomaly summary)
    )
    torch.manual_seed(0)
    mcfg = ModelConfig(channels=(8,), strides=(2,), motion_channels=(8,), motion_strides=(2,))
    write_model_folder(root / "model", SemioNet(mcfg), mcfg, WindowConfig())
    generate_consortium(
        root / "public",
        sites=2,
        patients_per_site=3,
        minutes_per_patient=1,
        seed=TUNING_SEED,
        workers=1,
    )
    out: dict = {"model": root / "model", "public": root / "public"}
    for s in ("a", "b"):
        data = root / "data" / ("site-01" if s == "a" else "site-02")
        out[s] = (data, sorted(p.name for p in data.iterdir() if p.is_dir()))
    return out


def _state(tmp_path: Path, name: str, budget: float) -> Path:
    state = tmp_path / name
    new_ledger(state, budget, DELTA, "rdp")
    return state


def _base(site: dict, name: str, held: list[str] | None = None) -> list[str]:
    data, patients = site[name]
    argv = ["site", "calibrate", "--model", str(site["model"]), "--data", str(data)]
    return [*argv, "--held-out", *(held or patients), "--device", "cpu"]


def _share(
    site: dict, name: str, state: Path, out: Path, *extra: str, held: list[str] | None = None
) -> int:
    argv = [*_base(site, name, held), "--state", str(state), "--summary-out", str(out)]
    return main([*argv, *extra])


def test_federated_dp_calibration_is_charged_recorded_and_merged(
    site: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    states = {s: _state(tmp_path, f"state-{s}", 20.0) for s in ("a", "b")}
    for s in ("a", "b"):
        assert _share(site, s, states[s], tmp_path / f"t-{s}.json", "--share", "temperature") == 0
    printed = capsys.readouterr().out
    assert "charged to" in printed and "privacy unit: patient" in printed
    assert main(["site", "calibrate", "--merge-temperature", *(str(tmp_path / f"t-{s}.json") for s in "ab")]) == 0  # fmt: skip
    t = capsys.readouterr().out.split("merged temperature:")[1].split()[0]
    for s in ("a", "b"):
        argv = ["--share", "conformal", "--temperature", t]
        assert _share(site, s, states[s], tmp_path / f"c-{s}.json", *argv) == 0
        # 6 classes × 20 bins of ~21 patients: at σ = 3 every class's set would be all classes
        argv = ["--share", cal.MONDRIAN, "--temperature", t, "--noise-multiplier", "0.5"]
        assert _share(site, s, states[s], tmp_path / f"m-{s}.json", *argv) == 0

    eps_one = epsilon([(cal.DEFAULT_NOISE_MULTIPLIER, 1.0, 1)], DELTA, "rdp")
    ledger = PrivacyLedger(states["a"])
    runs = ledger.load()["runs"]
    assert [r["purpose"] for r in runs] == [
        "calibration summary: temperature",
        "calibration summary: conformal",
        "calibration summary: mondrian",
    ]
    assert all(r["privacy_unit"] == "patient" and r["status"] == "completed" for r in runs)
    assert ledger.history() == [(cal.DEFAULT_NOISE_MULTIPLIER, 1.0, 1)] * 2 + [(0.5, 1.0, 1)]
    assert ledger.spent() == pytest.approx(epsilon(ledger.history(), DELTA, "rdp"))
    assert ledger.spent() > eps_one > 0

    # what left site a is exactly what its signed trail recorded, with its ε
    assert verify(site_trail(states["a"]).path).ok
    released = [
        e for e in read_entries(site_trail(states["a"]).path) if e["kind"] == "summary_released"
    ]
    files = [json.loads((tmp_path / f"{k}-a.json").read_text()) for k in "tcm"]
    assert [e["payload"]["summary"] for e in released] == files
    for f in files:
        sigma = f["noise_multiplier"]
        assert f["epsilon"] == pytest.approx(epsilon([(sigma, 1.0, 1)], DELTA, "rdp"))
        assert f["delta"] == DELTA
        assert not {"n", "nll", "quantiles", "levels"} & set(f)  # no count, no raw statistic

    merged = tmp_path / "calibration.json"
    argv = [*_base(site, "a"), "--temperature", t, "--out", str(merged), "--merge-conformal"]
    assert main([*argv, *(str(tmp_path / f"c-{s}.json") for s in "ab")]) == 0
    calib = json.loads(merged.read_text())
    assert (
        calib["temperature"] == pytest.approx(float(t))
        and 0.0 < calib["conformal_threshold"] <= 1.0
    )
    assert calib["source"].startswith("federated (DP): 2 sites")

    # with the Mondrian summaries: per-class thresholds (coverage: the test below)
    argv += [*(str(tmp_path / f"c-{s}.json") for s in "ab"), "--merge-mondrian"]
    assert main([*argv, *(str(tmp_path / f"m-{s}.json") for s in "ab")]) == 0
    calib = SiteCalibration.load(merged)
    assert calib.class_thresholds is not None and len(calib.class_thresholds) == len(CLASSES)
    assert "per-class thresholds: federated (DP), 2 sites" in calib.source


def _simulated_patient(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Type logits and labels of one patient: 80 % background windows and one seizure type,
    the true class's logit raised by a noisy margin (so the scores spread over the bins)."""
    k = len(CLASSES)
    labels = np.where(rng.random(60) < 0.8, 0, rng.integers(1, k))
    logits = rng.normal(0.0, 1.0, (60, k))
    logits[np.arange(60), labels] += rng.normal(3.0, 1.5, 60)
    return logits, labels


def test_mondrian_summaries_are_charged_and_cover_every_class_of_new_patients(
    tmp_path: Path,
) -> None:
    """A small consortium (3 sites × 60 simulated patients): each site's `--share mondrian`
    release (through the same code) is charged to its ledger; the merged per-class
    thresholds cover each class of 200 new patients' windows at about the nominal 90 %."""
    from semiofed.client.dp_release import share_calibration

    rng = np.random.default_rng(7)
    summaries = []
    for s in range(3):
        state = _state(tmp_path, f"site-{s}", 50.0)
        patients = [_simulated_patient(rng) for _ in range(60)]
        summary, _, _ = share_calibration(state, cal.MONDRIAN, patients, 0.2, 1.0)
        summaries.append(summary)
        runs = PrivacyLedger(state).load()["runs"]
        assert [(r["purpose"], r["status"]) for r in runs] == [
            ("calibration summary: mondrian", "completed")
        ]
        assert PrivacyLedger(state).history() == [(0.2, 1.0, 1)]
    thresholds, _ = cal.merge_mondrian(summaries, 0.9)
    new = [_simulated_patient(rng) for _ in range(200)]
    logits = np.concatenate([z for z, _ in new])
    labels = np.concatenate([y for _, y in new])
    per_class = cal.coverage_per_class(cal.softmax(logits), labels, thresholds)
    assert set(per_class) == set(range(len(CLASSES)))
    for c, (coverage, size, _) in per_class.items():
        assert coverage >= 0.88, (CLASSES[c], coverage)
        assert size < len(CLASSES), (CLASSES[c], size)  # not the trivial set of every class


def test_too_few_patients_no_budget_and_over_budget_release_nothing(
    site: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "t.json"
    few = site["a"][1][: cal.MIN_PATIENTS - 1]
    state = _state(tmp_path, "state", 20.0)
    assert _share(site, "a", state, out, "--share", "temperature", held=few) == 2
    assert f"needs at least {cal.MIN_PATIENTS}" in capsys.readouterr().err
    assert PrivacyLedger(state).load()["runs"] == []

    unbudgeted = tmp_path / "no-budget"
    assert _share(site, "a", unbudgeted, out, "--share", "temperature") == 2
    assert "no privacy ledger" in capsys.readouterr().err

    poor = _state(tmp_path, "poor", 0.5)  # one summary at σ = 3 costs ε ≈ 1.4 at δ = 1e-5
    assert _share(site, "a", poor, out, "--share", "temperature") == 2
    assert "privacy budget exceeded" in capsys.readouterr().err
    assert [r["status"] for r in PrivacyLedger(poor).load()["runs"]] == ["refused"]
    assert PrivacyLedger(poor).history() == []
    assert not out.exists()
    trail = site_trail(poor).path
    assert not trail.exists() or not any(
        e["kind"] == "summary_released" for e in read_entries(trail)
    )


def test_demo_calibration_charges_each_site_and_the_demo_reads_epsilon_from_its_ledgers(
    site: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`semiofed demo`'s close: both calibration rounds (round 2: conformal and Mondrian)
    and the anomaly summary at every site with its own state, in a subprocess (server/ runs
    the client module), the merged result written into the run directory as the card's
    calibration and anomaly sections, then one ε line per site from its ledger — composed
    with what the site released before (here one DP-SGD round)."""
    import tomli_w
    from safetensors.torch import save_file

    from semiofed.privacy.ledger import PlannedRun
    from semiofed.server.demo import DEFAULT_CONFIG
    from semiofed.server.demo_privacy import (
        ANOMALY_KINDS,
        cumulative_epsilon,
        print_site_epsilon,
        run_calibration,
    )
    from semiofed.shared.run_config import load_run_config

    tiny = {"channels": [8], "strides": [2], "motion-channels": [8], "motion-strides": [2]}
    cfg = load_run_config(DEFAULT_CONFIG).updated({"model": tiny})
    (tmp_path / "demo.toml").write_text(tomli_w.dumps(cfg.as_dict()), encoding="utf-8")
    torch.manual_seed(0)
    mcfg = ModelConfig(channels=(8,), strides=(2,), motion_channels=(8,), motion_strides=(2,))
    (tmp_path / "run").mkdir()
    save_file(SemioNet(mcfg).state_dict(), str(tmp_path / "run" / "model.safetensors"))
    sites, root = ["site-01", "site-02"], site["a"][0].parent
    training = (1.0, 0.2, 10)
    for s in sites:
        ledger = new_ledger(tmp_path / "state" / s, 20.0, DELTA, "rdp")
        planned = PlannedRun("patient", training[1], training[0], 1.0, training[2], DELTA, "rdp", 20, "federated round 1")  # fmt: skip
        with ledger.begin_run(planned) as run:
            for _ in range(training[2]):
                run.count_step()
            run.finish()

    calib = run_calibration(
        tmp_path / "demo.toml", root, sites, tmp_path / "run", tmp_path / "state", site["public"]
    )
    for s in sites:
        # 21 patients, about 40 % held out: fewer than 20, so all patients are used (and said)
        r = calib["sites"][s]
        assert r["held_out_patients"] < cal.MIN_PATIENTS <= r["patients"]
        assert r["patients_used"] == "all (training included)"
        assert [x["kind"] for x in r["summaries"]] == [*cal.FEDERATED_KINDS, *ANOMALY_KINDS]
        trail = site_trail(tmp_path / "state" / s).path
        assert verify(trail, require_head=False).ok
        assert sum(e["kind"] == "summary_released" for e in read_entries(trail)) == 5
    sigma = (cal.DEFAULT_NOISE_MULTIPLIER, 1.0, 1)
    expected = epsilon([training, *[sigma] * 5], DELTA, "rdp")
    eps = cumulative_epsilon(tmp_path / "state", sites, DELTA, "rdp")
    assert eps == {s: pytest.approx(expected) for s in sites}
    assert calib["sites"]["site-01"]["summaries"][-1]["epsilon_total_after"] == pytest.approx(
        expected
    )
    capsys.readouterr()
    print_site_epsilon(tmp_path / "state", sites, DELTA, "rdp")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("  site-01: cumulative ε = ")
    assert f"{expected:.2f} at δ = 1e-05 (rdp accountant" in lines[0]
    assert "1 training rounds + 0 evaluations + 3 calibration summaries + 2 anomaly" in lines[0]

    # the card of the run directory carries both sections, each schema-checked, with what
    # each site paid for them alone and after them
    from semiofed.server.registry.cards import build_card
    from semiofed.shared.manifest import Card

    write_model_folder(tmp_path / "run", SemioNet(mcfg), mcfg, WindowConfig())
    (tmp_path / "run" / "run.json").write_text('{"data": "synthetic"}', encoding="utf-8")
    card = Card.model_validate(build_card(tmp_path / "run"))
    assert card.anomaly is not None and card.calibration is not None
    two = epsilon([sigma] * 2, DELTA, "rdp")  # the class sums and the threshold release
    for s in sites:
        assert card.anomaly.privacy.per_site[s].epsilon == pytest.approx(two)
        assert card.anomaly.privacy.per_site[s].epsilon_total_after == pytest.approx(expected)
        three = epsilon([sigma] * 3, DELTA, "rdp")
        assert card.calibration.privacy.per_site[s].epsilon == pytest.approx(three)
    assert (card.anomaly.privacy.privacy_unit, card.anomaly.privacy.delta) == ("patient", DELTA)
    assert card.anomaly.threshold == calib["anomaly"]["threshold"]
    assert set(card.calibration.class_thresholds) == set(CLASSES)


def test_anomaly_summaries_are_charged_recorded_and_merge_into_the_aberrant_flag(
    site: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from semiofed.client.analysis.pipeline import SiteCalibration
    from semiofed.client.anomaly import PURPOSE, THRESHOLD_PURPOSE
    from semiofed.shared.analysis.openset import SEMIOLOGY_EVENTS

    states = {s: _state(tmp_path, f"state-{s}", 20.0) for s in ("a", "b")}
    public = ["--public-data", str(site["public"])]
    for s in ("a", "b"):
        data, _ = site[s]
        argv = ["site", "calibrate", "--model", str(site["model"]), "--data", str(data)]
        argv += ["--share", "anomaly", "--state", str(states[s]), "--device", "cpu"]
        assert main([*argv, "--summary-out", str(tmp_path / f"a-{s}.json"), *public]) == 0
        assert "privacy unit: patient" in capsys.readouterr().out
        runs = PrivacyLedger(states[s]).load()["runs"]
        assert [(r["purpose"], r["status"]) for r in runs] == [(PURPOSE, "completed")]
        released = [e for e in read_entries(site_trail(states[s]).path) if e["kind"] == "summary_released"]  # fmt: skip
        assert [e["payload"]["summary"] for e in released] == [
            json.loads((tmp_path / f"a-{s}.json").read_text())
        ]
    assert main([*argv, "--summary-out", str(tmp_path / "x.json")]) == 2  # no public data
    assert "needs --public-data" in capsys.readouterr().err

    merged = tmp_path / "calibration.json"
    files = [str(tmp_path / f"a-{s}.json") for s in "ab"]
    argv = [*_base(site, "a"), "--out", str(merged), "--state", str(states["a"]), *public]
    argv += ["--merge-anomaly"]  # the state: site a's feature cache, filled by its share
    assert main([*argv, *files]) == 0
    calib = SiteCalibration.load(merged)
    assert calib.openset is not None and calib.openset.space is not None
    assert "federated DP anomaly model of 2 sites" in calib.source
    assert calib.openset.representation == SEMIOLOGY_EVENTS
    public_threshold = calib.openset.threshold
    assert np.isfinite(public_threshold)

    # the threshold release under that model, then the merge that sets the threshold from it
    for s in ("a", "b"):
        data, _ = site[s]
        share = ["site", "calibrate", "--model", str(site["model"]), "--data", str(data)]
        share += ["--share", "anomaly-threshold", "--state", str(states[s]), *public]
        share += ["--summary-out", str(tmp_path / f"h-{s}.json"), "--device", "cpu"]
        assert main([*share, "--anomaly-model", str(merged)]) == 0
        assert "2 noisy threshold sums" in capsys.readouterr().out
        runs = PrivacyLedger(states[s]).load()["runs"]
        assert [r["purpose"] for r in runs] == [PURPOSE, THRESHOLD_PURPOSE]
    assert main(share) == 2  # no model to release under
    assert "needs --anomaly-model" in capsys.readouterr().err
    (tmp_path / "local.json").write_text(merged.read_text().replace(SEMIOLOGY_EVENTS, "embedding"))
    assert main([*share, "--anomaly-model", str(tmp_path / "local.json")]) == 2
    assert "not a federated semiology-event model" in capsys.readouterr().err
    assert len(PrivacyLedger(states["b"]).load()["runs"]) == 2  # refused before any release
    thresholds = [str(tmp_path / f"h-{s}.json") for s in "ab"]
    assert main([*argv, *files, "--merge-anomaly-threshold", *thresholds]) == 0
    final = SiteCalibration.load(merged).openset
    assert final is not None and np.isfinite(final.threshold)
    assert final.threshold != public_threshold  # set by the sites' release
    assert final.means.tolist() == calib.openset.means.tolist()
