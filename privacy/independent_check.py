"""Recompute every ε in a site's privacy ledger with Google's ``dp-accounting``, not Opacus.

The ledger (``STATE/privacy_ledger.json``, written by :mod:`semiofed.privacy.ledger` with
Opacus' accountants) is read as plain JSON. Each training run is the Poisson-subsampled
Gaussian mechanism ``PoissonSampledDpEvent(q, GaussianDpEvent(σ))`` self-composed for its
counted steps; runs compose in ledger order. After each finished run the cumulative ε is
recomputed at the run's δ with

* ``dp_accounting.rdp.RdpAccountant`` (compared with the ledger's ``rdp`` value), and
* ``dp_accounting.pld.PLDAccountant`` (compared with the ledger's ``prv`` value),

and any disagreement beyond ``rel_tol`` (relative) **and** ``abs_tol`` (absolute) is
flagged. The two libraries use different RDP orders and numerical methods; on reference
settings they agree within 1 %, so the default tolerance is 2 % relative, 0.01 absolute.
A run whose time span overlaps another run's is reported but not compared: its recorded
ε depends on how the concurrent runs interleaved.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semiofed.shared.errors import FormatError

if TYPE_CHECKING:
    import dp_accounting

LEDGER_FILE = "privacy_ledger.json"
REL_TOL = 0.02
ABS_TOL = 0.01
# the ledger's accountant name -> the independent accountant it is compared with
COUNTERPART = {"rdp": "rdp", "prv": "pld"}
# PLD grid step: 1e-3 is 7× faster than dp-accounting's 1e-4 and, being pessimistic, still an
# upper bound; on reference settings it moves ε by < 0.4 %
PLD_INTERVAL = 1e-3


def gaussian_event(
    noise_multiplier: float, sample_rate: float, steps: int
) -> dp_accounting.DpEvent:
    """``steps`` DP-SGD steps: Poisson-subsampled Gaussian, self-composed."""
    import dp_accounting

    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(
            sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier)
        ),
        steps,
    )


class IndependentAccountant:
    """RDP and PLD accountants from dp-accounting, composed incrementally."""

    def __init__(self) -> None:
        from dp_accounting import pld, rdp  # imported here: dp-accounting loads slowly

        self.rdp = rdp.RdpAccountant()
        self.pld = pld.PLDAccountant(value_discretization_interval=PLD_INTERVAL)
        self.infinite = False

    def compose(self, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        if steps <= 0:
            return
        if noise_multiplier <= 0:
            self.infinite = True
            return
        event = gaussian_event(noise_multiplier, sample_rate, steps)
        self.rdp.compose(event)
        self.pld.compose(event)

    def epsilon(self, delta: float) -> dict[str, float]:
        if self.infinite:
            return {"rdp": math.inf, "pld": math.inf}
        return {
            "rdp": float(self.rdp.get_epsilon(delta)),
            "pld": float(self.pld.get_epsilon(delta)),
        }


def independent_epsilon(history: list[tuple[float, float, int]], delta: float) -> dict[str, float]:
    """ε (RDP and PLD) of a history ``[(σ, q, steps), …]`` at ``delta``."""
    acc = IndependentAccountant()
    for sigma, q, steps in history:
        acc.compose(float(sigma), float(q), int(steps))
    return acc.epsilon(delta)


@dataclass
class RunCheck:
    run_id: str
    privacy_unit: str
    delta: float
    steps: int
    recorded: dict[str, float]
    independent: dict[str, float]
    disagreements: list[str] = field(default_factory=list)
    skipped: str = ""


@dataclass
class LedgerCheck:
    ledger: str
    rel_tol: float
    abs_tol: float
    runs: list[RunCheck]

    @property
    def ok(self) -> bool:
        return not any(r.disagreements for r in self.runs)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def _outside(recorded: float, independent: float, rel_tol: float, abs_tol: float) -> bool:
    if math.isinf(recorded) or math.isinf(independent):
        return math.isinf(recorded) != math.isinf(independent)
    diff = abs(recorded - independent)
    return diff > abs_tol and diff > rel_tol * abs(independent)


def read_ledger(state_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    path = Path(state_dir) / LEDGER_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FormatError(path, f"cannot read privacy ledger ({exc})") from None
    except json.JSONDecodeError as exc:
        raise FormatError(path, f"not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise FormatError(path, "a privacy ledger needs a 'runs' list")
    return path, data


def _field(path: Path, run: dict[str, Any], index: int, name: str) -> Any:
    if name not in run:
        raise FormatError(path, f"runs[{index}] has no field {name!r}")
    return run[name]


def _overlaps(run: dict[str, Any], runs: list[dict[str, Any]]) -> bool:
    start, end = run.get("started"), run.get("finished")
    if not start or not end:
        return False
    for other in runs:
        if other is run or int(other.get("steps_counted", 0)) <= 0:
            continue
        o_start, o_end = other.get("started"), other.get("finished")
        if o_start and o_start < end and (o_end is None or o_end > start):
            return True
    return False


def check_ledger(
    state_dir: str | Path, rel_tol: float = REL_TOL, abs_tol: float = ABS_TOL
) -> LedgerCheck:
    """Recompute the ledger's cumulative ε after every run and compare."""
    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting's per-order notices
    path, data = read_ledger(state_dir)
    acc = IndependentAccountant()
    checks: list[RunCheck] = []
    for i, run in enumerate(data["runs"]):
        steps = int(run.get("steps_counted", 0))
        if steps <= 0:
            continue
        sigma = float(_field(path, run, i, "noise_multiplier"))
        q = float(_field(path, run, i, "sample_rate"))
        delta = float(_field(path, run, i, "delta"))
        acc.compose(sigma, q, steps)
        recorded = run.get("epsilon_after") or {}
        if not isinstance(recorded, dict):
            recorded = {str(run.get("accountant", "rdp")): recorded}
        check = RunCheck(
            run_id=str(run.get("run_id", f"runs[{i}]")),
            privacy_unit=str(run.get("privacy_unit", "?")),
            delta=delta,
            steps=steps,
            recorded={k: float(v) for k, v in recorded.items()},
            independent=acc.epsilon(delta),
        )
        if not recorded:
            check.skipped = f"no ε recorded (status {run.get('status', '?')})"
        elif _overlaps(run, data["runs"]):
            check.skipped = "overlapped another run; ε after depends on the interleaving"
        else:
            for name, value in check.recorded.items():
                other = COUNTERPART.get(name)
                if other is None:
                    check.disagreements.append(f"unknown accountant {name!r} in the ledger")
                elif _outside(value, check.independent[other], rel_tol, abs_tol):
                    direction = "UNDERSTATES" if value < check.independent[other] else "overstates"
                    check.disagreements.append(
                        f"{name} ε {value:.4f} {direction} the dp-accounting {other.upper()} "
                        f"ε {check.independent[other]:.4f} (δ={delta:g})"
                    )
        checks.append(check)
    return LedgerCheck(str(path), rel_tol, abs_tol, checks)


