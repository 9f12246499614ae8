"""The SemioFed ClientApp (loaded by each hospital's SuperNode as ``semiofed.client.app:app``).

For each message the site:

1. reads the run configuration from the Flower run config (``semiofed`` payload) and refuses
   it unless the site's privacy officer approved its approval fields
   (:func:`semiofed.privacy.approval.require_approved`);
2. trains the multi-stream model on its own training patients with patient-level DP-SGD
   through the site's privacy ledger (ε cumulative across rounds and restarts), after
   evaluating the global model it received on its held-out patients (``eval-*`` metrics of
   the train reply: federated evaluation without an extra message per round), or evaluates
   the final global model on those patients (evaluate message);
3. declines — a normal reply with ``num_examples = 0`` and ``declined``/``decline-reason``
   metrics, carrying back the unchanged global parameters — when the configuration is not
   approved or the round would exceed the site's ε budget;
4. passes every reply through the allowlist (:mod:`semiofed.client.allowlist`) and records
   it in ``STATE/outbox.jsonl``; a reply with anything else is refused (an error is sent
   instead, without content).

Mods, outermost first: allowlist/outbox → SecAgg+ (only when the server runs the SecAgg+
workflow) → client-side clipping for central DP (only when the server's
``DifferentialPrivacyClientSideFixedClipping`` asks for it).

Node config (``flower-supernode --node-config``): ``site-name``, ``data-dir``, ``state-dir``
and optionally ``device`` (auto|cpu|cuda).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flwr.app.message_type import MessageType
from flwr.client import Client, ClientApp
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.common import (
    Code,
    Context,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Message,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)

from semiofed.shared.errors import SemioFedError
from semiofed.shared.run_config import approval_fields, payload_of

from . import site_audit
from .allowlist import SECAGG_RECORD, ParamSpec, check_reply, param_specs, record_outgoing

log = logging.getLogger(__name__)

CLIP_KEY = "clipping_norm"  # what Flower's DifferentialPrivacyClientSideFixedClipping sends


class SiteSettings:
    """Where this site keeps its data and state (from the SuperNode's node config)."""

    def __init__(self, context: Context) -> None:
        nc = context.node_config
        if "partition-id" in nc and "site-name" not in nc:  # Flower simulation engine
            nc = _simulated_site(context)
        missing = [k for k in ("site-name", "data-dir", "state-dir") if k not in nc]
        if missing:
            raise SemioFedError(f"SuperNode --node-config lacks {missing}")
        self.name = str(nc["site-name"])
        self.data_dir = Path(str(nc["data-dir"]))
        self.state_dir = Path(str(nc["state-dir"]))
        self.device = str(nc.get("device", "auto"))


def _simulated_site(context: Context) -> dict[str, Any]:
    """Virtual site ``partition-id`` of ``semiofed server simulate``: data is shared among
    virtual sites (``sim_data_sites`` folders, round robin), state is per site."""
    payload = payload_of(context.run_config)
    root, n_data = Path(payload["sim_root"]), int(payload["sim_data_sites"])
    pid = int(context.node_config["partition-id"])
    name = f"site-{pid + 1:03d}"
    return {
        "site-name": name,
        "data-dir": str(root / "data" / f"site-{pid % n_data + 1:02d}"),
        "state-dir": str(root / "state" / name),
        "device": "cpu",
    }


def run_config_of(context: Context) -> dict[str, Any]:
    return payload_of(context.run_config)["config"]


def check_approved(cfg: dict[str, Any], state_dir: Path) -> None:
    """Raise ``NotApproved`` unless the site's privacy officer approved this configuration."""
    from semiofed.privacy.approval import require_approved

    require_approved(approval_fields(cfg), state_dir)


class SiteClient(Client):
    """One hospital's answers to fit and evaluate requests."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.site = SiteSettings(context)

    def _decline_reason(self, cfg: dict[str, Any]) -> str | None:
        from semiofed.privacy.approval import NotApproved

        try:
            check_approved(cfg, self.site.state_dir)
        except NotApproved as exc:
            return f"not approved by the site's privacy officer: {exc}"
        return None

    def fit(self, ins: FitIns) -> FitRes:
        from semiofed.privacy.ledger import BudgetExceeded

        from . import site_task

        cfg = run_config_of(self.context)
        server_round = int(ins.config.get("server-round", 0))
        reason = self._decline_reason(cfg)
        received: dict[str, Any] = {}  # eval-* metrics of the global model we were sent
        if reason is None:
            try:
                data = site_task.load_site(self.site.data_dir, cfg, self.site.state_dir)
                incoming = parameters_to_ndarrays(ins.parameters)
                received = site_task.evaluate_received(data, cfg, incoming, self.site.device)
                arrays, metrics = site_task.train_round(
                    data, cfg, incoming, self.site.state_dir, server_round, self.site.device
                )
            except BudgetExceeded as exc:
                reason = str(exc)
            except SemioFedError as exc:  # the site's data or state is unusable this round
                reason = f"site error: {exc}"
        if reason is not None:
            log.warning("%s declines round %s: %s", self.site.name, server_round, reason)
            site_audit.record(
                self.site.state_dir, "round_declined", {"round": server_round, "reason": reason}
            )
            return FitRes(
                Status(Code.OK, "declined"),
                ins.parameters,
                0,
                {"declined": 1, "decline-reason": reason, "site-name": self.site.name, **received},
            )
        site_audit.record(
            self.site.state_dir,
            "round_joined",
            {"round": server_round, "patients": len(data.train), "epsilon": metrics["epsilon"]},
        )
        site_audit.record_budget(self.site.state_dir)
        metrics |= {"site-name": self.site.name, **received}
        return FitRes(
            Status(Code.OK, "ok"), ndarrays_to_parameters(arrays), len(data.train), metrics
        )

    def evaluate(self, ins: EvaluateIns) -> EvaluateRes:
        from . import site_task

        cfg = run_config_of(self.context)
        reason = self._decline_reason(cfg)
        if reason is not None:
            return EvaluateRes(
                Status(Code.OK, "declined"),
                0.0,
                0,
                {"declined": 1, "decline-reason": reason, "site-name": self.site.name},
            )
        try:
            data = site_task.load_site(self.site.data_dir, cfg, self.site.state_dir)
            loss, metrics = site_task.evaluate_round(
                data, cfg, parameters_to_ndarrays(ins.parameters), self.site.device
            )
        except SemioFedError as exc:
            return EvaluateRes(
                Status(Code.OK, "declined"),
                0.0,
                0,
                {
                    "declined": 1,
                    "decline-reason": f"site error: {exc}",
                    "site-name": self.site.name,
                },
            )
        metrics["site-name"] = self.site.name
        return EvaluateRes(Status(Code.OK, "ok"), loss, len(data.test), metrics)


def client_fn(context: Context) -> Client:
    return SiteClient(context)


def _model_specs(context: Context) -> list[ParamSpec]:
    from . import site_task

    return param_specs(site_task.build_model(run_config_of(context)))


def allowlist_mod(msg: Message, context: Context, call_next: Any) -> Message:
    """Check the reply against the allowlist, record it in the outbox, or refuse to send."""
    reply = call_next(msg, context)
    if not reply.has_content():
        return reply
    content = reply.content
    needs_specs = any(len(r) for r in content.array_records.values()) or (
        SECAGG_RECORD in content.config_records
        and "masked_params" in content.config_records[SECAGG_RECORD]
    )
    check_reply(content, _model_specs(context) if needs_specs else [])
    site = SiteSettings(context)
    record_outgoing(
        site.state_dir,
        reply.metadata.message_type,
        msg.metadata.run_id,
        msg.metadata.group_id,
        content,
    )
    return reply


def secagg_if_requested_mod(msg: Message, context: Context, call_next: Any) -> Message:
    """SecAgg+ for train messages of the SecAgg+ workflow; other messages pass through."""
    if (
        msg.metadata.message_type == MessageType.TRAIN
        and SECAGG_RECORD in msg.content.config_records
    ):
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def clip_if_requested_mod(msg: Message, context: Context, call_next: Any) -> Message:
    """Client-side update clipping when the server applies central DP."""
    cfg = msg.content.config_records.get("fitins.config")
    if msg.metadata.message_type == MessageType.TRAIN and cfg is not None and CLIP_KEY in cfg:
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


app = ClientApp(
    client_fn=client_fn,
    mods=[allowlist_mod, secagg_if_requested_mod, clip_if_requested_mod],
)
