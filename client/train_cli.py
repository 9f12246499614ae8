"""``semiofed site train``: train the seizure model on this site's recordings, with DP."""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from semiofed.shared.cli_paths import folder, out_folder
from semiofed.shared.errors import SemioFedError
from semiofed.shared.run_config import DEFAULT_DELTA, DEFAULT_LEARNING_RATE

from . import site_audit
from .analyze_cli import REVIEWED_DATA

log = logging.getLogger(__name__)

DESCRIPTION = """\
Train the multi-stream seizure model on this site's keypoint recordings.

Default: patient-level differential privacy (DP-SGD with Opacus). The protected unit is a
patient: each step Poisson-samples patients and uses ONE clipped gradient per sampled
patient. Every step is counted in the site's privacy ledger (--state; created by the privacy
officer with `semiofed audit init-ledger`; a missing, edited or rolled-back ledger is refused)
before its update is released, and a run that would push the site's cumulative ε over its budget is refused
before any training, saying what remains and what would fit.

Patients are split (by patient, never by window) into train / validation (best-epoch
selection and the decision threshold: the best window F1 on a fixed grid; without
validation patients the threshold is the fixed 0.5) / test (the metrics in metrics.json:
window metrics, per-class F1, confusion matrix, SzCORE event and sample scoring, false
alarms per hour on unmerged detections, specificity on background time).

Writes RUN_DIR/model.safetensors, model_config.json and metrics.json.

examples:
  semiofed site train --data site-01 --out runs/r1 --state state --epsilon-target 3
  semiofed site train --data site-01 --out runs/plain --no-dp
"""


def register(cmds: argparse._SubParsersAction) -> None:
    p = cmds.add_parser(
        "train",
        help="train the seizure model locally (patient-level DP by default)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data",
        required=True,
        type=folder,
        metavar="SITE_DIR",
        help="site folder: one sub-folder per patient",
    )
    p.add_argument(
        "--out",
        required=True,
        type=out_folder,
        metavar="RUN_DIR",
        help="output folder for weights and metrics",
    )
    p.add_argument(
        "--state",
        type=out_folder,
        metavar="DIR",
        help="site state folder: privacy_ledger.json (required with DP) and the labelled "
        "events of `site review` (review/data), which training includes; also the feature cache",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=30,
        help="DP: passes of 1/q steps; --no-dp: passes over the windows (default 30)",
    )
    p.add_argument(
        "--epsilon-budget",
        type=float,
        metavar="E",
        help="lower the site budget ε_max at --delta (the privacy officer sets it: `semiofed audit init-ledger`)",
    )
    p.add_argument(
        "--delta",
        type=float,
        default=DEFAULT_DELTA,
        help=f"δ of the budget and of every ε reported (default {DEFAULT_DELTA:g})",
    )
    p.add_argument(
        "--epsilon-target",
        type=float,
        metavar="E",
        help="cumulative ε after this run: picks the noise multiplier from what remains",
    )
    p.add_argument(
        "--noise-multiplier",
        type=float,
        default=1.0,
        metavar="S",
        help="σ when no --epsilon-target (default 1.0)",
    )
    p.add_argument(
        "--clip-norm",
        type=float,
        default=1.0,
        metavar="C",
        help="per-patient gradient clipping norm (default 1.0)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="expected patients (or windows) per step; q = batch / count (default 8)",
    )
    p.add_argument(
        "--windows-per-patient",
        type=int,
        default=4,
        help="windows averaged into a patient's single clipped gradient (default 4)",
    )
    p.add_argument(
        "--accountant",
        choices=("rdp", "prv"),
        default="rdp",
        help="accountant for the budget and ε (default rdp)",
    )
    p.add_argument(
        "--privacy-unit",
        choices=("patient", "window"),
        default="patient",
        help="patient (default) or window (WEAKER: protects one 5-s window, not a patient)",
    )
    p.add_argument(
        "--no-dp",
        action="store_true",
        help="train without differential privacy (nothing protected, nothing in the ledger)",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=DEFAULT_LEARNING_RATE,
        help=f"learning rate (Adam, default {DEFAULT_LEARNING_RATE:g}, as a run configuration's)",
    )
    p.add_argument(
        "--window-seconds", type=float, default=5.0, help="window length in s (default 5)"
    )
    p.add_argument(
        "--window-hop", type=float, default=1.0, help="s between window starts (default 1)"
    )
    p.add_argument(
        "--window-fps",
        type=float,
        default=15.0,
        help="frame rate windows are resampled to (default 15); the model keeps these settings",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="patients held out for best-epoch selection and the decision threshold (default: "
        "0.15 with --no-dp; 0 with DP, where the last epoch and the threshold 0.5 are kept, "
        "because choosing them on validation patients is not covered by ε)",
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="patients held out for the reported metrics (default 0.2)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="public seed: patient split, initialisation, non-DP runs (DP noise and sampling are secret)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)


def _val_fraction(args: argparse.Namespace) -> float:
    """With DP no validation patients by default: selecting an epoch on them is not private."""
    if args.val_fraction is not None:
        return float(args.val_fraction)
    return 0.15 if args.no_dp else 0.0


