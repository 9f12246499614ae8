"""The utility cost of DP federated evaluation (``client/dp_evaluation.py``).

A compact model is trained without DP on the pooled training patients of a synthetic
consortium; each site's held-out patients then give the evaluation table. Reported, for
the same model: the exact window metrics (what sites used to send, outside ε), the metrics
of the exact (noise-free) patient-normalized table, and those of the noisy table summed
over the sites at several noise multipliers σ, as mean ± sd over noise draws, with the ε
one evaluation costs (Gaussian mechanism, sensitivity 1, at δ = 1e-3 and 1e-5) — each
measured on all held-out patients and, at the demo's σ, on subsets of them (a handful per
site, as in the demo, up to all): every row is a measurement, none is extrapolated.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from bench.run import BenchContext

SITES, PATIENTS_PER_SITE, MINUTES = 3, 60, 1.0
TEST_FRACTION = 0.6
SIGMAS = (0.5, 1.0, 2.0, 4.0)
SUBSET_SIGMA = 2.0  # the demo's eval-noise-multiplier
SUBSETS = (2, 10, 20)  # held-out patients per site of the subset rows (all: the other rows)
DRAWS = 200
METRICS = ("auroc-seizure", "detect-accuracy", "macro-f1", "loss")


def _fmt(v: float) -> str:
    return "—" if v is None or not np.isfinite(v) else f"{v:.3f}"


def run(ctx: BenchContext) -> str:
    from semiofed.client.dp_evaluation import exact_table
    from semiofed.client.dp_training import TrainConfig, train_local
    from semiofed.privacy.accounting import epsilon
    from semiofed.shared.dataset import load_patient_windows
    from semiofed.shared.metrics import window_metrics
    from semiofed.shared.model import ModelConfig, SemioNet
    from semiofed.shared.noisy_eval import TABLE_SIZE, table_metrics
    from semiofed.shared.splits import patient_split
    from semiofed.shared.synth import generate_consortium

    t0 = time.perf_counter()
    out = ctx.path("dp-eval-consortium")
    generate_consortium(out, SITES, PATIENTS_PER_SITE, MINUTES, seed=2, workers=2)
    splits = {
        d.name: patient_split(load_patient_windows(d), 0.0, TEST_FRACTION, seed=0)
        for d in sorted(out.iterdir())
        if d.is_dir() and d.name.startswith("site-")
    }
    train = [p for tr, _, _ in splits.values() for p in tr]
    tests = {s: te for s, (_, _, te) in splits.items()}
    torch.manual_seed(0)
    model = SemioNet(
        ModelConfig(channels=(16, 32), strides=(2, 2), motion_channels=(16,), motion_strides=(2,))
    )
    cfg = TrainConfig(dp=False, epochs=4, steps_per_epoch=25, batch_size=16, lr=3e-3, device="cpu")
    train_local(model, train, cfg, progress=False)

    from semiofed.client.evaluation import predict

    held = [p for te in tests.values() for p in te]
    pred = predict(model, held, device="cpu")
    y_det = np.concatenate([p.y_detect for p in held])
    exact_w = window_metrics(
        np.concatenate([p.y_type for p in held]), pred["type_pred"], y_det, pred["detect_prob"]
    )
    prob = np.clip(pred["detect_prob"], 1e-7, 1 - 1e-7)
    exact_windows = {
        "auroc-seizure": exact_w["auroc_seizure"],
        "detect-accuracy": float(np.mean((prob >= 0.5) == (y_det == 1))),
        "macro-f1": exact_w["macro_f1"],
        "loss": float(-np.mean(y_det * np.log(prob) + (1 - y_det) * np.log(1 - prob))),
    }
    per_patient = {
        s: [exact_table(model, [p], device="cpu") for p in te] for s, te in tests.items()
    }
    summed = np.sum([t for ts in per_patient.values() for t in ts], axis=0)
    rows = [
        "| evaluation | ε per evaluation (δ=1e-3 / 1e-5) | " + " | ".join(METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
        "| exact window metrics (no DP; no longer sent) | ∞ | "
        + " | ".join(_fmt(exact_windows[k]) for k in METRICS)
        + " |",
    ]
    m0 = table_metrics(summed)
    rows.append(
        "| exact patient-normalized table (σ = 0) | ∞ | "
        + " | ".join(_fmt(m0.get(k, np.nan)) for k in METRICS)
        + " |"
    )
    rng = np.random.default_rng(0)
    n_held = len(held)
    runs = [(None, s) for s in SIGMAS] + [(k, SUBSET_SIGMA) for k in SUBSETS]
    for per_site, sigma in runs:
        chosen = [ts[:per_site] for ts in per_patient.values()]
        table = np.sum([t for ts in chosen for t in ts], axis=0)
        draws = []
        for _ in range(DRAWS):
            noisy = table + rng.normal(0, sigma, (SITES, TABLE_SIZE)).sum(axis=0)
            m = table_metrics(noisy, noise_std=sigma * np.sqrt(SITES))
            draws.append([m.get(k, np.nan) for k in METRICS])
        arr = np.array(draws)
        eps = [epsilon([(sigma, 1.0, 1)], d, "rdp") for d in (1e-3, 1e-5)]
        cells = [
            f"{_fmt(float(np.nanmean(arr[:, i])))} ± {_fmt(float(np.nanstd(arr[:, i])))}"
            for i in range(len(METRICS))
        ]
        n = sum(len(ts) for ts in chosen)
        what = f", {n} held-out patients" + ("" if per_site is None else f" ({per_site} per site)")
        exact = table_metrics(table)["auroc-seizure"]
        rows.append(
            f"| DP table, σ = {sigma:g}{what}; exact AUROC {_fmt(exact)} | "
            f"{eps[0]:.2f} / {eps[1]:.2f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(
        [
            "## DP federated evaluation (bench_dp_eval)",
            "",
            f"{SITES} sites × {PATIENTS_PER_SITE} synthetic patients ({MINUTES:g} min each, "
            f"{TEST_FRACTION:.0%} held out); "
            f"{n_held} held-out patients in all, {len(y_det)} windows; one non-private compact "
            f"model; noisy rows: mean ± sd over {DRAWS} noise draws of the sites' summed tables "
            "(each site adds N(0, σ²) per entry), on all held-out patients or on the first k "
            "of each site (each row gives the AUROC of its exact table). Metrics of the table "
            "weight patients "
            "equally (1/‖counts‖₂) and bin scores on a fixed grid of 10; the loss is a proxy "
            f"from the bin centres. Measured in {time.perf_counter() - t0:.0f} s.",
            "",
            *rows,
            "",
        ]
    )
