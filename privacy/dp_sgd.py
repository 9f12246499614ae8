"""Patient-level DP-SGD with a patient as one sample: :func:`make_patient_private`.

In the spirit of Opacus' ``PrivacyEngine.make_private``: one call takes the model, its
optimizer, the training windows and the site's ledger, plans the run (σ from an ε target when
asked), checks the plan against the site budget (``BudgetExceeded`` before any step) and
returns a :class:`PatientPrivate` whose :meth:`~PatientPrivate.run_epoch` trains.

Privacy unit ``patient`` (default; a patient is all of their video): every step samples
PATIENTS by Poisson sampling with rate ``q = batch_size / patients`` (Opacus'
``UniformWithReplacementSampler``: each patient independently with probability q), takes
``windows_per_patient`` (``k``) windows of each sampled patient (``event_fraction`` of the
draws, in expectation, from the patient's event windows when there are any:
:class:`~semiofed.shared.window_picker.WindowPicker`) and computes ONE gradient per sampled
patient: the gradient of the mean loss over its ``k`` windows. A patient is one sample of
Opacus' ``DPOptimizer``, which clips each patient's whole gradient (every trainable
parameter) to ``max_grad_norm`` C, sums, adds Gaussian noise of std ``noise_multiplier · C``
and divides by the expected batch. A patient thus moves a step by at most one clipped
gradient, which is what the accountant assumes; the dataset size of the accounting is the
number of patients.

How the per-patient gradient is computed (the cost of a DP step): by one ordinary backward
pass per sampled patient over its ``k`` windows (``torch.autograd.grad``), so no per-window
gradient is ever materialised; with ``k = 1`` (and at window level) and at least
:data:`VMAP_MIN_SAMPLES` samples in the step, by ``torch.func`` — ``vmap(grad(·))`` over the
samples, the per-sample path Opacus' functorch mode uses, which pays off only for many
single-window samples (measured on SemioNet: 32 single-window samples ≈ 1.1–1.3× a plain
backward by ``vmap``, ≈ 1.9× by 32 backward passes; 4 samples of a tiny model: ``vmap`` 2.5×
slower than 4 backward passes). Opacus' ghost clipping does not apply: in Opacus 1.6 it has norm samplers for
``Linear`` and ``Embedding`` only, and SemioNet is mostly ``Conv2d``/``GroupNorm``, for which it
falls back to materialised per-sample gradients (cost: bench/results.md, bench_training).

Privacy unit ``window`` (WEAKER): Poisson sampling over windows, one clipped gradient per
window. ε then protects one 5-s window, not a patient (group privacy).

Every step is counted in the :class:`~semiofed.privacy.ledger.PrivacyLedger` BEFORE its noisy
update is computed. Randomness (README "What the privacy guarantee is, exactly"): the noise
generator and the Poisson sampler's generator are reseeded with 64 bits of the operating
system's CSPRNG (:func:`secret_seed`) before every draw; the noise is Opacus' ``secure_mode``
noise. The caller draws the window picker's and dropout's randomness from secrets too.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import numpy as np
import torch
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from semiofed.shared.dataset import WindowDataset, collate
from semiofed.shared.errors import SemioFedError
from semiofed.shared.run_config import DEFAULT_DELTA
from semiofed.shared.window_picker import WindowPicker

from .accounting import epsilon, noise_for_target
from .ledger import PRIVACY_UNITS, LedgerRun, PlannedRun, PrivacyLedger

#: Fewest single-window samples in a step for which ``vmap`` replaces one backward per sample.
VMAP_MIN_SAMPLES = 8
#: ``loss(outputs, batch)``: the per-window loss (one value per window of ``batch``).
WindowLoss = Callable[[dict[str, Tensor], dict[str, Tensor]], Tensor]
#: ``callback(batch, model, optimizer)`` after each step's per-sample gradients, before
#: clipping and noise: ``p.grad_sample`` holds one row per sampled unit (for tests).
StepCallback = Callable[[dict[str, Tensor], nn.Module, Any], None]


def secret_seed() -> int:
    """64 bits of the operating system's CSPRNG; never derived from, or stored with, anything."""
    return secrets.randbits(64)


class SecretNoiseDPOptimizer(DPOptimizer):
    """Opacus' ``DPOptimizer`` (``secure_mode`` noise) whose generator is reseeded with
    :func:`secret_seed` before every step's noise."""

    def add_noise(self) -> None:
        self.generator.manual_seed(secret_seed())
        super().add_noise()

    def scale_grad(self) -> None:
        """Opacus' scaling, with ``accumulated_iterations`` (a pass over every parameter)
        read once per step instead of once per parameter."""
        if self.loss_reduction == "mean":
            scale = self.expected_batch_size * self.accumulated_iterations
            for p in self.params:
                p.grad /= scale


