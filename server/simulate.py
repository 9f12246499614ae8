"""``semiofed server simulate``: many virtual sites on Flower's simulation engine (Ray).

The same ServerApp and ClientApp as the deployment engine; each virtual site gets its own
state folder (ledger, approvals, outbox) while the synthetic data folders are shared round
robin among virtual sites (``--patients-per-site`` patients in each of at most 3 folders), so
the cost measured is the federation's, not data generation's. Needs ``ray==2.55.1``
(``flwr[simulation]``).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from semiofed.shared.errors import SemioFedError
from semiofed.shared.fab import CLIENTAPP
from semiofed.shared.run_config import SIM_PAYLOAD_ENV, encode_payload, load_run_config

from .demo import approve_as_officer

DATA_SITES = 3
#: Virtual sites share data folders: each further ledger on one is a signed reset.
SHARED_DATA = "simulation: virtual sites share a synthetic data folder"


def simulate(
    sites: int, rounds: int, config: Path, out: Path, patients_per_site: int = 4, seed: int = 1
) -> dict[str, Any]:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise SemioFedError(
            "Flower's simulation engine needs Ray: pip install ray==2.55.1 (flwr[simulation])"
        ) from None
    from flwr.simulation import run_simulation

    from semiofed.shared.synth.consortium import generate_consortium

    from .app import app as server_app

    if sites < 2:
        raise SemioFedError("--sites must be >= 2")
    out = out.resolve()
    cfg = load_run_config(config)
    cfg["federation"]["rounds"] = rounds
    cfg["federation"]["round-timeout"] = max(cfg["federation"]["round-timeout"], 600.0)
    n_data = min(DATA_SITES, sites)
    if not all((out / "data" / f"site-{i:02d}").is_dir() for i in range(1, n_data + 1)):
        generate_consortium(out / "data", n_data, patients_per_site, 1.0, seed)
    for i in range(sites):
        name = f"site-{i + 1:03d}"
        data = out / "data" / f"site-{i % n_data + 1:02d}"  # as the ClientApp maps it
        approve_as_officer(cfg, out / "state" / name, out / "officers", name, data, SHARED_DATA)
    run_dir = out / "run"
    payload = encode_payload(cfg, out_dir=str(run_dir), sim_root=str(out), sim_data_sites=n_data)
    os.environ[SIM_PAYLOAD_ENV] = payload
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # Ray's FutureWarning
    # by module reference, as a SuperNode loads it (server/ never imports client/ code)
    module, _, attr = CLIENTAPP.partition(":")
    client_app = getattr(importlib.import_module(module), attr)

    # flwr prints its own console lines: not again through the root handler
    logging.getLogger("flwr").propagate = False
    t0 = time.perf_counter()
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=sites,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            # the virtual sites' console (Ray actors: SecAgg+ DEBUG lines) is not relayed; a
            # failing ClientApp still reaches the ServerApp's log as a failed reply
            "init_args": {"log_to_driver": False, "logging_level": logging.WARNING},
        },
    )
    wall = time.perf_counter() - t0
    run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    return {
        "sites": sites,
        "rounds": rounds,
        "wall_seconds": wall,
        "round_seconds": [r.get("seconds") for r in run["rounds"]],
        "participating": [len(r["sites"]) for r in run["rounds"]],
    }
