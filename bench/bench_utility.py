"""Utility benchmark: the quality table on a consortium shaped like epilepsy monitoring units.

3 sites × 40 patients (15 % seizure-free, monitored 3× as long), seed 29 (used nowhere
else). On each site's held-out test patients, scored by :mod:`semiofed.client.evaluation`
through the demo's comparison (:func:`semiofed.client.baselines.score_table`): centralized
non-private, centralized patient-level DP at ε ≤ 4 (δ = 1e-5, RDP), each site's local-only
model, the motion-energy baseline and the detectors that know nothing. The model and
training settings are the demo configuration's; operating points as in the demo's
comparison (public tuning patients).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from bench.run import BenchContext
from semiofed.client import site_task
from semiofed.client.baselines import PLAIN_EPOCHS, fit_plain, load_tuning, score_table
from semiofed.client.dp_training import TrainConfig, train_local
from semiofed.shared.run_config import load_run_config
from semiofed.shared.synth.consortium import generate_consortium

SITES, PATIENTS, MINUTES, SEED = 3, 40, 4.0, 29
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.toml"
EPSILON, DELTA = 4.0, 1e-5
DP = {"epochs": 10, "batch_size": 16, "windows_per_patient": 8, "lr": 3e-3, "max_grad_norm": 1.0}


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def run(ctx: BenchContext) -> str:
    t_start = time.perf_counter()
    out = ctx.path("utility-consortium")
    generate_consortium(out, SITES, PATIENTS, MINUTES, seed=SEED, workers=2)
    t_synth = time.perf_counter() - t_start
    cfg = load_run_config(CONFIG)
    sites = [f"site-{i:02d}" for i in range(1, SITES + 1)]
    data = {s: site_task.load_site(out / s, cfg) for s in sites}
    pooled = [p for s in sites for p in data[s].train]
    central = fit_plain(cfg, pooled, [p for s in sites for p in data[s].val], "cpu")
    dp_model = site_task.build_model(cfg)
    dp = train_local(
        dp_model,
        pooled,
        TrainConfig(dp=True, epsilon_target=EPSILON, delta=DELTA, device="cpu", **DP),
        progress=False,
    )
    models = {
        s: {
            f"centralized DP ε={dp.epsilon_run:.2f}": dp_model,
            "centralized": central,
            "local-only": fit_plain(cfg, data[s].train, data[s].val, "cpu"),
        }
        for s in sites
    }
    table = score_table(data, out, models, load_tuning(ctx.path("public-tuning")), "cpu")
    rows = []
    for site, per in {**table["sites"], "overall": table["overall"]}.items():
        for name, m in per.items():
            rows.append(
                f"| {site} | {name} | {_fmt(m['auroc'])} | {_fmt(m['macro_f1'])} | "
                f"{_fmt(min(m['per_class_f1'].values(), default=math.nan))} | "
                f"{_fmt(m['event_sensitivity'])} | {_fmt(m['false_alarms_per_hour'], '.2f')} | "
                f"{_fmt(m['false_alarms_per_hour_szcore'], '.2f')} | {_fmt(m['specificity'])} |"
            )
    overall = table["overall"]["centralized"]
    n = {k: sum(len(getattr(data[s], k)) for s in sites) for k in ("train", "val", "test")}
    return "\n".join(
        [
            "## Utility: quality beside references (bench_utility)",
            "",
            f"Consortium: {SITES} sites × {PATIENTS} patients × {MINUTES:g} min, 15 % seizure-free "
            f"(× 3 min), seed {SEED}, generated in {t_synth:.0f} s. Split by patient per site: "
            f"{n['train']} train / {n['val']} validation / {n['test']} test patients; test: "
            f"{overall['ref_events']} events, {overall['background_hours']:.2f} h of background. "
            f"Model: the demo configuration's SemioNet. Non-private: {PLAIN_EPOCHS} evaluations "
            f"a quarter pass apart over the training windows, batches of {table['plain_batch']}, "
            "the state best on the validation patients kept. DP: patient level, {DP['epochs']} epochs, "
            f"expected {DP['batch_size']} patients per step, {DP['windows_per_patient']} windows "
            f"per patient, ε = {dp.epsilon_run:.2f} at δ = {DELTA:g} (RDP, σ = "
            f"{dp.noise_multiplier:.2f}, {dp.steps} steps). Every learned detector's threshold and "
            f"event rule chosen on {table['tuning_patients']} public simulator patients "
            "(`select_event_rule`); motion energy's threshold on validation patients; FA/h on unmerged detections beside SzCORE's (merged); "
            "specificity on background time; min class F1 over the classes present.",
            "",
            "| site | detector | AUROC | type macro-F1 | min class F1 | event sensitivity | "
            "FA/h (unmerged) | FA/h (SzCORE) | specificity |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"_Measured in this run ({time.perf_counter() - t_start:.0f} s)._",
        ]
    )