def _train(args: argparse.Namespace) -> int:
    import torch

    from semiofed.privacy.ledger import PrivacyLedger
    from semiofed.shared.atomic import atomic_write_json, json_safe
    from semiofed.shared.dataset import load_patient_windows
    from semiofed.shared.model import ModelConfig, SemioNet, architecture_hash, count_parameters
    from semiofed.shared.model_folder import write_model_folder
    from semiofed.shared.splits import patient_split
    from semiofed.shared.windows import WindowConfig

    from .dp_training import TrainConfig, train_local
    from .evaluation import choose_threshold, evaluate, recording_refs, summary_line
    from .feature_cache import site_features

    data, out = Path(args.data), Path(args.out)
    ledger: PrivacyLedger | None = None
    if not args.no_dp:
        if args.state is None:
            raise SemioFedError(
                "DP training needs --state DIR (the site's privacy ledger lives there)"
            )
        ledger = PrivacyLedger(args.state)
        ledger.check_history()  # missing, truncated, edited or rolled back: refused here
        if args.epsilon_budget is not None:
            ledger.set_budget(args.epsilon_budget, args.delta, args.accountant)
        budget = ledger.budget
        if (budget.delta, budget.accountant) != (args.delta, args.accountant):
            raise SemioFedError(
                f"{ledger.path}: the site budget is ε ≤ {budget.epsilon_max:g} at δ={budget.delta:g} "
                f"({budget.accountant}); run with --delta {budget.delta:g} --accountant {budget.accountant}"
            )
    if not (args.window_seconds > 0 and args.window_hop > 0 and args.window_fps > 0):
        raise SemioFedError("--window-seconds, --window-hop and --window-fps must be positive")
    wcfg = WindowConfig(seconds=args.window_seconds, fps=args.window_fps, hop=args.window_hop)
    reviewed = [Path(args.state) / REVIEWED_DATA] if args.state is not None else []
    patients = load_patient_windows(
        data, wcfg, extra_dirs=reviewed, features=site_features(args.state)
    )
    if len(patients) < 3:
        raise SemioFedError(
            f"{data}: {len(patients)} usable patients; training needs at least 3 (train/val/test by patient)"
        )
    if ledger is not None:
        ledger.check_patients(p.patient for p in patients)
    train, val, test = patient_split(
        patients, _val_fraction(args), args.test_fraction, seed=args.seed
    )
    mcfg = ModelConfig()
    torch.manual_seed(args.seed)
    model = SemioNet(mcfg)
    cfg = TrainConfig(
        epochs=args.epochs,
        dp=not args.no_dp,
        privacy_unit=args.privacy_unit,
        batch_size=args.batch_size,
        windows_per_patient=args.windows_per_patient,
        noise_multiplier=args.noise_multiplier,
        epsilon_target=args.epsilon_target,
        max_grad_norm=args.clip_norm,
        delta=args.delta,
        accountant=args.accountant,
        lr=args.lr,
        device=args.device,
        seed=args.seed,
        purpose=f"semiofed site train → {out}",
    )
    result = train_local(
        model, train, cfg, ledger, progress=not args.no_progress, val_patients=val or None
    )
    write_model_folder(
        out, model, mcfg, wcfg
    )  # first: a failing evaluation never loses the training
    threshold = choose_threshold(model, val, args.device)
    evaluation_error: SemioFedError | None = None
    try:
        test_metrics = evaluate(
            model,
            test,
            device=args.device,
            threshold=threshold,
            window=wcfg,
            refs=recording_refs(data, test, reviewed),
        )
    except SemioFedError as exc:
        evaluation_error = exc
        test_metrics = {"error": str(exc)}
    privacy: dict[str, Any] = {"dp": cfg.dp}
    if cfg.dp:
        privacy.update(
            privacy_unit=result.privacy_unit,
            delta=result.delta,
            accountant=result.accountant,
            sample_rate=result.sample_rate,
            noise_multiplier=result.noise_multiplier,
            clipping_norm=result.max_grad_norm,
            steps=result.steps,
            epsilon_this_run=result.epsilon_run,
            epsilon_cumulative_site=result.epsilon_total,
            budget=asdict(ledger.budget) if ledger and ledger.budget else None,
            ledger=str(ledger.path) if ledger else None,
            run_id=result.run_id,
        )
        if val:
            privacy["model_selection_warning"] = (
                f"the best epoch and the decision threshold were chosen on {len(val)} "
                "validation patient(s): those choices are not covered by ε"
            )
        if result.privacy_unit == "window":
            privacy["warning"] = "window-level DP protects single 5-s windows, not patients"
    metrics = {
        "site": data.name,
        "patients": {"train": len(train), "val": len(val), "test": len(test)},
        # which patients, so `site calibrate --held-out` can use ones the model never saw
        "split": {
            name: sorted(p.patient for p in part)
            for name, part in (("train", train), ("val", val), ("test", test))
        },
        "windows": {"train": sum(len(p) for p in train), "test": sum(len(p) for p in test)},
        "model": {
            "parameters": count_parameters(model),
            "architecture_hash": architecture_hash(mcfg),
        },
        "privacy": privacy,
        "training": {
            "epochs_run": result.epochs_run,
            "steps": result.steps,
            "seconds": result.seconds,
            "best_epoch": result.best_epoch,
            "history": result.history,
        },
        "validation": result.val_metrics,
        "threshold": {
            "value": threshold,
            "chosen_on": f"{len(val)} validation patients (best window F1 on a fixed grid)"
            if val
            else "no validation patients: the fixed default",
        },
        "test": test_metrics,
    }
    atomic_write_json(out / "metrics.json", json_safe(metrics))
    if ledger is not None:
        site_audit.record_budget(Path(args.state))
    if evaluation_error is not None:
        raise SemioFedError(
            f"model written to {out}, but its test evaluation failed: {evaluation_error}"
        )
    eps = (
        f"ε = {result.epsilon_total:.3f} cumulative at δ={result.delta:g} ({result.accountant}, {result.privacy_unit} level; "
        f"this run {result.epsilon_run:.3f})"
        if cfg.dp
        else "no DP"
    )
    print(
        f"trained {result.steps} steps on {len(train)} patients ({eps}); test on {len(test)} patients: "
        f"{summary_line(test_metrics)}\n"
        f"wrote {out / 'model.safetensors'}, {out / 'metrics.json'}"
    )
    return 0
