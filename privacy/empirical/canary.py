"""A lower bound on ε from ONE training run with canaries (Steinke, Nasr, Jagielski 2023,
"Privacy Auditing with One (1) Training Run", NeurIPS 2023).

``m`` canaries (random windows with random labels) are each included in the training set
independently with probability ½. After training, the auditor ranks canaries by loss and
guesses "included" for the ``k`` lowest-loss and "excluded" for the ``k`` highest-loss
canaries, abstaining on the rest (``k`` is fixed before training). If training is
(ε, δ)-DP, the number of correct guesses ``v`` out of ``r = 2k`` is at most what
randomized response with accuracy ``e^ε/(1+e^ε)`` would give, up to a δ term (their
Theorem 5.2 and Algorithm 2; implemented in :func:`p_value` and :func:`epsilon_lower_bound`).
The audit reports the largest ε rejected at confidence ``1 − p``: a valid lower bound on the
ε of the training run, which must not exceed the ε the accountant claims.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy import stats

from .data import N_CLASSES, synthetic_windows
from .training import TrainConfig, per_example_loss, train


def p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """P[≥ v correct of r guesses] under (ε, δ)-DP, with m canaries (Steinke et al., Alg. 2)."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    q = 1.0 / (1.0 + math.exp(-eps))  # accuracy of ε-DP randomized response
    beta = float(stats.binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    # tail[i-1] = P[v > Binomial(r, q) >= v - i] for i = 1..v; alpha = max_i tail / i
    tail = np.cumsum(stats.binom.pmf(np.arange(v - 1, -1, -1), r, q))
    alpha = float(np.max(tail / np.arange(1, v + 1))) if v else 0.0
    return min(1.0, beta + alpha * delta * 2 * m)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, p: float = 0.05) -> float:
    """Largest ε whose p-value for ``v`` correct of ``r`` is still below ``p`` (0 if none)."""
    if p_value(m, r, v, 0.0, delta) >= p:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(m, r, v, hi, delta) < p:
        lo, hi = hi, hi * 2
    for _ in range(40):
        mid = (lo + hi) / 2
        if p_value(m, r, v, mid, delta) < p:
            lo = mid
        else:
            hi = mid
    return lo


def canary_set(m: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random unit-variance windows with random labels: unlike any real window."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(m, dim)).astype(np.float32)
    return x, rng.integers(0, N_CLASSES, size=m).astype(np.int64)


def guess_and_bound(
    score: np.ndarray,
    included: np.ndarray,
    guesses: int,
    delta: float,
    confidence: float,
    claimed: float | None,
) -> dict[str, Any]:
    """Guess "included" for the ``guesses/2`` highest scores and "excluded" for the lowest;
    the counts, the ε lower bound at ``confidence`` and whether it stays below ``claimed``."""
    order = np.argsort(score)
    k = guesses // 2
    correct = int(included[order[-k:]].sum() + (~included[order[:k]]).sum())
    bound = epsilon_lower_bound(len(score), guesses, correct, delta, 1.0 - confidence)
    return {
        "canaries": len(score),
        "canaries_included": int(included.sum()),
        "guesses": guesses,
        "correct": correct,
        "confidence": confidence,
        "epsilon_lower_bound": bound,
        "bound_below_claim": None if claimed is None else bound <= claimed,
    }


def run_canary_audit(
    cfg: TrainConfig,
    n_train: int = 1000,
    canaries: int = 1000,
    guesses: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
    data_noise: float = 2.0,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Train once on real windows plus a random half of the canaries; bound ε from below."""
    if guesses % 2 or guesses > canaries:
        raise ValueError("guesses must be even and at most the number of canaries")
    x, y = synthetic_windows(n_train, seed=seed, noise=data_noise)
    cx, cy = canary_set(canaries, x.shape[1], seed + 7)
    rng = np.random.default_rng(seed + 11)
    included = rng.random(canaries) < 0.5
    train_x = np.concatenate([x, cx[included]])
    train_y = np.concatenate([y, cy[included]])
    trained = train(train_x, train_y, N_CLASSES, cfg, seed=seed, device=device)
    score = -per_example_loss(trained.model, cx, cy)  # higher = more likely included
    return {
        "attack": "canary_one_run",
        "private": cfg.private,
        "claimed_epsilon": trained.epsilon,
        "delta": cfg.delta,
        "noise_multiplier": cfg.noise_multiplier,
        "max_grad_norm": cfg.max_grad_norm if cfg.private else None,
        "sample_rate": trained.sample_rate,
        "steps": trained.steps,
        "n_train": n_train,
        **guess_and_bound(score, included, guesses, cfg.delta, confidence, trained.epsilon),
    }
