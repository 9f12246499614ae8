"""Clinical analysis on the synthetic consortium: open-set AUROC with one seizure type held out
of training, conformal coverage and set size on held-out patients, dominant-frequency error
against the simulator's truth, detection latency after onset.

One small SemioNet is trained (non-DP, a few hundred steps: this measures the analysis, not the
model) on the training patients with every ``HELD_OUT_TYPE`` window removed. Held-out patients
are split in two: calibration (temperature, conformal threshold, open-set threshold) and test.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from bench.run import BenchContext
from semiofed.client.dp_training import TrainConfig, train_local
from semiofed.shared.analysis import calibration as cal
from semiofed.shared.analysis.openset import OpenSetScorer, event_scores
from semiofed.shared.analysis.pipeline import (
    AnalysisConfig,
    _detected_events,
    event_groups,
    outputs_for,
)
from semiofed.shared.analysis.semiology import event_semiology, rhythm_tracks
from semiofed.shared.analysis.signals import region_signals
from semiofed.shared.dataset import PatientWindows, load_patient_windows
from semiofed.shared.labels import CLASS_INDEX, IGNORE_INDEX
from semiofed.shared.metrics import auroc
from semiofed.shared.model import ModelConfig, SemioNet
from semiofed.shared.recording import SUFFIX, load_recording
from semiofed.shared.synth import generate_consortium
from semiofed.shared.windows import WindowConfig

HELD_OUT_TYPE = "f2b"  # the unseen type: events at every site (hyperkinetic sits at one site)
SITES, PATIENTS, MINUTES, SEED = 3, 12, 10.0, 11  # enough unseen-type events to rank
STEPS = 200


def _subset(p: PatientWindows, keep: np.ndarray) -> PatientWindows:
    return dataclasses.replace(
        p,
        x={s: np.ascontiguousarray(a[keep]) for s, a in p.x.items()},
        mask={s: np.ascontiguousarray(a[keep]) for s, a in p.mask.items()},
        y_detect=p.y_detect[keep],
        y_type=p.y_type[keep],
        lateralization=p.lateralization[keep],
        t0=p.t0[keep],
        recording=p.recording[keep],
    )


def _dp_calibration_rows(sites: int = 3, patients: int = 30, draws: int = 50) -> list[str]:
    """Federated DP calibration against the pooled non-private one, on simulated overconfident
    logits (a site needs ≥ MIN_PATIENTS calibration patients; this consortium holds out 7)."""
    rng = np.random.default_rng(SEED)

    def logits(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 6, n)
        z = rng.normal(0.0, 1.0, (n, 6))
        z[np.arange(n), y] += 1.2
        return 3.0 * z, y

    site_data = [[logits(int(rng.integers(10, 60))) for _ in range(patients)] for _ in range(sites)]
    test_z, test_y = logits(4000)
    pooled_z = np.concatenate([z for s in site_data for z, _ in s])
    pooled_y = np.concatenate([y for s in site_data for _, y in s])
    t0 = cal.fit_temperature(pooled_z, pooled_y)
    thr0 = cal.conformal_threshold(cal.scores(cal.softmax(pooled_z, t0), pooled_y), 0.9)
    cov0, size0 = cal.coverage_and_size(cal.softmax(test_z, t0), test_y, thr0)
    sigma, n_test = cal.DEFAULT_NOISE_MULTIPLIER, len(test_y)
    noise = np.random.default_rng(SEED + 1)
    nlls, covs, sizes = [], [], []
    for _ in range(draws):
        t = cal.merge_temperature([cal.dp_temperature_summary(s, sigma, noise) for s in site_data])
        per_site = [[cal.scores(cal.softmax(z, t), y) for z, y in s] for s in site_data]
        thr, _ = cal.merge_conformal(
            [cal.dp_conformal_summary(s, t, sigma, noise) for s in per_site], 0.9
        )
        cov, size = cal.coverage_and_size(cal.softmax(test_z, t), test_y, thr)
        nlls.append(cal.nll(test_z, test_y, t) / n_test)
        covs.append(cov)
        sizes.append(size)
    return [
        f"Federated DP calibration (σ = {sigma:g} per summary, {sites} simulated sites × {patients} "
        f"patients of overconfident synthetic logits, {draws} noise draws; the consortium above holds "
        f"out too few patients for the {cal.MIN_PATIENTS}-patient minimum per site):",
        "",
        "| calibration | test NLL per window | coverage at 90 % (mean; 10th pct) | mean set size of 6 | draws with every class |",
        "|---|---|---|---|---|",
        f"| none (T = 1) | {cal.nll(test_z, test_y, 1.0) / n_test:.3f} | | | |",
        f"| pooled windows, non-private | {cal.nll(test_z, test_y, t0) / n_test:.3f} | {cov0:.3f} | {size0:.2f} | |",
        f"| federated DP summaries | {np.mean(nlls):.3f} | {np.mean(covs):.3f}; {np.quantile(covs, 0.1):.3f} "
        f"| {np.mean(sizes):.2f} | {np.mean(np.array(sizes) >= 6.0):.0%} |",
    ]


def _frequency_errors(
    site_dirs: list[Path], patients: list[PatientWindows]
) -> list[tuple[str, float, float]]:
    """(class, estimated Hz, true Hz) of events with rhythmic jerks (clonic, f2b, …) over the
    span of the simulated jerks; the estimate is that of the truth-involved region with the
    most rhythmic windows."""
    rows = []
    names = {(p.site, p.patient) for p in patients}
    for site in site_dirs:
        for rec_path in sorted(site.rglob("*" + SUFFIX)):
            if (site.name, rec_path.parent.name) not in names:
                continue
            truth = json.loads(
                rec_path.with_name(rec_path.name[: -len(SUFFIX)] + "_truth.json").read_text()
            )
            evs = [e for e in truth["events"] if e.get("frequency", {}).get("hz")]
            if not evs:
                continue
            rec = load_recording(rec_path)
            sig = region_signals(rec)
            tracks = rhythm_tracks(sig)
            base = np.ones(rec.n_frames, bool)
            for e in truth["events"]:
                base &= ~((rec.timestamps > e["onset"] - 5) & (rec.timestamps < e["offset"] + 30))
            for e in evs:
                span = e["frequency"]["t"]  # where the simulated jerks are
                sem = event_semiology(rec, sig, tracks, span[0], span[-1], base)
                involved = [r for r in e["regions"] if r in sem["regions"]]
                best = max(involved, key=lambda r: sem["regions"][r]["rhythmic_windows"])
                est = sem["regions"][best]["dominant_frequency_hz"]
                rows.append((e["class"], float(est), float(np.median(e["frequency"]["hz"]))))
    return rows


def run(ctx: BenchContext) -> str:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    data = ctx.path("analysis") / "data"
    generate_consortium(
        data, sites=SITES, patients_per_site=PATIENTS, minutes_per_patient=MINUTES, seed=SEED
    )
    site_dirs = sorted(data.glob("site-*"))
    wcfg = WindowConfig()
    patients = [p for s in site_dirs for p in load_patient_windows(s, wcfg)]
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(patients))
    n_held = max(4, (2 * len(patients)) // 5)
    held = [patients[i] for i in order[:n_held]]
    train_all = [patients[i] for i in order[n_held:]]
    unknown = CLASS_INDEX[HELD_OUT_TYPE]
    train = [_subset(p, p.y_type != unknown) for p in train_all]
    train = [p for p in train if len(p)]

    mcfg = ModelConfig(
        channels=(16, 32),
        strides=(2, 2),
        motion_channels=(16,),
        motion_strides=(2,),
        embed_dim=32,
        temporal_kernel=5,
    )
    model = SemioNet(mcfg)
    t0 = time.perf_counter()
    tcfg = TrainConfig(
        epochs=4,
        dp=False,
        batch_size=32,
        steps_per_epoch=STEPS // 4,
        lr=5e-3,
        augment=False,
        device="cpu",
    )
    train_local(model, train, tcfg, progress=False)
    train_s = time.perf_counter() - t0
    model.eval()

    cal_p, test_p = held[: n_held // 2], held[n_held // 2 :]
    # Conformal coverage (types known in training), calibrated on cal_p, measured on test_p.
    o_cal, o_test = outputs_for(model, cal_p), outputs_for(model, test_p)

    def known(o: dict) -> np.ndarray:
        return (o["y_type"] != IGNORE_INDEX) & (o["y_type"] != unknown)

    temp = cal.fit_temperature(o_cal["type_logits"][known(o_cal)], o_cal["y_type"][known(o_cal)])
    thr = cal.conformal_threshold(
        cal.scores(
            cal.softmax(o_cal["type_logits"][known(o_cal)], temp), o_cal["y_type"][known(o_cal)]
        ),
        0.9,
    )
    probs_test = cal.softmax(o_test["type_logits"][known(o_test)], temp)
    cov, size = cal.coverage_and_size(probs_test, o_test["y_type"][known(o_test)], thr)
    seiz_test = known(o_test) & (o_test["y_detect"] == 1)
    cov_sz, size_sz = cal.coverage_and_size(
        cal.softmax(o_test["type_logits"][seiz_test], temp), o_test["y_type"][seiz_test], thr
    )
    nll_before = cal.nll(o_test["type_logits"][known(o_test)], o_test["y_type"][known(o_test)], 1.0)
    nll_after = cal.nll(o_test["type_logits"][known(o_test)], o_test["y_type"][known(o_test)], temp)
    # Open set: fit on training seizure windows, threshold on cal_p known events, AUROC on test_p events.
    o_train = outputs_for(model, train)
    fit_sel = (o_train["y_detect"] == 1) & (o_train["y_type"] != IGNORE_INDEX)
    scorer = OpenSetScorer.fit(o_train["fused"][fit_sel], o_train["y_type"][fit_sel])
    g_cal = event_groups(cal_p)
    sel = (o_cal["y_detect"] == 1) & known(o_cal)
    scorer.calibrate(
        o_cal["fused"][sel], o_cal["type_logits"][sel], [g_cal[i] for i in np.flatnonzero(sel)]
    )
    # Events scored: known-type events of the test patients, and every event of the unseen
    # type outside the calibration patients (training patients' ones were removed from training).
    pool = test_p + [p for p in train_all if (p.y_type == unknown).any()]
    o_pool = outputs_for(model, pool)
    g_pool = event_groups(pool)
    n_test_w = sum(len(p) for p in test_p)
    is_test = np.arange(len(g_pool)) < n_test_w
    ev_sel = (o_pool["y_detect"] == 1) & (o_pool["y_type"] != IGNORE_INDEX)
    ev_sel &= is_test | (o_pool["y_type"] == unknown)
    idx = np.flatnonzero(ev_sel)
    ws = scorer.window_scores(o_pool["fused"][idx], o_pool["type_logits"][idx])
    ids, ev_score = event_scores(ws, [g_pool[i] for i in idx])
    ev_type = {g_pool[i]: int(o_pool["y_type"][i]) for i in idx}
    is_new = np.array([ev_type[i] == unknown for i in ids])
    energy_w = -np.log(np.exp(o_pool["type_logits"][idx].astype(np.float64)).sum(1))
    energy_only = auroc(is_new, event_scores(energy_w, [g_pool[i] for i in idx])[1])
    open_auroc = auroc(is_new, ev_score)
    flagged_known = (
        float(np.mean(ev_score[~is_new] > scorer.threshold)) if (~is_new).any() else float("nan")
    )
    flagged_new = (
        float(np.mean(ev_score[is_new] > scorer.threshold)) if is_new.any() else float("nan")
    )

    # Detection latency on test patients' recordings (as `site analyze` detects events).
    latencies, missed = [], 0
    for p in test_p:
        o = outputs_for(model, [p])
        for rec_id in np.unique(p.recording):
            m = p.recording == rec_id
            dets = _detected_events(p.t0[m], o["detect_prob"][m], wcfg, AnalysisConfig())
            truth = json.loads(next(data.rglob(f"{rec_id}_truth.json")).read_text())
            for e in truth["events"]:
                hit = [d for d in dets if d.onset <= e["offset"] and d.offset >= e["onset"]]
                if hit:
                    latencies.append(hit[0].onset - e["onset"])
                else:
                    missed += 1
    lat = np.array(latencies)

    freq = _frequency_errors(site_dirs, held)
    err = np.array([abs(a - b) for _, a, b in freq])

    n_new = int(is_new.sum())
    lines = [
        "## Clinical analysis (bench_analysis)",
        "",
        f"Synthetic consortium: {SITES} sites × {PATIENTS} patients × {MINUTES:g} min (seed {SEED}); "
        f"{len(train)} training patients with every `{HELD_OUT_TYPE}` window removed, {len(cal_p)} calibration "
        f"and {len(test_p)} test patients held out. Small non-DP SemioNet, {STEPS} steps ({train_s:.0f} s).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| open-set AUROC, `{HELD_OUT_TYPE}` (unseen) vs known-type events (energy + Mahalanobis) | {open_auroc:.3f} ({n_new} unseen / {int((~is_new).sum())} known events) |",
        f"| open-set AUROC, energy score alone | {energy_only:.3f} |",
        f"| flagged at the 95 % threshold: known / unseen events | {flagged_known:.0%} / {flagged_new:.0%} |",
        f"| conformal coverage at 90 %, test-patient windows (local calibration) | {cov:.3f} (mean set size {size:.2f} of 6) |",
        f"| … seizure windows only | {cov_sz:.3f} (mean set size {size_sz:.2f}) |",
        f"| temperature; test NLL per window before → after | {temp:.2f}; {nll_before / max(known(o_test).sum(), 1):.3f} → {nll_after / max(known(o_test).sum(), 1):.3f} |",
        f"| dominant-frequency abs. error vs simulator truth, median / max ({len(err)} events with jerks) | "
        + (f"{np.median(err):.2f} / {err.max():.2f} Hz |" if len(err) else "n/a |"),
        f"| detection latency after onset, median / 90th pct ({len(lat)} detected, {missed} missed) | "
        + (
            f"{np.median(lat):.1f} / {np.percentile(lat, 90):.1f} s; ≤ 5 s: {np.mean(lat <= 5):.0%} |"
            if len(lat)
            else "n/a |"
        ),
        "",
        *_dp_calibration_rows(),
        "",
        f"_All figures measured in this run ({time.perf_counter() - t_start:.0f} s)._",
    ]
    return "\n".join(lines)
