"""``semiofed demo``: the whole consortium on this machine (what ``make demo`` runs).

Generates the synthetic consortium, creates the consortium CA and the FAB-signing key, lets
each site make its own SuperNode key pair in its own folder (``semiofed site keygen``; the
coordinator receives only the public key) and each site's (simulated) privacy officer approve
the demo configuration, the FAB and its signer, starts one SuperLink and one SuperNode per
site on 127.0.0.1 with TLS, SuperNode authentication and ``--trusted-entities``, signs and
submits the FAB, federates with
patient-level DP and SecAgg+, prints per round the aggregated metrics and each site's
cumulative ε, then calibrates the final model and builds the federated anomaly model
through each site's DP summaries (:mod:`.demo_privacy`; written into the run directory, so
that publishing the run signs them into the same version as the weights), explains the
final model on the public tuning patients for its card (``registry explain``: simulator data,
no ε), prints each site's cumulative ε over training, evaluation and calibration from its
ledger, then ends with one table, per site and overall, on held-out patients: the
federated DP model, a centralized non-private model, each site's local-only model, the
motion-energy baseline and detectors that know nothing (flag everything, coin flip, random
10 %) — AUROC, type macro-F1, event sensitivity beside false alarms per hour (unmerged) and
specificity, and ε — and one line saying at which sites the federation beat local-only.
That table is computed locally by the demo (synthetic data, every site on this machine,
:mod:`semiofed.client.baselines`), not released by the federation. Every process it
started is ended, also on Ctrl-C or error.

The default consortium has the shape of epilepsy monitoring units: 3 sites × 40 patients,
3 min each, 15 % of them seizure-free and monitored 9 min.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from semiofed.shared.errors import SemioFedError
from semiofed.shared.fab import build_fab, fab_hash
from semiofed.shared.run_config import RunConfig, encode_payload, load_run_config

from . import demo_privacy
from .app import PROGRESS_FILE
from .certs import add_site_key, init_consortium
from .consortium import Consortium

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.toml"
STATUS_EVERY_S = 30.0
PUBLIC_TUNING = "public-tuning"
NON_PRIVATE = ("centralized", "local-only", "fed + local tune")
#: A demo re-run with a deleted state folder but kept synthetic data signs this reset.
DEMO_RESET = "semiofed demo: new state folder for the demo's synthetic data"


def officer_key_path(officer_root: Path, site: str) -> Path:
    """The demo's officer key of ``site``: outside every state folder, one folder per officer
    (its anchors and ledger register sit beside it)."""
    return officer_root / site / "officer_ed25519.pem"


def approve_as_officer(
    cfg: RunConfig,
    state_dir: Path,
    officer_root: Path,
    site: str,
    data_dir: Path,
    reset_reason: str | None = None,
    fab_hash: str | None = None,
    signer: str | None = None,
) -> None:
    """What each site's privacy officer does before the run (demo: a fresh officer key):
    approve the whole configuration for the FAB ``fab_hash`` signed by ``signer`` (both
    ``None``: simulation, where no FAB exists) and, for a state folder without one, create
    the site's ledger bound to its patients with the approved budget."""
    from semiofed.privacy.approval import approve
    from semiofed.privacy.keys import generate_keypair, load_private_key
    from semiofed.privacy.ledger import LEDGER_FILE
    from semiofed.privacy.ledger_binding import init_ledger

    key_path = officer_key_path(officer_root, site)
    key = load_private_key(key_path) if key_path.exists() else generate_keypair(key_path)
    approve(
        cfg.approval_fields(),
        state_dir,
        key,
        fab_hash=fab_hash,
        signer=signer,
        source="semiofed demo",
    )
    if not (state_dir / LEDGER_FILE).exists():
        priv = cfg.privacy
        init_ledger(
            state_dir,
            data_dir,
            key_path,
            priv.site_budget,
            priv.delta,
            priv.accountant,
            reset_reason,
        )


def anchor_as_officer(state_dir: Path, officer_root: Path, site: str) -> str:
    """The officer countersigns the site's trail head and ledger state (after the run)."""
    from semiofed.privacy.anchors import make_anchor

    a = make_anchor(state_dir, officer_key_path(officer_root, site))
    return f"{site}: trail entry {a['trail_seq']}, {a['closed']} closed ledger runs"


