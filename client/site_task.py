"""What a site does for one federated round: train with patient-level DP through the site's
ledger, or evaluate on its held-out patients. Imported lazily by the ClientApp (torch); the
DP stack (Opacus) only when training, since every message runs in a fresh process."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from semiofed.shared.dataset import PatientWindows, load_patient_windows
from semiofed.shared.errors import SemioFedError
from semiofed.shared.model import SemioNet
from semiofed.shared.run_config import model_config
from semiofed.shared.splits import patient_split

from .analyze_cli import REVIEWED_DATA
from .evaluation import evaluate, predict

if TYPE_CHECKING:
    from semiofed.privacy.ledger import PrivacyLedger


@dataclass
class SiteData:
    train: list[PatientWindows]
    test: list[PatientWindows]
    val: list[PatientWindows] = field(default_factory=list)  # never trained on


def load_site(data_dir: Path, cfg: dict[str, Any], state_dir: Path | None = None) -> SiteData:
    """The site's patients cut by patient into train / validation / held-out test (fixed
    seed per run; validation patients are used by no round, only by the demo's comparison),
    with the reviewed events of ``state_dir`` (``STATE/review/data``) when there are any."""
    extra = [Path(state_dir) / REVIEWED_DATA] if state_dir is not None else []
    patients = load_patient_windows(Path(data_dir), extra_dirs=extra)
    if len(patients) < 2:
        raise SemioFedError(f"{data_dir}: {len(patients)} usable patients; at least 2 are needed")
    tr = cfg["training"]
    train, val, test = patient_split(
        patients, tr["val-fraction"], tr["test-fraction"], seed=cfg["federation"]["seed"]
    )
    return SiteData(train, test, val)


def build_model(cfg: dict[str, Any], arrays: list[np.ndarray] | None = None) -> SemioNet:
    torch.manual_seed(cfg["federation"]["seed"])
    model = SemioNet(model_config(cfg))
    if arrays is not None:
        set_arrays(model, arrays)
    return model


def get_arrays(model: torch.nn.Module) -> list[np.ndarray]:
    return [p.detach().cpu().numpy().copy() for p in model.parameters() if p.requires_grad]


def set_arrays(model: torch.nn.Module, arrays: list[np.ndarray]) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    if len(params) != len(arrays):
        raise SemioFedError(f"got {len(arrays)} arrays for a model with {len(params)} parameters")
    with torch.no_grad():
        for p, a in zip(params, arrays, strict=True):
            if tuple(a.shape) != tuple(p.shape):
                raise SemioFedError(
                    f"array of shape {a.shape} for a parameter of shape {tuple(p.shape)}"
                )
            p.copy_(torch.from_numpy(np.asarray(a, dtype=np.float32)))


def ensure_budget(ledger: PrivacyLedger, cfg: dict[str, Any]) -> None:
    """A fresh ledger gets the approved site budget; an existing budget is never raised."""
    priv = cfg["privacy"]
    if ledger.budget is None:
        ledger.set_budget(priv["site-budget"], priv["delta"], priv["accountant"])


def train_round(
    data: SiteData,
    cfg: dict[str, Any],
    arrays: list[np.ndarray],
    state_dir: Path,
    server_round: int,
    device: str = "auto",
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """One round of local DP training; raises ``BudgetExceeded`` before any step."""
    from semiofed.privacy.ledger import PrivacyLedger

    from .dp_training import TrainConfig, train_local

    model = build_model(cfg, arrays)
    ledger = PrivacyLedger(state_dir)
    ensure_budget(ledger, cfg)
    tr, priv = cfg["training"], cfg["privacy"]
    tcfg = TrainConfig(
        epochs=tr["local-epochs"],
        dp=True,
        privacy_unit=priv["unit"],
        batch_size=tr["batch-size"],
        noise_multiplier=priv["noise-multiplier"],
        max_grad_norm=priv["clip-norm"],
        delta=priv["delta"],
        accountant=priv["accountant"],
        lr=tr["learning-rate"],
        augment=False,
        device=device,
        seed=cfg["federation"]["seed"] * 1000 + server_round,
        purpose=f"federated round {server_round}",
    )
    res = train_local(model, data.train, tcfg, ledger=ledger, progress=False)
    loss = float(res.history[-1]["loss"]) if res.history else math.nan
    metrics = {
        "num-patients": len(data.train),
        "num-windows": int(sum(len(p) for p in data.train)),
        "train-loss": loss if math.isfinite(loss) else -1.0,
        "train-seconds": float(res.seconds),
        "epsilon": float(res.epsilon_total if res.epsilon_total is not None else math.inf),
        "epsilon-round": float(res.epsilon_run if res.epsilon_run is not None else math.inf),
        "delta": float(priv["delta"]),
        "privacy-unit": priv["unit"],
    }
    return get_arrays(model), metrics


def evaluate_round(
    data: SiteData, cfg: dict[str, Any], arrays: list[np.ndarray], device: str = "auto"
) -> tuple[float, dict[str, Any]]:
    """Detection BCE loss and window metrics of the global model on held-out patients."""
    model = build_model(cfg, arrays)
    return evaluate_patients(model, data.test, device)


#: What a fit reply adds about the global model it received (see :func:`evaluate_received`).
EVAL_PREFIX = "eval-"


def evaluate_received(
    data: SiteData, cfg: dict[str, Any], arrays: list[np.ndarray], device: str = "auto"
) -> dict[str, Any]:
    """Federated evaluation inside a train message: the global model the server just sent
    (the model after the previous round) on the held-out patients, as ``eval-*`` metrics.
    It spares the federation one message exchange per round; the final model is evaluated
    by a separate evaluate message."""
    loss, metrics = evaluate_round(data, cfg, arrays, device)
    return {f"{EVAL_PREFIX}loss": loss} | {f"{EVAL_PREFIX}{k}": v for k, v in metrics.items()}


def evaluate_patients(
    model: torch.nn.Module, patients: list[PatientWindows], device: str = "auto"
) -> tuple[float, dict[str, Any]]:
    prob = np.clip(predict(model, patients, device=device)["detect_prob"], 1e-7, 1 - 1e-7)
    y = np.concatenate([p.y_detect for p in patients]).astype(np.float64)
    loss = float(-np.mean(y * np.log(prob) + (1 - y) * np.log(1 - prob)))
    m = evaluate(model, patients, device=device, events=False)

    def num(key: str) -> float:
        v = m.get(key, math.nan)
        return float(v) if v is not None and math.isfinite(float(v)) else -1.0

    acc = float(np.mean((prob >= 0.5) == (y >= 0.5)))
    return loss, {
        "num-patients": len(patients),
        "num-windows": len(y),
        "macro-f1": num("macro_f1"),
        "auroc-seizure": num("auroc_seizure"),
        "detect-accuracy": acc,
    }