def secret_poisson_batches(sampler: UniformWithReplacementSampler) -> Iterator[list[int]]:
    """The sampler's Poisson batches, its generator reseeded secretly before each draw."""
    batches = iter(sampler)
    while True:
        sampler.generator.manual_seed(secret_seed())
        try:
            yield next(batches)
        except StopIteration:
            return


def plan_run(
    n_units: int,
    *,
    epochs: int,
    batch_size: int,
    noise_multiplier: float,
    epsilon_target: float | None,
    max_grad_norm: float,
    delta: float,
    accountant: str,
    privacy_unit: str,
    purpose: str,
    ledger: PrivacyLedger | None,
) -> PlannedRun:
    """The run's mechanism: ``q = batch_size / n_units``, ``epochs · ⌊1/q⌋`` steps, σ given
    or the smallest reaching ``epsilon_target`` cumulatively over ``ledger``'s history."""
    q = min(1.0, batch_size / n_units)
    steps = epochs * int(1 / q)
    sigma = noise_multiplier
    if epsilon_target is not None:
        prior = ledger.history() if ledger is not None else []
        sigma = noise_for_target(epsilon_target, delta, q, steps, prior, accountant)
    return PlannedRun(
        privacy_unit=privacy_unit,
        sample_rate=q,
        noise_multiplier=sigma,
        max_grad_norm=max_grad_norm,
        steps=steps,
        delta=delta,
        accountant=accountant,
        dataset_size=n_units,
        purpose=purpose,
    )


def make_patient_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    dataset: WindowDataset,
    ledger: PrivacyLedger | None,
    *,
    loss: WindowLoss,
    rng: np.random.Generator,
    epochs: int,
    batch_size: int,
    noise_multiplier: float = 1.0,
    epsilon_target: float | None = None,
    max_grad_norm: float = 1.0,
    delta: float = DEFAULT_DELTA,
    accountant: str = "rdp",
    privacy_unit: str = "patient",
    windows_per_patient: int = 1,
    event_fraction: float = 0.5,
    commit_every: int = 1,
    purpose: str = "site train",
) -> PatientPrivate:
    """Plan a DP-SGD run on ``dataset`` (the training patients' windows), check it against
    ``ledger``'s budget and open its ledger run; ``optimizer`` (over the trainable
    parameters) is wrapped in a :class:`SecretNoiseDPOptimizer`. ``ledger=None`` trains
    without charging anyone (synthetic data; ε of the run is still computed). ``rng`` draws
    the windows of the sampled patients (seed it from secrets for a real run)."""
    if privacy_unit not in PRIVACY_UNITS:
        raise SemioFedError(f"privacy unit must be one of {PRIVACY_UNITS}, got {privacy_unit!r}")
    if epochs < 1 or batch_size < 1 or windows_per_patient < 1:
        raise SemioFedError("epochs, batch size and windows per patient must be >= 1")
    if not 0.0 <= event_fraction <= 1.0:
        raise SemioFedError(f"event_fraction must be in [0, 1], got {event_fraction}")
    if not dataset.patients:
        raise SemioFedError("no training patients")
    by_patient = privacy_unit == "patient"
    n_units = len(dataset.patients) if by_patient else len(dataset)
    planned = plan_run(
        n_units,
        epochs=epochs,
        batch_size=batch_size,
        noise_multiplier=noise_multiplier,
        epsilon_target=epsilon_target,
        max_grad_norm=max_grad_norm,
        delta=delta,
        accountant=accountant,
        privacy_unit=privacy_unit,
        purpose=purpose,
        ledger=ledger,
    )
    device = next(model.parameters()).device
    dp_optimizer = SecretNoiseDPOptimizer(
        optimizer,
        noise_multiplier=planned.noise_multiplier,
        max_grad_norm=planned.max_grad_norm,
        expected_batch_size=max(1, round(planned.sample_rate * planned.dataset_size)),
        loss_reduction="mean",
        generator=torch.Generator(device=device),
        secure_mode=True,
    )
    picker = WindowPicker(dataset.patients, event_fraction, rng) if by_patient else None
    private = PatientPrivate(
        model, dp_optimizer, dataset, picker, planned, loss, windows_per_patient
    )
    if ledger is not None:  # last: nothing after the budget check can fail before training
        private.run = ledger.begin_run(planned, commit_every=commit_every)
    return private