def site_keys(site_dir: Path, site: str) -> tuple[Path, Path]:
    """What each site does before it joins (demo): ``semiofed site keygen`` makes its own
    SuperNode key pair in its own folder; only the ``.pub`` goes to the coordinator."""
    keys = site_dir / "keys"
    private, public = keys / f"{site}.key", keys / f"{site}.pub"
    if not private.exists():
        cmd = [sys.executable, "-m", "semiofed.shared.cli", "site", "keygen", "--out", str(keys),
               "--name", site]  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise SemioFedError(f"{site}: `semiofed site keygen` failed: {res.stderr.strip()}")
    return private, public


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

    def show(all_rounds: bool) -> bool:
        nonlocal shown
        progress = out_dir / PROGRESS_FILE
        if not progress.exists():
            return False
        state = json.loads(progress.read_text(encoding="utf-8"))
        done = bool(state.get("finished")) or all_rounds
        for r in state["rounds"][shown:]:
            if "federated_eval" not in r and not done:
                break  # its evaluation arrives with the next round's train replies
            print_round(r, sites)
            shown += 1
        return done

    while time.monotonic() < end:
        finished = show(False)
        if finished or time.monotonic() - last_ls > STATUS_EVERY_S:
            last_ls = time.monotonic()
            status = c.run_status(run_id)
            if str(status.get("status", "")).startswith("finished"):
                show(True)  # the rounds checkpointed since the last look
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
    rounds: int | None = None,
    config: Path = DEFAULT_CONFIG,
    patients_per_site: int = 40,
    minutes_per_patient: float = 3.0,
    seed: int = 1,
    insecure: bool = False,
    timeout: float = 1200.0,
) -> dict[str, Any]:
    from semiofed.shared.synth.consortium import generate_consortium

    t_start = time.perf_counter()
    out = out.resolve()
    cfg = load_run_config(config)
    if rounds is not None:
        cfg = cfg.updated({"federation": {"rounds": rounds}}, "--rounds")
    rounds = cfg.federation.rounds
    names = [f"site-{i:02d}" for i in range(1, sites + 1)]
    data_root = out / "data"
    print(
        f"[1/5] synthetic consortium: {sites} sites × {patients_per_site} patients → {data_root}",
        flush=True,
    )
    if not all((data_root / s).is_dir() for s in names):
        generate_consortium(data_root, sites, patients_per_site, minutes_per_patient, seed)
    cmp_cfg = out / "demo_config.toml"
    _write_toml(cfg, cmp_cfg)
    print(
        f"[2/5] ({time.perf_counter() - t_start:.0f} s) each site fills its feature and embedding "
        "caches (its state folder), while the consortium starts",
        flush=True,
    )
    preparing = [prepare_site(cmp_cfg, data_root / s, out / "state" / s) for s in names]
    background = ThreadPoolExecutor(1)  # the public tuning data, while the sites federate
    tuning_procs: list[subprocess.Popen] = []
    stop = threading.Event()
    tuning = background.submit(make_tuning_data, out / PUBLIC_TUNING, cmp_cfg, tuning_procs, stop)
    try:
        certs = None if insecure else init_consortium(out / "certs", force=True)
        print(
            "[3/5] consortium CA + SuperLink certificate + FAB-signing key: "
            + ("NONE (--insecure)" if insecure else str(out / "certs"))
            + f"; each site makes its own SuperNode key pair in {out / 'sites'}/SITE/keys and "
            "sends the coordinator only the .pub",
            flush=True,
        )
        run_dir = out / "run"
        if run_dir.exists():  # its checkpoint would resume (or refuse) another configuration
            previous = out / "run.previous"
            shutil.rmtree(previous, ignore_errors=True)
            run_dir.rename(previous)
            print(f"  the last demo's run directory is kept as {previous}", flush=True)
        signer = None if certs is None else certs.fab_signing_pub.read_text(encoding="utf-8")
        code = None if certs is None else fab_hash(build_fab())
        with Consortium(out / "work", certs) as c:
            c.forget_superlink_state()  # `make demo` again: no key of the last run is registered
            c.start_superlink()
            for s in names:
                state = out / "state" / s
                approve_as_officer(
                    cfg, state, out / "officers", s, data_root / s, DEMO_RESET, code, signer
                )
                key, pub = site_keys(out / "sites" / s, s)
                if certs is not None:
                    add_site_key(certs, s, pub)
                    c.register(s)
                c.add_site(s, data_root / s, state, key)
                c.start_supernode(s)
            c.wait_connected(len(names))
            for s, proc in zip(names, preparing, strict=True):
                if proc.wait() != 0:
                    raise SemioFedError(
                        f"{s}: preparing its caches failed (exit {proc.returncode})"
                    )
            print(
                f"[4/5] ({time.perf_counter() - t_start:.0f} s) federating: {len(names)} SuperNodes, "
                f"{rounds} rounds, strategy {cfg.federation.strategy}, SecAgg+ "
                f"{'on' if cfg.secagg.enabled else 'off'}, patient-level DP "
                f"σ={cfg.privacy.noise_multiplier} C={cfg.privacy.clip_norm} "
                f"δ={cfg.privacy.delta:g} ({cfg.privacy.accountant})",
                flush=True,
            )
            payload = encode_payload(cfg, out_dir=str(run_dir), run_name="demo", data="synthetic")
            run_id = c.submit({"semiofed": payload})
            status = follow_run(c, run_id, run_dir, names, timeout)
    except BaseException:
        stop.set()
        for proc in [*preparing, *tuning_procs]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        raise
    finally:
        background.shutdown(wait=True, cancel_futures=True)
    tuning.result()
    priv = cfg.privacy
    print(
        f"  ({time.perf_counter() - t_start:.0f} s) federated DP calibration (the comparison "
        "of [5/5] runs beside it)",
        flush=True,
    )
    comparing = subprocess.Popen(
        [sys.executable, "-m", "semiofed.client.baselines", "--config", str(cmp_cfg),
         "--data-root", str(data_root), "--sites", *names, "--run-dir", str(run_dir),
         "--tuning-dir", str(out / PUBLIC_TUNING), "--state-root", str(out / "state")],
        stdout=subprocess.PIPE, text=True, env=one_thread_env(),
    )  # fmt: skip
    explaining = subprocess.Popen(  # the card's global explanations, on public data only
        [sys.executable, "-m", "semiofed.shared.cli", "registry", "explain", str(run_dir),
         "--public-data", str(out / PUBLIC_TUNING)],
        env=one_thread_env(),
    )  # fmt: skip
    try:
        calibration = demo_privacy.run_calibration(
            cmp_cfg, data_root, names, run_dir, out / "state", out / PUBLIC_TUNING
        )
        demo_privacy.print_site_epsilon(out / "state", names, priv.delta, priv.accountant)
        anchored = [anchor_as_officer(out / "state" / s, out / "officers", s) for s in names]
        print(
            f"  each officer countersigned its site's audit trail and ledger (officer keys and "
            f"anchors in {out / 'officers'}, outside STATE): {'; '.join(anchored)}",
            flush=True,
        )
        print(
            f"[5/5] ({time.perf_counter() - t_start:.0f} s) on held-out patients: federated DP "
            "vs centralized (non-private), local-only, motion energy and detectors that know "
            "nothing",
            flush=True,
        )
        stdout, _ = comparing.communicate()
        explaining.wait()
    except BaseException:
        for proc in (comparing, explaining):
            proc.kill()
            proc.wait()
        raise
    if comparing.returncode != 0:
        raise SemioFedError(f"baseline comparison failed (exit {comparing.returncode}; see above)")
    if explaining.returncode != 0:
        raise SemioFedError(f"public explanations failed (exit {explaining.returncode}; see above)")
    comparison = json.loads(stdout)
    run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    eps = demo_privacy.cumulative_epsilon(out / "state", names, priv.delta, priv.accountant)
    print_comparison(comparison, eps, priv.delta)
    demo_privacy.print_release_epsilon(calibration)
    wall = time.perf_counter() - t_start
    print(
        f"\nrun directory: {run_dir}  (publish with `semiofed registry publish {run_dir}`: one "
        "signed version with the seizure model, its DP calibration, the DP anomaly model and "
        "the global explanations on public data)"
    )
    print(f"demo wall time: {wall:.0f} s; Flower run {run_id}: {status.get('status')}")
    return {
        "run": run,
        "comparison": comparison,
        "calibration": calibration,
        "wall_seconds": wall,
        "status": status,
    }


