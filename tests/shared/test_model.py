"""SemioNet: size, Opacus compatibility, masking of missing streams, outputs."""

from __future__ import annotations

import pytest
import torch
from opacus import GradSampleModule
from opacus.validators import ModuleValidator

from semiofed.shared.errors import SemioFedError
from semiofed.shared.features import STREAM_NAMES, STREAM_SHAPES
from semiofed.shared.labels import NUM_CLASSES
from semiofed.shared.model import (
    ModelConfig,
    SemioNet,
    architecture_hash,
    count_parameters,
    resolve_device,
)


def random_batch(b: int = 4, t: int = 75, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = {}
    for s in STREAM_NAMES:
        v, c = STREAM_SHAPES[s]
        batch[f"x_{s}"] = torch.randn(b, t, v, c, generator=g)
        batch[f"m_{s}"] = torch.ones(b, t)
    batch["y_detect"] = torch.arange(b) % 2
    batch["y_type"] = torch.arange(b) % NUM_CLASSES
    return batch


def loss_of(
    out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], reduction: str
) -> torch.Tensor:
    det = torch.nn.functional.binary_cross_entropy_with_logits(
        out["detect_logit"], batch["y_detect"].float(), reduction=reduction
    )
    typ = torch.nn.functional.cross_entropy(
        out["type_logits"], batch["y_type"], reduction=reduction
    )
    return det + typ


def test_model_is_small_and_valid_for_opacus_without_fix() -> None:
    model = SemioNet()
    assert count_parameters(model) < 1_000_000
    assert ModuleValidator.validate(model, strict=True) == []
    assert not any("adj" in k for k in model.state_dict())  # constant, not saved or learned
    assert all("adj" not in n for n, _ in model.named_parameters())
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_output_keys_and_shapes() -> None:
    torch.manual_seed(0)
    out = SemioNet().eval()(random_batch(b=3))
    assert out["detect_logit"].shape == (3,)
    assert out["type_logits"].shape == (3, NUM_CLASSES)
    d = ModelConfig().embed_dim
    assert out["fused"].shape == (3, d)
    for s in STREAM_NAMES:
        assert out[f"emb_{s}"].shape == (3, d)
    assert out["gates"].shape == (3, len(STREAM_NAMES))
    torch.testing.assert_close(out["gates"].sum(1), torch.ones(3))


def test_missing_streams_get_zero_gate_and_finite_output() -> None:
    torch.manual_seed(0)
    model = SemioNet().eval()
    batch = random_batch(b=3)
    face, motion = STREAM_NAMES.index("face"), STREAM_NAMES.index("motion")
    batch["m_face"][0] = 0  # sample 0: no face at all
    batch["m_motion"][0] = 0
    for s in STREAM_NAMES:  # sample 1: nothing at all
        batch[f"m_{s}"][1] = 0
    batch["m_body"][2, 40:] = 0  # sample 2: body lost half-way
    out = model(batch)
    for v in out.values():
        assert torch.isfinite(v).all()
    g = out["gates"]
    assert g[0, face] == 0 and g[0, motion] == 0
    torch.testing.assert_close(g[0].sum(), torch.tensor(1.0))
    assert torch.all(g[1] == 0) and torch.all(out["fused"][1] == 0)
    assert torch.all(g[2] > 0)

    # values at absent frames are ignored
    changed = {k: v.clone() for k, v in batch.items()}
    changed["x_face"][0] += 5.0
    changed["x_body"][2, 40:] = torch.randn(35, *STREAM_SHAPES["body"])
    out2 = model(changed)
    for k in ("detect_logit", "type_logits", "fused"):
        torch.testing.assert_close(out2[k], out[k])


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.filterwarnings("ignore:Secure RNG turned off")
def test_opacus_per_sample_gradients_match_and_step_trains() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(dropout=0.0)  # per-sample and batch gradients must agree exactly
    model = SemioNet(cfg)
    reference = SemioNet(cfg)
    reference.load_state_dict(model.state_dict())
    batch = random_batch(b=3, seed=1)
    batch["m_left_hand"][1] = 0
    gsm = GradSampleModule(model, loss_reduction="sum")
    loss_of(gsm(batch), batch, "sum").backward()
    loss_of(reference(batch), batch, "sum").backward()
    ref_params = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        assert p.grad_sample is not None, name
        assert p.grad_sample.shape == (3, *p.shape), name
        torch.testing.assert_close(
            p.grad_sample.sum(0), ref_params[name].grad, rtol=1e-4, atol=1e-5
        )

    # one clipped, noised DP-SGD step through Opacus' optimizer changes the weights
    from opacus.optimizers import DPOptimizer

    opt = DPOptimizer(
        torch.optim.SGD(gsm.parameters(), lr=0.1),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=3,
        loss_reduction="sum",
    )
    opt.zero_grad(set_to_none=True)
    before = [p.detach().clone() for p in model.parameters()]
    loss_of(gsm(batch), batch, "sum").backward()
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    for p in model.parameters():
        assert torch.isfinite(p).all()


def test_architecture_hash_and_device() -> None:
    h = architecture_hash(ModelConfig())
    assert len(h) == 64 and h == architecture_hash(ModelConfig())
    assert h != architecture_hash(ModelConfig(embed_dim=32))
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(SemioFedError, match="device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(SemioFedError, match="CUDA"):
            resolve_device("cuda")


def test_smaller_config_and_dataset_batch_run() -> None:
    from semiofed.shared.dataset import WindowDataset, collate
    from tests.shared.test_dataset import _patients

    cfg = ModelConfig(channels=(8, 16), strides=(3, 3), embed_dim=16, groups=4)
    model = SemioNet(cfg)
    assert count_parameters(model) < count_parameters(SemioNet())
    ds = WindowDataset(_patients(n_sites=1, per_site=2, windows=3), augment=True)
    out = model(collate([ds[i] for i in range(len(ds))]))
    assert out["detect_logit"].shape == (6,) and out["fused"].shape == (6, 16)
