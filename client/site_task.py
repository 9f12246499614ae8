"""What a site does for one federated round: train with patient-level DP through the site's
ledger, and evaluate a received model on its held-out patients through the DP evaluation
table (:mod:`.dp_evaluation`, charged to the same ledger). Imported lazily by the ClientApp
(torch); the DP-SGD stack (Opacus) only when training, since every message runs in a fresh
process. The site's recordings are featurised once and then read from its feature cache
(:mod:`.feature_cache`, in the state folder); with frozen encoders so are the windows'
embeddings, and every step runs the trainable top only (same DP-SGD: same Poisson patient
sampling, same per-patient clipping over the same trainable parameters, same steps charged). What it returns is exactly what the release inventory allows
(:mod:`semiofed.shared.release`)."""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from semiofed.shared.dataset import PatientWindows, load_patient_windows
from semiofed.shared.errors import SemioFedError
from semiofed.shared.model import ModelConfig, SemioNet
from semiofed.shared.model_arrays import get_arrays, set_arrays
from semiofed.shared.release import DELTA, EPSILON_ROUND, PRIVACY_UNIT
from semiofed.shared.run_config import RunConfig
from semiofed.shared.splits import stable_patient_split

from .allowlist import ParamSpec, param_specs
from .analyze_cli import REVIEWED_DATA
from .evaluation import evaluate, predict
from .feature_cache import EmbeddingCache, embed_patients, site_features

if TYPE_CHECKING:
    from semiofed.privacy.ledger import PrivacyLedger


@dataclass
class SiteData:
    train: list[PatientWindows]
    test: list[PatientWindows]
    val: list[PatientWindows] = field(default_factory=list)  # never trained on


def load_site(data_dir: Path, cfg: RunConfig, state_dir: Path | None = None) -> SiteData:
    """The site's patients cut by patient into train / validation / held-out test (each
    patient's side fixed by the seed and the patient alone:
    :func:`~semiofed.shared.splits.stable_patient_split`; validation patients are used by no
    round, only by the demo's comparison), with the reviewed events of ``state_dir``
    (``STATE/review/data``) when there are any; with ``state_dir`` the per-frame features come
    from the site's feature cache there and, when the run's encoders are frozen, every
    window carries its embeddings from the site's embedding cache (:func:`embed_patients`):
    training, evaluation and calibration then run the trainable top only."""
    extra = [Path(state_dir) / REVIEWED_DATA] if state_dir is not None else []
    patients = load_patient_windows(
        Path(data_dir), cfg.window, extra_dirs=extra, features=site_features(state_dir)
    )
    if state_dir is not None and cfg.model_config.frozen:  # else no encoder is frozen
        patients = embed_patients(build_model(cfg), patients, EmbeddingCache(Path(state_dir)))
    if len(patients) < 2:
        raise SemioFedError(f"{data_dir}: {len(patients)} usable patients; at least 2 are needed")
    tr = cfg.training
    train, val, test = stable_patient_split(
        patients, tr.val_fraction, tr.test_fraction, seed=cfg.federation.seed
    )
    if not train:
        raise SemioFedError(f"{data_dir}: the split leaves no training patient")
    return SiteData(train, test, val)


def small_work_threads() -> None:
    """One torch thread: the trainable top's operations are too small to split, and on a
    busy machine idle threads spinning for work cost more CPU than the work (a demo
    reference fit: 3 s of CPU with one thread, 42 s with two at load 13)."""
    torch.set_num_threads(1)


def build_model(cfg: RunConfig, arrays: list[np.ndarray] | None = None) -> SemioNet:
    torch.manual_seed(cfg.federation.seed)
    model = SemioNet(cfg.model_config)
    if arrays is not None:
        set_arrays(model, arrays)
    return model


def model_specs(cfg: RunConfig) -> list[ParamSpec]:
    """The allowlisted parameters of the run's model (:func:`.allowlist.param_specs`),
    built once per model configuration in a process: they depend on it alone."""
    return list(_model_specs(cfg.model_config))


@functools.lru_cache(maxsize=8)
def _model_specs(mcfg: ModelConfig) -> tuple[ParamSpec, ...]:
    return tuple(param_specs(SemioNet(mcfg)))


