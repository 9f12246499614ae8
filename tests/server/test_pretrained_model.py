"""The round-0 model: public pretraining, loading by SHA-256, frozen encoders under DP
fine-tuning (unchanged, never exchanged), and a DP fine-tuned model that beats chance."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from semiofed.client.allowlist import param_specs
from semiofed.client.dp_training import TrainConfig, train_local
from semiofed.client.evaluation import evaluate
from semiofed.client.site_task import get_arrays, set_arrays
from semiofed.server.pretrain import (
    PretrainConfig,
    init_recipe,
    learning_rate,
    pretrain_model,
    save_pretrained,
)
from semiofed.shared.dataset import load_patient_windows
from semiofed.shared.errors import SemioFedError
from semiofed.shared.model import (
    MODEL_STREAMS,
    PRETRAINED_ENV,
    ModelConfig,
    SemioNet,
    architecture_hash,
    count_parameters,
    load_pretrained,
    pretraining_statement,
)
from semiofed.shared.splits import patient_split

SMALL = ModelConfig(
    channels=(8,),
    strides=(3,),
    motion_channels=(8,),
    motion_strides=(3,),
    embed_dim=16,
    groups=4,
    semiology_hidden=32,
    streams=MODEL_STREAMS,
)
HEADS_ONLY = ("encoders",)


def _frozen_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}


def test_pretrained_weights_are_found_by_hash_and_frozen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    base = SemioNet(SMALL)
    digest, path = save_pretrained(base, {"data": "public test"}, tmp_path)
    assert path.name == f"{digest}.safetensors"
    monkeypatch.setenv(PRETRAINED_ENV, str(tmp_path))
    cfg = dataclasses.replace(SMALL, pretrained=digest, frozen=HEADS_ONLY)
    torch.manual_seed(1)  # another init: the weights must come from the file
    model = SemioNet(cfg)
    for name, value in base.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0)
    assert load_pretrained(digest)[1]["recipe"] == '{"data": "public test"}'
    statement = pretraining_statement(cfg)  # what the run directory and model card declare
    assert statement == {
        "sha256": digest,
        "frozen": ["encoders"],
        "recipe": {"data": "public test"},
    }
    assert pretraining_statement(SMALL) is None

    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and not any(n.startswith("encoders.") for n in trainable)
    assert count_parameters(model) < count_parameters(base) / 5
    # the federation exchanges exactly the trainable parameters, as the allowlist expects
    arrays = get_arrays(model)
    specs = param_specs(model)
    assert [s.name for s in specs] == trainable
    assert [tuple(a.shape) for a in arrays] == [s.shape for s in specs]
    set_arrays(model, arrays)
    # the approved architecture hash covers freezing and the pretrained weights
    hashes = {
        architecture_hash(c)
        for c in (
            SMALL,
            cfg,
            dataclasses.replace(cfg, frozen=()),
            dataclasses.replace(cfg, pretrained=""),
        )
    }
    assert len(hashes) == 4


def test_pretrained_file_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PRETRAINED_ENV, str(tmp_path))
    missing = "0" * 64
    with pytest.raises(SemioFedError, match=r"no 0+\.safetensors"):
        SemioNet(dataclasses.replace(SMALL, pretrained=missing))
    wrong = "1" * 64
    (tmp_path / f"{wrong}.safetensors").write_bytes(b"not the file of that hash")
    with pytest.raises(SemioFedError, match="SHA-256 differs"):
        SemioNet(dataclasses.replace(SMALL, pretrained=wrong))
    with pytest.raises(ValueError, match="matches no parameter"):
        SemioNet(dataclasses.replace(SMALL, frozen=("encoder",)))


def test_dp_fine_tuning_leaves_frozen_layers_and_beats_chance(
    small_consortium: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "public" data for this test: site-01; the fine-tuning site: site-02 (other patients)
    public = load_patient_windows(small_consortium / "site-01")
    pcfg = PretrainConfig(steps=40, batch_size=24, eval_every=20, val_patients=1)
    pre, summary = pretrain_model(SMALL, pcfg, public)
    assert summary["best_step"] in (20, 40)
    first, _ = save_pretrained(pre, {"data": "public: test"}, tmp_path)
    monkeypatch.setenv(PRETRAINED_ENV, str(tmp_path))
    # a continuation starts from the public model, decays its rate, never ends below its start
    more = dataclasses.replace(pcfg, steps=10, lr_end=1e-4, draw_seed=1, init=first)
    assert [round(learning_rate(more, s), 6) for s in (1, 10)] == [pcfg.lr, 1e-4]
    pre, cont = pretrain_model(SMALL, more, public)
    assert cont["best_step"] in (0, 10)
    start = (summary["val_macro_f1"], summary["val_auroc"])  # the same validation patients
    assert (cont["val_macro_f1"], cont["val_auroc"]) >= start
    assert init_recipe(first) == {"data": "public: test"}
    digest, _ = save_pretrained(pre, {"test": True}, tmp_path)
    with pytest.raises(SemioFedError, match="not a public pretrained model"):
        pretrain_model(SMALL, dataclasses.replace(more, init=digest), public)

    site = load_patient_windows(small_consortium / "site-02")
    train, _, test = patient_split(site, 0.0, 0.25, seed=0)
    model = SemioNet(dataclasses.replace(SMALL, pretrained=digest, frozen=HEADS_ONLY))
    frozen = _frozen_state(model)
    before = [a.copy() for a in get_arrays(model)]
    cfg = TrainConfig(
        epochs=4,
        batch_size=len(train),
        windows_per_patient=8,
        noise_multiplier=0.8,
        delta=1e-5,
        lr=3e-3,
        augment=False,
        device="cpu",
    )
    res = train_local(model, train, cfg, progress=False)
    assert res.dp and res.steps == 4 and res.epsilon_run > 0
    for name, value in _frozen_state(model).items():
        torch.testing.assert_close(value, frozen[name], rtol=0, atol=0, msg=name)
    after = get_arrays(model)
    assert len(after) == len(before)
    assert any((a != b).any() for a, b in zip(after, before, strict=True))
    m = evaluate(model, test, device="cpu", events=False)
    assert m["auroc_seizure"] > 0.8


def test_top_only_continuation_keeps_encoders_and_draws_confounders(
    small_consortium: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A continuation with frozen encoders trains the top only, on the windows' embeddings;
    the hard background it can draw from is the simulator truth's confounder episodes."""
    import json

    import numpy as np

    from semiofed.server.pretrain import _balanced_weights
    from semiofed.shared.public_data import confounder_windows

    public = load_patient_windows(small_consortium / "site-01")
    hard = confounder_windows(small_consortium, public)
    assert any(m.any() for m in hard.values()) and not all(m.all() for m in hard.values())
    episodes = {
        path.name.removesuffix("_truth.json"): json.loads(path.read_text())["confounders"]
        for path in (small_consortium / "site-01").rglob("*_truth.json")
    }
    for p in public:
        m = hard[p.key]
        assert len(m) == len(p)
        # every marked window overlaps an episode of its own recording's truth
        for t0, rec in zip(p.t0[m], p.recording[m], strict=True):
            assert any(t0 < cf["offset"] and t0 + 5.0 > cf["onset"] for cf in episodes[rec])
    w_uniform = _balanced_weights(public)
    w_hard = _balanced_weights(public, hard, 0.5)
    marked = np.concatenate([hard[p.key] & (p.y_detect == 0) for p in public])
    assert w_hard.sum() == pytest.approx(1.0)
    assert w_hard[marked].sum() > w_uniform[marked].sum()
    assert w_hard[marked].sum() >= 0.25 - 1e-9  # half the background half

    torch.manual_seed(0)
    digest, _ = save_pretrained(SemioNet(SMALL), {"data": "public: test"}, tmp_path)
    monkeypatch.setenv(PRETRAINED_ENV, str(tmp_path))
    pcfg = PretrainConfig(
        steps=10, batch_size=24, eval_every=10, val_patients=1, init=digest,
        frozen=HEADS_ONLY, confounder_share=0.5,
    )  # fmt: skip
    model, summary = pretrain_model(SMALL, pcfg, public, hard)
    assert summary["best_step"] in (0, 10)
    start = load_pretrained(digest)[0]
    for name, value in model.state_dict().items():
        if name.startswith("encoders."):
            torch.testing.assert_close(value, start[name], rtol=0, atol=0, msg=name)
    with pytest.raises(SemioFedError, match="frozen parameters need init"):
        pretrain_model(SMALL, dataclasses.replace(pcfg, init=""), public, hard)


