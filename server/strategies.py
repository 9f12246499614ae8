"""Aggregation strategies (Flower's legacy strategies, the path SecAgg+ runs on) and the
wrapper that keeps SemioFed's per-round record.

* ``fedavg`` (default), ``fedprox``: usable with SecAgg+ (the server only needs the sum).
* ``fedtrimmedavg``, ``fedmedian``, ``krum``, ``multikrum``: robust aggregators need every
  site's individual update, which SecAgg+ hides; :meth:`semiofed.shared.run_config.RunConfig.parse`
  refuses them with ``[secagg] enabled = true``.
* central DP: Flower's ``DifferentialPrivacyClientSideFixedClipping`` (sites clip their update
  with ``fixedclipping_mod``; the server adds Gaussian noise to the aggregate). The
  client-side variant is used because it also works under SecAgg+ (the server never sees an
  individual update it could clip). Details below.

Sites reply ``num_examples = 1`` (``semiofed.shared.release``), so FedAvg/FedProx take the
unweighted mean of the sites' updates. Declined replies (``num_examples == 0``) are taken
out before aggregation and recorded with their reason code. Federated evaluation is the
sum of the sites' noisy evaluation tables, turned into metrics here (post-processing).

Server optimizer (``[strategy] server-learning-rate`` η, ``server-momentum`` β; any
strategy): :class:`ServerMomentum` treats the aggregate's change of the global model as a
pseudo-gradient and applies SGD with heavy-ball momentum to it, ``v ← β·v + Δ``,
``w ← w + η·v`` (FedAvgM, Hsu et al. 2019; the DP-FL recipe of McMahan et al. 2018). It acts
only on the aggregate, after any noise, so it is post-processing of what the sites released:
no ε. The velocity is server state that is not checkpointed: a resumed run restarts it at 0.

Central DP: every site is asked every round (``fraction-train = 1``, enforced by the run
configuration), each clips its update to the approved norm C (the ClientApp checks the
norm the server asks for), the server averages the m kept updates without weights and adds
Gaussian noise of std σ·C/m to the mean (σ·C to the sum). Its ε is *site-level* (protects
a whole site's update per round), accounted with sample rate 1 over the rounds, and
reported separately from the sites' patient-level ε.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from flwr.common import (
    EvaluateRes,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    Strategy,
)

from semiofed.shared.errors import SemioFedError
from semiofed.shared.noisy_eval import decode_table, table_metrics
from semiofed.shared.release import (
    DECLINE_CODES,
    DECLINE_REASON,
    DECLINED,
    EVAL_TABLE,
    SITE_METRICS,
    SITE_NAME,
)
from semiofed.shared.run_config import RunConfig


def base_strategy(cfg: RunConfig, num_sites: int, initial: Parameters) -> Strategy:
    """The configured Flower strategy (before the central-DP wrapper)."""
    fed, st = cfg.federation, cfg.strategy
    n_min = fed.min_nodes
    common: dict[str, Any] = {
        "fraction_fit": fed.fraction_train,
        "fraction_evaluate": fed.fraction_evaluate,
        "min_fit_clients": n_min,
        "min_evaluate_clients": n_min,
        "min_available_clients": n_min,
        "initial_parameters": initial,
        "accept_failures": True,
    }
    name = fed.strategy
    if name == "fedavg":
        return FedAvg(**common)
    if name == "fedprox":
        return FedProx(**common, proximal_mu=st.proximal_mu)
    if name == "fedtrimmedavg":
        return FedTrimmedAvg(**common, beta=st.trim_beta)
    if name == "fedmedian":
        return FedMedian(**common)
    if name in ("krum", "multikrum"):
        keep = st.num_keep if name == "multikrum" else 0
        if name == "multikrum" and keep < 1:
            raise SemioFedError("[strategy] num-keep must be >= 1 for multikrum")
        return Krum(**common, num_malicious_clients=st.num_malicious, num_clients_to_keep=keep)
    raise SemioFedError(f"unknown strategy {name!r}")


def make_strategy(
    cfg: RunConfig, num_sites: int, initial: Parameters
) -> tuple[RecordingStrategy, Strategy]:
    """(recording wrapper, strategy the workflow calls)."""
    inner = base_strategy(cfg, num_sites, initial)
    cdp = cfg.central_dp
    if cdp.enabled:  # every site every round (RunConfig.parse: fraction-train = 1)
        inner = DifferentialPrivacyClientSideFixedClipping(
            inner, cdp.noise_multiplier, cdp.clip_norm, max(1, num_sites)
        )
    if cfg.server_optimizer:
        st = cfg.strategy
        inner = ServerMomentum(inner, st.server_learning_rate, st.server_momentum)
    rec = RecordingStrategy(inner, cfg)
    return rec, rec


class DelegatingStrategy(Strategy):
    """Forwards every call to ``inner``; subclasses override what they change."""

    def __init__(self, inner: Strategy) -> None:
        self.inner = inner

    def initialize_parameters(self, client_manager: Any) -> Parameters | None:
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> Any:
        return self.inner.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[Any],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        return self.inner.aggregate_fit(server_round, results, failures)

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: Any
    ) -> Any:
        return self.inner.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[Any],
    ) -> tuple[float | None, dict[str, Scalar]]:
        return self.inner.aggregate_evaluate(server_round, results, failures)

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        return self.inner.evaluate(server_round, parameters)


class ServerMomentum(DelegatingStrategy):
    """Server-side SGD with momentum on ``inner``'s aggregate (module docstring)."""

    def __init__(self, inner: Strategy, learning_rate: float, momentum: float) -> None:
        super().__init__(inner)
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.current: list[np.ndarray] | None = None  # the global model sent this round
        self.velocity: list[np.ndarray] | None = None

    def __repr__(self) -> str:
        return f"ServerMomentum({self.inner!r}, lr={self.learning_rate}, momentum={self.momentum})"

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> Any:
        self.current = parameters_to_ndarrays(parameters)
        return self.inner.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[Any],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        params, metrics = self.inner.aggregate_fit(server_round, results, failures)
        if params is None or self.current is None:
            return params, metrics
        step = server_step(
            self.current, parameters_to_ndarrays(params), self.velocity, self.momentum
        )
        self.velocity = step
        new = [w + self.learning_rate * v for w, v in zip(self.current, step, strict=True)]
        return ndarrays_to_parameters(new), metrics


