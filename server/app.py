"""The SemioFed ServerApp (``semiofed.server.app:app``): rounds, checkpoints, resumption,
SecAgg+, central DP, and the final run directory.

Rounds are driven on Flower's legacy workflow path because that is where SecAgg+ lives in
flwr 1.42: each round runs the fit workflow (``SecAggPlusWorkflow`` when ``[secagg]`` is on,
else Flower's ``default_fit_workflow``) and ``default_evaluate_workflow`` against a
:class:`LegacyContext` holding the strategy. The round loop is ours (not
``DefaultWorkflow``) so it can start after the last checkpointed round and write a
checkpoint after each one.

Waiting for replies: Flower's grid polls the SuperLink every 3 s and, without a timeout,
waits for every reply forever. :class:`PromptGrid` polls every 0.1 s and bounds each stage
by ``[federation] round-timeout``: a site that died mid-round is dropped from that round
(the others' updates are aggregated when at least ``min-nodes`` replied) and is sampled
again in later rounds once its SuperNode is back.

Run payload: ``--run-config semiofed="<base64 JSON>"`` with the validated run
configuration, ``out_dir`` (checkpoints, run directory) and optionally ``run_name`` and
``data`` (what the sites train on, e.g. ``synthetic``; both go into the run record).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import flwr.compat.common.recorddict_compat as compat
import numpy as np
from flwr.app import RecordDict
from flwr.common import Context, Message, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.compat.app_utils import start_update_client_manager_thread
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.server.workflow.default_workflows import (
    default_evaluate_workflow,
    default_fit_workflow,
)

from semiofed.shared.atomic import atomic_write_json, json_safe
from semiofed.shared.release import DELTA, EPSILON, PRIVACY_UNIT
from semiofed.shared.run_config import RunConfig, payload_of
from semiofed.shared.run_record import RunRecord

from .checkpoints import load_checkpoint, save_checkpoint, write_run_dir
from .strategies import RecordingStrategy, make_strategy

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1
PROGRESS_FILE = "progress.json"


class PromptGrid(Grid):
    """A Grid that polls for replies every ``poll`` seconds and bounds every wait."""

    def __init__(self, grid: Grid, poll: float, timeout: float) -> None:
        self.inner = grid
        self.poll = poll
        self.timeout = timeout

    def set_run(self, run: Any) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Any:
        return self.inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        pending = set(self.push_messages(messages))
        end = time.monotonic() + (timeout if timeout is not None else self.timeout)
        replies: list[Message] = []
        while pending:
            got = list(self.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if not pending or time.monotonic() >= end:
                break
            time.sleep(self.poll)
        if pending:
            log.warning(
                "%d repl(ies) missing after %.0f s; going on without them",
                len(pending),
                self.timeout,
            )
        return replies


def _initial_arrays(cfg: RunConfig) -> tuple[Any, list[np.ndarray]]:
    import torch

    from semiofed.shared.model import SemioNet
    from semiofed.shared.model_arrays import get_arrays

    torch.manual_seed(cfg.federation.seed)
    model = SemioNet(cfg.model_config)
    return model, get_arrays(model)


def _site_level_epsilon(cfg: RunConfig, rounds: int) -> dict[str, Any] | None:
    """ε of the central DP mechanism (privacy unit: one site's whole update per round):
    every site is asked every round (``fraction-train = 1``), so the sample rate is 1."""
    cdp = cfg.central_dp
    if not cdp.enabled:
        return None
    from semiofed.privacy.accounting import epsilon

    eps = epsilon([(cdp.noise_multiplier, 1.0, rounds)], cdp.delta, "rdp")
    return {
        "privacy_unit": "site",
        "mechanism": "Gaussian noise of std σ·C/m on the unweighted mean of the m kept updates, "
        "each clipped to C at its site (DifferentialPrivacyClientSideFixedClipping)",
        "noise_multiplier": cdp.noise_multiplier,
        "clip_norm": cdp.clip_norm,
        "sample_rate": 1.0,
        "rounds": rounds,
        "delta": cdp.delta,
        "accountant": "rdp",
        "epsilon": eps,
    }


def _per_site_privacy(rounds: dict[int, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(rounds):
        for site, m in rounds[r]["sites"].items():
            out.setdefault(site, []).append(
                {
                    "round": r,
                    "epsilon": m.get(EPSILON),
                    "delta": m.get(DELTA),
                    "privacy_unit": m.get(PRIVACY_UNIT),
                }
            )
    return out


def run_federation(grid: Grid, context: Context) -> None:
    """The round loop (see the module docstring)."""
    from semiofed.shared.model_arrays import set_arrays

    payload = payload_of(context.run_config)
    cfg, extra = payload.config, payload.extra
    out_dir = Path(extra["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    digest = cfg.config_digest()
    fed = cfg.federation
    model, arrays = _initial_arrays(cfg)

    resumed = load_checkpoint(out_dir, digest)
    start_round, saved = 1, {}
    if resumed is not None:
        last, arrays, saved = resumed
        start_round = last + 1
        log.info("resuming after round %d from %s", last, out_dir / "checkpoint")

    grid = PromptGrid(grid, POLL_SECONDS, float(fed.round_timeout))
    initial = ndarrays_to_parameters(arrays)
    recorder, strategy = make_strategy(cfg, len(list(grid.get_node_ids())), initial)
    recorder.rounds = {int(k): v for k, v in saved.get("rounds", {}).items()}
    ctx = LegacyContext(
        context=context,
        config=ServerConfig(num_rounds=fed.rounds, round_timeout=fed.round_timeout),
        strategy=strategy,
    )
    ctx.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(initial, True)
    cfg_rec = ctx.state.config_records.get(MAIN_CONFIGS_RECORD)
    if cfg_rec is None:
        from flwr.common import ConfigRecord

        cfg_rec = ConfigRecord()
        ctx.state.config_records[MAIN_CONFIGS_RECORD] = cfg_rec
    cfg_rec[Key.START_TIME] = time.time()

    if cfg.secagg.enabled:
        sa = cfg.secagg
        fit_workflow: Any = SecAggPlusWorkflow(
            num_shares=sa.num_shares,
            reconstruction_threshold=sa.reconstruction_threshold,
            clipping_range=sa.clipping_range,
            quantization_range=sa.quantization_range,
            timeout=float(fed.round_timeout),
        )
    else:
        fit_workflow = default_fit_workflow

    thread, stop, ready = start_update_client_manager_thread(grid, ctx.client_manager)
    ready.wait()
    started = saved.get("started", time.time())
    round_times: dict[int, float] = {int(k): v for k, v in saved.get("round_seconds", {}).items()}
    try:
        for server_round in range(start_round, fed.rounds + 1):
            t0 = time.perf_counter()
            log.info("[ROUND %d/%d]", server_round, fed.rounds)
            cfg_rec[Key.CURRENT_ROUND] = server_round
            try:
                fit_workflow(grid, ctx)
            except (ZeroDivisionError, ValueError) as exc:  # e.g. SecAgg+ with every site declining
                log.error("round %d: aggregation failed (%s); model unchanged", server_round, exc)
                recorder._round(server_round)["note"] = f"aggregation failed: {exc}"
            default_evaluate_workflow(grid, ctx)
            round_times[server_round] = time.perf_counter() - t0
            current = parameters_to_ndarrays(
                compat.arrayrecord_to_parameters(ctx.state.array_records[MAIN_PARAMS_RECORD], True)
            )
            state = {
                "config_digest": digest,
                "started": started,
                "rounds": recorder.rounds,
                "round_seconds": round_times,
            }
            save_checkpoint(out_dir, server_round, current, state)
            _write_progress(out_dir, cfg, recorder, round_times, finished=False)
    finally:
        stop.set()
        thread.join(timeout=10)

    final = parameters_to_ndarrays(
        compat.arrayrecord_to_parameters(ctx.state.array_records[MAIN_PARAMS_RECORD], True)
    )

    set_arrays(model, final)  # count and shapes checked
    run = _run_record(cfg, recorder, round_times, started)
    run = dataclasses.replace(
        run,
        flower_run_id=context.run_id,
        resumed_after_round=start_round - 1 if resumed is not None else None,
        run_name=extra.get("run_name", out_dir.name),
        data=extra.get("data"),
    )
    write_run_dir(out_dir, model, cfg.model_config, cfg.window, run)
    _write_progress(out_dir, cfg, recorder, round_times, finished=True)


def _run_record(
    cfg: RunConfig,
    rec: RecordingStrategy,
    round_times: dict[int, float],
    started: float,
) -> RunRecord:
    rounds = [rec.rounds[r] | {"seconds": round_times.get(r)} for r in sorted(rec.rounds)]
    sites = sorted({s for r in rec.rounds.values() for s in r["sites"]})
    return RunRecord(
        config=cfg.as_dict(),
        approval_fields=cfg.approval_fields(),
        rounds_planned=cfg.federation.rounds,
        rounds=rounds,
        participating_sites=sites,
        site_privacy=_per_site_privacy(rec.rounds),
        patient_level_dp={
            "privacy_unit": cfg.privacy.unit,
            "delta": cfg.privacy.delta,
            "accountant": cfg.privacy.accountant,
            "note": "epsilon per site is cumulative over that site's whole ledger "
            "(DP training and DP evaluation)",
        },
        central_dp=_site_level_epsilon(cfg, len(rounds)),
        secure_aggregation=cfg.secagg.enabled,
        started_unix=started,
        finished_unix=time.time(),
    )


def _write_progress(
    out_dir: Path,
    cfg: RunConfig,
    rec: RecordingStrategy,
    round_times: dict[int, float],
    finished: bool,
) -> None:
    atomic_write_json(
        out_dir / PROGRESS_FILE,
        json_safe(
            {
                "finished": finished,
                "rounds_planned": cfg.federation.rounds,
                "rounds": [
                    rec.rounds[r] | {"seconds": round_times.get(r)} for r in sorted(rec.rounds)
                ],
            }
        ),
    )


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_federation(grid, context)
