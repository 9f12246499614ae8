"""``semiofed server simulate``: many virtual sites on Flower's simulation runtime (Ray).

The same ServerApp and ClientApp as the deployment engine, run the way Flower 1.42 runs
simulations: a SuperLink on 127.0.0.1 in simulation mode and ``flwr run APP_DIR`` with a
simulation federation config (``num-supernodes`` virtual sites); the SuperLink's
simulation process runs the ServerApp and the virtual sites' ClientApps on Ray, with the
packages installed here (runtime dependency installation off). Each virtual site gets its
own state folder (ledger, approvals for this FAB, outbox) while the synthetic data folders
are shared round robin among virtual sites (``--patients-per-site`` patients in each of at
most 3 folders), so the cost measured is the federation's, not data generation's; the
virtual sites of one data folder share its feature cache (``STATE/feature-cache`` links to
``OUT/feature-cache/site-NN``: the same recordings give the same entries, computed once).
Needs ``ray==2.55.1`` (``flwr[simulation]``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from semiofed.shared.dataset import FEATURE_CACHE_DIR
from semiofed.shared.errors import SemioFedError
from semiofed.shared.fab import build_fab, fab_hash, write_app_dir
from semiofed.shared.run_config import encode_payload, load_run_config

from .app import PROGRESS_FILE
from .consortium import Consortium
from .demo import approve_as_officer

DATA_SITES = 3
#: Virtual sites share data folders: each further ledger on one is a signed reset.
SHARED_DATA = "simulation: virtual sites share a synthetic data folder"
SUPEREXEC_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"


class SimulationLink(Consortium):
    """An insecure SuperLink on 127.0.0.1 in simulation mode, owned by this object: it has
    no SuperNodes to authenticate, only the virtual sites of its own simulation process."""

    def superlink_command(self) -> list[str]:
        return [*super().superlink_command(), "--simulation"]

    def _env(self, flwr_home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Flower's default SuperExec poll (1 s): a simulation starts one run, so the
        deployment's 0.1-s polling only costs CPU all along (SuperLink + SuperExec: 18.5 s
        of CPU in a 150-s run of 50 sites)."""
        env = super()._env(flwr_home, extra)
        env.pop(SUPEREXEC_POLL_ENV, None)
        return env


def federation_config(sites: int) -> str:
    """The simulation federation of ``sites`` virtual sites, one CPU each; the virtual
    sites' console (Ray actors: SecAgg+ DEBUG lines) is not relayed, a failing ClientApp
    still reaches the ServerApp as a failed reply."""
    return (
        f"num-supernodes={sites} client-resources-num-cpus=1 client-resources-num-gpus=0.0 "
        'init-args-log-to-driver=false init-args-logging-level="WARNING"'
    )


def share_feature_cache(state_dir: Path, shared: Path) -> None:
    """``state_dir``'s feature cache as a link to ``shared`` (left alone when it has one)."""
    link = state_dir / FEATURE_CACHE_DIR
    if not link.exists() and not link.is_symlink():
        shared.mkdir(parents=True, exist_ok=True)
        link.symlink_to(shared, target_is_directory=True)


def simulate(
    sites: int, rounds: int, config: Path, out: Path, patients_per_site: int = 4, seed: int = 1
) -> dict[str, Any]:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise SemioFedError(
            "Flower's simulation engine needs Ray: pip install ray==2.55.1 (flwr[simulation])"
        ) from None
    from semiofed.shared.synth.consortium import generate_consortium

    if sites < 2:
        raise SemioFedError("--sites must be >= 2")
    out = out.resolve()
    cfg = load_run_config(config)
    timeout = max(cfg.federation.round_timeout, 600.0)
    cfg = cfg.updated({"federation": {"rounds": rounds, "round-timeout": timeout}}, "--rounds")
    n_data = min(DATA_SITES, sites)
    if not all((out / "data" / f"site-{i:02d}").is_dir() for i in range(1, n_data + 1)):
        generate_consortium(out / "data", n_data, patients_per_site, 1.0, seed)
    code = fab_hash(build_fab())
    for i in range(sites):
        name = f"site-{i + 1:03d}"
        data = out / "data" / f"site-{i % n_data + 1:02d}"  # as the ClientApp maps it
        approve_as_officer(
            cfg, out / "state" / name, out / "officers", name, data, SHARED_DATA, code
        )
        share_feature_cache(out / "state" / name, out / FEATURE_CACHE_DIR / data.name)
    run_dir = out / "run"
    payload = encode_payload(cfg, out_dir=str(run_dir), sim_root=str(out), sim_data_sites=n_data)
    t0 = time.perf_counter()
    with SimulationLink(out / "flower", None) as link:
        link.start_superlink()
        submitted = link.flwr(
            "run",
            str(write_app_dir(out / "flower" / "app")),
            "local",
            "--run-config",
            f"semiofed={json.dumps(payload)}",
            "--federation-config",
            federation_config(sites),
        )
        status = link.wait_run(
            int(submitted["run-id"]), timeout=24 * 3600.0, progress=run_dir / PROGRESS_FILE
        )
    wall = time.perf_counter() - t0
    if status.get("status") != "finished:completed":
        raise SemioFedError(
            f"simulation run {status.get('status')}: {status.get('status-details')} "
            f"(SuperLink log: {out / 'flower' / 'logs' / 'superlink.log'})"
        )
    run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    return {
        "sites": sites,
        "rounds": rounds,
        "wall_seconds": wall,
        "round_seconds": [r.get("seconds") for r in run["rounds"]],
        "participating": [len(r["sites"]) for r in run["rounds"]],
    }
