"""The SemioFed ClientApp (loaded by each hospital's SuperNode as ``semiofed.client.app:app``).

For each message the site:

1. reads the run configuration from the Flower run config (``semiofed`` payload) and refuses
   it unless the site's privacy officer approved the whole configuration, for the FAB this
   process runs (rebuilt from Flower's install folder), and the approval has not expired
   (:func:`semiofed.privacy.approval.require_approved`); the SuperNode already refused a
   FAB not signed by a signer the officer trusts (``--trusted-entities``);
2. trains the multi-stream model on its own training patients with patient-level DP-SGD
   through the site's privacy ledger (ε cumulative across rounds and restarts), then, from
   round 2 on, evaluates the global model it received on its held-out patients through the
   DP evaluation table (``eval-table``, :mod:`.dp_evaluation`, charged to the same ledger
   before it is computed), or evaluates the final global model the same way (evaluate
   message);
3. declines — a normal reply with ``num_examples = 0`` and only ``declined``,
   ``decline-reason`` (a fixed code: ``not-approved``, ``over-budget``, ``site-error``) and
   ``site-name`` — when the configuration is not approved, the round would exceed the
   site's ε budget, or anything raised; the detail goes to the log and the audit trail;
4. passes every reply through the allowlist (:mod:`semiofed.client.allowlist`, the release
   inventory of :mod:`semiofed.shared.release`) and records it in ``STATE/outbox.jsonl``; a
   reply with anything else, and any exception of the mods, leaves as a Flower error whose
   reason is a fixed code.

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
    Error,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Message,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.constant import ErrorCode

from semiofed.shared.errors import SemioFedError
from semiofed.shared.fab import running_fab_hash
from semiofed.shared.release import (
    DECLINE_REASON,
    DECLINED,
    DELTA,
    EPSILON,
    EVAL_TABLE,
    EVALUATE_LOSS,
    FORBIDDEN_CONTENT,
    NOT_APPROVED,
    NUM_EXAMPLES_DECLINED,
    NUM_EXAMPLES_JOINED,
    OVER_BUDGET,
    PRIVACY_UNIT,
    SITE_ERROR,
    SITE_NAME,
)
from semiofed.shared.run_config import RunConfig, payload_of

from . import site_audit
from .allowlist import (
    SECAGG_RECORD,
    ForbiddenContent,
    ParamSpec,
    check_reply,
    record_outgoing,
)

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
    extra = payload_of(context.run_config).extra
    root, n_data = Path(extra["sim_root"]), int(extra["sim_data_sites"])
    pid = int(context.node_config["partition-id"])
    name = f"site-{pid + 1:03d}"
    return {
        "site-name": name,
        "data-dir": str(root / "data" / f"site-{pid % n_data + 1:02d}"),
        "state-dir": str(root / "state" / name),
        "device": "cpu",
    }


def run_config_of(context: Context) -> RunConfig:
    """The run's configuration, decoded and validated once per payload in this process (the
    mods and the handler of a message share it)."""
    return payload_of(context.run_config).config


def check_approved(cfg: RunConfig, state_dir: Path) -> None:
    """Raise ``NotApproved`` unless the site's privacy officer approved this configuration,
    in the FAB this process runs, and the approval has not expired."""
    from semiofed.privacy.approval import require_approved

    require_approved(cfg.approval_fields(), state_dir, fab_hash=running_fab_hash())


class SiteClient(Client):
    """One hospital's answers to fit and evaluate requests: exactly what the release
    inventory (:mod:`semiofed.shared.release`) allows, and on any refusal or error only a
    fixed reason code; the detail goes to the site's log and audit trail."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.site = SiteSettings(context)

    def fit(self, ins: FitIns) -> FitRes:
        server_round = int(ins.config.get("server-round", 0))
        try:
            return self._fit(ins, server_round)
        except Exception as exc:  # nothing of it but the code leaves the site
            return self._declined_fit(ins, server_round, SITE_ERROR, exc)

    def _fit(self, ins: FitIns, server_round: int) -> FitRes:
        from semiofed.privacy.approval import NotApproved
        from semiofed.privacy.ledger import BudgetExceeded

        from . import site_task

        cfg = run_config_of(self.context)
        state = self.site.state_dir
        try:
            check_approved(cfg, state)
        except NotApproved as exc:
            return self._declined_fit(ins, server_round, NOT_APPROVED, exc)
        data = site_task.load_site(self.site.data_dir, cfg, state)
        incoming = parameters_to_ndarrays(ins.parameters)
        try:
            arrays, metrics = site_task.train_round(
                data, cfg, incoming, state, server_round, self.site.device
            )
        except BudgetExceeded as exc:
            return self._declined_fit(ins, server_round, OVER_BUDGET, exc)
        if server_round > 1:  # the model after the previous round (round 1: the public init)
            try:
                metrics[EVAL_TABLE] = site_task.evaluate_dp(
                    data,
                    cfg,
                    incoming,
                    state,
                    f"federated evaluation of the round-{server_round - 1} model",
                    self.site.device,
                )
            except BudgetExceeded as exc:  # the update goes, without an evaluation
                site_audit.record(
                    state,
                    "round_declined",
                    {"round": f"evaluation in {server_round}", "reason": OVER_BUDGET,
                     "detail": str(exc)},
                )  # fmt: skip
        metrics[EPSILON] = site_task.site_epsilon(state)
        site_audit.record(
            state,
            "round_joined",
            {"round": server_round, "patients": len(data.train), "epsilon": metrics[EPSILON]},
        )
        site_audit.record_budget(state)
        metrics[SITE_NAME] = self.site.name
        return FitRes(
            Status(Code.OK, "ok"), ndarrays_to_parameters(arrays), NUM_EXAMPLES_JOINED, metrics
        )

    def _decline(self, what: str, code: str, exc: BaseException) -> dict[str, Any]:
        """Record why locally; the reply's metrics carry only the code."""
        detail = f"{type(exc).__name__}: {exc}"
        log.warning("%s declines %s (%s): %s", self.site.name, what, code, detail)
        site_audit.record(
            self.site.state_dir, "round_declined", {"round": what, "reason": code, "detail": detail}
        )
        return {DECLINED: 1, DECLINE_REASON: code, SITE_NAME: self.site.name}

    def _declined_fit(
        self, ins: FitIns, server_round: int, code: str, exc: BaseException
    ) -> FitRes:
        metrics = self._decline(str(server_round), code, exc)
        # the server's own parameters go back unchanged
        return FitRes(Status(Code.OK, "declined"), ins.parameters, NUM_EXAMPLES_DECLINED, metrics)

    def _declined_evaluate(self, code: str, exc: BaseException) -> EvaluateRes:
        metrics = self._decline("evaluate", code, exc)
        return EvaluateRes(
            Status(Code.OK, "declined"), EVALUATE_LOSS, NUM_EXAMPLES_DECLINED, metrics
        )

    def evaluate(self, ins: EvaluateIns) -> EvaluateRes:
        try:
            return self._evaluate(ins)
        except Exception as exc:  # nothing of it but the code leaves the site
            return self._declined_evaluate(SITE_ERROR, exc)

    def _evaluate(self, ins: EvaluateIns) -> EvaluateRes:
        from semiofed.privacy.approval import NotApproved
        from semiofed.privacy.ledger import BudgetExceeded

        from . import site_task

        cfg = run_config_of(self.context)
        state = self.site.state_dir
        try:
            check_approved(cfg, state)
        except NotApproved as exc:
            return self._declined_evaluate(NOT_APPROVED, exc)
        data = site_task.load_site(self.site.data_dir, cfg, state)
        try:
            table = site_task.evaluate_dp(
                data,
                cfg,
                parameters_to_ndarrays(ins.parameters),
                state,
                "federated evaluation of the final model",
                self.site.device,
            )
        except BudgetExceeded as exc:
            return self._declined_evaluate(OVER_BUDGET, exc)
        metrics = {
            EVAL_TABLE: table,
            EPSILON: site_task.site_epsilon(state),
            DELTA: float(cfg.privacy.delta),
            PRIVACY_UNIT: cfg.privacy.unit,
            SITE_NAME: self.site.name,
        }
        site_audit.record_budget(state)
        return EvaluateRes(Status(Code.OK, "ok"), EVALUATE_LOSS, NUM_EXAMPLES_JOINED, metrics)


