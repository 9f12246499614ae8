"""ε for the Poisson-subsampled Gaussian mechanism of DP-SGD, via Opacus' accountants.

A *history* is a list of ``(noise_multiplier σ, sample_rate q, steps)`` tuples, exactly the
format of ``opacus.accountants.IAccountant.history``: the composition of every DP-SGD
step a site ever took. Every ε SemioFed reports (the ledger, ``semiofed audit epsilon``,
the training CLI) goes through :func:`epsilon`, so the numbers agree everywhere.

``rdp`` is Rényi-DP accounting (Mironov et al.; an upper bound, looser); ``prv`` is the
numerical privacy-loss-random-variable accountant (Gopi et al.; tighter, returns its upper
error bound).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from semiofed.shared.errors import SemioFedError

if TYPE_CHECKING:  # Opacus (and torch) load only when ε is computed: the CLI starts fast
    from opacus.accountants.accountant import IAccountant

ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv")

Mechanism = tuple[float, float, int]
"""``(noise_multiplier, sample_rate, steps)``, the order Opacus' accountant history uses."""

MAX_SIGMA = 1e4


def check_accountant(name: str) -> None:
    """Raise a clear error for an accountant name other than ``rdp`` or ``prv``."""
    if name not in ACCOUNTANTS:
        raise SemioFedError(f"unknown accountant {name!r}; choose one of {', '.join(ACCOUNTANTS)}")


def validate_mechanism(noise_multiplier: float, sample_rate: float, steps: int) -> None:
    """Raise a clear error for parameters no accountant can handle."""
    if not 0.0 < sample_rate <= 1.0:
        raise SemioFedError(f"sample rate must be in (0, 1], got {sample_rate}")
    if not (noise_multiplier >= 0.0 and math.isfinite(noise_multiplier)):
        raise SemioFedError(f"noise multiplier must be finite and >= 0, got {noise_multiplier}")
    if steps < 0 or int(steps) != steps:
        raise SemioFedError(f"steps must be a non-negative integer, got {steps}")


def _clean(history: Iterable[Sequence[float]]) -> list[Mechanism]:
    out: list[Mechanism] = []
    for sigma, q, steps in history:
        validate_mechanism(float(sigma), float(q), int(steps))
        if int(steps) > 0:
            out.append((float(sigma), float(q), int(steps)))
    return out


@functools.lru_cache(maxsize=4096)
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """Opacus' RDP of one step at its default orders (RDP composes linearly in steps)."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as rdp_analysis

    return np.asarray(
        rdp_analysis.compute_rdp(
            q=sample_rate,
            noise_multiplier=noise_multiplier,
            steps=1,
            orders=RDPAccountant.DEFAULT_ALPHAS,
        )
    )


def _rdp_epsilon(hist: Sequence[Mechanism], delta: float) -> float:
    """``RDPAccountant(history=hist).get_epsilon(delta)``, bit for bit, from the cached
    per-step curves (Opacus sums ``compute_rdp(steps=n)`` = curve × n the same way)."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as rdp_analysis

    rdp = sum(_rdp_per_step(sigma, q) * steps for sigma, q, steps in hist)
    eps, _ = rdp_analysis.get_privacy_spent(
        orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta
    )
    return float(eps)


@functools.cache
def _prv_accountant_class() -> type[IAccountant]:
    """Opacus' PRV accountant whose discretisation domain takes its RDP bounds from the
    cached per-step curves: its ``compute_safe_domain_size`` (remark 5.6 of Gopi et al.)
    recomputes them for every call, ~90 % of a PRV ε. Same domain, hence same ε, bit for
    bit (tests/test_dp_accounting.py)."""
    from opacus.accountants import PRVAccountant
    from opacus.accountants.analysis.prv import Domain

    class CachedDomainPRVAccountant(PRVAccountant):
        def _get_domain(
            self,
            prvs: list[Any],
            num_self_compositions: list[int],
            eps_error: float,
            delta_error: float,
        ) -> Domain:
            total = sum(num_self_compositions)
            hist = [
                (p.noise_multiplier, p.sample_rate, n)
                for p, n in zip(prvs, num_self_compositions, strict=True)
            ]
            bound = _rdp_epsilon(hist, delta_error / 4)
            for sigma, q, _ in hist:
                bound = max(bound, _rdp_epsilon([(sigma, q, 1)], delta_error / (8 * total)))
            size = max(bound, eps_error) + 3
            mesh_size = eps_error / np.sqrt(total * np.log(12 / delta_error) / 2)
            return Domain.create_aligned(-size, size, mesh_size)

    return CachedDomainPRVAccountant