class PatientPrivate:
    """A planned DP-SGD run (see :func:`make_patient_private`). Use as a context manager:
    leaving it closes the ledger run (``completed``, or ``failed`` on an exception) and
    clears the per-sample gradients."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: SecretNoiseDPOptimizer,
        dataset: WindowDataset,
        picker: WindowPicker | None,
        planned: PlannedRun,
        loss: WindowLoss,
        windows_per_patient: int,
    ):
        self.model, self.optimizer, self.dataset, self.picker = model, optimizer, dataset, picker
        self.planned, self.loss = planned, loss
        self.run: LedgerRun | None = None  # opened by make_patient_private after the plan
        self.k = windows_per_patient if picker is not None else 1
        self.steps = 0
        self.epochs_run = 0
        self.epsilon_total: float | None = None  # cumulative over the ledger, after the run
        self.device = next(model.parameters()).device
        self.sampler = UniformWithReplacementSampler(
            num_samples=planned.dataset_size,
            sample_rate=planned.sample_rate,
            generator=torch.Generator(),
        )
        names = {id(p): n for n, p in model.named_parameters()}
        self.params: list[nn.Parameter] = list(optimizer.params)
        self.names = [names[id(p)] for p in self.params]

    @property
    def run_id(self) -> str | None:
        return None if self.run is None else self.run.run_id

    def epsilon_run(self) -> float:
        """ε of this run alone (its steps so far) at the planned δ and accountant."""
        p = self.planned
        return epsilon([p.mechanism(self.steps)], p.delta, p.accountant)

    def run_epoch(self, step_callback: StepCallback | None = None) -> float:
        """One pass of ``⌊1/q⌋`` Poisson steps; the mean loss of the sampled windows (NaN if
        every step sampled nobody). Each step is counted in the ledger before its update."""
        self.model.train()
        losses = []
        for units in secret_poisson_batches(self.sampler):
            self.optimizer.zero_grad(set_to_none=True)
            if units:
                batch = self._batch(units)
                losses.append(self._per_sample_gradients(batch, len(units)))
                if step_callback is not None:
                    step_callback(batch, self.model, self.optimizer)
            else:  # an empty Poisson batch still releases a noise-only update
                for p in self.params:
                    p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
            if self.run is not None:
                self.run.count_step()  # counted before the noisy update exists
            self.optimizer.step()
            self.steps += 1
        self.epochs_run += 1
        return float(np.mean(losses)) if losses else math.nan

    def _batch(self, units: list[int]) -> dict[str, Tensor]:
        """The sampled units' windows, grouped by unit (``k`` consecutive rows each)."""
        if self.picker is None:
            flat = list(units)
        else:
            flat = [i for u in units for i in self.picker.draw(u, self.k)]
        batch = collate([self.dataset[i] for i in flat])
        return {key: v.to(self.device, non_blocking=True) for key, v in batch.items()}

    def _per_sample_gradients(self, batch: dict[str, Tensor], n: int) -> float:
        """Set ``p.grad_sample`` (one row per unit: the gradient of its mean window loss);
        returns the mean window loss."""
        k = self.k
        if k == 1 and n >= VMAP_MIN_SAMPLES:
            rows, mean_loss = self._vmap_gradients(batch)
        else:
            per_unit, total = [], 0.0
            for j in range(n):
                part = {key: v[j * k : (j + 1) * k] for key, v in batch.items()}
                window_loss = self.loss(self.model(part), part)
                per_unit.append(
                    torch.autograd.grad(
                        window_loss.sum() / k,
                        self.params,
                        allow_unused=True,
                        materialize_grads=True,  # a parameter the windows do not reach: 0
                    )
                )
                total += float(window_loss.detach().sum())
            rows = [torch.stack(gs) for gs in zip(*per_unit, strict=True)]
            mean_loss = total / (n * k)
        for p, row in zip(self.params, rows, strict=True):
            p.grad_sample = row
        return mean_loss

    def _vmap_gradients(self, batch: dict[str, Tensor]) -> tuple[list[Tensor], float]:
        """Per-window gradients by ``torch.func``: ``vmap`` of ``grad`` over the windows."""
        trainable = {n: p.detach() for n, p in zip(self.names, self.params, strict=True)}
        fixed: dict[str, Tensor] = {
            n: p.detach() for n, p in self.model.named_parameters() if n not in trainable
        }
        fixed.update(self.model.named_buffers())

        def unit_loss(params: dict[str, Tensor], one: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
            one = {key: v.unsqueeze(0) for key, v in one.items()}
            value = self.loss(functional_call(self.model, (params, fixed), (one,)), one).sum()
            return value, value.detach()

        per_sample = vmap(grad(unit_loss, has_aux=True), in_dims=(None, 0), randomness="different")
        grads, losses = per_sample(trainable, batch)
        return [grads[n] for n in self.names], float(losses.mean())

    def __enter__(self) -> PatientPrivate:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.optimizer.zero_grad(set_to_none=True)  # no per-sample gradient left on the model
        if self.run is None:
            return
        if exc is not None:
            self.run.finish("failed", error=f"{type(exc).__name__}: {exc}")
            return
        record = self.run.finish("completed", epochs_run=self.epochs_run)
        self.epsilon_total = record["epsilon_after"][self.planned.accountant]