def server_step(
    current: list[np.ndarray],
    aggregate: list[np.ndarray],
    velocity: list[np.ndarray] | None,
    momentum: float,
) -> list[np.ndarray]:
    """The new velocity ``β·v + (aggregate − current)`` (``v`` = 0 before the first step)."""
    delta = [a - w for w, a in zip(current, aggregate, strict=True)]
    if velocity is None:
        return delta
    return [momentum * v + d for v, d in zip(velocity, delta, strict=True)]


def _federated_eval(tables: list[np.ndarray], sigma: float) -> dict[str, Scalar]:
    """Metrics of the sum of the sites' noisy evaluation tables (post-processing only; each
    site added noise of std ``sigma``)."""
    out: dict[str, Scalar] = {"eval-sites": len(tables)}
    out.update(table_metrics(np.sum(tables, axis=0), noise_std=sigma * math.sqrt(len(tables))))
    return out


def _table(metrics: dict[str, Scalar]) -> np.ndarray | None:
    return decode_table(metrics.get(EVAL_TABLE))


def _failure_reason(failure: Any) -> str:
    """What a failed reply said (the site sends a fixed code; anything else is kept to show)."""
    err = failure.args[0] if isinstance(failure, BaseException) and failure.args else failure
    reason = getattr(err, "reason", None)
    return str(reason)[:200] if reason is not None else type(failure).__name__


