"""Patient-level DP-SGD: Poisson sampling over patients, one clipped gradient per patient per step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator

from semiofed.client.dp_training import TrainConfig, train_local
from semiofed.privacy.accounting import epsilon
from semiofed.shared.dataset import STREAM_NAMES, PatientWindows
from semiofed.shared.features import STREAM_SHAPES
from semiofed.shared.model import ModelConfig, SemioNet

TINY = ModelConfig(
    channels=(8, 8),
    strides=(2, 2),
    motion_channels=(8,),
    motion_strides=(2,),
    embed_dim=16,
    temporal_kernel=3,
)


def tiny_patients(
    n: int, windows: int = 12, frames: int = 16, seed: int = 0
) -> list[PatientWindows]:
    """Random patients; windows 4..7 are a clonic event with a rhythmic signal."""
    rng = np.random.default_rng(seed)
    out = []
    for p in range(n):
        y = np.zeros(windows, np.int64)
        y[4:8] = 1
        x = {}
        for s in STREAM_NAMES:
            v, c = STREAM_SHAPES[s]
            a = rng.normal(0, 0.1, (windows, frames, v, c)).astype(np.float32)
            a[y == 1] += (
                0.5 * np.sin(1.5 * np.arange(frames, dtype=np.float32))[None, :, None, None]
            )
            x[s] = a
        mask = {s: np.ones((windows, frames), np.float32) for s in STREAM_NAMES}
        lat = np.where(y == 1, "left", "n/a")
        t0 = np.arange(windows, dtype=float)
        rec = np.full(windows, "rec-1")
        out.append(
            PatientWindows(
                "site-01", f"sub-{p:02d}", x, mask, y, np.where(y == 1, 2, 0), lat, t0, rec
            )
        )
    return out


@pytest.mark.parametrize("windows_per_patient", [1, 3])
def test_one_clipped_gradient_per_patient_per_step(windows_per_patient: int) -> None:
    torch.manual_seed(0)
    model = SemioNet(TINY)
    assert ModuleValidator.validate(model, strict=False) == []
    patients = tiny_patients(10)
    clip = 0.5
    batches: list[list[int]] = []
    checks: list[float] = []

    def on_step(batch: dict[str, torch.Tensor], gsm: torch.nn.Module, optimizer: object) -> None:
        owners = batch["patient_idx"].tolist()
        distinct = list(dict.fromkeys(owners))
        batches.append(distinct)
        # each sampled patient brings exactly `windows_per_patient` windows …
        assert all(owners.count(p) == windows_per_patient for p in distinct)
        params = [p for p in gsm.parameters() if p.requires_grad]
        # … and ONE per-sample gradient row (their windows' gradients summed before clipping)
        assert all(p.grad_sample.shape[0] == len(distinct) for p in params)
        flat = torch.cat([p.grad_sample.reshape(len(distinct), -1) for p in params], dim=1)
        norms = flat.norm(dim=1)
        factors = (clip / (norms + 1e-6)).clamp(max=1.0)
        assert torch.all((norms * factors) <= clip + 1e-5)
        expected = [
            torch.einsum("i,i...->...", factors, p.grad_sample.detach().clone()) for p in params
        ]

        def after_clipping(opt: object) -> None:  # Opacus' clipped sum is exactly Σ clip(g_patient)
            for p, e in zip(params, expected, strict=True):
                torch.testing.assert_close(p.summed_grad, e, rtol=1e-4, atol=1e-6)
            checks.append(1.0)
            opt.step_hook = None  # a following empty Poisson batch has nothing to check

        optimizer.attach_step_hook(after_clipping)

    cfg = TrainConfig(
        epochs=6,
        batch_size=4,
        windows_per_patient=windows_per_patient,
        noise_multiplier=1.0,
        max_grad_norm=clip,
        device="cpu",
        augment=False,
    )
    result = train_local(model, patients, cfg, ledger=None, progress=False, step_callback=on_step)
    assert result.sample_rate == pytest.approx(0.4) and result.steps == 6 * 2
    assert len(checks) == len([b for b in batches if b])  # checked on every non-empty step
    sizes = [len(b) for b in batches]
    assert len(set(sizes)) > 1, "Poisson sampling gives variable batch sizes"
    assert all(len(set(b)) == len(b) for b in batches)
    assert result.epsilon_run == pytest.approx(epsilon([(1.0, 0.4, 12)], 1e-5, "rdp"))
    # the trained model is a plain module again (no Opacus hooks left behind)
    assert not any(
        hasattr(p, "grad_sample") and p.grad_sample is not None for p in model.parameters()
    )


def test_window_level_is_per_window_and_no_dp_runs() -> None:
    torch.manual_seed(0)
    patients = tiny_patients(3)
    rows: list[tuple[int, int]] = []

    def on_step(batch: dict[str, torch.Tensor], gsm: torch.nn.Module, optimizer: object) -> None:
        p = next(p for p in gsm.parameters() if p.requires_grad)
        rows.append((p.grad_sample.shape[0], len(batch["patient_idx"])))

    cfg = TrainConfig(epochs=1, privacy_unit="window", batch_size=6, device="cpu", augment=False)
    result = train_local(SemioNet(TINY), patients, cfg, progress=False, step_callback=on_step)
    assert result.sample_rate == pytest.approx(6 / 36) and result.privacy_unit == "window"
    assert rows and all(a == b for a, b in rows)  # one gradient per window
    plain = train_local(
        SemioNet(TINY), patients, TrainConfig(epochs=1, dp=False, device="cpu"), progress=False
    )
    assert not plain.dp and plain.epsilon_run is None and plain.steps > 0


def test_empty_poisson_batches_still_release_noise() -> None:
    torch.manual_seed(0)
    model = SemioNet(TINY)
    before = [p.detach().clone() for p in model.parameters()]
    sizes: list[int] = []
    cfg = TrainConfig(epochs=2, batch_size=1, device="cpu", augment=False, seed=1)  # q = 0.1
    result = train_local(
        model,
        tiny_patients(10),
        cfg,
        progress=False,
        step_callback=lambda b, g, o: sizes.append(len(b["patient_idx"])),
    )
    assert result.steps == 20 and len(sizes) < 20  # some steps sampled nobody …
    after = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(
        not torch.equal(a, b) for a, b in zip(after, before, strict=True)
    )  # … and still moved (noise)
