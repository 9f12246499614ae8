"""Membership inference against a model trained with or without DP-SGD.

Two attacks on the same target model, whose members are a random half of a data pool:

* **loss threshold** (Yeom et al. 2018): members have lower loss; score = −loss.
* **LiRA, online** (Carlini et al. 2022): shadow models are trained with the *same recipe*
  (DP or not) on other random halves of the pool; for each example the logit-scaled
  confidence is modelled as a Gaussian over shadows that saw it ("in") and that did not
  ("out", global variances); score = the log-likelihood ratio.

Reported per attack: AUC, TPR at 0.1 % and 1 % FPR. With ``n`` non-members the smallest
FPR that can be resolved is ``1/n``; a target below that is evaluated at FPR 0 (threshold
above every non-member score), and ``fpr_resolution`` is reported alongside.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .data import N_CLASSES, synthetic_windows
from .training import TrainConfig, logit_confidence, per_example_loss, train

FPR_TARGETS = (0.001, 0.01)


def auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """Area under the ROC curve (probability a member outscores a non-member; ties ½)."""
    scores = np.concatenate([member_scores, nonmember_scores])
    ranks = np.empty(len(scores))
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    # average ranks for ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0
    ranks[order] = np.repeat(avg, counts) + 1
    n_in, n_out = len(member_scores), len(nonmember_scores)
    return float((ranks[:n_in].sum() - n_in * (n_in + 1) / 2) / (n_in * n_out))


def tpr_at_fpr(member_scores: np.ndarray, nonmember_scores: np.ndarray, fpr: float) -> float:
    """TPR at the threshold letting at most ``floor(fpr·n_out)`` non-members through."""
    allowed = int(np.floor(fpr * len(nonmember_scores)))
    ordered = np.sort(nonmember_scores)[::-1]
    threshold = ordered[allowed] if allowed < len(ordered) else -np.inf
    return float(np.mean(member_scores > threshold))


def roc_summary(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> dict[str, float]:
    out = {"auc": auc(member_scores, nonmember_scores)}
    for f in FPR_TARGETS:
        out[f"tpr_at_{f:g}_fpr"] = tpr_at_fpr(member_scores, nonmember_scores, f)
    out["fpr_resolution"] = 1.0 / len(nonmember_scores)
    return out


def lira_scores(
    target_stat: np.ndarray, shadow_stats: np.ndarray, shadow_masks: np.ndarray
) -> np.ndarray:
    """Online LiRA log-likelihood ratio per example (global in/out variances)."""
    in_count = shadow_masks.sum(0)
    out_count = (~shadow_masks).sum(0)
    mu_in = np.where(shadow_masks, shadow_stats, 0).sum(0) / np.maximum(in_count, 1)
    mu_out = np.where(~shadow_masks, shadow_stats, 0).sum(0) / np.maximum(out_count, 1)
    dev_in = np.where(shadow_masks, shadow_stats - mu_in, 0)
    dev_out = np.where(~shadow_masks, shadow_stats - mu_out, 0)
    var_in = (dev_in**2).sum() / max(1, shadow_masks.sum()) + 1e-6
    var_out = (dev_out**2).sum() / max(1, (~shadow_masks).sum()) + 1e-6
    # an example no shadow saw in (or out) falls back to the other side's mean
    mu_in = np.where(in_count > 0, mu_in, mu_out)
    mu_out = np.where(out_count > 0, mu_out, mu_in)
    ll_in = -0.5 * (target_stat - mu_in) ** 2 / var_in - 0.5 * np.log(var_in)
    ll_out = -0.5 * (target_stat - mu_out) ** 2 / var_out - 0.5 * np.log(var_out)
    return ll_in - ll_out


def run_mia(
    cfg: TrainConfig,
    pool_size: int = 500,
    shadows: int = 8,
    seed: int = 0,
    data_noise: float = 2.0,
    device: torch.device | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train a target and ``shadows`` shadow models on random halves of a pool; attack."""
    x, y = synthetic_windows(pool_size, seed=seed, noise=data_noise)
    rng = np.random.default_rng(seed + 1)
    masks = np.zeros((shadows + 1, pool_size), dtype=bool)
    for m in masks:  # every model sees exactly half the pool
        m[rng.permutation(pool_size)[: pool_size // 2]] = True
    stats = np.zeros((shadows + 1, pool_size))
    target = None
    models = tqdm(range(shadows + 1), desc="MIA models", disable=not progress, leave=False)
    for k in models:
        trained = train(
            x[masks[k]], y[masks[k]], N_CLASSES, cfg, seed=seed * 1000 + k, device=device
        )
        stats[k] = logit_confidence(trained.model, x, y)
        if k == 0:
            target = trained
            losses = per_example_loss(trained.model, x, y)
    assert target is not None
    members = masks[0]
    loss_scores = -losses
    lira = lira_scores(stats[0], stats[1:], masks[1:])
    return {
        "attack": "membership_inference",
        "private": cfg.private,
        "epsilon": target.epsilon,
        "delta": cfg.delta if cfg.private else None,
        "noise_multiplier": cfg.noise_multiplier,
        "max_grad_norm": cfg.max_grad_norm if cfg.private else None,
        "sample_rate": target.sample_rate,
        "steps": target.steps,
        "pool_size": pool_size,
        "members": int(members.sum()),
        "shadow_models": shadows,
        "train_accuracy_gap": _accuracy_gap(target.model, x, y, members),
        "loss_threshold": roc_summary(loss_scores[members], loss_scores[~members]),
        "lira": roc_summary(lira[members], lira[~members]),
    }


@torch.no_grad()
def _accuracy_gap(
    model: torch.nn.Module, x: np.ndarray, y: np.ndarray, members: np.ndarray
) -> float:
    device = next(model.parameters()).device
    pred = model(torch.from_numpy(x).to(device)).argmax(1).cpu().numpy()
    correct = pred == y
    return float(correct[members].mean() - correct[~members].mean())
