"""``semiofed demo``: the whole consortium on this machine (what ``make demo`` runs).

Generates the synthetic consortium, creates the consortium CA and SuperNode keys, lets each
site's (simulated) privacy officer approve the demo configuration, starts one SuperLink and
one SuperNode per site on 127.0.0.1 with TLS and SuperNode authentication, federates with
patient-level DP and SecAgg+, prints per round the aggregated metrics and each site's
cumulative ε, then compares the federated model with a centralized non-private model and
each site's local-only model on held-out patients. Every process it started is ended,
also on Ctrl-C or error.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from semiofed.shared.errors import SemioFedError
from semiofed.shared.run_config import approval_fields, encode_payload, load_run_config

from .app import PROGRESS_FILE
from .certs import init_consortium
from .consortium import Consortium

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.toml"
STATUS_EVERY_S = 30.0


def approve_as_officer(cfg: dict[str, Any], state_dir: Path, officer_dir: Path, site: str) -> None:
    """What each site's privacy officer does before the run (demo: a fresh officer key)."""
    from semiofed.privacy.approval import approve
    from semiofed.privacy.keys import generate_keypair, load_private_key

    key_path = officer_dir / f"{site}_officer_ed25519.pem"
    key = load_private_key(key_path) if key_path.exists() else generate_keypair(key_path)
    approve(approval_fields(cfg), state_dir, key, source="semiofed demo")


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "—" if v is None else format(v, spec)


def print_round(r: dict[str, Any], sites: list[str]) -> None:
    ev = r.get("federated_eval", {})
    eps = "  ".join(
        f"{s}: ε={_fmt(r['sites'][s].get('epsilon'), '.2f')}" if s in r["sites"] else f"{s}: —"
        for s in sites
    )
    declined = "".join(
        f"\n      {s} declined: {why[:160]}" for s, why in r.get("declined", {}).items()
    )
    print(
        f"  round {r['round']:>2} | {_fmt(r.get('seconds'), '.1f')} s | loss {_fmt(ev.get('loss'))} "
        f"| macro-F1 {_fmt(ev.get('macro-f1'))} | AUROC {_fmt(ev.get('auroc-seizure'))} | {eps}{declined}",
        flush=True,
    )


def follow_run(
    c: Consortium, run_id: int, out_dir: Path, sites: list[str], timeout: float
) -> dict[str, Any]:
    """Print rounds as the ServerApp checkpoints them; return the final ``flwr ls`` row.

    The run's status is asked (a ``flwr`` process, which competes with the sites for the CPU)
    when the ServerApp reports it finished, and otherwise every ``STATUS_EVERY_S`` seconds to
    notice a failed run."""
    shown, end, last_ls, finished = 0, time.monotonic() + timeout, time.monotonic(), False
    while time.monotonic() < end:
        progress = out_dir / PROGRESS_FILE
        if progress.exists():
            state = json.loads(progress.read_text(encoding="utf-8"))
            finished = bool(state.get("finished"))
            for r in state["rounds"][shown:]:
                if "federated_eval" not in r and not finished:
                    break  # its evaluation arrives with the next round's train replies
                print_round(r, sites)
                shown += 1
        if finished or time.monotonic() - last_ls > STATUS_EVERY_S:
            last_ls = time.monotonic()
            status = c.run_status(run_id)
            if str(status.get("status", "")).startswith("finished"):
                if not str(status["status"]).endswith("completed"):
                    raise SemioFedError(
                        f"run {run_id} {status['status']}: {status.get('status-details')}; logs in {c.logs}"
                    )
                return status
            c._check_alive()
        time.sleep(1)
    raise SemioFedError(f"run {run_id} did not finish within {timeout:.0f} s")