def client_fn(context: Context) -> Client:
    return SiteClient(context)


def _model_specs(context: Context) -> list[ParamSpec]:
    from . import site_task

    return site_task.model_specs(run_config_of(context))


def allowlist_mod(msg: Message, context: Context, call_next: Any) -> Message:
    """Check the reply against the allowlist and record it in the outbox; a refused reply,
    an error reply of an inner layer and any exception become an error reply whose reason
    is a fixed code (:data:`~semiofed.shared.release.ERROR_CODES`): no exception text leaves
    the site (Flower would send ``str(exc)``)."""
    try:
        reply = call_next(msg, context)
        if reply.has_error():
            raise SemioFedError(f"an inner layer replied with an error: {reply.error.reason}")
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
    except Exception as exc:
        return _error_reply(msg, context, exc)


def _error_reply(msg: Message, context: Context, exc: Exception) -> Message:
    from semiofed.privacy.approval import NotApproved

    code = (
        FORBIDDEN_CONTENT
        if isinstance(exc, ForbiddenContent)
        else NOT_APPROVED
        if isinstance(exc, NotApproved)
        else SITE_ERROR
    )
    detail = f"{type(exc).__name__}: {exc}"
    log.error("reply refused (%s): %s", code, detail)
    try:
        state = SiteSettings(context).state_dir
        site_audit.record(
            state, "round_declined", {"round": "reply refused", "reason": code, "detail": detail}
        )
    except Exception as trail_exc:  # no state to record in: the log has it
        log.error("could not record the refusal: %s", trail_exc)
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=code), reply_to=msg)


def secagg_if_requested_mod(msg: Message, context: Context, call_next: Any) -> Message:
    """SecAgg+ for train messages of the SecAgg+ workflow; other messages pass through."""
    if (
        msg.metadata.message_type == MessageType.TRAIN
        and SECAGG_RECORD in msg.content.config_records
    ):
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def clip_if_requested_mod(msg: Message, context: Context, call_next: Any) -> Message:
    """Client-side update clipping for central DP, at the APPROVED norm only: a train
    message whose requested norm differs from the approved ``[central-dp] clip-norm`` (or
    that asks for none while central DP is approved) is refused as ``not-approved``."""
    from semiofed.privacy.approval import NotApproved

    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    cdp = run_config_of(context).central_dp
    fit_cfg = msg.content.config_records.get("fitins.config")
    requested = fit_cfg.get(CLIP_KEY) if fit_cfg is not None else None
    if cdp.enabled and requested != cdp.clip_norm:
        raise NotApproved(
            f"the server asks for clip norm {requested!r}; the approved one is {cdp.clip_norm!r}"
        )
    if requested is not None:
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


app = ClientApp(
    client_fn=client_fn,
    mods=[allowlist_mod, secagg_if_requested_mod, clip_if_requested_mod],
)
