"""Local training at a site: patient-level DP-SGD, window-level DP, or non-private.

DP runs (``dp=True``) go through :func:`semiofed.privacy.dp_sgd.make_patient_private`, which
holds the mechanism (Poisson sampling of patients, one clipped gradient per sampled patient,
Gaussian noise, the ledger charge before every update, secret randomness); see its module
docstring. Window level (``privacy_unit="window"``) is WEAKER: ε protects one 5-s window.

Non-private (``dp=False``): ordinary shuffled minibatches of windows (same event-window
balancing, :class:`~semiofed.shared.window_picker.WindowPicker`), no clipping, no noise,
nothing in the ledger.

Randomness. A DP run draws ALL of its randomness from secrets of the operating system's
CSPRNG (``os.urandom`` via :mod:`secrets`), never from ``cfg.seed``; the secrets are never
sent, logged or stored, so two DP runs of the same configuration and seed differ: the noise
and the Poisson sampling as in :mod:`semiofed.privacy.dp_sgd`; window picking, augmentation
and dropout from a NumPy PCG64 seeded with 128 ``os.urandom`` bits and torch's global
generator seeded with 64.

Frozen encoders (the model's ``embedding_key`` is not None): when the training patients
carry the windows' cached embeddings (:func:`.feature_cache.embed_patients`, the site's
embedding cache in its state folder, never sent), every step feeds them to the trainable top
instead of running the encoders: the same function of the same windows, so the same Poisson
patient sampling, the same per-patient clipping over the same trainable parameters and the
same steps charged to the ledger. Input-space augmentation (``augment``) cannot pass through
cached embeddings; with frozen encoders it is off whether or not a cache is used, so the
result does not depend on the cache (measured on public data: README "Feature cache").

The public seed (``cfg.seed``) only drives non-DP runs, which stay reproducible; the
model's initialisation and the patient split are the caller's and keep the public seed.
"""

from __future__ import annotations

import copy
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from semiofed.privacy.dp_sgd import StepCallback, make_patient_private, secret_seed
from semiofed.privacy.ledger import PrivacyLedger
from semiofed.shared.dataset import PatientWindows, WindowDataset, collate
from semiofed.shared.errors import SemioFedError
from semiofed.shared.model import SemioNet, loss_per_window, resolve_device
from semiofed.shared.run_config import DEFAULT_DELTA, DEFAULT_LEARNING_RATE
from semiofed.shared.window_picker import WindowPicker

from .evaluation import cached_embeddings, evaluate

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """How to train one local run (see module docstring)."""

    epochs: int = 20  # DP: passes of 1/q steps; non-DP: passes over the windows
    dp: bool = True
    privacy_unit: str = "patient"
    batch_size: int = 8  # expected sampled patients (or windows) per step
    windows_per_patient: int = 1  # windows averaged into a patient's single gradient
    event_fraction: float = 0.5  # chance a drawn window is one of the patient's event windows
    noise_multiplier: float = 1.0
    epsilon_target: float | None = None  # cumulative ε after this run; picks σ (overrides above)
    max_grad_norm: float = 1.0
    delta: float = DEFAULT_DELTA
    accountant: str = "rdp"
    lr: float = DEFAULT_LEARNING_RATE
    weight_decay: float = 0.0
    type_loss_weight: float = 1.0
    augment: bool = True  # input-space augmentation; only when the encoders train (docstring)
    steps_per_epoch: int | None = None  # non-DP only: cap the batches of an epoch
    commit_every: int = 1  # ledger reservation granularity (steps)
    eval_every: int = 1  # epochs between evaluations on the held-out patients
    device: str = "auto"
    seed: int = 0  # non-DP runs only; DP runs draw secret randomness (module docstring)
    purpose: str = "site train"


@dataclass
class TrainResult:
    dp: bool
    privacy_unit: str | None
    steps: int
    epochs_run: int
    seconds: float
    sample_rate: float | None = None
    noise_multiplier: float | None = None
    max_grad_norm: float | None = None
    delta: float | None = None
    accountant: str | None = None
    epsilon_run: float | None = None  # this run alone
    epsilon_total: float | None = None  # cumulative over the ledger (None without a ledger)
    run_id: str | None = None
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    val_metrics: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _to(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def train_local(
    model: nn.Module,
    train_patients: list[PatientWindows],
    cfg: TrainConfig,
    ledger: PrivacyLedger | None = None,
    progress: bool = True,
    val_patients: list[PatientWindows] | None = None,
    step_callback: StepCallback | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``train_patients``; returns what was done and spent.

    DP runs are checked against ``ledger``'s budget first (``BudgetExceeded`` is raised before
    any step) and every step is counted in it before release. With ``val_patients`` the model
    is evaluated every ``eval_every`` epochs and the best state (by validation macro-F1 of the
    type head, then AUROC) is kept. ``step_callback(batch, model, optimizer)`` is called after
    the per-sample gradients of each DP step, before clipping and noise (for tests).
    """
    if not train_patients:
        raise SemioFedError("no training patients")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise SemioFedError("epochs and batch size must be >= 1")
    device = resolve_device(cfg.device)
    seed = secret_seed() if cfg.dp else cfg.seed
    torch.manual_seed(seed)
    rng = np.random.default_rng(secrets.randbits(128) if cfg.dp else cfg.seed)
    augment = cfg.augment and not (isinstance(model, SemioNet) and model.embedding_key())
    embeddings = None if augment else cached_embeddings(model, train_patients)
    dataset = WindowDataset(train_patients, augment=augment, seed=seed, embeddings=embeddings)
    model.to(device)
    t_start = time.perf_counter()
    result = TrainResult(
        dp=cfg.dp,
        privacy_unit=cfg.privacy_unit if cfg.dp else None,
        steps=0,
        epochs_run=0,
        seconds=0.0,
    )
    best: tuple[tuple[float, float], dict[str, Tensor]] | None = None

    def after_epoch(epoch: int, loss: float) -> None:
        nonlocal best
        entry: dict[str, Any] = {"epoch": epoch, "loss": loss, "steps": result.steps}
        if val_patients and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs):
            m = evaluate(model, val_patients, device=cfg.device, events=False)
            entry.update(val_macro_f1=m["macro_f1"], val_auroc=m["auroc_seizure"])
            score = (_nan0(m["macro_f1"]), _nan0(m["auroc_seizure"]))
            if best is None or score > best[0]:
                best = (score, copy.deepcopy(model.state_dict()))
                result.best_epoch, result.val_metrics = epoch, m
        result.history.append(entry)
        result.epochs_run = epoch

    if cfg.dp:
        _train_dp(model, dataset, rng, cfg, ledger, progress, after_epoch, result, step_callback)
    else:
        picker = WindowPicker(train_patients, cfg.event_fraction, rng)
        _train_plain(model, dataset, picker, cfg, device, progress, after_epoch, result)
    if best is not None:
        model.load_state_dict(best[1])
    result.seconds = time.perf_counter() - t_start
    return result


def _nan0(x: float) -> float:
    return 0.0 if x is None or math.isnan(x) else float(x)


def _train_dp(
    model: nn.Module,
    dataset: WindowDataset,
    rng: np.random.Generator,
    cfg: TrainConfig,
    ledger: PrivacyLedger | None,
    progress: bool,
    after_epoch: Callable[[int, float], None],
    result: TrainResult,
    step_callback: StepCallback | None,
) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    private = make_patient_private(
        model,
        torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
        dataset,
        ledger,
        loss=lambda out, batch: loss_per_window(out, batch, cfg.type_loss_weight),
        rng=rng,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        noise_multiplier=cfg.noise_multiplier,
        epsilon_target=cfg.epsilon_target,
        max_grad_norm=cfg.max_grad_norm,
        delta=cfg.delta,
        accountant=cfg.accountant,
        privacy_unit=cfg.privacy_unit,
        windows_per_patient=cfg.windows_per_patient,
        event_fraction=cfg.event_fraction,
        commit_every=cfg.commit_every,
        purpose=cfg.purpose,
    )
    planned = private.planned
    result.run_id = private.run_id
    bar = tqdm(
        total=planned.steps,
        desc=f"DP-SGD ({cfg.privacy_unit} level)",
        unit="step",
        disable=not progress,
    )
    try:
        with private:
            for epoch in range(1, cfg.epochs + 1):
                loss = private.run_epoch(step_callback)
                bar.update(private.steps - result.steps)
                result.steps = private.steps
                bar.set_postfix(loss=f"{loss:.3f}")
                after_epoch(epoch, loss)
    finally:
        bar.close()
    result.sample_rate, result.noise_multiplier = planned.sample_rate, planned.noise_multiplier
    result.max_grad_norm, result.delta = planned.max_grad_norm, planned.delta
    result.accountant = planned.accountant
    result.epsilon_run = private.epsilon_run()
    result.epsilon_total = private.epsilon_total


def _train_plain(
    model: nn.Module,
    dataset: WindowDataset,
    picker: WindowPicker,
    cfg: TrainConfig,
    device: torch.device,
    progress: bool,
    after_epoch: Callable[[int, float], None],
    result: TrainResult,
) -> None:
    weights = torch.as_tensor(picker.window_weights(), dtype=torch.double)
    generator = torch.Generator().manual_seed(cfg.seed)
    per_epoch = (
        len(dataset)
        if cfg.steps_per_epoch is None
        else min(len(dataset), cfg.steps_per_epoch * cfg.batch_size)
    )
    sampler = torch.utils.data.WeightedRandomSampler(
        weights, per_epoch, replacement=True, generator=generator
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    bar = tqdm(
        total=cfg.epochs * len(loader), desc="training (no DP)", unit="step", disable=not progress
    )
    try:
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            losses = []
            for batch in loader:
                batch = _to(batch, device)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_per_window(model(batch), batch, cfg.type_loss_weight).mean()
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                result.steps += 1
                bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses):.3f}")
            after_epoch(epoch, float(np.mean(losses)))
    finally:
        bar.close()