def make_tuning_data(
    folder: Path, config: Path, procs: list[subprocess.Popen], stop: threading.Event
) -> None:
    """The public tuning consortium of :func:`~semiofed.shared.public_data.tuning_patients`
    and the public background recordings of
    :func:`~semiofed.shared.public_data.background_patients` (no patient data), generated
    unless they are there, and their features and embeddings cached in ``folder/cache`` and
    ``folder/background/cache`` where the comparison reads them (each preparation's process
    is appended to ``procs``, which the demo ends on error; none starts once ``stop`` is
    set)."""
    from semiofed.shared import public_data as pub

    for make in (pub.tuning_sites, pub.background_sites):
        sites = make(folder)  # generated unless they are there
        for site in sites:
            if stop.is_set():
                return
            procs.append(prepare_site(config, site, site.parent / pub.TUNING_CACHE, nice=True))
            procs[-1].wait()  # one at a time: the federating sites need the CPU more


def prepare_site(
    config: Path, data_dir: Path, state_dir: Path, nice: bool = False
) -> subprocess.Popen:
    """What a site does before it joins: load its data once, which fills its feature cache
    and (frozen encoders) its embedding cache (``python -m semiofed.client.site_task``; server/
    does not import client/); so the first round costs what the others cost. ``nice``: at
    low priority (work done beside the federation)."""
    cmd = [sys.executable, "-m", "semiofed.client.site_task", "--config", str(config),
           "--data", str(data_dir), "--state", str(state_dir)]  # fmt: skip
    if nice:
        cmd.append("--low-priority")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=one_thread_env())


