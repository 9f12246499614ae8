"""Gradient-inversion probe: can the coordinator rebuild a keypoint window from an update?

Threat model (worst case for the site): one site's update is the gradient of a single
keypoint window through a model whose first layer is fully connected with a bias. For
such a layer ``∂L/∂W₁[j] = (∂L/∂b₁[j]) · x`` for every neuron ``j`` the window activates,
so ``x = ∂L/∂W₁[j] / ∂L/∂b₁[j]`` exactly (Phong et al. 2017; Fowl et al. 2022). The probe
runs this analytic attack on three things the server could see:

* **plain**: one site's raw update;
* **DP**: the same window's DP-SGD update from Opacus (per-example clipping to ``C`` and
  Gaussian noise ``σ·C``);
* **SecAgg+**: the sum of ``sites`` sites' raw updates (the server only sees the sum).

The attacker picks the neuron with the largest ``|∂L/∂b₁[j]|``. The error reported is the
relative L2 error ``‖x̂ − x‖ / ‖x‖`` against the closest true window (for SecAgg+: the
closest of all summed sites' windows), median over ``trials`` windows; 0 means exact
reconstruction, ≈1 or more means nothing useful was recovered. ``oracle`` errors use the
best neuron in hindsight (an upper bound on what this attack family can reach).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from .data import N_CLASSES, synthetic_windows, window_shape
from .training import mlp


def _raw_update(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad()
    nn.functional.cross_entropy(model(x[None]), y[None]).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def _dp_update(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise_multiplier: float, clip: float
) -> list[torch.Tensor]:
    """One DP-SGD step on the single window, through Opacus; returns the released gradient."""
    gsm = GradSampleModule(model)
    opt = DPOptimizer(
        torch.optim.SGD(gsm.parameters(), lr=1.0),
        noise_multiplier=noise_multiplier,
        max_grad_norm=clip,
        expected_batch_size=1,
    )
    before = [p.detach().clone() for p in gsm.parameters()]
    opt.zero_grad()
    nn.functional.cross_entropy(gsm(x[None]), y[None]).backward()
    opt.step()
    update = [b - p.detach() for b, p in zip(before, gsm.parameters(), strict=True)]  # lr = 1
    with torch.no_grad():
        for b, p in zip(before, gsm.parameters(), strict=True):
            p.copy_(b)
    gsm._close()
    return update


def _candidates(update: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Per-neuron reconstructions ``∂W₁[j]/∂b₁[j]`` and the neurons' ``|∂b₁[j]|``."""
    g_w, g_b = update[0].numpy().astype(np.float64), update[1].numpy().astype(np.float64)
    safe = np.where(np.abs(g_b) > 0, g_b, np.inf)
    return g_w / safe[:, None], np.abs(g_b)


def _errors(update: list[torch.Tensor], truths: np.ndarray) -> tuple[float, float]:
    """(attacker's pick, oracle best neuron) relative errors against the closest truth."""
    cand, strength = _candidates(update)
    active = strength > 0
    if not active.any():
        return float("inf"), float("inf")
    norms = np.linalg.norm(truths, axis=1)
    rel = np.linalg.norm(cand[:, None, :] - truths[None], axis=2) / norms[None]  # (H, n_truth)
    best_per_neuron = rel.min(1)
    pick = int(np.argmax(strength))
    return float(best_per_neuron[pick]), float(best_per_neuron[active].min())


def run_inversion_probe(
    noise_multiplier: float = 1.0,
    max_grad_norm: float = 1.0,
    sites: int = 5,
    trials: int = 20,
    hidden: int = 128,
    seed: int = 0,
) -> dict[str, Any]:
    """Reconstruct windows from plain, DP and SecAgg+-summed single-window updates."""
    torch.manual_seed(seed)
    x, y = synthetic_windows(trials * sites, seed=seed + 3)
    model = mlp(x.shape[1], N_CLASSES, hidden)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    rows: dict[str, list[tuple[float, float]]] = {"plain": [], "dp": [], "secagg": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in range(trials):
            idx = list(range(t * sites, (t + 1) * sites))
            first = idx[0]
            plain = _raw_update(model, xt[first], yt[first])
            rows["plain"].append(_errors(plain, x[[first]]))
            dp = _dp_update(model, xt[first], yt[first], noise_multiplier, max_grad_norm)
            rows["dp"].append(_errors(dp, x[[first]]))
            summed = [torch.zeros_like(p) for p in plain]
            for i in idx:
                for acc, g in zip(summed, _raw_update(model, xt[i], yt[i]), strict=True):
                    acc += g
            rows["secagg"].append(_errors(summed, x[idx]))
    result: dict[str, Any] = {
        "attack": "gradient_inversion",
        "method": "analytic first-layer inversion (∂W₁[j]/∂b₁[j])",
        "window_shape": list(window_shape()),
        "trials": trials,
        "noise_multiplier": noise_multiplier,
        "max_grad_norm": max_grad_norm,
        "secagg_sites": sites,
    }
    for name, vals in rows.items():
        arr = np.array(vals)
        result[name] = {
            "relative_error_median": float(np.median(arr[:, 0])),
            "oracle_relative_error_median": float(np.median(arr[:, 1])),
            "exact_reconstructions": int(np.sum(arr[:, 0] < 1e-3)),
        }
    return result
