"""Explanations of one window's seizure probability, and a check that they are faithful.

Baseline ("absent" input) everywhere is a *physiological* one, not zeros: the patient's own
neutral resting pose — per node, the median over time of the feature tensors of the
recording's resting windows (lowest seizure probability), held still for the whole window,
with the window's own presence masks (see :func:`resting_baseline`). Zeros would be a
patient collapsed onto their mid-shoulder point, far outside the data.

* **Per-stream contribution**: exact Shapley values of the detection probability over the
  five streams (all 2⁵ = 32 coalitions in one batch); a stream outside a coalition is
  replaced by its baseline. They sum to p(window) − p(baseline).
* **Per-joint and per-time attributions**: Captum ``IntegratedGradients`` of the detection
  logit from the baseline to the window (``n_steps`` Riemann steps), summed over
  channels, then over time (per joint) or over joints (per time).
* **Deletion curves**: joints (a joint = one node of one stream, its whole trajectory in the
  window) or frames are replaced by the baseline in order of decreasing attribution, and
  in random order (mean of ``n_random`` permutations); the probability after each step is
  recorded. A faithful attribution drops the probability faster: lower area under the
  top-first curve than under the random one.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from captum.attr import IntegratedGradients
from torch import nn

from ..features import FACE_NAMES, STREAM_NAMES
from ..skeleton import POSE_NAMES, REGION_NAMES

DELETION_FRACTIONS: tuple[float, ...] = tuple(round(f, 2) for f in np.linspace(0.0, 0.5, 11))
JOINT_NAMES: dict[str, tuple[str, ...]] = {
    "face": FACE_NAMES,
    "body": POSE_NAMES,
    "left_hand": tuple(f"left_hand_{i}" for i in range(21)),
    "right_hand": tuple(f"right_hand_{i}" for i in range(21)),
    "motion": REGION_NAMES,
}


def resting_baseline(
    windows_x: dict[str, np.ndarray],
    windows_mask: dict[str, np.ndarray],
    rest: np.ndarray,
    fallback: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Per stream the neutral pose (V, C): median over the present frames of the resting
    windows ``rest`` (indices), or of ``fallback`` (one window (T, V, C)) when none is present."""
    out = {}
    for s in STREAM_NAMES:
        x = np.asarray(windows_x[s][rest]) if len(rest) else np.zeros((0, *fallback[s].shape))
        m = np.asarray(windows_mask[s][rest]) > 0 if len(rest) else np.zeros((0, 1), bool)
        frames = x[m] if m.any() else fallback[s]
        out[s] = np.median(frames, axis=0).astype(np.float32)
    return out


def _batch(
    window: dict[str, torch.Tensor], neutral: dict[str, torch.Tensor], keep: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Batch where ``keep[s]`` (B, T, V) chooses the window (1) or the neutral pose (0) per cell."""
    b = next(iter(keep.values())).shape[0]
    out = {}
    for s in STREAM_NAMES:
        x, base = window[f"x_{s}"], neutral[s].expand_as(window[f"x_{s}"])
        k = keep[s].unsqueeze(-1)
        out[f"x_{s}"] = k * x + (1 - k) * base
        out[f"m_{s}"] = window[f"m_{s}"].expand(b, -1)
    return out


@torch.no_grad()
def _prob(
    model: nn.Module, batch: dict[str, torch.Tensor], target: int | None = None
) -> np.ndarray:
    """Detection probability, or with ``target`` the type head's probability of that class."""
    out = model(batch)
    p = (
        torch.sigmoid(out["detect_logit"])
        if target is None
        else torch.softmax(out["type_logits"], dim=-1)[:, target]
    )
    return p.cpu().numpy().astype(np.float64)


def shapley_streams(
    model: nn.Module,
    window: dict[str, torch.Tensor],
    neutral: dict[str, torch.Tensor],
    target: int | None = None,
) -> dict:
    """Exact Shapley values of the detection probability (with ``target``: of that class's
    type probability) over the streams."""
    n = len(STREAM_NAMES)
    coalitions = list(itertools.product((0, 1), repeat=n))
    shape = {s: window[f"x_{s}"].shape[1:3] for s in STREAM_NAMES}
    keep = {
        s: torch.stack([torch.full(shape[s], float(c[i])) for c in coalitions]).to(
            window[f"x_{s}"].device
        )
        for i, s in enumerate(STREAM_NAMES)
    }
    value = dict(zip(coalitions, _prob(model, _batch(window, neutral, keep), target), strict=True))
    phi = {}
    for i, s in enumerate(STREAM_NAMES):
        total = 0.0
        for c in coalitions:
            if c[i]:
                continue
            with_i = (*c[:i], 1, *c[i + 1 :])
            k = sum(c)
            w = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
            total += w * (value[with_i] - value[c])
        phi[s] = round(float(total), 5)
    return {
        "values": phi,
        "baseline_probability": round(float(value[(0,) * n]), 5),
        "full_probability": round(float(value[(1,) * n]), 5),
    }


def integrated_gradients(
    model: nn.Module,
    window: dict[str, torch.Tensor],
    neutral: dict[str, torch.Tensor],
    n_steps: int = 32,
    target: int | None = None,
) -> dict[str, np.ndarray]:
    """IG of the detection logit (with ``target``: of that class's type logit) per stream,
    summed over channels: {stream: (T, V)}."""
    masks = tuple(window[f"m_{s}"] for s in STREAM_NAMES)

    def forward(*xs: torch.Tensor) -> torch.Tensor:
        b = xs[0].shape[0]
        batch = {f"x_{s}": x for s, x in zip(STREAM_NAMES, xs, strict=True)}
        batch.update({f"m_{s}": m.expand(b, -1) for s, m in zip(STREAM_NAMES, masks, strict=True)})
        out = model(batch)
        return out["detect_logit"] if target is None else out["type_logits"][:, target]

    inputs = tuple(window[f"x_{s}"].detach().clone().requires_grad_(True) for s in STREAM_NAMES)
    baselines = tuple(neutral[s].expand_as(window[f"x_{s}"]).contiguous() for s in STREAM_NAMES)
    ig = IntegratedGradients(forward)
    attr = ig.attribute(inputs, baselines=baselines, n_steps=n_steps, internal_batch_size=n_steps)
    return {
        s: a[0].sum(-1).detach().cpu().numpy().astype(np.float64)
        for s, a in zip(STREAM_NAMES, attr, strict=True)
    }


def _auc(y: np.ndarray) -> float:
    x = np.asarray(DELETION_FRACTIONS)
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2 / (x[-1] - x[0]))


