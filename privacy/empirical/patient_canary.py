"""The one-run canary audit (:mod:`.canary`) at SemioFed's own granularity: each canary is a
*patient*, and the model is trained by the site's patient-level DP-SGD trainer
(:func:`semiofed.privacy.dp_sgd.make_patient_private`, the one ``site train`` and a federated
round use, on a small SemioNet), not a stand-in.

A canary must be one the trainer memorises without DP, or the audit has no power: its
bound would be 0 on a leaking model too. Each canary patient is ONE window of unit-variance
noise with its own random seizure type and its own constant posture offset
(:func:`synthetic_patients`), among few other patients, trained for many small-batch epochs.
Without DP, SemioNet then fits the canaries it trained on: with an offset of std 6 the
one-run audit guesses 29–30 of 30 right (ε lower bound 1.7–2.3 at 95 %, with 1 or 2 torch
threads); an offset of std 2 gave 18–23 of 30, a bound of 0 or 0.43 depending on the thread
count, i.e. no reliable power. (The DP trainer itself with noise 0 and no clipping is no
reliable control: its Poisson sampling is secret, and it gave 28 of 30 in one run, a bound of
0.28 in the next.) With DP the same recipe must keep the bound below the accountant's ε.

The DP and the non-DP model follow one recipe (epochs, batch of patients, learning rate,
loss); the non-DP control is seeded shuffled minibatches without clipping or noise, so it
shows what the same training leaks without DP. Every patient is synthetic (no patient data); the
membership score of a canary is minus its mean type loss.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from semiofed.shared.dataset import PatientWindows, WindowDataset, collate
from semiofed.shared.features import STREAM_NAMES, STREAM_SHAPES
from semiofed.shared.labels import CLASSES
from semiofed.shared.model import ModelConfig, SemioNet, loss_per_window, predict_windows
from semiofed.shared.windows import WindowConfig

from ..dp_sgd import make_patient_private
from .canary import guess_and_bound

CANARY_OFFSET = 6.0  # std of a canary patient's constant per stream channel
AUDIT_MODEL = ModelConfig(channels=(8,), strides=(2,), motion_channels=(8,), motion_strides=(2,))
AUDIT_BATCH, AUDIT_LR = 4, 1e-2  # small batches: many updates, so the non-DP control memorises


@dataclass
class TrainedModel:
    model: nn.Module
    epsilon: float | None  # the trainer's claimed patient-level ε (None without DP)
    steps: int


#: ``trainer(patients, private, seed)``: train a fresh model on ``patients``.
PatientTrainer = Callable[[list[PatientWindows], bool, int], TrainedModel]


def patient_trainer(
    noise_multiplier: float, max_grad_norm: float, delta: float, epochs: int
) -> PatientTrainer:
    """The site's patient-level DP-SGD on a small SemioNet (:data:`AUDIT_MODEL`), one window
    per sampled patient; ``private=False`` trains the non-DP control (:func:`_train_plain`)."""

    def train(patients: list[PatientWindows], private: bool, seed: int) -> TrainedModel:
        torch.manual_seed(seed)  # the initialisation (a DP run's noise is secret regardless)
        model = SemioNet(AUDIT_MODEL)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(trainable, lr=AUDIT_LR)
        if not private:
            steps = _train_plain(model, optimizer, WindowDataset(patients), epochs, seed)
            return TrainedModel(model.eval(), None, steps)
        private_run = make_patient_private(
            model,
            optimizer,
            WindowDataset(patients),
            None,  # synthetic patients: no site ε spent (ε of the run is computed anyway)
            loss=_loss,
            rng=np.random.default_rng(secrets.randbits(128)),
            epochs=epochs,
            batch_size=AUDIT_BATCH,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            delta=delta,
            purpose="empirical audit (synthetic patients)",
        )
        with private_run:
            for _ in range(epochs):
                private_run.run_epoch()
        return TrainedModel(model.eval(), private_run.epsilon_run(), private_run.steps)

    return train


def _loss(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return loss_per_window(out, batch, 1.0)


def _train_plain(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    dataset: WindowDataset,
    epochs: int,
    seed: int,
) -> int:
    """The non-DP control: the same recipe (epochs, batch, learning rate, loss) as seeded
    shuffled minibatches, no clipping, no noise; returns the steps taken."""
    generator = torch.Generator().manual_seed(seed)
    model.train()
    steps = 0
    for _ in range(epochs):
        for idx in torch.randperm(len(dataset), generator=generator).split(AUDIT_BATCH):
            batch = collate([dataset[int(i)] for i in idx])
            optimizer.zero_grad(set_to_none=True)
            _loss(model(batch), batch).mean().backward()
            optimizer.step()
            steps += 1
    return steps


def synthetic_patients(
    n: int, windows: int, seed: int, prefix: str, offset: float = 0.0
) -> list[PatientWindows]:
    """``n`` patients of random unit-variance windows, each with one random seizure type.

    ``offset`` > 0 adds to each patient a constant per channel of every stream (the same in
    all its frames and nodes, N(0, offset²)): SemioNet pools over frames and nodes, which
    averages iid noise away, so without it every patient looks alike to the model."""
    rng = np.random.default_rng(seed)
    cfg = WindowConfig()
    t = round(cfg.seconds * cfg.fps)
    out = []
    for i in range(n):
        x = {
            s: (
                rng.normal(size=(windows, t, *STREAM_SHAPES[s]))
                + offset * rng.normal(size=(1, 1, 1, STREAM_SHAPES[s][1]))
            ).astype(np.float32)
            for s in STREAM_NAMES
        }
        mask = {s: np.ones((windows, t), np.float32) for s in STREAM_NAMES}
        out.append(
            PatientWindows(
                site="audit",
                patient=f"{prefix}-{i:04d}",
                x=x,
                mask=mask,
                y_detect=np.ones(windows, np.int64),
                y_type=np.full(windows, rng.integers(1, len(CLASSES)), np.int64),
                lateralization=np.full(windows, "unknown", "<U9"),
                t0=np.arange(windows, dtype=np.float64),
                recording=np.full(windows, f"{prefix}-{i:04d}", "<U64"),
            )
        )
    return out


def patient_loss(model: nn.Module, p: PatientWindows) -> float:
    """Mean cross-entropy of the type head over the patient's windows."""
    logits = predict_windows(model, p.x, p.mask)["type_logits"].astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(p)), p.y_type].mean())


def run_patient_canary_audit(
    trainer: PatientTrainer,
    private: bool,
    delta: float,
    n_train: int = 10,
    canaries: int = 100,
    guesses: int = 30,
    windows: int = 1,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Train once on synthetic patients plus a random half of the canary patients; bound the
    patient-level ε from below."""
    if guesses % 2 or guesses > canaries:
        raise ValueError("guesses must be even and at most the number of canaries")
    base = synthetic_patients(n_train, windows, seed, "base")
    canary = synthetic_patients(canaries, windows, seed + 7, "canary", CANARY_OFFSET)
    included = np.random.default_rng(seed + 11).random(canaries) < 0.5
    members = [c for c, inc in zip(canary, included, strict=True) if inc]
    trained = trainer([*base, *members], private, seed)
    score = -np.array([patient_loss(trained.model, c) for c in canary])
    return {
        "attack": "patient_canary_one_run",
        "privacy_unit": "patient",
        "private": private,
        "claimed_epsilon": trained.epsilon,
        "delta": delta,
        "steps": trained.steps,
        "n_train": n_train,
        **guess_and_bound(score, included, guesses, delta, confidence, trained.epsilon),
    }