class RecordingStrategy(DelegatingStrategy):
    """Delegates to ``inner``; drops declined replies; keeps the per-round record."""

    def __init__(self, inner: Strategy, cfg: RunConfig) -> None:
        super().__init__(inner)
        self.min_nodes = cfg.federation.min_nodes
        self.last_round = cfg.federation.rounds
        self.eval_sigma = cfg.privacy.eval_noise_multiplier
        self.server_round_config: dict[str, Scalar] = {}
        self.rounds: dict[int, dict[str, Any]] = {}

    def _round(self, server_round: int) -> dict[str, Any]:
        return self.rounds.setdefault(
            server_round,
            {
                "round": server_round,
                "sites": {},
                "declined": {},
                "failures": 0,
                "aggregated": False,
            },
        )

    def __repr__(self) -> str:
        return f"RecordingStrategy({self.inner!r})"

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> Any:
        pairs = self.inner.configure_fit(server_round, parameters, client_manager)
        for _, ins in pairs:
            ins.config["server-round"] = server_round
        return pairs

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[Any],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        rec = self._round(server_round)
        rec["failures"] = len(failures)
        rec["failure_reasons"] = [_failure_reason(f) for f in failures]
        kept, tables = [], []
        for proxy, res in results:
            site = str(res.metrics.get(SITE_NAME, proxy.node_id))
            if res.num_examples == 0 or res.metrics.get(DECLINED):
                code = res.metrics.get(DECLINE_REASON)
                rec["declined"][site] = code if code in DECLINE_CODES else "declined"
                continue
            kept.append((proxy, res))
            rec["sites"][site] = {k: res.metrics[k] for k in SITE_METRICS if k in res.metrics}
            rec["sites"][site]["node_id"] = proxy.node_id
            table = _table(res.metrics)
            if table is not None:
                tables.append(table)
        # the sites evaluated the model they received, i.e. the one after the previous round
        if tables and server_round > 1:
            self._round(server_round - 1)["federated_eval"] = _federated_eval(
                tables, self.eval_sigma
            )
        if len(kept) < self.min_nodes:
            rec["note"] = (
                f"{len(kept)} usable update(s) < min-nodes {self.min_nodes}: model unchanged"
            )
            return None, {}
        cdp = self.inner.inner if isinstance(self.inner, ServerMomentum) else self.inner
        if isinstance(cdp, DifferentialPrivacyClientSideFixedClipping):
            # the unweighted mean of the kept clipped updates: noise σ·C/m with m = kept
            cdp.num_sampled_clients = len(kept)
        params, metrics = self.inner.aggregate_fit(server_round, kept, failures)
        rec["aggregated"] = params is not None
        return params, metrics

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: Any
    ) -> Any:
        """Only the final model gets evaluate messages; earlier ones are evaluated by the
        sites inside the next round's train message."""
        if server_round < self.last_round:
            return []
        return self.inner.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[Any],
    ) -> tuple[float | None, dict[str, Scalar]]:
        rec = self._round(server_round)
        rec["evaluate_failure_reasons"] = [_failure_reason(f) for f in failures]
        tables, final = [], {}
        for proxy, res in results:
            site = str(res.metrics.get(SITE_NAME, proxy.node_id))
            table = _table(res.metrics)
            if res.num_examples == 0 or res.metrics.get(DECLINED) or table is None:
                code = res.metrics.get(DECLINE_REASON)
                rec.setdefault("evaluate_declined", {})[site] = (
                    code if code in DECLINE_CODES else "declined"
                )
                continue
            tables.append(table)
            final[site] = {k: res.metrics[k] for k in SITE_METRICS if k in res.metrics}
        rec["evaluate_sites"] = final  # ε after the final evaluation
        if not tables:
            return None, {}
        metrics = _federated_eval(tables, self.eval_sigma)
        rec["federated_eval"] = dict(metrics)
        loss = metrics.get("loss")
        return (float(loss) if loss is not None else None), metrics

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        return None  # no central evaluation (the sites evaluate)