def epsilon(history: Iterable[Sequence[float]], delta: float, accountant: str = "rdp") -> float:
    """ε at ``delta`` of the composition of every mechanism in ``history``.

    An empty history spends nothing (0.0); a step without noise (σ = 0) spends infinity.
    ``rdp`` is computed exactly as ``RDPAccountant.get_privacy_spent`` does (Opacus' RDP
    functions and default orders), with each (σ, q)'s per-step RDP curve cached; ``prv`` is
    Opacus' ``PRVAccountant.get_epsilon`` with its domain's RDP bounds from the same curves.
    Each result is memoised in this process on (history, δ, accountant): a ledger asks
    for the ε of one history several times per run, and a new step is a new history.
    """
    if not 0.0 < delta < 1.0:
        raise SemioFedError(f"delta must be in (0, 1), got {delta}")
    check_accountant(accountant)
    return _epsilon(tuple(_clean(history)), float(delta), accountant)


@functools.lru_cache(maxsize=4096)
def _epsilon(hist: tuple[Mechanism, ...], delta: float, accountant: str) -> float:
    if not hist:
        return 0.0
    if any(sigma == 0.0 for sigma, _, _ in hist):
        return math.inf
    with warnings.catch_warnings():
        # RDP warns when the best order is the largest one tried: the bound is then
        # looser than it could be, but still a valid upper bound.
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        # PRV at q = 1 takes log(1 - q) = -inf internally; the result is still finite and right
        warnings.filterwarnings("ignore", category=RuntimeWarning, message="divide by zero")
        if accountant == "rdp":
            return _rdp_epsilon(hist, delta)
        acc = _prv_accountant_class()()
        acc.history = list(hist)
        return float(acc.get_epsilon(delta=delta))


def noise_for_target(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    prior: Iterable[Sequence[float]] = (),
    accountant: str = "rdp",
    tolerance: float = 0.01,
) -> float:
    """Smallest σ (within ``tolerance`` in ε) such that ``prior`` + ``steps`` steps at
    ``(σ, sample_rate)`` stays at or below ``target_epsilon`` at ``delta``.

    Raises :class:`SemioFedError` when even σ = ``MAX_SIGMA`` does not fit (the prior
    history already spends the target).
    """
    prior_hist = _clean(prior)
    validate_mechanism(1.0, sample_rate, steps)

    def eps_at(sigma: float) -> float:
        return epsilon([*prior_hist, (sigma, sample_rate, steps)], delta, accountant)

    if eps_at(MAX_SIGMA) > target_epsilon:
        spent = epsilon(prior_hist, delta, accountant)
        raise SemioFedError(
            f"no noise multiplier reaches ε ≤ {target_epsilon:g} at δ={delta:g}: "
            f"{spent:.3f} is already spent"
        )
    lo, hi = 0.0, 1.0
    while eps_at(hi) > target_epsilon:
        lo, hi = hi, hi * 2
    # bisect until the ε of hi is within tolerance of the target (hi always fits)
    while True:
        mid = (lo + hi) / 2
        eps_mid = eps_at(mid)
        if eps_mid <= target_epsilon:
            hi = mid
            if target_epsilon - eps_mid <= tolerance:
                return hi
        else:
            lo = mid
        if hi - lo < 1e-4:
            return hi


def max_steps(
    epsilon_max: float,
    delta: float,
    noise_multiplier: float,
    sample_rate: float,
    prior: Iterable[Sequence[float]] = (),
    accountant: str = "rdp",
    limit: int = 10_000_000,
) -> int:
    """Largest number of further steps at ``(σ, q)`` keeping ε ≤ ``epsilon_max`` (0 if none)."""
    prior_hist = _clean(prior)

    def fits(steps: int) -> bool:
        hist = [*prior_hist, (noise_multiplier, sample_rate, steps)]
        return epsilon(hist, delta, accountant) <= epsilon_max

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while fits(hi):
        lo, hi = hi, hi * 2
        if hi > limit:
            return limit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo
