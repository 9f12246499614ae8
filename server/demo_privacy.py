"""The demo's privacy close: the federated DP calibration of the final model, then each
site's cumulative ε over everything it released — DP-SGD training rounds, DP evaluations
and calibration summaries — read from the site's own ledger (the source of truth).

The calibration runs as each site would run it, with its own state folder, in a
subprocess (``python -m semiofed.client.demo_calibration``: server/ does not import
client/).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from semiofed.privacy.ledger import PrivacyLedger
from semiofed.shared.errors import SemioFedError

#: Ledger purposes (prefixes) and how the per-site line names them.
RELEASE_KINDS = (
    ("federated round", "training rounds"),
    ("federated evaluation", "evaluations"),
    ("calibration summary", "calibration summaries"),
)


def run_calibration(
    config: Path, data_root: Path, sites: list[str], run_dir: Path, state_root: Path
) -> dict[str, Any]:
    """Both federated DP calibration rounds at every site; prints what was merged."""
    res = subprocess.run(
        [sys.executable, "-m", "semiofed.client.demo_calibration", "--config", str(config),
         "--data-root", str(data_root), "--sites", *sites, "--run-dir", str(run_dir),
         "--state-root", str(state_root)],
        stdout=subprocess.PIPE, text=True, check=False,
    )  # fmt: skip
    if res.returncode != 0:
        raise SemioFedError(f"federated calibration failed (exit {res.returncode}; see above)")
    calib = json.loads(res.stdout)
    used = ", ".join(
        f"{s} {r['patients']} ({r['patients_used']}; {r['held_out_patients']} held out)"
        for s, r in calib["sites"].items()
    )
    print(
        f"  federated DP calibration (2 summaries per site, σ={calib['noise_multiplier']:g}, "
        f"charged to each site's ledger, recorded in its trail): temperature "
        f"{calib['temperature']:.3g}, conformal threshold {calib['conformal_threshold']:.3f} at "
        f"{calib['coverage']:.0%} (about {calib['noisy_patients']:.0f} patients, noisy count); "
        f"patients with labelled windows per site: {used}",
        flush=True,
    )
    return calib


def cumulative_epsilon(
    state_root: Path, sites: list[str], delta: float, accountant: str
) -> dict[str, float]:
    """Each site's cumulative patient-level ε at ``delta`` over every counted step of its
    ledger (``STATE_ROOT/<site>``)."""
    return {s: PrivacyLedger(state_root / s).spent(delta, accountant) for s in sites}


def _release_counts(state_dir: Path) -> str:
    purposes = [
        str(r.get("purpose", ""))
        for r in PrivacyLedger(state_dir).load()["runs"]
        if int(r.get("steps_counted", 0)) > 0
    ]
    counts = [
        f"{sum(p.startswith(prefix) for p in purposes)} {name}" for prefix, name in RELEASE_KINDS
    ]
    other = sum(not p.startswith(tuple(k for k, _ in RELEASE_KINDS)) for p in purposes)
    return " + ".join(counts + ([f"{other} other"] if other else []))


def print_site_epsilon(state_root: Path, sites: list[str], delta: float, accountant: str) -> None:
    """One line per site: its cumulative ε covering training, evaluation and calibration."""
    eps = cumulative_epsilon(state_root, sites, delta, accountant)
    for s in sites:
        print(
            f"  {s}: cumulative ε = {eps[s]:.2f} at δ = {delta:g} ({accountant} accountant, "
            f"privacy unit: patient) over {_release_counts(state_root / s)}, from "
            f"{state_root / s / 'privacy_ledger.json'}",
            flush=True,
        )
