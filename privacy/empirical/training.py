"""Small models trained with or without DP-SGD (Opacus) for the empirical audits."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from semiofed.shared.run_config import DEFAULT_DELTA

from ..accounting import epsilon


def mlp(in_dim: int, n_classes: int, hidden: int = 128) -> nn.Sequential:
    """Two-layer ReLU MLP; the first layer has a bias (the inversion probe relies on it)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))


@dataclass(frozen=True)
class TrainConfig:
    """``noise_multiplier=None`` trains without DP. ``epochs`` are passes over the data."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    noise_multiplier: float | None = None
    max_grad_norm: float = 1.0
    delta: float = DEFAULT_DELTA
    hidden: int = 128

    @property
    def private(self) -> bool:
        return self.noise_multiplier is not None


@dataclass
class Trained:
    model: nn.Module
    epsilon: float | None  # None for a non-DP model
    delta: float
    sample_rate: float
    steps: int


def train(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    cfg: TrainConfig,
    seed: int,
    device: torch.device | None = None,
) -> Trained:
    """Train an MLP on ``(x, y)``; DP-SGD with Poisson sampling when ``cfg.private``."""
    device = device or torch.device("cpu")
    torch.manual_seed(seed)
    model = mlp(x.shape[1], n_classes, cfg.hidden).to(device)
    data = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True, generator=gen)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sample_rate = min(1.0, cfg.batch_size / len(data))
    engine = None
    if cfg.private:
        engine = PrivacyEngine(accountant="rdp", secure_mode=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, optimizer, loader = engine.make_private(
                module=model,
                optimizer=optimizer,
                data_loader=loader,
                noise_multiplier=cfg.noise_multiplier,
                max_grad_norm=cfg.max_grad_norm,
                poisson_sampling=True,
            )
    loss_fn = nn.CrossEntropyLoss()
    steps = 0
    model.train()
    for _ in range(cfg.epochs):
        for xb, yb in loader:
            optimizer.zero_grad()
            loss_fn(model(xb.to(device)), yb.to(device)).backward()
            optimizer.step()
            steps += 1
    model.eval()
    eps = None
    if engine is not None:
        # the same accountant code path as the site's ledger (semiofed.privacy.accounting)
        eps = epsilon(engine.accountant.history, cfg.delta, "rdp")
        model = model._module
    return Trained(model, eps, cfg.delta, sample_rate, steps)


@torch.no_grad()
def per_example_loss(model: nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    device = next(model.parameters()).device
    logits = model(torch.from_numpy(x).to(device))
    return (
        nn.functional.cross_entropy(logits, torch.from_numpy(y).to(device), reduction="none")
        .cpu()
        .numpy()
    )


@torch.no_grad()
def logit_confidence(model: nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """LiRA's per-example statistic: ``log p_y − log(1 − p_y)`` (numerically stable)."""
    device = next(model.parameters()).device
    logits = model(torch.from_numpy(x).to(device)).double()
    yt = torch.from_numpy(y).to(device)
    correct = logits.gather(1, yt[:, None]).squeeze(1)
    others = logits.clone()
    others.scatter_(1, yt[:, None], float("-inf"))
    return (correct - torch.logsumexp(others, dim=1)).cpu().numpy()
