"""Run the empirical audits for a site's DP-SGD recipe and store results in ``STATE/audits``.

By default (:data:`ATTACKS`) the audit runs the site's own patient-level trainer
(``patient-canary``: :mod:`.patient_canary`, canaries are patients). The example-level
attacks (:data:`OPTIONAL`: membership inference, one-run canaries, gradient inversion) audit
the *training recipe* (σ, C, δ, Opacus' DP-SGD) with a small MLP on synthetic keypoint
windows. Never on the site's patients: an attack on real data would itself be a privacy
risk. σ, C and δ default to the site ledger's latest run (and budget δ) when a ledger exists.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from semiofed.shared.atomic import atomic_write_json
from semiofed.shared.run_config import DEFAULT_DELTA

from .canary import run_canary_audit
from .inversion import run_inversion_probe
from .mia import run_mia
from .patient_canary import patient_trainer, run_patient_canary_audit
from .training import TrainConfig

AUDITS_DIR = "audits"
ATTACKS: tuple[str, ...] = ("patient-canary",)
#: Run when named: the example-level attacks on Opacus' DP-SGD with an MLP.
OPTIONAL: tuple[str, ...] = ("mia", "canary", "inversion")


@dataclass(frozen=True)
class AuditSettings:
    noise_multiplier: float = 1.5
    max_grad_norm: float = 1.0
    delta: float = DEFAULT_DELTA
    epochs: int = 10
    dp_lr: float = 3e-3
    batch_size: int = 32
    mia_pool: int = 1000
    mia_shadows: int = 8
    canaries: int = 1000
    canary_guesses: int = 200
    inversion_sites: int = 5
    inversion_trials: int = 20
    patient_epochs: int = 40
    patient_pool: int = 10
    patient_canaries: int = 100
    patient_guesses: int = 30
    seed: int = 0

    @classmethod
    def quick(cls, **overrides: Any) -> AuditSettings:
        """Smaller pools and fewer shadow models for the MLP attacks (about a minute on one
        CPU core); the patient-level audit is already that small."""
        return replace(
            cls(
                mia_pool=400,
                mia_shadows=4,
                canaries=600,
                canary_guesses=120,
            ),
            **overrides,
        )


def ledger_defaults(state_dir: str | Path) -> dict[str, float]:
    """σ, C and δ of the site's latest training run (empty if there is no ledger)."""
    path = Path(state_dir) / "privacy_ledger.json"
    if not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    runs = [r for r in data.get("runs", []) if int(r.get("steps_counted", 0)) > 0]
    out: dict[str, float] = {}
    if runs:
        out["noise_multiplier"] = float(runs[-1]["noise_multiplier"])
        out["max_grad_norm"] = float(runs[-1]["max_grad_norm"])
        out["delta"] = float(runs[-1]["delta"])
    if data.get("budget"):
        out["delta"] = float(data["budget"]["delta"])
    return out


def _configs(s: AuditSettings) -> tuple[TrainConfig, TrainConfig]:
    plain = TrainConfig(epochs=4 * s.epochs, batch_size=s.batch_size, lr=1e-3, delta=s.delta)
    private = TrainConfig(
        epochs=s.epochs,
        batch_size=s.batch_size,
        lr=s.dp_lr,
        noise_multiplier=s.noise_multiplier,
        max_grad_norm=s.max_grad_norm,
        delta=s.delta,
    )
    return plain, private


def run_suite(
    state_dir: str | Path,
    settings: AuditSettings,
    attacks: tuple[str, ...] = ATTACKS,
    device: torch.device | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Run the chosen attacks on a non-DP and a DP model; write ``STATE/audits/<attack>.json``."""
    out_dir = Path(state_dir) / AUDITS_DIR
    plain, private = _configs(settings)
    setup = (
        "Recipe audit on synthetic keypoint windows with a 2-layer MLP (no patient data); "
        f"DP-SGD via Opacus with σ={settings.noise_multiplier:g}, C={settings.max_grad_norm:g}, "
        f"δ={settings.delta:g}, {settings.epochs} epochs, batch {settings.batch_size} (Poisson); "
        "the non-DP model trains 4× as many epochs without clipping or noise."
    )
    written: dict[str, Path] = {}
    for attack in attacks:
        meta = {
            "attack": attack,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "settings": asdict(settings),
            "setup": setup,
        }
        if attack == "mia":
            results = [
                run_mia(
                    cfg,
                    settings.mia_pool,
                    settings.mia_shadows,
                    settings.seed,
                    device=device,
                    progress=progress,
                )
                for cfg in (plain, private)
            ]
            doc = {**meta, "results": results}
        elif attack == "canary":
            results = [
                run_canary_audit(
                    cfg,
                    n_train=settings.mia_pool,
                    canaries=settings.canaries,
                    guesses=settings.canary_guesses,
                    seed=settings.seed,
                    device=device,
                )
                for cfg in (plain, private)
            ]
            doc = {**meta, "results": results}
        elif attack == "patient-canary":
            trainer = patient_trainer(
                settings.noise_multiplier,
                settings.max_grad_norm,
                settings.delta,
                settings.patient_epochs,
            )
            results = [
                run_patient_canary_audit(
                    trainer,
                    private,
                    settings.delta,
                    settings.patient_pool,
                    settings.patient_canaries,
                    settings.patient_guesses,
                    seed=settings.seed,
                )
                for private in (False, True)
            ]
            doc = {
                **meta,
                "setup": "SemioFed's patient-level trainer (train_local, small SemioNet) on "
                f"{settings.patient_pool} synthetic patients plus a random half of "
                f"{settings.patient_canaries} canary patients (one noise window, a posture "
                f"offset and its own type each); DP σ={settings.noise_multiplier:g}, C={settings.max_grad_norm:g}, "
                f"δ={settings.delta:g}; DP and non-DP models train {settings.patient_epochs} "
                "epochs with one recipe (batch 4 patients, lr 0.01)",
                "results": results,
            }
        elif attack == "inversion":
            doc = {
                **meta,
                **run_inversion_probe(
                    settings.noise_multiplier,
                    settings.max_grad_norm,
                    settings.inversion_sites,
                    settings.inversion_trials,
                    seed=settings.seed,
                ),
                "setup": setup,
            }
        else:
            raise ValueError(f"unknown attack {attack!r}")
        path = out_dir / f"{attack}.json"
        atomic_write_json(path, doc)
        written[attack] = path
    return written