def one_thread_env() -> dict[str, str]:
    """The environment of a demo child that does numeric work beside the others: one BLAS /
    OpenMP thread (the sites' processes share the machine; idle OpenMP threads spinning for
    work cost more CPU than they save), as the SuperNodes' ClientApps have."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    return env


def _eps_cell(name: str, site: str, eps: dict[str, float | None]) -> str:
    if name != "federated":
        return "non-private" if name in NON_PRIVATE else "—"
    values = list(eps.values()) if site == "overall" else [eps.get(site)]
    known = [v for v in values if v is not None]
    return f"{max(known):.2f}" if known and len(known) == len(values) else "?"


def print_comparison(
    comparison: dict[str, Any], eps: dict[str, float | None], delta: float
) -> None:
    """The demo's one table, then the one line on federation vs local-only."""
    head = (
        f"  {'site':<9} {'detector':<16} {'AUROC':>6} {'type-F1':>8} {'event sens':>10} "
        f"{'FA/h':>7} {'spec':>6} {'ε':>11}"
    )
    print(head + "\n  " + "-" * (len(head) - 2))
    tables = {**comparison["sites"], "overall": comparison["overall"]}
    for site, rows in tables.items():
        for name, m in rows.items():
            print(
                f"  {site:<9} {name:<16} {_fmt(m['auroc'], '6.3f')} {_fmt(m['macro_f1'], '8.3f')} "
                f"{_fmt(m['event_sensitivity'], '10.3f')} {_fmt(m['false_alarms_per_hour'], '7.2f')} "
                f"{_fmt(m['specificity'], '6.3f')} {_eps_cell(name, site, eps):>11}"
            )
    overall = comparison["overall"]["federated"]
    fed = comparison["sites"][next(iter(comparison["sites"]))]["federated"]
    rule, types = fed["event_rule"], comparison["type_rule"]
    print(
        "  (held-out test patients; every learned detector's operating point chosen on PUBLIC "
        "simulator data (no patient data: for the federated model post-processing of the DP "
        "release, no ε): its event operating point (event sens, FA/h, spec) at ≤ "
        f"{comparison['event_aim_false_alarms_per_hour']:g} FA/h on "
        f"{comparison['tuning_patients']} public tuning patients and "
        f"{comparison['background_patients']} public background patients "
        f"({comparison['tuning_background_hours']:.1f} h of background), federated: threshold "
        f"{fed['threshold']:.2f}, window scores averaged over {rule['smooth_windows']} window(s), "
        f"detections ≥ {rule['min_event_s']:g} s; its type threshold on the tuning patients, "
        f"federated {fed['type_threshold']:.2f}: types decided per detection at that threshold "
        f"(scores averaged over {types['smooth_windows']} windows, detections ≥ "
        f"{types['min_event_s']:g} s: a window outside one is background, inside one it takes "
        "the detection's type); motion energy's threshold fitted on validation "
        f"patients; FA/h = false alarms per hour on unmerged detections, spec = specificity on "
        f"{overall['background_hours']:.1f} h of background, {overall['ref_events']} events; "
        f"ε = cumulative patient-level ε at δ = {delta:g}; centralized pools all sites; "
        "references trained non-privately, steps scaled to their data, early-stopped on their "
        "validation patients; fed + local tune = each site's non-private fine-tune of the "
        "federated model, never sent; every row is computed locally by the demo: synthetic "
        "data only)"
    )
    beat = []
    for site, rows in comparison["sites"].items():
        fed, loc = rows["federated"], rows["local-only"]
        won = _gt(fed["auroc"], loc["auroc"]) and _gt(fed["macro_f1"], loc["macro_f1"])
        ci = comparison.get("federated_minus_local", {}).get(site, {})
        beat.append(
            f"{site} {'yes' if won else 'no'} (AUROC {_fmt(fed['auroc'])} vs {_fmt(loc['auroc'])}"
            f"{_interval(ci.get('auroc'))}, type-F1 {_fmt(fed['macro_f1'])} vs "
            f"{_fmt(loc['macro_f1'])}{_interval(ci.get('macro_f1'))})"
        )
    print(
        "  federation beat local-only (higher AUROC and type macro-F1; [95 % interval of "
        "federated − local-only over bootstrap resamples of the test patients]): " + "; ".join(beat)
    )


def _interval(ci: list[float] | None) -> str:
    return f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else ""


def _gt(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and a > b


def _write_toml(cfg: RunConfig, path: Path) -> None:
    import tomli_w

    path.write_text(tomli_w.dumps(cfg.as_dict()), encoding="utf-8")