def deletion_curves(
    model: nn.Module,
    window: dict[str, torch.Tensor],
    neutral: dict[str, torch.Tensor],
    attributions: dict[str, np.ndarray],
    unit: str = "joint",
    n_random: int = 8,
    seed: int = 0,
) -> dict:
    """Probability as units (``joint`` or ``frame``) are replaced by the baseline, top-first and random."""
    present = {s: window[f"m_{s}"][0].cpu().numpy() > 0 for s in STREAM_NAMES}
    units: list[tuple[str, int]] = []
    scores: list[float] = []
    for s in STREAM_NAMES:
        a = attributions[s]
        if not present[s].any():
            continue
        if unit == "joint":
            for v in range(a.shape[1]):
                units.append((s, v))
                scores.append(float(a[present[s], v].sum()))
        elif unit == "frame":
            for t in np.flatnonzero(present[s]):
                units.append((s, int(t)))
                scores.append(float(a[t].sum()))
        else:
            raise ValueError(f"unit must be 'joint' or 'frame', got {unit!r}")
    rng = np.random.default_rng(seed)
    orders = [np.argsort(-np.asarray(scores), kind="stable")]
    orders += [rng.permutation(len(units)) for _ in range(n_random)]
    shape = {s: window[f"x_{s}"].shape[1:3] for s in STREAM_NAMES}
    keeps: dict[str, list[torch.Tensor]] = {s: [] for s in STREAM_NAMES}
    for order in orders:
        for frac in DELETION_FRACTIONS:
            k = {s: torch.ones(shape[s]) for s in STREAM_NAMES}
            for idx in order[: round(frac * len(units))]:
                s, j = units[idx]
                if unit == "joint":
                    k[s][:, j] = 0.0
                else:
                    k[s][j, :] = 0.0
            for s in STREAM_NAMES:
                keeps[s].append(k[s])
    dev = window["x_body"].device
    keep = {s: torch.stack(v).to(dev) for s, v in keeps.items()}
    probs = _prob(model, _batch(window, neutral, keep)).reshape(len(orders), -1)
    top, rand = probs[0], probs[1:].mean(0)
    return {
        "unit": unit,
        "fractions": list(DELETION_FRACTIONS),
        "top": [round(float(p), 5) for p in top],
        "random": [round(float(p), 5) for p in rand],
        "top_auc": round(_auc(top), 5),
        "random_auc": round(_auc(rand), 5),
        "n_units": len(units),
    }


def explain_window(
    model: nn.Module,
    window: dict[str, torch.Tensor],
    neutral_np: dict[str, np.ndarray],
    window_s: float,
    n_steps: int = 32,
    seed: int = 0,
) -> dict:
    """Shapley per stream, IG per joint and time, and deletion curves for one window (batch of 1)."""
    was_training = model.training
    model.eval()
    dev = window["x_body"].device
    neutral = {s: torch.as_tensor(neutral_np[s], device=dev)[None, None] for s in STREAM_NAMES}
    try:
        shap = shapley_streams(model, window, neutral)
        attr = integrated_gradients(model, window, neutral, n_steps)
        deletion = deletion_curves(model, window, neutral, attr, "joint", seed=seed)
        deletion_frames = deletion_curves(model, window, neutral, attr, "frame", seed=seed)
    finally:
        model.train(was_training)
    per_joint = {s: attr[s].sum(0) for s in STREAM_NAMES}
    ranked = sorted(
        ((s, v, float(per_joint[s][v])) for s in STREAM_NAMES for v in range(len(per_joint[s]))),
        key=lambda r: -r[2],
    )
    per_time = sum(attr[s].sum(1) for s in STREAM_NAMES)
    n_t = len(per_time)
    return {
        "shapley": shap,
        "integrated_gradients": {
            "n_steps": n_steps,
            "per_stream_total": {s: round(float(attr[s].sum()), 5) for s in STREAM_NAMES},
            "body_joints": {str(v): round(float(x), 5) for v, x in enumerate(per_joint["body"])},
            "top_joints": [
                {"stream": s, "joint": JOINT_NAMES[s][v], "value": round(x, 5)}
                for s, v, x in ranked[:8]
            ],
            "per_time": {
                "t_s": [round(i * window_s / n_t, 3) for i in range(n_t)],
                "values": [round(float(x), 5) for x in per_time],
            },
        },
        "deletion": deletion,
        "deletion_frames": deletion_frames,
    }
