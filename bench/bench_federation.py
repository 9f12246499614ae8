"""Federation cost on the real deployment engine (loopback) and on the simulation engine.

* per-round overhead = round wall time − the slowest site's local training time;
* bytes sent per site per round (from each site's outbox: every reply it sent);
* wall time of a small local consortium run (SuperLink + 3 SuperNodes, TLS, SecAgg+);
* simulated round time for 10, 50 and 100 virtual sites (Flower simulation engine), as far
  as the time budget allows (sizes not reached are listed as not run).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

from bench.run import BenchContext

SITES = ["site-01", "site-02", "site-03"]
SIM_SIZES = (10, 50, 100)
SIM_BUDGET_SECONDS = 150.0


def _tiny(rounds: int, secagg: bool) -> dict:
    from semiofed.shared.run_config import validate

    return validate(
        {
            "federation": {"rounds": rounds, "min-nodes": 2, "round-timeout": 300.0},
            "training": {"local-epochs": 1, "batch-size": 2, "test-fraction": 0.34},
            "model": {"channels": [8], "strides": [3], "motion-channels": [8], "motion-strides": [3],
                      "embed-dim": 16, "groups": 4},
            "privacy": {"site-budget": 100.0},
            "secagg": {"enabled": secagg},
        }
    )  # fmt: skip


def _deployment(work: Path) -> tuple[dict, float, dict[str, dict[str, int]]]:
    from semiofed.server.certs import init_consortium
    from semiofed.server.consortium import Consortium
    from semiofed.server.demo import approve_as_officer
    from semiofed.shared.run_config import encode_payload
    from semiofed.shared.synth.consortium import generate_consortium

    cfg = _tiny(2, secagg=True)
    generate_consortium(work / "data", 3, 3, 1.0, seed=1)
    certs = init_consortium(work / "certs", SITES, force=True)
    t0 = time.perf_counter()
    with Consortium(work / "consortium", certs) as c:
        c.start_superlink()
        for s in SITES:
            approve_as_officer(cfg, work / "state" / s, work / "officers", s)
            c.register(s)
            c.add_site(s, work / "data" / s, work / "state" / s)
            c.start_supernode(s)
        c.wait_connected(3)
        run_id = c.submit({"semiofed": encode_payload(cfg, out_dir=str(work / "run"))})
        status = c.wait_run(run_id, timeout=1200)
    wall = time.perf_counter() - t0
    if status.get("status") != "finished:completed":
        raise RuntimeError(f"bench run {status.get('status')}: {status.get('status-details')}")
    run = json.loads((work / "run" / "run.json").read_text())
    sent: dict[str, dict[str, int]] = {}
    for s in SITES:
        per_round: dict[str, int] = defaultdict(int)
        for line in (work / "state" / s / "outbox.jsonl").read_text().splitlines():
            e = json.loads(line)
            per_round[str(e["round"])] += int(e["bytes"])
        sent[s] = dict(per_round)
    return run, wall, sent


def _training_seconds(states: Path) -> dict[int, float]:
    """The slowest site's DP training time per round, from the sites' own ledgers (training
    time is not sent to the coordinator; 1-s resolution)."""
    from datetime import datetime

    from semiofed.privacy.ledger import PrivacyLedger

    def t(stamp: str) -> float:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").timestamp()

    out: dict[int, float] = {}
    for s in SITES:
        for r in PrivacyLedger(states / s).load()["runs"]:
            purpose = str(r.get("purpose", ""))
            if purpose.startswith("federated round ") and r.get("finished"):
                n = int(purpose.rsplit(" ", 1)[1])
                out[n] = max(out.get(n, 0.0), t(r["finished"]) - t(r["started"]))
    return out


def run(ctx: BenchContext) -> str:
    work = ctx.path("federation")
    run_rec, wall, sent = _deployment(work)
    lines = [
        "## Federation (Flower 1.42 deployment engine on loopback)\n",
        "3 SuperNodes (TLS + SuperNode auth), SecAgg+, patient-level DP-SGD, a tiny SemioNet, "
        "3 patients per site; ClientApps run as separate processes per message (Flower's "
        "subprocess isolation).\n",
        "| round | round wall (s) | slowest site training (s, its ledger) | overhead (s) |",
        "|---|---|---|---|",
    ]
    training = _training_seconds(work / "state")
    for r in run_rec["rounds"]:
        slowest = training.get(int(r["round"]), 0.0)
        lines.append(
            f"| {r['round']} | {r['seconds']:.1f} | {slowest:.1f} | {r['seconds'] - slowest:.1f} |"
        )
    lines += [
        "",
        "| site | bytes sent per round (all replies: SecAgg+ stages + evaluate) |",
        "|---|---|",
    ]
    for s, per_round in sent.items():
        lines.append(
            f"| {s} | " + ", ".join(f"r{k}: {v:,}" for k, v in sorted(per_round.items())) + " |"
        )
    lines += ["", f"Local consortium wall time (start, 2 rounds, shutdown): {wall:.1f} s.\n"]
    lines += _simulation(ctx.path("simulation"))
    return "\n".join(lines)


def _simulation(work: Path) -> list[str]:
    import tomli_w

    from semiofed.server.simulate import simulate

    cfg_path = work / "tiny.toml"
    cfg_path.write_text(tomli_w.dumps(_tiny(1, secagg=False)), encoding="utf-8")
    lines = [
        "### Simulation engine (Ray), 1 round, tiny model\n",
        "| virtual sites | round (s) | total (s) |",
        "|---|---|---|",
    ]
    t_start = time.perf_counter()
    for n in SIM_SIZES:
        if time.perf_counter() - t_start > SIM_BUDGET_SECONDS:
            lines.append(f"| {n} | not run (bench time budget) | |")
            continue
        try:
            res = simulate(n, 1, cfg_path, work / f"sim-{n}", patients_per_site=3)
        except Exception as exc:  # report, do not invent numbers
            lines.append(f"| {n} | failed: {str(exc)[:120]} | |")
            continue
        lines.append(f"| {n} | {res['round_seconds'][0]:.1f} | {res['wall_seconds']:.1f} |")
    return [*lines, ""]