def ensure_budget(ledger: PrivacyLedger, cfg: RunConfig) -> None:
    """The approved site budget caps the ledger's (never raises it). The ledger must exist
    and be sound (only the officer creates it): anything else is refused here."""
    priv = cfg.privacy
    if ledger.budget.epsilon_max > priv.site_budget:
        ledger.set_budget(priv.site_budget, priv.delta, priv.accountant)


def _model_and_ledger(
    cfg: RunConfig, arrays: list[np.ndarray], state_dir: Path
) -> tuple[SemioNet, PrivacyLedger]:
    """The received model and the site's ledger, checked against its trail and anchors."""
    from semiofed.privacy.ledger import PrivacyLedger

    ledger = PrivacyLedger(state_dir)
    ledger.check_history()
    ensure_budget(ledger, cfg)
    return build_model(cfg, arrays), ledger


def train_round(
    data: SiteData,
    cfg: RunConfig,
    arrays: list[np.ndarray],
    state_dir: Path,
    server_round: int,
    device: str = "auto",
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """One round of local DP training; raises ``BudgetExceeded`` before any step."""
    from .dp_training import TrainConfig, train_local

    small_work_threads()
    model, ledger = _model_and_ledger(cfg, arrays, state_dir)
    ledger.check_patients(p.patient for p in data.train)
    tr, priv = cfg.training, cfg.privacy
    tcfg = TrainConfig(
        epochs=tr.local_epochs,
        dp=True,
        privacy_unit=priv.unit,
        batch_size=tr.batch_size,
        noise_multiplier=priv.noise_multiplier,
        max_grad_norm=priv.clip_norm,
        delta=priv.delta,
        accountant=priv.accountant,
        lr=tr.learning_rate,
        augment=False,
        device=device,  # DP randomness is secret, never derived from federation.seed
        purpose=f"federated round {server_round}",
    )
    res = train_local(model, data.train, tcfg, ledger=ledger, progress=False)
    metrics = {
        EPSILON_ROUND: float(res.epsilon_run if res.epsilon_run is not None else math.inf),
        DELTA: float(priv.delta),
        PRIVACY_UNIT: priv.unit,
    }
    return get_arrays(model), metrics


def evaluate_dp(
    data: SiteData,
    cfg: RunConfig,
    arrays: list[np.ndarray],
    state_dir: Path,
    purpose: str,
    device: str = "auto",
) -> bytes:
    """The DP evaluation table (encoded) of the model ``arrays`` on the held-out patients; raises
    ``BudgetExceeded`` before anything is computed."""
    from .dp_evaluation import noisy_table

    small_work_threads()
    model, ledger = _model_and_ledger(cfg, arrays, state_dir)
    ledger.check_patients(p.patient for p in data.test)
    priv = cfg.privacy
    return noisy_table(
        model,
        data.test,
        priv.eval_noise_multiplier,
        ledger,
        priv.delta,
        priv.accountant,
        purpose,
        device,
    )


def site_epsilon(state_dir: Path) -> float:
    """ε spent so far by the site (cumulative over its whole ledger, at the budget's δ)."""
    from semiofed.privacy.ledger import PrivacyLedger

    return float(PrivacyLedger(state_dir).spent())


def evaluate_patients(
    model: torch.nn.Module, patients: list[PatientWindows], device: str = "auto"
) -> tuple[float, dict[str, Any]]:
    """Exact detection BCE loss and window metrics on ``patients``: for use at the site only
    (demo references), never sent."""
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


def main(argv: list[str] | None = None) -> int:
    """``python -m semiofed.client.site_task --config C --data DIR --state DIR
    [--low-priority]``: load the site once, filling its feature and embedding caches
    (``semiofed demo`` runs it per site before the federation); prints nothing but errors."""
    from semiofed.shared.run_config import load_run_config

    p = argparse.ArgumentParser(description=main.__doc__)
    for name in ("--config", "--data", "--state"):
        p.add_argument(name, type=Path, required=True)
    p.add_argument("--low-priority", action="store_true", help="run at nice 10")
    args = p.parse_args(argv)
    if args.low_priority:
        os.nice(10)
    small_work_threads()  # the ClientApp's thread count: the same cached embeddings' bits
    load_site(args.data, load_run_config(args.config), args.state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
