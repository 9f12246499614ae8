"""The site's patient-level DP-SGD trainer (:func:`.dp_training.train_local` on a small
SemioNet) offered to ``semiofed audit attack`` through the ``semiofed.patient_trainers``
entry point: the empirical audit then tests the mechanism that trains the site's models.

The DP and the non-DP model follow one recipe (epochs, batch, learning rate); only the
clipping and noise differ, so the non-DP control shows what the same training leaks."""

from __future__ import annotations

import torch

from semiofed.privacy.empirical.patient_canary import PatientTrainer, TrainedModel
from semiofed.shared.dataset import PatientWindows
from semiofed.shared.model import ModelConfig, SemioNet

from .dp_training import TrainConfig, train_local

AUDIT_MODEL = ModelConfig(channels=(8,), strides=(2,), motion_channels=(8,), motion_strides=(2,))


def semionet_trainer(
    noise_multiplier: float, max_grad_norm: float, delta: float, epochs: int
) -> PatientTrainer:
    def train(patients: list[PatientWindows], private: bool, seed: int) -> TrainedModel:
        torch.manual_seed(seed)  # the initialisation (a DP run's noise is secret regardless)
        model = SemioNet(AUDIT_MODEL)
        cfg = TrainConfig(
            dp=private,
            epochs=epochs,
            batch_size=4,  # small batches: many updates, so the non-DP control memorises
            lr=1e-2,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            delta=delta,
            augment=False,
            device="cpu",
            seed=seed,
            purpose="empirical audit (synthetic patients)",
        )
        # no ledger: synthetic patients, no site ε spent (ε of the run is computed anyway)
        result = train_local(model, patients, cfg, ledger=None, progress=False)
        return TrainedModel(model.eval(), result.epsilon_run if private else None, result.steps)

    return train