def test_pretrain_command_refuses_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from semiofed.shared.cli import main

    config = Path(__file__).resolve().parents[2] / "configs" / "demo.toml"
    assert (
        main(
            ["server", "pretrain", "--config", str(config), "--out", str(tmp_path), "--steps", "0"]
        )
        == 2
    )
    assert capsys.readouterr().err.strip() == "semiofed: error: --steps must be >= 1, got 0"
    args = ["server", "pretrain", "--config", str(config), "--out", str(tmp_path)]
    assert main([*args, "--lr-end", "0"]) == 2
    assert capsys.readouterr().err.strip() == "semiofed: error: --lr-end must be > 0, got 0.0"
    assert main([*args, "--confounder-share", "1"]) == 2
    assert "--confounder-share must be in [0, 1), got 1.0" in capsys.readouterr().err
    assert main([*args, "--init", "0" * 64]) == 2
    assert "no " + "0" * 64 + ".safetensors" in capsys.readouterr().err
    missing = tmp_path / "missing.toml"
    assert main(["server", "pretrain", "--config", str(missing), "--out", str(tmp_path)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_demo_round0_model_is_what_coordinator_and_sites_exchange() -> None:
    """The coordinator's initial arrays are the pretrained trainable parameters only, in the
    layout the sites' allowlist expects, and within SecAgg+'s clipping range."""
    from semiofed.client.site_task import build_model
    from semiofed.server.app import _initial_arrays
    from semiofed.shared.run_config import load_run_config

    cfg = load_run_config(Path(__file__).resolve().parents[2] / "configs" / "demo.toml")
    mcfg = cfg.model_config
    assert mcfg.pretrained and mcfg.frozen == HEADS_ONLY and "semiology" in mcfg.streams
    _, arrays = _initial_arrays(cfg)
    site_model = build_model(cfg)
    specs = param_specs(site_model)
    assert [tuple(a.shape) for a in arrays] == [s.shape for s in specs]
    assert not any(s.name.startswith("encoders.") for s in specs)
    pretrained = load_pretrained(mcfg.pretrained)[0]
    for spec, a in zip(specs, arrays, strict=True):
        torch.testing.assert_close(torch.from_numpy(a), pretrained[spec.name], rtol=0, atol=0)
    assert max(float(abs(a).max()) for a in arrays) < cfg.secagg.clipping_range
