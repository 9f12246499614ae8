"""Federation cost on the real deployment engine (loopback) and on the simulation engine.

* per-round overhead = round wall time − the slowest site's work in that round (its DP
  training and DP evaluation, from its ledger);
* the same rounds of a plain Flower ClientApp (:mod:`bench.plain_flower_app`: SecAgg+ over a
  client that echoes the parameters) on the same SuperLink, SuperNodes, ServerApp and SecAgg+
  settings, right after the SemioFed run;
* bytes sent per site per round (from each site's outbox: every reply it sent);
* wall time of a small local consortium run (SuperLink + 3 SuperNodes, TLS, SecAgg+);
* simulated round time for 10, 50 and 100 virtual sites (Flower simulation runtime), with
  the CPU time (user + sys) of the whole process tree and the load average, as far as the
  time budget allows (sizes not reached are listed as not run).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from bench.run import BenchContext

if TYPE_CHECKING:
    from semiofed.shared.run_config import RunConfig

SITES = ["site-01", "site-02", "site-03"]
ROUNDS = 2
SIM_SIZES = (10, 50, 100)
SIM_BUDGET_SECONDS = 300.0


def _tiny(rounds: int, secagg: bool) -> RunConfig:
    from semiofed.shared.run_config import RunConfig

    return RunConfig.parse(
        {
            "federation": {"rounds": rounds, "min-nodes": 2, "round-timeout": 300.0},
            "training": {"local-epochs": 1, "batch-size": 2, "test-fraction": 0.34},
            "model": {"channels": [8], "strides": [3], "motion-channels": [8], "motion-strides": [3],
                      "embed-dim": 16, "groups": 4},
            "privacy": {"site-budget": 100.0},
            "secagg": {"enabled": secagg},
        }
    )  # fmt: skip


def _plain_app(work: Path) -> Path:
    from semiofed.shared.fab import write_app_dir

    app_dir = write_app_dir(work / "plain-app", clientapp="plain_flower_app:app")
    shutil.copy(Path(__file__).with_name("plain_flower_app.py"), app_dir / "plain_flower_app.py")
    return app_dir


def _deployment(work: Path) -> tuple[dict, dict, float, dict[str, dict[str, int]]]:
    from semiofed.server.app import PROGRESS_FILE
    from semiofed.server.certs import add_site_key, init_consortium
    from semiofed.server.consortium import Consortium
    from semiofed.server.demo import approve_as_officer, site_keys
    from semiofed.shared.fab import build_fab, fab_hash
    from semiofed.shared.run_config import encode_payload
    from semiofed.shared.synth.consortium import generate_consortium

    cfg = _tiny(ROUNDS, secagg=True)
    generate_consortium(work / "data", 3, 3, 1.0, seed=1)
    certs = init_consortium(work / "certs", force=True)
    signer, code = certs.fab_signing_pub.read_text(), fab_hash(build_fab())
    t0 = time.perf_counter()
    with Consortium(work / "consortium", certs) as c:
        c.start_superlink()
        for s in SITES:
            approve_as_officer(
                cfg, work / "state" / s, work / "officers", s, work / "data" / s, None, code, signer
            )
            key, pub = site_keys(work / "sites" / s, s)
            add_site_key(certs, s, pub)
            c.register(s)
            c.add_site(s, work / "data" / s, work / "state" / s, key)
            c.start_supernode(s)
        c.wait_connected(3)
        run_id = c.submit({"semiofed": encode_payload(cfg, out_dir=str(work / "run"))})
        status = c.wait_run(run_id, timeout=1200, progress=work / "run" / PROGRESS_FILE)
        wall = time.perf_counter() - t0
        plain_id = c.submit(
            {"semiofed": encode_payload(cfg, out_dir=str(work / "plain"))}, _plain_app(work)
        )
        plain_status = c.wait_run(plain_id, timeout=1200, progress=work / "plain" / PROGRESS_FILE)
    for what, st in (("SemioFed", status), ("plain Flower", plain_status)):
        if st.get("status") != "finished:completed":
            raise RuntimeError(f"{what} bench run {st.get('status')}: {st.get('status-details')}")
    run = json.loads((work / "run" / "run.json").read_text())
    plain = json.loads((work / "plain" / "run.json").read_text())
    sent: dict[str, dict[str, int]] = {}
    for s in SITES:
        per_round: dict[str, int] = defaultdict(int)
        for line in (work / "state" / s / "outbox.jsonl").read_text().splitlines():
            e = json.loads(line)
            per_round[str(e["round"])] += int(e["bytes"])
        sent[s] = dict(per_round)
    return run, plain, wall, sent


def _site_seconds(states: Path) -> dict[int, float]:
    """The slowest site's work per round (DP training, and the DP evaluation its train
    message holds), from the sites' own ledgers (it is not sent to the coordinator; 1-s
    resolution). The final model's evaluation counts for the last round."""
    from datetime import datetime

    from semiofed.privacy.ledger import PrivacyLedger

    def t(stamp: str) -> float:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").timestamp()

    def round_of(purpose: str) -> int | None:
        if purpose.startswith("federated round "):
            return int(purpose.rsplit(" ", 1)[1])
        if purpose == "federated evaluation of the final model":
            return ROUNDS
        if purpose.startswith("federated evaluation of the round-"):  # inside the next round
            return int(purpose.split("round-")[1].split(" ")[0]) + 1
        return None

    out: dict[int, float] = {}
    for s in SITES:
        per_round: dict[int, float] = defaultdict(float)
        for r in PrivacyLedger(states / s).load()["runs"]:
            n = round_of(str(r.get("purpose", "")))
            if n is not None and r.get("finished"):
                per_round[n] += t(r["finished"]) - t(r["started"])
        for n, secs in per_round.items():
            out[n] = max(out.get(n, 0.0), secs)
    return out


