"""A site's privacy ledger: every DP-SGD step the site ever took, and its ε budget.

Stored in ``STATE/privacy_ledger.json`` (atomic writes; ``fcntl`` lock on
``STATE/privacy_ledger.lock`` for every read-modify-write, so several processes can share
it). Each training run is one record::

    {run_id, status, privacy_unit, sample_rate, noise_multiplier, max_grad_norm,
     steps_planned, steps_counted, delta, accountant, epsilon_before, epsilon_after,
     started, updated, finished, pid, host, purpose, ...}

Crash safety: a run *counts* a step in the ledger before the step's noisy update is
computed (:meth:`LedgerRun.count_step` is called before ``optimizer.step()``), so a killed
process leaves every step whose result could exist counted (possibly one reservation
more, never fewer). ``status`` then stays ``running`` until another process sees the
PID is gone and marks it ``interrupted``; the counted steps stay in the history.

The cumulative history (``[(σ, q, steps), …]`` as Opacus' accountants keep it) is the
list of counted steps of every run; ε is computed from it by
:mod:`semiofed.privacy.accounting`. Budget enforcement (:meth:`PrivacyLedger.begin_run`)
happens before any training, under the lock, and also reserves the planned steps of
runs still in flight in other processes, so concurrent runs cannot jointly overspend.

Fails closed (:mod:`.ledger_integrity`): only the privacy officer creates a ledger, bound by
their signature to the site's patient set (:mod:`.ledger_binding`, ``semiofed audit
init-ledger``); a missing, truncated, edited or rolled-back ledger refuses every DP action
with one line naming the file. Every run that closes is linked into the ledger's history
chain and its head recorded in the signed audit trail (``ledger_state``).

Privacy units: a ``window``-level run protects single windows, not patients; once any
window-level run is in the ledger, the cumulative ε is *not* a patient-level guarantee
(:meth:`PrivacyLedger.summary` says so).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from semiofed.shared.atomic import atomic_write_json, pid_alive
from semiofed.shared.errors import SemioFedError

from .accounting import ACCOUNTANTS, Mechanism, epsilon, max_steps, noise_for_target
from .approval import OFFICER_KEY_FILE, OFFICER_PUB_FILE
from .ledger_integrity import (
    LedgerIntegrityError,
    check_data,
    check_history,
    digest,
    ledger_id,
    link,
    patient_hash,
)

LEDGER_FILE = "privacy_ledger.json"
LOCK_FILE = "privacy_ledger.lock"
LEDGER_VERSION = 2
PRIVACY_UNITS: tuple[str, ...] = ("patient", "window")


class BudgetExceeded(SemioFedError):
    """A planned run would push the site's ε over its budget; nothing was trained."""

    def __init__(
        self, message: str, *, remaining: float, max_steps: int, sigma_needed: float | None
    ):
        super().__init__(message)
        self.remaining = remaining
        self.max_steps = max_steps
        self.sigma_needed = sigma_needed


@dataclass(frozen=True)
class Budget:
    epsilon_max: float
    delta: float
    accountant: str = "rdp"


@dataclass(frozen=True)
class PlannedRun:
    """What a training run intends to do, declared before it starts."""

    privacy_unit: str
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    steps: int
    delta: float
    accountant: str = "rdp"
    dataset_size: int | None = None  # number of privacy units (patients or windows)
    purpose: str = "site train"

    def mechanism(self, steps: int | None = None) -> Mechanism:
        return (self.noise_multiplier, self.sample_rate, self.steps if steps is None else steps)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _counted_history(runs: list[dict[str, Any]]) -> list[Mechanism]:
    return [
        (float(r["noise_multiplier"]), float(r["sample_rate"]), int(r["steps_counted"]))
        for r in runs
        if int(r.get("steps_counted", 0)) > 0
    ]


