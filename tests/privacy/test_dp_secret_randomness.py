"""DP noise and patient sampling are secret: attacks that know the public seed fail."""

from __future__ import annotations

import math

import numpy as np
import torch

from semiofed.client.dp_training import TrainConfig, train_local
from semiofed.privacy.accounting import epsilon
from semiofed.shared.model import SemioNet
from tests.client.test_dp_sampling import TINY, tiny_patients

PUBLIC_SEED = 0
SIGMA, EPOCHS, DELTA = 8.0, 3, 1e-3  # q = 1 (batch ≥ patients): 3 full-batch Gaussian steps
TRIALS = 24
CONFIDENCE = 0.999


def _trained(patients, dp: bool = True) -> np.ndarray:
    """The weights released after training from the public seed (init and config public)."""
    torch.manual_seed(PUBLIC_SEED)
    model = SemioNet(TINY)
    cfg = TrainConfig(
        epochs=EPOCHS,
        dp=dp,
        batch_size=8,
        noise_multiplier=SIGMA,
        delta=DELTA,
        augment=False,
        device="cpu",
        seed=PUBLIC_SEED,
    )
    train_local(model, patients, cfg, progress=False)
    return torch.cat([p.detach().flatten() for p in model.parameters()]).numpy()


def test_dp_runs_of_one_configuration_and_seed_differ_non_dp_runs_repeat() -> None:
    patients = tiny_patients(4, windows=8)
    assert not np.array_equal(_trained(patients), _trained(patients))
    np.testing.assert_array_equal(_trained(patients, dp=False), _trained(patients, dp=False))


def test_membership_attack_knowing_the_public_seed_is_within_the_dp_bound() -> None:
    """The attacker knows the public seed, the configuration, the initial model, every other
    patient and the target; it replays training with and without the target and says "in"
    when the released weights are closer to its replay with the target. (ε, δ)-DP bounds the
    accuracy of ANY such test at balanced priors by (e^ε + δ) / (1 + e^ε); the test fails if
    the observed count of correct guesses would have probability < 1 − CONFIDENCE under that
    bound. Predictable noise (the seed reproducing the run) makes every guess correct."""
    from scipy.stats import binom

    others = tiny_patients(4, windows=8, seed=1)
    target = tiny_patients(1, windows=8, seed=2)[0]
    with_target, without = [*others, target], others
    replay_in, replay_out = _trained(with_target), _trained(without)
    truth = [i % 2 == 0 for i in range(TRIALS)]
    correct = 0
    for member in truth:
        released = _trained(with_target if member else without)
        guess = np.linalg.norm(released - replay_in) < np.linalg.norm(released - replay_out)
        correct += guess == member
    eps = epsilon([(SIGMA, 1.0, EPOCHS)], DELTA, "rdp")
    bound = (math.exp(eps) + DELTA) / (1 + math.exp(eps))
    limit = int(binom.isf(1 - CONFIDENCE, TRIALS, bound))  # P(X > limit) ≤ 1 − CONFIDENCE
    assert limit < TRIALS  # informative: a perfect attack breaks the bound
    assert correct <= limit, f"{correct}/{TRIALS} correct; (ε={eps:.2f}, δ) allows ≤ {limit}"
