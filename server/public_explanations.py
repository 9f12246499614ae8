"""Global explanations of a model on PUBLIC data, published in its model card.

``semiofed registry explain RUN_DIR --public-data DIR`` runs the model of ``RUN_DIR`` on the
public tuning patients (:func:`~semiofed.shared.public_data.tuning_patients`: simulator
data, no patient; it costs no ε) and writes ``RUN_DIR/explanations.json``, which the model
card carries (:func:`~.registry.cards.build_card`). Per class (background, every seizure type
the data shows, PNES), on up to ``per_class`` windows of that class drawn with a fixed seed:

* **per-stream contribution**: the mean exact Shapley value, over the five input streams, of
  the model's probability for that class (the type head's softmax; for background the
  detection probability's complement is not used: background rows explain the detection
  probability), each stream replaced by the patient's resting pose when absent from a
  coalition (the median pose over the quarter of its non-overlapping windows the model finds
  least seizure-like) (:func:`~semiofed.shared.analysis.explain.shapley_streams`);
* **body regions**: the share of the absolute integrated gradients of that class's logit
  that falls on each body region's landmarks and motion
  (:data:`~semiofed.shared.skeleton.REGIONS`), averaged over the windows.

What it is: how this model responds, on average, to simulated patients' windows of each
class. What it is not: a statement about any consortium patient, a causal account of the
disease, or evidence of accuracy (the card's metrics are that).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from semiofed.shared.analysis.explain import (
    integrated_gradients,
    resting_baseline,
    shapley_streams,
)
from semiofed.shared.dataset import PatientWindows
from semiofed.shared.features import STREAM_NAMES
from semiofed.shared.labels import CLASS_INDEX, CLASSES, IGNORE_INDEX
from semiofed.shared.model import predict_windows
from semiofed.shared.public_data import TUNING_SEED
from semiofed.shared.skeleton import REGION_NAMES, REGIONS

from .registry.cards import EXPLANATIONS_FILE, EXPLANATIONS_FORMAT

PER_CLASS = 12
IG_STEPS = 16
#: The resting pose is taken from every REST_STRIDE-th window (at the public windows' 5 s
#: length and 1 s hop: windows that do not overlap, so together they cover the recording).
REST_STRIDE = 5
WHAT_IT_IS = (
    "How this model responds, on average, to windows of each class of simulated (public) "
    "patients: mean Shapley contribution of each input stream to the class probability, and "
    "the share of integrated gradients on each body region."
)
WHAT_IT_IS_NOT = (
    "Not a statement about any consortium patient, not a causal account of semiology, not "
    "evidence of accuracy (see the card's metrics)."
)


def _region_shares(attr: dict[str, np.ndarray]) -> np.ndarray:
    """Share of |IG| per body region (REGION_NAMES order) of one window's attributions."""
    a = {s: np.abs(attr[s]).sum(0) for s in STREAM_NAMES}  # per node
    totals = np.zeros(len(REGION_NAMES))
    for r, name in enumerate(REGION_NAMES):
        kinds = {kind for kind, _ in REGIONS[name]}
        totals[r] = a["motion"][r]
        totals[r] += sum(a["body"][i] for kind, i in REGIONS[name] if kind == "pose")
        totals[r] += sum(a[k].sum() for k in ("face", "left_hand", "right_hand") if k in kinds)
    total = totals.sum()
    return totals / total if total > 0 else totals