class PrivacyLedger:
    """The privacy ledger of one site, kept in ``state_dir``."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / LEDGER_FILE
        self.lock_path = self.state_dir / LOCK_FILE
        self._hashes: list[str] = []  # the history chain of the last checked read

    # -- storage ---------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Exclusive lock; yields the checked ledger data, written back atomically on success
        (runs that closed are linked into the history chain and recorded in the trail)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                data = self._read()
                before = json.dumps(data, sort_keys=True)
                yield data
                if json.dumps(data, sort_keys=True) != before:
                    self._write(data)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _write(self, data: dict[str, Any]) -> None:
        data["history"] = [list(m) for m in _counted_history(data["runs"])]
        linked = {e["run_id"] for e in data["closed"]}
        closed_now = [
            r for r in data["runs"] if r["status"] != "running" and r["run_id"] not in linked
        ]
        head = data["closed"][-1]["hash"] if data["closed"] else self._hashes[0]
        for r in closed_now:
            head = link(head, r)
            data["closed"].append({"run_id": r["run_id"], "hash": head})
        data["digest"] = digest(data)
        atomic_write_json(self.path, data)
        if closed_now:
            from .audit_trail import site_trail

            site_trail(self.state_dir).append("ledger_state", self._head(data, head))

    @staticmethod
    def _head(data: dict[str, Any], head: str) -> dict[str, Any]:
        return {"ledger_id": ledger_id(data), "closed": len(data["closed"]), "history_hash": head}

    def _read(self) -> dict[str, Any]:
        if not self.path.exists():
            raise LedgerIntegrityError(
                self.path,
                "no privacy ledger; refusing every DP action. Only the privacy officer creates "
                "one: `semiofed audit init-ledger --state STATE --data DATA --key OFFICER_KEY`",
            )
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LedgerIntegrityError(
                self.path, f"unreadable privacy ledger ({exc}); refusing every DP action"
            ) from None
        if not isinstance(data, dict) or data.get("version") != LEDGER_VERSION:
            raise LedgerIntegrityError(self.path, f"not a version-{LEDGER_VERSION} privacy ledger")
        if not isinstance(data.get("runs"), list) or not isinstance(data.get("closed"), list):
            raise LedgerIntegrityError(self.path, "fields 'runs' and 'closed' must be lists")
        if (self.state_dir / OFFICER_KEY_FILE).exists():
            raise LedgerIntegrityError(
                self.path,
                f"a privacy officer's private key lies in the state folder "
                f"({self.state_dir / OFFICER_KEY_FILE}): whoever reads STATE could sign approvals "
                "and ledger bindings; move it off this host",
            )
        self._hashes = check_data(self.path, data, self.state_dir / OFFICER_PUB_FILE)
        return data

    def create(self, binding: dict[str, Any]) -> None:
        """Write a new, empty ledger under the officer-signed ``binding`` (see
        :func:`semiofed.privacy.ledger_binding.init_ledger`); refuses to replace one."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                if self.path.exists():
                    raise LedgerIntegrityError(
                        self.path, "a privacy ledger already exists here; refusing to replace it"
                    )
                data: dict[str, Any] = {
                    "version": LEDGER_VERSION,
                    "binding": binding,
                    "budget": binding["body"]["budget"],
                    "budget_changes": [{"time": _now(), **binding["body"]["budget"]}],
                    "runs": [],
                    "closed": [],
                    "history": [],
                }
                data["digest"] = digest(data)
                atomic_write_json(self.path, data)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def load(self) -> dict[str, Any]:
        """A consistent, checked snapshot of the ledger (read under the lock)."""
        with self._locked() as data:
            return json.loads(json.dumps(data))

    def head(self) -> dict[str, Any]:
        """``{ledger_id, closed, history_hash}``: what the trail and the officer's anchors record."""
        with self._locked() as data:
            return self._head(data, self._hashes[-1])

    def check_patients(self, patients: Iterable[str]) -> None:
        """Refuse DP on any patient this ledger is not bound to (a ledger of other data)."""
        bound = set(self.load()["binding"]["body"]["patients"])
        outside = sum(patient_hash(p) not in bound for p in patients)
        if outside:
            raise LedgerIntegrityError(
                self.path,
                f"{outside} of the patients to be used are not bound to this ledger (it covers "
                f"{len(bound)}); the privacy officer creates this data's own ledger "
                "(`semiofed audit init-ledger`)",
            )

    def check_history(self) -> None:
        """The ledger against the signed trail and the officer's anchors (raises on rollback)."""
        with self._locked() as data:
            check_history(self.path, data, self._hashes, self.state_dir)

    # -- budget and ε ----------------------------------------------------------------------
    @property
    def budget(self) -> Budget:
        return Budget(**self.load()["budget"])

    def set_budget(self, epsilon_max: float, delta: float, accountant: str = "rdp") -> Budget:
        """Lower the site budget ε_max (at the bound δ and accountant). Raising it, or changing
        δ or the accountant, needs a new officer-signed binding (``audit init-ledger``)."""
        if not epsilon_max > 0:
            raise SemioFedError(f"epsilon budget must be > 0, got {epsilon_max}")
        new = Budget(float(epsilon_max), float(delta), accountant)
        with self._locked() as data:
            o = Budget(**data["budget"])
            if (o.delta, o.accountant) != (
                new.delta,
                new.accountant,
            ) or new.epsilon_max > o.epsilon_max:
                raise SemioFedError(
                    f"{self.path}: the site budget is ε ≤ {o.epsilon_max:g} at δ={o.delta:g} "
                    f"({o.accountant}); only lowering ε_max is allowed here "
                    f"(asked for ε ≤ {new.epsilon_max:g} at δ={new.delta:g}, {new.accountant})"
                )
            if new != o:
                data["budget"] = asdict(new)
                data["budget_changes"].append({"time": _now(), **asdict(new)})
        return new

    def history(self) -> list[Mechanism]:
        """Cumulative ``[(σ, q, steps), …]`` of every counted step."""
        return _counted_history(self.load()["runs"])

    def spent(self, delta: float | None = None, accountant: str | None = None) -> float:
        """ε spent so far (default: at the budget's δ with its accountant)."""
        budget = self.budget
        if delta is None or accountant is None:
            delta = budget.delta if delta is None else delta
            accountant = budget.accountant if accountant is None else accountant
        return epsilon(self.history(), delta, accountant)

    def summary(self) -> dict[str, Any]:
        """Budget, ε spent (RDP and PRV at the budget's δ), units and run counts."""
        data = self.load()
        hist = _counted_history(data["runs"])
        units = sorted(
            {r["privacy_unit"] for r in data["runs"] if int(r.get("steps_counted", 0)) > 0}
        )
        out: dict[str, Any] = {
            "ledger": str(self.path),
            "budget": data["budget"],
            "history": [list(m) for m in hist],
            "steps": sum(m[2] for m in hist),
            "runs": len(data["runs"]),
            "privacy_units": units,
            "patient_level_guarantee": units in ([], ["patient"]),
            "delta": data["budget"]["delta"],
        }
        out["epsilon_spent"] = {acc: epsilon(hist, out["delta"], acc) for acc in ACCOUNTANTS}
        return out

    # -- runs ------------------------------------------------------------------------------
    def _validate(self, planned: PlannedRun, budget: Budget) -> None:
        if planned.privacy_unit not in PRIVACY_UNITS:
            raise SemioFedError(
                f"privacy unit must be one of {PRIVACY_UNITS}, got {planned.privacy_unit!r}"
            )
        if planned.accountant not in ACCOUNTANTS:
            raise SemioFedError(f"unknown accountant {planned.accountant!r}")
        if not planned.max_grad_norm > 0:
            raise SemioFedError(f"clipping norm must be > 0, got {planned.max_grad_norm}")
        if planned.delta != budget.delta:
            raise SemioFedError(
                f"{self.path}: the site budget is set at δ={budget.delta:g}; "
                f"this run asks for δ={planned.delta:g} (ε at different δ do not compose)"
            )

    def _reap_stale(self, data: dict[str, Any]) -> None:
        host = socket.gethostname()
        for r in data["runs"]:
            if r["status"] == "running" and r.get("host") == host and not pid_alive(int(r["pid"])):
                r["status"] = "interrupted"
                r["updated"] = _now()

    def _check(self, data: dict[str, Any], planned: PlannedRun) -> dict[str, Any]:
        """Budget check for ``planned`` against ``data``; raises BudgetExceeded."""
        budget = Budget(**data["budget"])
        self._validate(planned, budget)
        prior = _counted_history(data["runs"])
        # steps other in-flight runs may still take are reserved against the budget
        in_flight = [
            (
                float(r["noise_multiplier"]),
                float(r["sample_rate"]),
                int(r["steps_planned"]) - int(r["steps_counted"]),
            )
            for r in data["runs"]
            if r["status"] == "running" and int(r["steps_planned"]) > int(r["steps_counted"])
        ]
        prior_all = prior + in_flight
        acc, delta = budget.accountant, budget.delta
        before = epsilon(prior_all, delta, acc)
        after = epsilon([*prior_all, planned.mechanism()], delta, acc)
        if after <= budget.epsilon_max:
            return {"epsilon_before": before, "epsilon_planned": after}
        fit = max_steps(
            budget.epsilon_max, delta, planned.noise_multiplier, planned.sample_rate, prior_all, acc
        )
        try:
            sigma = noise_for_target(
                budget.epsilon_max, delta, planned.sample_rate, planned.steps, prior_all, acc
            )
        except SemioFedError:
            sigma = None
        remaining = max(0.0, budget.epsilon_max - before)
        sigma_text = (
            f"a noise multiplier of at least {sigma:.3f} for the planned {planned.steps} steps"
            if sigma is not None
            else "no noise multiplier (nothing remains)"
        )
        reserved = (
            f" (including {sum(m[2] for m in in_flight)} steps reserved by runs in flight)"
            if in_flight
            else ""
        )
        raise BudgetExceeded(
            f"privacy budget exceeded — refused before training. Site budget ε ≤ {budget.epsilon_max:g} "
            f"at δ={delta:g} ({acc}, privacy unit: {planned.privacy_unit}); spent ε = {before:.3f}{reserved}, "
            f"remaining {remaining:.3f}. The planned run ({planned.steps} steps at σ={planned.noise_multiplier:g}, "
            f"q={planned.sample_rate:.4g}) would reach ε = {after:.3f}. What would fit: at most {fit} steps "
            f"at σ={planned.noise_multiplier:g}, or {sigma_text}.",
            remaining=remaining,
            max_steps=fit,
            sigma_needed=sigma,
        )

    def check_budget(self, planned: PlannedRun) -> dict[str, Any]:
        """Raise :class:`BudgetExceeded` if ``planned`` does not fit; nothing is written."""
        with self._locked() as data:
            check_history(self.path, data, self._hashes, self.state_dir)
            self._reap_stale(data)
            return self._check(json.loads(json.dumps(data)), planned)

    def begin_run(self, planned: PlannedRun, commit_every: int = 1) -> LedgerRun:
        """Check the budget and open a run record; on refusal a ``refused`` record is kept
        and :class:`BudgetExceeded` is raised before any step is taken."""
        if commit_every < 1:
            raise SemioFedError("commit_every must be >= 1")
        run_id = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"
        record: dict[str, Any] = {
            "run_id": run_id,
            "status": "running",
            "privacy_unit": planned.privacy_unit,
            "sample_rate": planned.sample_rate,
            "noise_multiplier": planned.noise_multiplier,
            "max_grad_norm": planned.max_grad_norm,
            "steps_planned": int(planned.steps),
            "steps_counted": 0,
            "delta": planned.delta,
            "accountant": planned.accountant,
            "dataset_size": planned.dataset_size,
            "purpose": planned.purpose,
            "started": _now(),
            "updated": _now(),
            "finished": None,
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        refusal: BudgetExceeded | None = None
        with self._locked() as data:
            check_history(self.path, data, self._hashes, self.state_dir)
            self._reap_stale(data)
            try:
                record.update(self._check(data, planned))
            except BudgetExceeded as exc:
                refusal = exc
                record.update(status="refused", finished=_now(), reason=str(exc))
            data["runs"].append(record)
        if refusal is not None:
            raise refusal
        return LedgerRun(self, run_id, planned, commit_every)

    def _update_run(self, run_id: str, **fields: Any) -> dict[str, Any]:
        with self._locked() as data:
            r = self._run(data, run_id)
            r.update(fields, updated=_now())
            return dict(r)

    def _close_run(self, run_id: str, steps: int, delta: float, **fields: Any) -> dict[str, Any]:
        """Set the run's counted steps to ``steps`` and close it with ``fields`` and its ε
        after (the whole ledger's history then), under one lock and one write."""
        with self._locked() as data:
            r = self._run(data, run_id)
            r["steps_counted"] = steps
            hist = _counted_history(data["runs"])
            eps_after = {acc: epsilon(hist, delta, acc) for acc in ACCOUNTANTS}
            r.update(fields, finished=_now(), epsilon_after=eps_after, updated=_now())
            return dict(r)

    def _run(self, data: dict[str, Any], run_id: str) -> dict[str, Any]:
        for r in data["runs"]:
            if r["run_id"] == run_id:
                return r
        raise SemioFedError(f"{self.path}: run {run_id} vanished from the ledger")


class LedgerRun:
    """An open run: count steps before they are released, then finish."""

    def __init__(
        self, ledger: PrivacyLedger, run_id: str, planned: PlannedRun, commit_every: int
    ) -> None:
        self.ledger = ledger
        self.run_id = run_id
        self.planned = planned
        self.commit_every = commit_every
        self.steps_taken = 0
        self.steps_counted = 0
        self.finished = False

    def count_step(self) -> None:
        """Call BEFORE each noisy update is computed: the step is in the ledger on return."""
        if self.finished:
            raise SemioFedError(f"run {self.run_id} is finished")
        if self.steps_taken >= self.planned.steps:
            raise SemioFedError(
                f"run {self.run_id} planned {self.planned.steps} steps; the budget check covered no more"
            )
        self.steps_taken += 1
        if self.steps_taken > self.steps_counted:
            self.steps_counted = min(self.planned.steps, self.steps_taken + self.commit_every - 1)
            self.ledger._update_run(self.run_id, steps_counted=self.steps_counted)

    def finish(self, status: str = "completed", **extra: Any) -> dict[str, Any]:
        """Close the run in one write: release counted-but-untaken reservations, record ε
        after (RDP and PRV at the run's δ, cumulative over the whole ledger)."""
        self.finished = True
        # steps reserved ahead but never taken produced nothing; they are released
        self.steps_counted = self.steps_taken
        return self.ledger._close_run(
            self.run_id, self.steps_taken, self.planned.delta, status=status, **extra
        )

    def __enter__(self) -> LedgerRun:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if not self.finished:
            if exc is None:
                self.finish()
            else:
                self.finish("failed", error=f"{exc_type.__name__ if exc_type else ''}: {exc}")
