"""Local training at a site: patient-level DP-SGD (Opacus), window-level DP, or non-private.

Patient level (default; the privacy unit is a patient, i.e. all of their video):
every step samples PATIENTS by Poisson sampling with rate ``q = batch_size / patients``
(Opacus' ``UniformWithReplacementSampler``: each patient independently with probability q),
takes ``windows_per_patient`` random windows of each sampled patient (half of them, in
expectation, from the patient's event windows when there are any: ``event_fraction``),
computes per-window gradients with Opacus' ``GradSampleModule``, sums them per patient
into ONE gradient per sampled patient, and lets Opacus' ``DPOptimizer`` clip each
patient's gradient to ``max_grad_norm`` and add Gaussian noise of std
``noise_multiplier · max_grad_norm``. A patient thus moves a step by at most one clipped
gradient, which is what the accountant assumes; the dataset size of the accounting is the
number of patients.

Window level (``privacy_unit="window"``, WEAKER): Poisson sampling over windows, one
clipped gradient per window. ε then protects one 5-s window, not a patient: a patient
with many windows is protected far less (group privacy).

Non-private (``dp=False``): ordinary shuffled minibatches of windows (same event-window
balancing), no clipping, no noise, nothing in the ledger.

Every DP step is counted in the :class:`~semiofed.privacy.ledger.PrivacyLedger` BEFORE its
noisy update is computed; the run's plan is checked against the site budget before any
training.

Randomness. A DP run draws ALL of its randomness from secrets of the operating system's
CSPRNG (``os.urandom`` via :mod:`secrets`), never from ``cfg.seed``; the secrets are never
sent, logged or stored, so two DP runs of the same configuration and seed differ:

* Gaussian noise: a ``torch.Generator`` (Mersenne Twister) **reseeded with 64 fresh
  ``os.urandom`` bits before every step's noise**, through Opacus' ``secure_mode`` noise
  (each coordinate is the mean of 4 draws, against floating-point attacks on the Gaussian
  sampler). This is not torchcsprng (Opacus' own secure RNG, not installed): the noise of a
  step is a deterministic function of its 64-bit secret seed.
* Poisson patient sampling: a second ``torch.Generator`` reseeded the same way before
  every step's draw.
* Window picking, augmentation and dropout: a NumPy PCG64 seeded with 128 ``os.urandom``
  bits, and torch's global generator seeded with 64.

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
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from opacus.grad_sample import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import Tensor, nn
from tqdm import tqdm

from semiofed.privacy.accounting import epsilon, noise_for_target
from semiofed.privacy.ledger import PRIVACY_UNITS, LedgerRun, PlannedRun, PrivacyLedger
from semiofed.shared.dataset import PatientWindows, WindowDataset, collate
from semiofed.shared.errors import SemioFedError
from semiofed.shared.model import SemioNet, loss_per_window, resolve_device

from .evaluation import cached_embeddings, evaluate

log = logging.getLogger(__name__)

StepCallback = Callable[[dict[str, Tensor], nn.Module, Any], None]

# Opacus' GradSampleModule hooks every layer's backward; keypoint inputs never require grad,
# so torch warns on every step that the hook fires on module outputs. Harmless here.
warnings.filterwarnings(
    "ignore",
    message="Full backward hook is firing when gradients are computed",
    category=UserWarning,
)


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
    delta: float = 1e-5
    accountant: str = "rdp"
    lr: float = 2e-3
    weight_decay: float = 0.0
    type_loss_weight: float = 1.0
    augment: bool = True  # input-space augmentation; only when the encoders train (docstring)
    grad_sample_mode: str = "hooks"  # or "functorch"
    steps_per_epoch: int | None = None  # non-DP only: cap the batches of an epoch
    commit_every: int = 1  # ledger reservation granularity (steps)
    eval_every: int = 1  # epochs between evaluations on the held-out patients
    device: str = "auto"
    seed: int = 0  # non-DP runs only; DP runs draw secret randomness (module docstring)
    purpose: str = "site train"

    def validate(self) -> None:
        if self.privacy_unit not in PRIVACY_UNITS:
            raise SemioFedError(
                f"privacy unit must be one of {PRIVACY_UNITS}, got {self.privacy_unit!r}"
            )
        if self.epochs < 1 or self.batch_size < 1 or self.windows_per_patient < 1:
            raise SemioFedError("epochs, batch size and windows per patient must be >= 1")
        if self.grad_sample_mode not in ("hooks", "functorch"):
            raise SemioFedError(
                f"grad_sample_mode must be hooks or functorch, got {self.grad_sample_mode!r}"
            )
        if not 0.0 <= self.event_fraction <= 1.0:
            raise SemioFedError(f"event_fraction must be in [0, 1], got {self.event_fraction}")


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


class WindowPicker:
    """Draws windows of a patient as flat indices into a :class:`WindowDataset`."""

    def __init__(
        self, patients: list[PatientWindows], event_fraction: float, rng: np.random.Generator
    ):
        self.offsets = np.cumsum([0] + [len(p) for p in patients])
        self.events = [np.flatnonzero(p.y_detect == 1) for p in patients]
        self.sizes = [len(p) for p in patients]
        self.event_fraction = event_fraction
        self.rng = rng

    def draw(self, patient: int, k: int) -> list[int]:
        ev, n = self.events[patient], self.sizes[patient]
        out = []
        for _ in range(k):
            if len(ev) and self.rng.random() < self.event_fraction:
                i = int(ev[self.rng.integers(len(ev))])
            else:
                i = int(self.rng.integers(n))
            out.append(int(self.offsets[patient]) + i)
        return out

    def window_weights(self) -> np.ndarray:
        """Per-window sampling weights giving event windows ``event_fraction`` of the draws."""
        w = []
        for ev, n in zip(self.events, self.sizes, strict=True):
            wp = np.full(n, (1.0 - self.event_fraction) / n if len(ev) else 1.0 / n)
            if len(ev):
                wp[ev] += self.event_fraction / len(ev)
            w.append(wp)
        return np.concatenate(w) if w else np.zeros(0)


def _to(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _plan(cfg: TrainConfig, n_units: int, ledger: PrivacyLedger | None) -> PlannedRun:
    q = min(1.0, cfg.batch_size / n_units)
    steps = cfg.epochs * int(1 / q)
    sigma = cfg.noise_multiplier
    if cfg.epsilon_target is not None:
        prior = ledger.history() if ledger is not None else []
        sigma = noise_for_target(cfg.epsilon_target, cfg.delta, q, steps, prior, cfg.accountant)
    return PlannedRun(
        privacy_unit=cfg.privacy_unit,
        sample_rate=q,
        noise_multiplier=sigma,
        max_grad_norm=cfg.max_grad_norm,
        steps=steps,
        delta=cfg.delta,
        accountant=cfg.accountant,
        dataset_size=n_units,
        purpose=cfg.purpose,
    )


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
    type head, then AUROC) is kept. ``step_callback(batch, grad_sample_module, optimizer)`` is
    called after the backward pass of each DP step, before clipping and noise (for tests).
    """
    cfg.validate()
    if not train_patients:
        raise SemioFedError("no training patients")
    device = resolve_device(cfg.device)
    seed = secret_seed() if cfg.dp else cfg.seed
    torch.manual_seed(seed)
    rng = np.random.default_rng(secrets.randbits(128) if cfg.dp else cfg.seed)
    augment = cfg.augment and not (isinstance(model, SemioNet) and model.embedding_key())
    embeddings = None if augment else cached_embeddings(model, train_patients)
    dataset = WindowDataset(train_patients, augment=augment, seed=seed, embeddings=embeddings)
    picker = WindowPicker(train_patients, cfg.event_fraction, rng)
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
        n_units = len(train_patients) if cfg.privacy_unit == "patient" else len(dataset)
        planned = _plan(cfg, n_units, ledger)
        run: LedgerRun | None = None
        if ledger is not None:
            run = ledger.begin_run(planned, commit_every=cfg.commit_every)
            result.run_id = run.run_id
        try:
            _train_dp(
                model,
                dataset,
                picker,
                cfg,
                planned,
                run,
                device,
                progress,
                after_epoch,
                result,
                step_callback,
            )
        except BaseException as exc:
            if run is not None:
                run.finish("failed", error=f"{type(exc).__name__}: {exc}")
            raise
        result.sample_rate, result.noise_multiplier = planned.sample_rate, planned.noise_multiplier
        result.max_grad_norm, result.delta, result.accountant = (
            planned.max_grad_norm,
            planned.delta,
            planned.accountant,
        )
        result.epsilon_run = epsilon(
            [planned.mechanism(result.steps)], planned.delta, planned.accountant
        )
        if run is not None:
            record = run.finish("completed", epochs_run=result.epochs_run)
            result.epsilon_total = record["epsilon_after"][planned.accountant]
    else:
        _train_plain(model, dataset, picker, cfg, device, progress, after_epoch, result)
    if best is not None:
        model.load_state_dict(best[1])
    result.seconds = time.perf_counter() - t_start
    return result