def explain_public(
    model: nn.Module, patients: list[PatientWindows], per_class: int = PER_CLASS, seed: int = 0
) -> dict[str, Any]:
    """Per-class stream contributions and body-region shares of ``model`` on ``patients``."""
    model.eval()
    rng = np.random.default_rng(seed)
    neutral: list[dict[str, torch.Tensor]] = []
    pool: dict[int, list[tuple[int, int]]] = {}
    for k, pw in enumerate(patients):
        spaced = np.arange(0, len(pw), REST_STRIDE)
        x = {s: pw.x[s][spaced] for s in STREAM_NAMES}
        prob = predict_windows(model, x, {s: pw.mask[s][spaced] for s in STREAM_NAMES})
        rest = spaced[np.argsort(prob["detect_prob"], kind="stable")[: max(1, len(spaced) // 4)]]
        fallback = {s: np.asarray(pw.x[s][int(rest[0])]) for s in STREAM_NAMES}
        base = resting_baseline(pw.x, pw.mask, rest, fallback)
        neutral.append({s: torch.as_tensor(base[s])[None, None] for s in STREAM_NAMES})
        for i in range(len(pw)):
            c = CLASS_INDEX["bckg"] if not pw.y_detect[i] else int(pw.y_type[i])
            if c != IGNORE_INDEX:
                pool.setdefault(c, []).append((k, i))
    classes: dict[str, Any] = {}
    for c in sorted(pool):
        picks = [pool[c][int(j)] for j in rng.permutation(len(pool[c]))[:per_class]]
        target = None if CLASSES[c] == "bckg" else c
        phi, shares = [], []
        for k, i in picks:
            pw = patients[k]
            window = {f"x_{s}": torch.as_tensor(np.array(pw.x[s][i : i + 1])) for s in STREAM_NAMES}
            window.update(
                {f"m_{s}": torch.as_tensor(np.array(pw.mask[s][i : i + 1])) for s in STREAM_NAMES}
            )
            shap = shapley_streams(model, window, neutral[k], target)["values"]
            phi.append([shap[s] for s in STREAM_NAMES])
            shares.append(
                _region_shares(integrated_gradients(model, window, neutral[k], IG_STEPS, target))
            )
        mean_phi, mean_share = np.mean(phi, axis=0), np.mean(shares, axis=0)
        classes[CLASSES[c]] = {
            "windows": len(picks),
            "explains": "detection probability" if target is None else "type probability",
            "stream_contributions": {
                s: round(float(v), 4) for s, v in zip(STREAM_NAMES, mean_phi, strict=True)
            },
            # share of the explained windows' frames where each stream is present: a stream
            # the data lacks (the simulator makes no video, so no optical flow) contributes 0
            "stream_presence": {
                s: round(float(np.mean([patients[k].mask[s][i].mean() for k, i in picks])), 4)
                for s in STREAM_NAMES
            },
            "region_shares": {
                r: round(float(v), 4) for r, v in zip(REGION_NAMES, mean_share, strict=True)
            },
        }
    return {
        "format": EXPLANATIONS_FORMAT,
        "data": f"public: SemioFed motion simulator, seed {TUNING_SEED} (no patient data)",
        "patients": len(patients),
        "method": {
            "streams": "exact Shapley values over the input streams, resting-pose baseline",
            "baseline": f"median pose of the quarter of every {REST_STRIDE}th window with the "
            "lowest detection probability",
            "regions": f"share of |integrated gradients| ({IG_STEPS} steps) per body region",
            "windows_per_class": per_class,
            "seed": seed,
        },
        "what_it_is": WHAT_IT_IS,
        "what_it_is_not": WHAT_IT_IS_NOT,
        "classes": classes,
    }


def write_explanations(run_dir: Path, public_data: Path) -> Path:
    """Explain the model of ``run_dir`` on the public tuning patients under ``public_data``
    (generated there unless present); writes ``RUN_DIR/explanations.json`` atomically."""
    from semiofed.shared.atomic import atomic_write_json
    from semiofed.shared.errors import SemioFedError
    from semiofed.shared.model_folder import load_model_folder
    from semiofed.shared.public_data import tuning_patients
    from semiofed.shared.windows import WindowConfig

    model, wcfg, _ = load_model_folder(run_dir, "cpu")
    if wcfg != WindowConfig():
        raise SemioFedError(
            f"{run_dir}: explanations need the public windows' settings {WindowConfig()}"
        )
    doc = explain_public(model, tuning_patients(Path(public_data)))
    path = Path(run_dir) / EXPLANATIONS_FILE
    atomic_write_json(path, doc)
    return path
