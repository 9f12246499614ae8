"""The demo's privacy close: the federated DP calibration and anomaly model of the final
model, written into the run directory (``federated_calibration.json``: the card's
``calibration`` and ``anomaly`` sections, so ``registry publish`` signs them into the same
version as the weights), then each site's cumulative ε over everything it released — DP-SGD
training rounds, DP evaluations, calibration and anomaly summaries — read from the site's
own ledger (the source of truth).

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

from semiofed.privacy.accounting import epsilon
from semiofed.privacy.ledger import PrivacyLedger
from semiofed.shared.analysis import calibration as cal
from semiofed.shared.analysis.semiology_anomaly import THRESHOLD_MARGIN, THRESHOLD_WIDTH
from semiofed.shared.atomic import atomic_write_json
from semiofed.shared.errors import SemioFedError

from .registry.cards import FEDERATED_CALIBRATION_FILE, FEDERATED_CALIBRATION_FORMAT

#: Ledger purposes (prefixes) and how the per-site line names them.
RELEASE_KINDS = (
    ("federated round", "training rounds"),
    ("federated evaluation", "evaluations"),
    ("calibration summary", "calibration summaries"),
    ("anomaly summary", "anomaly summaries"),
)
PROTECTS_AGAINST = (
    "the coordinator and anyone who sees the summaries or this card (other sites, registry "
    "readers), as long as each site runs its approved code and its ledger is sound"
)
ANOMALY_WHAT = (
    "Federated anomaly model behind the aberrant-seizure flag and the review queue: "
    "class-conditional Gaussians (per seizure class a mean, the public within-class "
    "covariance) of an event's semiology features (the mean over its windows of the 91 fixed "
    "quantified signs: motion, frequency, band power, asymmetry, face, presence per region) in "
    "a whitened space made from public simulator events; each class mean from the sites' DP "
    "class sums (one Gaussian-mechanism release per site, each patient's vector of L2 norm "
    "≤ 1), shrunk to the public class mean. An event's score is its standardised squared "
    "Mahalanobis distance to the nearest class mean. It flags seizures unlike the "
    "consortium's known types for clinician review; it does not diagnose."
)
#: The sites' summary kinds the anomaly model costs (class sums, then its threshold release).
ANOMALY_KINDS = ("anomaly", "anomaly threshold")


def run_calibration(
    config: Path,
    data_root: Path,
    sites: list[str],
    run_dir: Path,
    state_root: Path,
    tuning_dir: Path,
) -> dict[str, Any]:
    """Both federated DP calibration rounds and the anomaly summary at every site; prints
    what was merged and writes it into ``run_dir`` for the card."""
    res = subprocess.run(
        [sys.executable, "-m", "semiofed.client.demo_calibration", "--config", str(config),
         "--data-root", str(data_root), "--sites", *sites, "--run-dir", str(run_dir),
         "--state-root", str(state_root), "--tuning-dir", str(tuning_dir)],
        stdout=subprocess.PIPE, text=True, check=False,
    )  # fmt: skip
    if res.returncode != 0:
        raise SemioFedError(f"federated calibration failed (exit {res.returncode}; see above)")
    calib = json.loads(res.stdout)
    used = ", ".join(
        f"{s} {r['patients']} ({r['patients_used']}; {r['held_out_patients']} held out)"
        for s, r in calib["sites"].items()
    )
    per_class = ", ".join(f"{c} {t:.2f}" for c, t in calib["class_thresholds"].items())
    print(
        f"  federated DP calibration (3 summaries per site, σ={calib['noise_multiplier']:g}, "
        f"charged to each site's ledger, recorded in its trail): temperature "
        f"{calib['temperature']:.3g}, conformal threshold {calib['conformal_threshold']:.3f} at "
        f"{calib['coverage']:.0%} (about {calib['noisy_patients']:.0f} patients, noisy count), "
        f"per-class thresholds {per_class}; patients with labelled windows per site: {used}",
        flush=True,
    )
    a = calib["anomaly"]
    eps = ", ".join(
        f"{s} {_section_epsilon(calib, s, ANOMALY_KINDS, a['noise_multiplier'])[0]:.2f}"
        for s in calib["sites"]
    )
    print(
        f"  federated DP anomaly model on semiology events (2 releases per site: class sums, "
        f"then the threshold under the merged model; σ={a['noise_multiplier']:g}; ε {eps}): "
        f"classes {', '.join(a['classes'])}, threshold {a['threshold']:.2f} from the sites' "
        f"threshold releases (the public one, the {1 - a['flag_rate']:.0%} quantile of "
        f"{a['public_events']} public events' scores, was {a['public_threshold']:.2f})",
        flush=True,
    )
    doc = federated_calibration(calib)
    atomic_write_json(run_dir / FEDERATED_CALIBRATION_FILE, doc)
    print(
        f"  → {run_dir / FEDERATED_CALIBRATION_FILE}: the card's calibration and anomaly "
        "sections (`registry publish` signs them into the same version as the weights)",
        flush=True,
    )
    return calib


def _section_epsilon(
    calib: dict[str, Any], site: str, kinds: tuple[str, ...], sigma: float
) -> tuple[float, float]:
    """What a site's summaries of ``kinds`` (each one Gaussian mechanism of noise multiplier
    ``sigma``) cost it alone, composed, and its cumulative ε after them (its ledger)."""
    mine = [x for x in calib["sites"][site]["summaries"] if x["kind"] in kinds]
    alone = epsilon([(sigma, 1.0, 1)] * len(mine), calib["delta"], calib["accountant"])
    return alone, mine[-1]["epsilon_total_after"]


def _privacy(calib: dict[str, Any], kinds: tuple[str, ...], sigma: float) -> dict[str, Any]:
    per_site = {}
    for s in calib["sites"]:
        alone, total = _section_epsilon(calib, s, kinds, sigma)
        per_site[s] = {"epsilon": alone, "epsilon_total_after": total}
    return {
        "privacy_unit": "patient",
        "delta": calib["delta"],
        "accountant": calib["accountant"],
        "noise_multiplier": sigma,
        "per_site": per_site,
        "protects_against": PROTECTS_AGAINST,
    }


def federated_calibration(calib: dict[str, Any]) -> dict[str, Any]:
    """The card's ``calibration`` and ``anomaly`` sections from the demo's calibration."""
    a = calib["anomaly"]
    return {
        "format": FEDERATED_CALIBRATION_FORMAT,
        "calibration": {
            "temperature": calib["temperature"],
            "coverage": calib["coverage"],
            "conformal_threshold": calib["conformal_threshold"],
            "class_thresholds": calib["class_thresholds"],
            "how": (
                "merged by the coordinator from each site's DP summaries: a temperature "
                "summary (per-patient NLL curves), then at the merged temperature a "
                "conformal and a per-class (Mondrian) summary (per-patient score "
                "histograms); thresholds by the tail rule on the noisy histograms"
            ),
            "privacy": _privacy(calib, cal.FEDERATED_KINDS, calib["noise_multiplier"]),
        },
        "anomaly": {
            "what": ANOMALY_WHAT,
            "threshold": a["threshold"],
            "flag_rate": a["flag_rate"],
            "threshold_rule": (
                "the sites' noisy patient mean of their seizure events' log distance under "
                "the merged model (a second DP release per site: each patient's mean, clipped "
                f"to ±{THRESHOLD_WIDTH:g} log units around the public median), plus a margin "
                f"of {THRESHOLD_MARGIN:g} log units; the standardisation comes from "
                f"{a['public_events']} known-type events of public simulator patients; "
                "flagging a new event costs no further ε"
            ),
            "classes": a["classes"],
            "privacy": _privacy(calib, ANOMALY_KINDS, a["noise_multiplier"]),
            "scorer": a["scorer"],
        },
    }


def print_release_epsilon(calib: dict[str, Any]) -> None:
    """The final printout's ε line: per site, what the calibration and the anomaly model
    cost it alone (both inside the table's cumulative ε)."""
    parts = []
    for s in calib["sites"]:
        c, _ = _section_epsilon(calib, s, cal.FEDERATED_KINDS, calib["noise_multiplier"])
        sigma = calib["anomaly"]["noise_multiplier"]
        a, total = _section_epsilon(calib, s, ANOMALY_KINDS, sigma)
        parts.append(f"{s} calibration {c:.2f} + anomaly model {a:.2f} (cumulative {total:.2f})")
    print(
        f"  ε of the published calibration and anomaly model alone, per site at δ = "
        f"{calib['delta']:g} ({calib['accountant']}, privacy unit: patient; inside the table's "
        f"cumulative ε): {'; '.join(parts)}"
    )


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