def run(ctx: BenchContext) -> str:
    work = ctx.path("federation")
    load = _load_average()
    run_rec, plain, wall, sent = _deployment(work)
    lines = [
        "## Federation (Flower 1.42 deployment engine on loopback)\n",
        "3 SuperNodes (TLS + SuperNode auth), SecAgg+, patient-level DP-SGD, a tiny SemioNet, "
        "3 patients per site; ClientApps run as separate processes per message (Flower's "
        "subprocess isolation): per round 4 SecAgg+ stage messages per site, the last round "
        "also an evaluate message. Beside it, the same rounds of a plain Flower ClientApp "
        "(SecAgg+ over a client echoing the parameters: no data, no torch) on the same "
        f"SuperLink, SuperNodes, ServerApp and SecAgg+ settings. Load average at the start: "
        f"{load}.\n",
        "| round | SemioFed round (s) | slowest site's DP training + evaluation (s, its ledger) "
        "| SemioFed overhead (s) | plain Flower round (s) | overhead ÷ plain |",
        "|---|---|---|---|---|---|",
    ]
    work_s = _site_seconds(work / "state")
    plain_s = {int(r["round"]): r["seconds"] for r in plain["rounds"]}
    for r in run_rec["rounds"]:
        n = int(r["round"])
        over = r["seconds"] - work_s.get(n, 0.0)
        p = plain_s.get(n)
        cells = f"{p:.1f} | {over / p:.2f}" if p else "— | —"
        lines.append(
            f"| {n} | {r['seconds']:.1f} | {work_s.get(n, 0.0):.1f} | {over:.1f} | {cells} |"
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
    lines += [
        "",
        f"Local consortium wall time (start, {ROUNDS} SemioFed rounds, shutdown): {wall:.1f} s.\n",
    ]
    lines += _simulation(ctx.path("simulation"))
    return "\n".join(lines)


def _simulation(work: Path) -> list[str]:
    import tomli_w

    from semiofed.server.simulate import simulate

    cfg_path = work / "tiny.toml"
    cfg_path.write_text(tomli_w.dumps(_tiny(1, secagg=False).as_dict()), encoding="utf-8")
    lines = [
        "### Simulation runtime (`flwr run` on a simulation SuperLink, Ray), 1 round, tiny model\n",
        "CPU: user + sys of every process of the run (SuperLink, simulation process, Ray, "
        "virtual sites), sampled every 0.5 s, and by process: the Ray actors that run the "
        "virtual sites' ClientApps (SemioFed's site work, plus each actor's Ray worker and its "
        "imports), the simulation process (Flower's simulation runtime and SemioFed's ServerApp), "
        "and the rest (SuperLink, SuperExec, `flwr` CLI calls, Ray's daemons); the machine is "
        "shared, so the load average (1 min) at the start and the end of each run is shown.\n",
        "| virtual sites | round (s) | total (s) | CPU user + sys (s) | CPU per site (s) "
        "| actors (s) | simulation process (s) | rest (s) | load start / end |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    t_start = time.perf_counter()
    for n in SIM_SIZES:
        if time.perf_counter() - t_start > SIM_BUDGET_SECONDS:
            lines.append(f"| {n} | not run (bench time budget) | | | | | | | |")
            continue
        load0 = os.getloadavg()[0]
        try:
            with TreeCpu() as cpu:
                res = simulate(n, 1, cfg_path, work / f"sim-{n}", patients_per_site=3)
        except Exception as exc:  # report, do not invent numbers
            lines.append(f"| {n} | failed: {str(exc)[:120]} | | | | | | | |")
            continue
        by = cpu.by_group()
        lines.append(
            f"| {n} | {res['round_seconds'][0]:.1f} | {res['wall_seconds']:.1f} | "
            f"{cpu.seconds:.1f} | {cpu.seconds / n:.2f} | {by['actors']:.1f} | "
            f"{by['simulation']:.1f} | {by['rest']:.1f} | "
            f"{load0:.1f} / {os.getloadavg()[0]:.1f} |"
        )
    return [*lines, ""]


class TreeCpu:
    """User + sys CPU seconds of this process's descendants while the block runs (from
    /proc, every 0.5 s: the SuperLink starts its simulation process and Ray in sessions of
    their own, so resource.getrusage cannot see them)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._seen: dict[int, float] = {}
        self._names: dict[int, str] = {}  # the last command line seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> TreeCpu:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.seconds = sum(self._seen.values())

    def _sample(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        while not self._stop.wait(0.5):
            table: dict[int, tuple[int, float]] = {}
            for name in os.listdir("/proc"):
                if name.isdigit():
                    try:
                        text = Path(f"/proc/{name}/stat").read_text()
                    except OSError:
                        continue
                    f = text[text.rindex(")") + 2 :].split()
                    table[int(name)] = (int(f[1]), (int(f[11]) + int(f[12])) / tick)
            tree, todo = set(), [os.getpid()]
            while todo:
                pid = todo.pop()
                tree.add(pid)
                todo += [c for c, (parent, _) in table.items() if parent == pid and c not in tree]
            for pid in tree - {os.getpid()}:
                if pid in table:
                    self._seen[pid] = table[pid][1]
                    with contextlib.suppress(OSError, UnicodeDecodeError):
                        # empty once the process exits; Ray retitles its actors
                        name = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
                        self._names[pid] = name or self._names.get(pid, "")

    def by_group(self) -> dict[str, float]:
        """CPU seconds of the Ray actors running ClientApps, of Flower's simulation process
        and of everything else."""
        out = {"actors": 0.0, "simulation": 0.0, "rest": 0.0}
        for pid, secs in self._seen.items():
            name = self._names.get(pid, "")
            group = (
                "actors"
                if name.startswith("ray::ClientAppActor")
                else "simulation"
                if "flwr-simulation" in name
                else "rest"
            )
            out[group] += secs
        return out


def _load_average() -> str:
    return " / ".join(f"{v:.1f}" for v in os.getloadavg()) + " (1 / 5 / 15 min)"
