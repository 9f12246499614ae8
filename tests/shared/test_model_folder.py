"""The model folder (shared/model_folder.py) and the round arrays (shared/model_arrays.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from semiofed.shared.errors import FormatError, SemioFedError
from semiofed.shared.model import ModelConfig, SemioNet, architecture_hash
from semiofed.shared.model_arrays import get_arrays, set_arrays
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


def test_round_arrays_are_the_trainable_parameters_with_checked_shapes() -> None:
    model = SemioNet(dataclasses.replace(SMALL, frozen=("encoders",)))
    arrays = get_arrays(model)
    assert (
        len(arrays)
        == sum(p.requires_grad for p in model.parameters())
        < len(list(model.parameters()))
    )
    before = [a.copy() for a in get_arrays(model)]
    with pytest.raises(SemioFedError, match="array 0 of shape"):
        set_arrays(model, [np.zeros(arrays[0].size + 1, np.float32), *arrays[1:]])
    assert all((a == b).all() for a, b in zip(get_arrays(model), before, strict=True))
    with pytest.raises(SemioFedError, match="got 1 arrays"):
        set_arrays(model, arrays[:1])
    set_arrays(model, [a + 1 for a in arrays])
    assert all((a == b + 1).all() for a, b in zip(get_arrays(model), before, strict=True))
