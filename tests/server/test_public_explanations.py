"""Global explanations on public data: computed by `registry explain`, carried by the card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from semiofed.server.public_explanations import explain_public
from semiofed.server.registry.cards import EXPLANATIONS_FILE, build_card
from semiofed.shared.dataset import load_patient_windows
from semiofed.shared.errors import FormatError
from semiofed.shared.features import STREAM_NAMES
from semiofed.shared.labels import CLASSES
from semiofed.shared.model import ModelConfig, SemioNet
from semiofed.shared.skeleton import REGION_NAMES
from semiofed.shared.synth.consortium import generate_consortium
from tests.registry_helpers import make_run_dir


@pytest.fixture(scope="module")
def explained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("explain")
    generate_consortium(root, sites=1, patients_per_site=3, minutes_per_patient=1, seed=8)
    patients = load_patient_windows(root / "site-01")
    torch.manual_seed(0)
    cfg = ModelConfig(channels=(8,), strides=(2,), motion_channels=(8,), motion_strides=(2,))
    model = SemioNet(cfg)
    return {"doc": explain_public(model, patients, per_class=2), "model": model, "p": patients}


def test_every_class_of_the_data_is_explained_by_streams_and_regions(explained: dict) -> None:
    doc, patients = explained["doc"], explained["p"]
    seen = {"bckg"} | {
        CLASSES[int(t)] for p in patients for t, d in zip(p.y_type, p.y_detect, strict=True) if d
    }
    assert set(doc["classes"]) == seen and len(seen) >= 2
    for name, c in doc["classes"].items():
        assert c["explains"] == ("detection probability" if name == "bckg" else "type probability")
        assert set(c["stream_contributions"]) == set(STREAM_NAMES)
        for st, share in c["stream_presence"].items():  # an absent stream explains nothing
            assert 0.0 <= share <= 1.0 and (share > 0 or c["stream_contributions"][st] == 0.0)
        assert set(c["region_shares"]) == set(REGION_NAMES)
        assert sum(c["region_shares"].values()) == pytest.approx(1.0, abs=1e-3)
        assert 1 <= c["windows"] <= 2
    assert "public" in doc["data"] and doc["what_it_is_not"]


def test_the_same_model_and_data_give_the_same_explanations(explained: dict) -> None:
    again = explain_public(explained["model"], explained["p"], per_class=2)
    assert again == explained["doc"]
    other = explain_public(explained["model"], explained["p"], per_class=2, seed=1)
    assert other["method"]["seed"] == 1


def test_the_card_carries_them_and_refuses_a_forged_document(
    explained: dict, tmp_path: Path
) -> None:
    run = make_run_dir(tmp_path / "run")
    assert build_card(run)["explanations"] is None
    (run / EXPLANATIONS_FILE).write_text(json.dumps(explained["doc"]))
    card = build_card(run)
    assert card["explanations"]["classes"].keys() == explained["doc"]["classes"].keys()
    assert np.isfinite(card["explanations"]["classes"]["bckg"]["stream_contributions"]["body"])
    (run / EXPLANATIONS_FILE).write_text(json.dumps({"format": "other", "classes": {}}))
    with pytest.raises(FormatError, match=EXPLANATIONS_FILE):
        build_card(run)