def run_demo(
    out: Path,
    sites: int = 3,
    rounds: int = 5,
    config: Path = DEFAULT_CONFIG,
    patients_per_site: int = 6,
    minutes_per_patient: float = 1.0,
    seed: int = 1,
    insecure: bool = False,
    timeout: float = 1200.0,
) -> dict[str, Any]:
    from semiofed.shared.synth.consortium import generate_consortium

    t_start = time.perf_counter()
    out = out.resolve()
    cfg = load_run_config(config)
    cfg["federation"]["rounds"] = rounds
    names = [f"site-{i:02d}" for i in range(1, sites + 1)]
    data_root = out / "data"
    print(
        f"[1/4] synthetic consortium: {sites} sites × {patients_per_site} patients → {data_root}",
        flush=True,
    )
    if not all((data_root / s).is_dir() for s in names):
        generate_consortium(data_root, sites, patients_per_site, minutes_per_patient, seed)
    certs = None if insecure else init_consortium(out / "certs", names, force=True)
    print(
        "[2/4] consortium CA + SuperLink certificate + SuperNode keys: "
        + ("NONE (--insecure)" if insecure else str(out / "certs")),
        flush=True,
    )
    run_dir = out / "run"
    with Consortium(out / "work", certs) as c:
        c.start_superlink()
        for s in names:
            state = out / "state" / s
            approve_as_officer(cfg, state, out / "officers", s)
            if certs is not None:
                c.register(s)
            c.add_site(s, data_root / s, state)
            c.start_supernode(s)
        c.wait_connected(len(names))
        print(
            f"[3/4] federating: {len(names)} SuperNodes, {rounds} rounds, strategy "
            f"{cfg['federation']['strategy']}, SecAgg+ {'on' if cfg['secagg']['enabled'] else 'off'}, "
            f"patient-level DP σ={cfg['privacy']['noise-multiplier']} C={cfg['privacy']['clip-norm']} "
            f"δ={cfg['privacy']['delta']:g} ({cfg['privacy']['accountant']})",
            flush=True,
        )
        run_id = c.submit({"semiofed": encode_payload(cfg, out_dir=str(run_dir), run_name="demo")})
        status = follow_run(c, run_id, run_dir, names, timeout)
    print(
        "[4/4] federated vs centralized (non-private) vs local-only, on held-out patients",
        flush=True,
    )
    cmp_cfg = out / "demo_config.toml"
    _write_toml(cfg, cmp_cfg)
    res = subprocess.run(
        [sys.executable, "-m", "semiofed.client.baselines", "--config", str(cmp_cfg),
         "--data-root", str(data_root), "--sites", *names, "--run-dir", str(run_dir)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if res.returncode != 0:
        raise SemioFedError(f"baseline comparison failed: {res.stderr.strip()[-2000:]}")
    comparison = json.loads(res.stdout)
    print_comparison(comparison)
    run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    wall = time.perf_counter() - t_start
    print(f"\nrun directory: {run_dir}  (publish with `semiofed registry publish {run_dir}`)")
    print(f"demo wall time: {wall:.0f} s; Flower run {run_id}: {status.get('status')}")
    return {"run": run, "comparison": comparison, "wall_seconds": wall, "status": status}


def print_comparison(comparison: dict[str, Any]) -> None:
    print(f"  {'site':<9} {'model':<12} {'loss':>7} {'macro-F1':>9} {'AUROC':>7} {'acc':>6}")
    for site, row in comparison["sites"].items():
        for name in ("federated", "centralized", "local"):
            m = row[name]
            print(
                f"  {site:<9} {name:<12} {m['loss']:>7.3f} {m['macro-f1']:>9.3f} "
                f"{m['auroc-seizure']:>7.3f} {m['detect-accuracy']:>6.3f}"
            )
    print(
        "  (−1 = undefined on these held-out patients; centralized pools all sites: synthetic data only)"
    )


def _write_toml(cfg: dict[str, Any], path: Path) -> None:
    import tomli_w

    path.write_text(tomli_w.dumps(cfg), encoding="utf-8")