def format_check(result: LedgerCheck) -> str:
    lines = [
        f"ledger: {result.ledger}",
        "independent accountant: Google dp-accounting (RDP and PLD); tolerance "
        f"{result.rel_tol:.1%} relative and {result.abs_tol:g} absolute",
        f"{'run':<30} {'unit':<8} {'δ':>8} {'steps':>7}  {'ledger rdp/prv':>17}  {'dp-acc rdp/pld':>17}  verdict",
    ]
    for r in result.runs:
        rec = "/".join(f"{r.recorded[k]:.3f}" if k in r.recorded else "-" for k in ("rdp", "prv"))
        ind = f"{r.independent['rdp']:.3f}/{r.independent['pld']:.3f}"
        verdict = (
            "DISAGREES: " + "; ".join(r.disagreements)
            if r.disagreements
            else (f"not compared: {r.skipped}" if r.skipped else "agrees")
        )
        lines.append(
            f"{r.run_id[:30]:<30} {r.privacy_unit:<8} {r.delta:>8.1e} {r.steps:>7}  {rec:>17}  {ind:>17}  {verdict}"
        )
    if not result.runs:
        lines.append("(no run with counted steps)")
    lines.append(
        "result: every recorded ε agrees" if result.ok else "result: DISAGREEMENT — see above"
    )
    return "\n".join(lines)