def secret_seed() -> int:
    """64 bits of the operating system's CSPRNG; never derived from, or stored with, anything."""
    return secrets.randbits(64)


class SecretNoiseDPOptimizer(DPOptimizer):
    """Opacus' ``DPOptimizer`` (``secure_mode`` noise) whose generator is reseeded with
    :func:`secret_seed` before every step's noise."""

    def add_noise(self) -> None:
        self.generator.manual_seed(secret_seed())
        super().add_noise()


def secret_poisson_batches(sampler: UniformWithReplacementSampler) -> Iterator[list[int]]:
    """The sampler's Poisson batches, its generator reseeded secretly before each draw."""
    batches = iter(sampler)
    while True:
        sampler.generator.manual_seed(secret_seed())
        try:
            yield next(batches)
        except StopIteration:
            return


def _nan0(x: float) -> float:
    return 0.0 if x is None or math.isnan(x) else float(x)


def _train_dp(
    model: nn.Module,
    dataset: WindowDataset,
    picker: WindowPicker,
    cfg: TrainConfig,
    planned: PlannedRun,
    run: LedgerRun | None,
    device: torch.device,
    progress: bool,
    after_epoch: Callable[[int, float], None],
    result: TrainResult,
    step_callback: StepCallback | None,
) -> None:
    by_patient = cfg.privacy_unit == "patient"
    gsm = GradSampleModule(
        model,
        batch_first=True,
        loss_reduction="sum",
        force_functorch=cfg.grad_sample_mode == "functorch",
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = SecretNoiseDPOptimizer(
        torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
        noise_multiplier=planned.noise_multiplier,
        max_grad_norm=planned.max_grad_norm,
        expected_batch_size=max(1, round(planned.sample_rate * planned.dataset_size)),
        loss_reduction="mean",
        generator=torch.Generator(device=device),
        secure_mode=True,
    )
    sampler = UniformWithReplacementSampler(
        num_samples=planned.dataset_size,
        sample_rate=planned.sample_rate,
        generator=torch.Generator(),
    )
    bar = tqdm(
        total=planned.steps,
        desc=f"DP-SGD ({cfg.privacy_unit} level)",
        unit="step",
        disable=not progress,
    )
    try:
        for epoch in range(1, cfg.epochs + 1):
            gsm.train()
            losses = []
            for units in secret_poisson_batches(sampler):
                optimizer.zero_grad(set_to_none=True)
                if units:
                    if by_patient:
                        owners = [
                            j for j in range(len(units)) for _ in range(cfg.windows_per_patient)
                        ]
                        flat = [i for u in units for i in picker.draw(u, cfg.windows_per_patient)]
                    else:
                        owners, flat = list(range(len(units))), list(units)
                    batch = _to(collate([dataset[i] for i in flat]), device)
                    out = gsm(batch)
                    per_window = loss_per_window(out, batch, cfg.type_loss_weight)
                    k = cfg.windows_per_patient if by_patient else 1
                    (per_window.sum() / k).backward()
                    losses.append(float(per_window.detach().mean()))
                    if k > 1:
                        _sum_grad_samples_per_owner(
                            params, torch.tensor(owners, device=device), len(units)
                        )
                    if step_callback is not None:
                        step_callback(batch, gsm, optimizer)
                else:  # an empty Poisson batch still releases a noise-only update
                    for p in params:
                        p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
                if run is not None:
                    run.count_step()  # counted before the noisy update exists
                optimizer.step()
                result.steps += 1
                bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses) if losses else float('nan'):.3f}")
            after_epoch(epoch, float(np.mean(losses)) if losses else math.nan)
    finally:
        bar.close()
        optimizer.zero_grad(set_to_none=True)
        gsm.to_standard_module()  # removes Opacus' hooks: the model is a plain module again


def _sum_grad_samples_per_owner(params: list[nn.Parameter], owners: Tensor, n_owners: int) -> None:
    """Replace per-window ``grad_sample`` by its sum over the windows of each owner (patient)."""
    for p in params:
        gs = p.grad_sample
        summed = torch.zeros((n_owners, *gs.shape[1:]), device=gs.device, dtype=gs.dtype)
        summed.index_add_(0, owners, gs)
        p.grad_sample = summed


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
