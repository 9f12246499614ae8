"""The demo's anomaly model: how often the federated DP anomaly model that ``make demo``
publishes flags known-type seizures of new patients (its threshold targets 5 %), beside the
site's local open-set scorer, the same estimator without noise and the detectors that know
nothing.

A demo-shaped consortium (``configs/demo.toml``'s model: the public round-0 weights, which
the demo's 2 DP rounds leave practically unchanged; 3 sites × 40 patients × 3 min, 15 %
seizure-free) at a seed no demo or public data uses. Each site releases one DP anomaly
summary of every patient with seizure windows at the demo's σ = 3
(:func:`~semiofed.shared.analysis.anomaly.dp_anomaly_summary`, the function the demo's
release computes; the bench charges no ledger), the summaries are merged and thresholded on
the public tuning patients as the demo does (:class:`~semiofed.client.anomaly.PublicWindows`),
and the flag rate is counted on each site's test patients' seizure events (every type is
known to this model: there is no unseen type here, see bench_analysis for that). The local
scorer is each site's own (class means of its training patients, threshold on its
validation patients' events), as ``site calibrate`` fits it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from bench.run import BenchContext
from semiofed.client import site_task
from semiofed.client.analysis.pipeline import event_groups
from semiofed.client.anomaly import PublicWindows, seizure_windows
from semiofed.client.baselines import load_tuning
from semiofed.client.evaluation import predict
from semiofed.privacy.accounting import epsilon
from semiofed.shared.analysis.anomaly import SEIZURE_CLASSES, dp_anomaly_summary
from semiofed.shared.analysis.openset import OpenSetScorer, event_scores
from semiofed.shared.dataset import PatientWindows
from semiofed.shared.labels import CLASSES
from semiofed.shared.run_config import load_run_config
from semiofed.shared.synth import generate_consortium

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.toml"
SITES, PATIENTS, MINUTES, SEED = 3, 40, 3.0, 2
SIGMA, DRAWS, FLAG_RATE = 3.0, 30, 0.05


def _event_scores(scorer: OpenSetScorer, out: dict[str, np.ndarray], groups: list) -> np.ndarray:
    """Mean window score of every seizure event (windows of annotated seizure classes)."""
    sel = np.array([g is not None for g in groups])
    ws = scorer.window_scores(out["fused"][sel], out["type_logits"][sel])
    return event_scores(ws, [g for g in groups if g is not None])[1]


def _seizure_only(patients: list[PatientWindows], out: dict[str, np.ndarray]) -> tuple:
    groups = event_groups(patients)
    y_type = np.concatenate([p.y_type for p in patients])
    keep = np.isin(y_type, SEIZURE_CLASSES)
    return [g if k else None for g, k in zip(groups, keep, strict=True)], y_type


def _local_scorer(model: torch.nn.Module, data: site_task.SiteData) -> OpenSetScorer:
    fit = seizure_windows(model, data.train)
    scorer = OpenSetScorer.fit(
        np.concatenate([e for e, _ in fit]), np.concatenate([y for _, y in fit])
    )
    out = predict(model, data.val)
    groups, _ = _seizure_only(data.val, out)
    sel = np.array([g is not None for g in groups])
    scorer.calibrate(
        out["fused"][sel], out["type_logits"][sel], [g for g in groups if g], FLAG_RATE
    )
    return scorer


def _pct(values: list[float]) -> str:
    v = np.asarray(values) * 100
    return (
        f"{v.mean():.1f} % (10th–90th pct {np.percentile(v, 10):.1f}–{np.percentile(v, 90):.1f} %)"
    )


def run(ctx: BenchContext) -> str:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    root = ctx.path("demo_anomaly")
    generate_consortium(root / "data", SITES, PATIENTS, MINUTES, SEED)
    cfg = load_run_config(CONFIG)
    model = site_task.build_model(cfg).eval()
    names = [f"site-{i:02d}" for i in range(1, SITES + 1)]
    sites = {s: site_task.load_site(root / "data" / s, cfg, root / "state" / s) for s in names}
    public = PublicWindows(model, load_tuning(root / "public", model, background=False).patients)
    per_patient = {s: seizure_windows(model, d.train + d.val + d.test) for s, d in sites.items()}
    test = {}
    for s, d in sites.items():
        out = predict(model, d.test)
        groups, _ = _seizure_only(d.test, out)
        test[s] = (out, groups)
    n_events = sum(len({g for g in groups if g}) for _, groups in test.values())

    def flag_rate(scorer_of: dict[str, OpenSetScorer]) -> float:
        flagged = [_event_scores(scorer_of[s], *test[s]) > scorer_of[s].threshold for s in names]
        return float(np.concatenate(flagged).mean())

    rng = np.random.default_rng(SEED)
    dp_rates, kept = [], []
    for _ in range(DRAWS):
        summaries = [dp_anomaly_summary(per_patient[s], public.space, SIGMA, rng) for s in names]
        scorer = public.scorer(summaries, FLAG_RATE)
        kept.append(len(scorer.classes))
        dp_rates.append(flag_rate(dict.fromkeys(names, scorer)))
    exact = [dp_anomaly_summary(per_patient[s], public.space, 1e-9, rng) for s in names]
    exact_rate = flag_rate(dict.fromkeys(names, public.scorer(exact, FLAG_RATE)))
    local_rate = flag_rate({s: _local_scorer(model, sites[s]) for s in names})
    coin = [float((rng.random(n_events) < FLAG_RATE).mean()) for _ in range(DRAWS)]
    eps = epsilon([(SIGMA, 1.0, 1)], cfg.privacy.delta, cfg.privacy.accountant)
    n_patients = ", ".join(f"{s} {len(per_patient[s])}" for s in names)
    seconds = time.perf_counter() - t0
    return "\n".join(
        [
            "## The demo's anomaly model (bench_demo_anomaly)",
            "",
            f"Demo-shaped consortium: {SITES} sites × {PATIENTS} patients × {MINUTES:g} min, seed "
            f"{SEED}; the demo's model (public round-0 weights); one DP anomaly summary per site "
            f"of every patient with seizure windows ({n_patients}) at σ = {SIGMA:g} (ε = "
            f"{eps:.2f} alone at the demo's δ = {cfg.privacy.delta:g}, "
            f"{cfg.privacy.accountant}), merged and thresholded at the "
            f"{1 - FLAG_RATE:.0%} quantile of {len(set(public.groups))} public tuning events. "
            f"Known-type seizure events of the sites' test patients flagged as aberrant "
            f"({n_events} events; the target is {FLAG_RATE:.0%}: every type is known here):",
            "",
            "| detector | events flagged |",
            "|---|---|",
            f"| federated DP anomaly model (σ = {SIGMA:g}, {DRAWS} noise draws) | {_pct(dp_rates)} |",
            f"| the same estimator without noise | {exact_rate * 100:.1f} % |",
            f"| each site's local scorer (not DP, not shared) | {local_rate * 100:.1f} % |",
            f"| random {FLAG_RATE:.0%} flagger ({DRAWS} draws) | {_pct(coin)} |",
            "| flag everything | 100.0 % |",
            "",
            f"Seizure classes the DP model kept (noisy patient weight ≥ 2), over the draws: "
            f"{min(kept)}–{max(kept)} of {len(SEIZURE_CLASSES)} "
            f"({', '.join(CLASSES[k] for k in SEIZURE_CLASSES)}). {seconds:.0f} s.",
            "",
        ]
    )
