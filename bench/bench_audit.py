"""Privacy audit: independent ε (dp-accounting vs Opacus) and the empirical attacks."""

from __future__ import annotations

import json
import logging
import time
import warnings

from bench.run import BenchContext
from semiofed.privacy.accounting import epsilon
from semiofed.privacy.empirical.suite import ATTACKS, OPTIONAL, AuditSettings, run_suite
from semiofed.privacy.independent_check import independent_epsilon

MNIST_Q = 256 / 60000
REFERENCE = [
    ("TF Privacy MNIST, σ=1.1, 60 epochs", [(1.1, MNIST_Q, 60 * 60000 // 256)], 1e-5),
    ("TF Privacy MNIST, σ=0.6, 30 epochs", [(0.6, MNIST_Q, 30 * 60000 // 256)], 1e-5),
    ("patient-level, q=0.2, σ=1.0, 100 steps", [(1.0, 0.2, 100)], 1e-3),
]


def _epsilon_table() -> list[str]:
    rows = [
        "| setting | δ | Opacus RDP | dp-accounting RDP | Opacus PRV | dp-accounting PLD |",
        "|---|---|---|---|---|---|",
    ]
    for name, hist, delta in REFERENCE:
        ind = independent_epsilon(hist, delta)
        rows.append(
            f"| {name} | {delta:g} | {epsilon(hist, delta, 'rdp'):.3f} | {ind['rdp']:.3f} | "
            f"{epsilon(hist, delta, 'prv'):.3f} | {ind['pld']:.3f} |"
        )
    return rows


def _canary_rows(results: list[dict]) -> list[str]:
    rows = [
        "| model | ε of the audited model | one-run canary ε lower bound (95 %) | correct guesses |",
        "|---|---|---|---|",
    ]
    for r in results:
        claim = f"{r['claimed_epsilon']:.2f}" if r["claimed_epsilon"] is not None else "none"
        rows.append(
            f"| {'DP' if r['private'] else 'no DP'} | {claim} | {r['epsilon_lower_bound']:.2f} | "
            f"{r['correct']}/{r['guesses']} of {r['canaries']} canaries |"
        )
    return rows


def run(ctx: BenchContext) -> str:
    logging.getLogger("absl").setLevel(logging.ERROR)
    state = ctx.path("audit_state")
    settings = AuditSettings.quick()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = run_suite(state, settings, ATTACKS + OPTIONAL, progress=False)
    seconds = time.perf_counter() - t0
    mia = json.loads(paths["mia"].read_text())
    canary = json.loads(paths["canary"].read_text())
    inv = json.loads(paths["inversion"].read_text())
    patient = json.loads(paths["patient-canary"].read_text())
    out = [
        "## Privacy audit",
        "",
        "ε from two independent libraries (cumulative, per setting):",
        "",
    ]
    out += _epsilon_table()
    out += ["", f"Empirical audits took {seconds:.0f} s.", ""]
    out += [f"Default audit (`semiofed audit attack`): {patient['setup']}.", ""]
    out += _canary_rows(patient["results"])
    out += ["", f"Example-level attacks (`--only mia canary inversion`): {mia['setup']}", ""]
    out += [
        "| model | ε of the audited model | attack | AUC | TPR@0.1%FPR | TPR@1%FPR |",
        "|---|---|---|---|---|---|",
    ]
    for r in mia["results"]:
        claim = f"{r['epsilon']:.2f}" if r["epsilon"] is not None else "none (no DP)"
        for attack in ("loss_threshold", "lira"):
            a = r[attack]
            out.append(
                f"| {'DP' if r['private'] else 'no DP'} | {claim} | {attack} | {a['auc']:.3f} | "
                f"{a['tpr_at_0.001_fpr']:.3f} | {a['tpr_at_0.01_fpr']:.3f} |"
            )
    out += [
        "",
        f"MIA: pool {mia['results'][0]['pool_size']}, {mia['results'][0]['shadow_models']} shadow "
        f"models; FPR resolution {mia['results'][0]['loss_threshold']['fpr_resolution']:.4f}.",
        "",
    ]
    out += _canary_rows(canary["results"])
    out += [
        "",
        "| update seen by the server | relative error (attacker's pick) | best neuron (oracle) |",
        "|---|---|---|",
    ]
    for name, label in (
        ("plain", "one site, raw"),
        ("dp", "one site, DP-SGD"),
        ("secagg", f"SecAgg+ sum of {inv['secagg_sites']} sites"),
    ):
        out.append(
            f"| {label} | {inv[name]['relative_error_median']:.3g} | "
            f"{inv[name]['oracle_relative_error_median']:.3g} |"
        )
    return "\n".join(out) + "\n"
