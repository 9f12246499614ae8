"""The model folder (shared/model_folder.py): what its writer writes, its reader reads back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from semiofed.shared.errors import FormatError, SemioFedError
from semiofed.shared.model import ModelConfig, SemioNet, architecture_hash
from semiofed.shared.model_folder import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    load_model_folder,
    write_model_folder,
)
from semiofed.shared.windows import WindowConfig

SMALL = ModelConfig(channels=(8,), strides=(3,), embed_dim=16, groups=4, streams=("body",))
WINDOWS = WindowConfig(seconds=4.0, hop=2.0)


def test_round_trip_keeps_weights_model_and_window_config(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SemioNet(SMALL)
    write_model_folder(tmp_path / "m", model, SMALL, WINDOWS)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [WEIGHTS_FILE, CONFIG_FILE]
    doc = json.loads((tmp_path / "m" / CONFIG_FILE).read_text())
    assert doc["architecture_hash"] == architecture_hash(SMALL) and doc["pretraining"] is None
    with safe_open(str(tmp_path / "m" / WEIGHTS_FILE), framework="pt") as fh:
        assert fh.metadata() == {"architecture_hash": architecture_hash(SMALL)}
    loaded, wcfg, _ = load_model_folder(tmp_path / "m", "cpu")
    assert wcfg == WINDOWS and loaded.cfg == SMALL and not loaded.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_weights_of_another_architecture_are_one_line_error(tmp_path: Path) -> None:
    write_model_folder(tmp_path / "m", SemioNet(SMALL), SMALL, WINDOWS)
    other = ModelConfig(channels=(8,), strides=(3,), embed_dim=8, groups=4, streams=("body",))
    write_model_folder(tmp_path / "o", SemioNet(other), other, WINDOWS)
    (tmp_path / "m" / WEIGHTS_FILE).write_bytes((tmp_path / "o" / WEIGHTS_FILE).read_bytes())
    with pytest.raises(FormatError, match=f"{WEIGHTS_FILE}.*do not fit {CONFIG_FILE}"):
        load_model_folder(tmp_path / "m", "cpu")
    with pytest.raises(SemioFedError, match=f"not a model folder \\({CONFIG_FILE} missing"):
        load_model_folder(tmp_path, "cpu")
