"""Aggregation strategies (Flower's legacy strategies, the path SecAgg+ runs on) and the
wrapper that keeps SemioFed's per-round record.

* ``fedavg`` (default), ``fedprox``: usable with SecAgg+ (the server only needs the sum).
* ``fedtrimmedavg``, ``fedmedian``, ``krum``, ``multikrum``: robust aggregators need every
  site's individual update, which SecAgg+ hides; :func:`semiofed.shared.run_config.validate`
  refuses them with ``[secagg] enabled = true``.
* central DP: Flower's ``DifferentialPrivacyClientSideFixedClipping`` (sites clip their update
  with ``fixedclipping_mod``; the server adds Gaussian noise to the aggregate). The
  client-side variant is used because it also works under SecAgg+ (the server never sees an
  individual update it could clip). Its ε is *site-level* (protects a whole site's update
  per round) and is reported separately from the sites' patient-level ε.

Declined replies (``num_examples == 0``: not approved, or over the site's ε budget) are
taken out before aggregation and recorded with their reason.
"""

from __future__ import annotations

import math
from typing import Any

from flwr.common import EvaluateRes, FitRes, Parameters, Scalar
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

SITE_METRICS = (
    "epsilon",
    "epsilon-round",
    "delta",
    "privacy-unit",
    "train-loss",
    "train-seconds",
    "num-patients",
)
EVAL_METRICS = ("macro-f1", "auroc-seizure", "detect-accuracy")


def base_strategy(cfg: dict[str, Any], num_sites: int, initial: Parameters) -> Strategy:
    """The configured Flower strategy (before the central-DP wrapper)."""
    fed, st = cfg["federation"], cfg["strategy"]
    n_min = fed["min-nodes"]
    common: dict[str, Any] = {
        "fraction_fit": fed["fraction-train"],
        "fraction_evaluate": fed["fraction-evaluate"],
        "min_fit_clients": n_min,
        "min_evaluate_clients": n_min,
        "min_available_clients": n_min,
        "initial_parameters": initial,
        "accept_failures": True,
    }
    name = fed["strategy"]
    if name == "fedavg":
        return FedAvg(**common)
    if name == "fedprox":
        return FedProx(**common, proximal_mu=st["proximal-mu"])
    if name == "fedtrimmedavg":
        return FedTrimmedAvg(**common, beta=st["trim-beta"])
    if name == "fedmedian":
        return FedMedian(**common)
    if name in ("krum", "multikrum"):
        keep = st["num-keep"] if name == "multikrum" else 0
        if name == "multikrum" and keep < 1:
            raise SemioFedError("[strategy] num-keep must be >= 1 for multikrum")
        return Krum(**common, num_malicious_clients=st["num-malicious"], num_clients_to_keep=keep)
    raise SemioFedError(f"unknown strategy {name!r}")


def make_strategy(
    cfg: dict[str, Any], num_sites: int, initial: Parameters
) -> tuple[RecordingStrategy, Strategy]:
    """(recording wrapper, strategy the workflow calls)."""
    inner = base_strategy(cfg, num_sites, initial)
    cdp = cfg["central-dp"]
    if cdp["enabled"]:
        sampled = max(
            cfg["federation"]["min-nodes"], round(cfg["federation"]["fraction-train"] * num_sites)
        )
        inner = DifferentialPrivacyClientSideFixedClipping(
            inner, cdp["noise-multiplier"], cdp["clip-norm"], sampled
        )
    rec = RecordingStrategy(inner, cfg)
    return rec, rec


EVAL = "eval-"  # prefix of a train reply's metrics about the global model it received


def _unprefixed(metrics: dict[str, Scalar]) -> dict[str, Scalar]:
    return {k.removeprefix(EVAL): v for k, v in metrics.items() if k.startswith(EVAL)}


def _federated_eval(pairs: list[tuple[int, dict[str, Scalar]]]) -> dict[str, Scalar]:
    """Patient-weighted mean of the sites' held-out metrics (``loss`` and EVAL_METRICS)."""
    total = sum(n for n, _ in pairs)
    out: dict[str, Scalar] = {"eval-sites": len(pairs), "eval-patients": total}
    for key in ("loss", *EVAL_METRICS):
        v = _weighted(pairs, key)
        if v is not None and math.isfinite(v):
            out[key] = v
    return out


def _weighted(results: list[tuple[int, dict[str, Scalar]]], key: str) -> float | None:
    pairs = [(n, float(m[key])) for n, m in results if key in m and float(m[key]) >= 0 and n > 0]
    total = sum(n for n, _ in pairs)
    return sum(n * v for n, v in pairs) / total if total else None


class RecordingStrategy(Strategy):
    """Delegates to ``inner``; drops declined replies; keeps the per-round record."""

    def __init__(self, inner: Strategy, cfg: dict[str, Any]) -> None:
        self.inner = inner
        self.min_nodes = cfg["federation"]["min-nodes"]
        self.last_round = cfg["federation"]["rounds"]
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

    def initialize_parameters(self, client_manager: Any) -> Parameters | None:
        return self.inner.initialize_parameters(client_manager)

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
        # the sites evaluated the model they received, i.e. the one after the previous round
        received = [
            (int(r.metrics[f"{EVAL}num-patients"]), _unprefixed(r.metrics))
            for _, r in results
            if int(r.metrics.get(f"{EVAL}num-patients", 0)) > 0
        ]
        if received and server_round > 1:
            self._round(server_round - 1)["federated_eval"] = _federated_eval(received)
        kept = []
        for proxy, res in results:
            site = str(res.metrics.get("site-name", proxy.node_id))
            if res.num_examples == 0 or res.metrics.get("declined"):
                rec["declined"][site] = str(res.metrics.get("decline-reason", "declined"))
                continue
            kept.append((proxy, res))
            rec["sites"][site] = {k: res.metrics[k] for k in SITE_METRICS if k in res.metrics}
            rec["sites"][site]["node_id"] = proxy.node_id
        if len(kept) < self.min_nodes:
            rec["note"] = (
                f"{len(kept)} usable update(s) < min-nodes {self.min_nodes}: model unchanged"
            )
            return None, {}
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
        kept = [(p, r) for p, r in results if r.num_examples > 0 and not r.metrics.get("declined")]
        if not kept:
            return None, {}
        metrics = _federated_eval(
            [(r.num_examples, {**r.metrics, "loss": r.loss}) for _, r in kept]
        )
        rec["federated_eval"] = dict(metrics)
        return float(metrics["loss"]), metrics

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        return None
