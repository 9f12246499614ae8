"""Clinical analysis on the synthetic consortium: open-set detection leave-one-type-out (every
seizure type and PNES held out of training in turn: the site's local scorer beside the
federated DP anomaly model and a random score), conformal coverage and set size on held-out
patients (global and per class), dominant-frequency error against the simulator's truth,
detection latency after onset.

For each held-out type one small SemioNet is trained (non-DP, a few hundred steps: this
measures the analysis, not the model) on the training patients with every window of that
type removed. Held-out patients are split in two: calibration (temperature, conformal
thresholds, the local open-set threshold) and test. The federated DP anomaly model is fitted
from each site's DP summary of its training patients (``shared/analysis/anomaly.py``); its
projection, standardisation and threshold come from the public tuning patients
(``shared/public_data.py``) with the held-out type removed too. The ``HELD_OUT_TYPE`` model
also gives the conformal, frequency and latency figures.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from bench.run import BenchContext
from semiofed.client.analysis.pipeline import (
    AnalysisConfig,
    _detected_events,
    event_groups,
    outputs_for,
)
from semiofed.client.analysis.semiology import event_semiology, rhythm_tracks
from semiofed.client.analysis.signals import region_signals
from semiofed.client.dp_training import TrainConfig, train_local
from semiofed.privacy.accounting import epsilon
from semiofed.shared.analysis import calibration as cal
from semiofed.shared.analysis.anomaly import SEIZURE_CLASSES, dp_anomaly_summary, merge_anomaly
from semiofed.shared.analysis.openset import (
    DEFAULT_RANK,
    OpenSetScorer,
    ProjectionSpace,
    energy,
    event_scores,
)
from semiofed.shared.dataset import PatientWindows, load_patient_windows
from semiofed.shared.errors import SemioFedError
from semiofed.shared.labels import CLASS_INDEX, CLASSES, IGNORE_INDEX
from semiofed.shared.metrics import auroc
from semiofed.shared.model import ModelConfig, SemioNet
from semiofed.shared.public_data import tuning_patients
from semiofed.shared.recording import SUFFIX, load_recording
from semiofed.shared.synth import generate_consortium
from semiofed.shared.windows import WindowConfig

HELD_OUT_TYPE = "f2b"  # the unseen type: events at every site (hyperkinetic sits at one site)
SITES, PATIENTS, MINUTES, SEED = 3, 12, 10.0, 11  # enough unseen-type events to rank
STEPS = 200
LOTO_TYPES = ("automatisms", "clonic", "f2b", "hyperkinetic", "pnes")
DP_SIGMA = 3.0  # per site summary, as the calibration summaries
NOISE_DRAWS = 20


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


def _dp_mondrian_rows(sites: int = 3, patients: int = 30, draws: int = 50) -> list[str]:
    """Per-class conformal from DP summaries against the pooled non-private one, on simulated
    logits where background dominates (80 % of windows, easy) and each patient has one
    seizure type (hard)."""
    rng = np.random.default_rng(SEED + 2)

    def patient(kind: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.where(rng.random(n) < 0.8, 0, kind)
        z = rng.normal(0.0, 1.0, (n, 6))
        z[np.arange(n), y] += np.where(y == 0, 5.0, 1.5)
        return z, y

    site_data = [
        [patient(int(rng.integers(1, 6)), int(rng.integers(20, 120))) for _ in range(patients)]
        for _ in range(sites)
    ]
    test = [patient(k, 400) for k in range(1, 6) for _ in range(4)]
    p_test = cal.softmax(np.concatenate([z for z, _ in test]))
    y_test = np.concatenate([y for _, y in test])
    pooled_z = np.concatenate([z for s in site_data for z, _ in s])
    pooled_y = np.concatenate([y for s in site_data for _, y in s])
    p_pool = cal.softmax(pooled_z)
    glob = cal.coverage_per_class(
        p_test, y_test, cal.conformal_threshold(cal.scores(p_pool, pooled_y), 0.9)
    )
    pooled = cal.coverage_per_class(p_test, y_test, cal.mondrian_thresholds(p_pool, pooled_y, 0.9))
    per_site = [[(cal.scores(cal.softmax(z), y), y) for z, y in s] for s in site_data]
    noise = np.random.default_rng(SEED + 3)
    covs, sizes = [], []
    for _ in range(draws):
        summaries = [cal.dp_mondrian_summary(s, 1.0, 6, DP_SIGMA, noise) for s in per_site]
        fig = cal.coverage_per_class(p_test, y_test, cal.merge_mondrian(summaries, 0.9)[0])
        covs.append([fig[c][0] for c in sorted(fig)])
        sizes.append([fig[c][1] for c in sorted(fig)])
    covs, sizes = np.array(covs), np.array(sizes)

    def row(name: str, fig: dict) -> str:
        cells = " | ".join(f"{fig[c][0]:.3f}, {fig[c][1]:.2f}" for c in sorted(fig))
        return f"| {name} | {cells} |"

    dp_cells = " | ".join(
        f"{covs[:, j].mean():.3f} (10th pct {np.quantile(covs[:, j], 0.1):.3f}), "
        f"{sizes[:, j].mean():.2f}"
        for j in range(covs.shape[1])
    )
    return [
        f"Per-class conformal from DP summaries (σ = {DP_SIGMA:g} per site, one Mondrian "
        f"summary: ε = {epsilon([(DP_SIGMA, 1.0, 1)], 1e-5, 'rdp'):.2f} at δ = 1e-5, RDP; "
        f"{sites} simulated sites × {patients} patients of synthetic logits, background 80 % of "
        f"windows, one seizure type per patient; {draws} noise draws): coverage at 90 % and "
        "mean set size per true class:",
        "",
        "| calibration | " + " | ".join(f"`{CLASSES[c]}`" for c in sorted(glob)) + " |",
        "|---" * (len(glob) + 1) + "|",
        row("global threshold, pooled windows, non-private", glob),
        row("per-class thresholds, pooled windows, non-private", pooled),
        f"| per-class thresholds from federated DP summaries | {dp_cells} |",
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


MODEL_CONFIG = ModelConfig(
    channels=(16, 32),
    strides=(2, 2),
    motion_channels=(16,),
    motion_strides=(2,),
    embed_dim=32,
    temporal_kernel=5,
)


def _train_without(train_all: list[PatientWindows], unknown: int) -> tuple[SemioNet, list, float]:
    """A small non-DP SemioNet trained with every window of class ``unknown`` removed."""
    torch.manual_seed(0)
    train = [_subset(p, p.y_type != unknown) for p in train_all]
    train = [p for p in train if len(p)]
    model = SemioNet(MODEL_CONFIG)
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
    model.eval()
    return model, train, time.perf_counter() - t0


def _seizure(o: dict) -> np.ndarray:
    """Windows of annotated events of a seizure class (PNES included)."""
    return (o["y_detect"] == 1) & np.isin(o["y_type"], SEIZURE_CLASSES)


def _events(o: dict, groups: list, sel: np.ndarray) -> tuple[np.ndarray, list, np.ndarray]:
    """(window indices, their event ids, each event's class) of the selected windows."""
    idx = np.flatnonzero(sel)
    ids = list(dict.fromkeys(groups[i] for i in idx))
    cls = {groups[i]: int(o["y_type"][i]) for i in idx}  # an event has one class
    return idx, [groups[i] for i in idx], np.array([cls[g] for g in ids])


def _scored(scorer: OpenSetScorer, o: dict, idx: np.ndarray, g: list) -> np.ndarray:
    return event_scores(scorer.window_scores(o["fused"][idx], o["type_logits"][idx]), g)[1]


def _flags(ev: np.ndarray, is_new: np.ndarray, threshold: float) -> tuple[float, float]:
    return float(np.mean(ev[~is_new] > threshold)), float(np.mean(ev[is_new] > threshold))


def _dp_scorer(
    train: list[PatientWindows], o_train: dict, space: ProjectionSpace, sigma: float, rng
) -> OpenSetScorer:
    """The federated model: one DP summary per site of its training patients, merged."""
    sums, start = [], 0
    per_site: dict[str, list] = {}
    for p in train:
        sel = _seizure(o_train)[start : start + len(p)]
        emb, lab = (
            o_train["fused"][start : start + len(p)],
            o_train["y_type"][start : start + len(p)],
        )
        start += len(p)
        if sel.any():
            per_site.setdefault(p.site, []).append((emb[sel], lab[sel]))
    for site in sorted(per_site):
        sums.append(dp_anomaly_summary(per_site[site], space, sigma, rng))
    return merge_anomaly(sums, space)


def _loto(
    model: SemioNet,
    train: list[PatientWindows],
    cal_p: list[PatientWindows],
    test_p: list[PatientWindows],
    public: list[PatientWindows],
    unknown: int,
) -> dict:
    """Open-set figures of one held-out type: known-type events of the test patients against
    the held-out type's events of every held-out patient (calibration and test)."""
    rng = np.random.default_rng(SEED + unknown)
    o_train, o_cal = outputs_for(model, train), outputs_for(model, cal_p)
    pub = [_subset(p, p.y_type != unknown) for p in public]
    o_pub, g_pub = outputs_for(model, pub), event_groups(pub)
    pool = test_p + cal_p
    o_pool, g_pool = outputs_for(model, pool), event_groups(pool)
    in_test = np.arange(len(g_pool)) < sum(len(p) for p in test_p)
    sel = _seizure(o_pool) & ((o_pool["y_type"] == unknown) | in_test)
    idx, g, ev_class = _events(o_pool, g_pool, sel)
    is_new = ev_class == unknown
    res: dict = {"unseen": int(is_new.sum()), "known": int((~is_new).sum())}

    # references: a random score (threshold: its own 95 % quantile), the energy score alone
    rand = rng.random(len(ev_class))
    res["random"] = (auroc(is_new, rand), *_flags(rand, is_new, 0.95))
    res["energy"] = (auroc(is_new, event_scores(energy(o_pool["type_logits"][idx]), g)[1]),)

    # the site's local scorer: fit on training seizure windows, threshold on calibration events
    fit = (o_train["y_detect"] == 1) & (o_train["y_type"] != IGNORE_INDEX)
    local = OpenSetScorer.fit(o_train["fused"][fit], o_train["y_type"][fit])
    g_cal = event_groups(cal_p)
    c_sel = (o_cal["y_detect"] == 1) & np.isin(o_cal["y_type"], SEIZURE_CLASSES)
    local.calibrate(
        o_cal["fused"][c_sel],
        o_cal["type_logits"][c_sel],
        [g_cal[i] for i in np.flatnonzero(c_sel)],
    )
    ev = _scored(local, o_pool, idx, g)
    res["local"] = (auroc(is_new, ev), *_flags(ev, is_new, local.threshold))

    # the federated DP model: public projection, DP sums, public standardisation + threshold
    p_sel = _seizure(o_pub)
    space = ProjectionSpace.public(o_pub["fused"][p_sel])
    p_groups = [g_pub[i] for i in np.flatnonzero(p_sel)]
    for key, sigma, weight in DP_VARIANTS:
        figs = []
        for _ in range(NOISE_DRAWS if sigma > 1e-6 else 1):
            try:
                scorer = _dp_scorer(train, o_train, space, sigma, rng)
            except SemioFedError:  # no class above the noisy minimum: no model, nothing flagged
                figs.append((0.5, 0.0, 0.0, 1.0))
                continue
            scorer.energy_weight = weight
            scorer.calibrate(o_pub["fused"][p_sel], o_pub["type_logits"][p_sel], p_groups)
            ev = _scored(scorer, o_pool, idx, g)
            figs.append((auroc(is_new, ev), *_flags(ev, is_new, scorer.threshold), 0.0))
        res[key] = tuple(np.mean(figs, axis=0))
    return res


#: (column, σ per site, energy weight) of the federated DP model's variants
DP_VARIANTS = (
    ("dp distance", DP_SIGMA, 0.0),
    ("dp +energy", DP_SIGMA, 1.0),
    ("dp1 +energy", 1.0, 1.0),
    ("no noise distance", 1e-9, 0.0),
    ("no noise +energy", 1e-9, 1.0),
)


LOTO_COLUMNS = (
    ("random", "random score"),
    ("energy", "energy alone"),
    ("local", "local scorer (energy + Mahalanobis, not DP)"),
    ("dp distance", f"DP federated Gaussians, σ = {DP_SIGMA:g}"),
    ("dp +energy", f"DP federated Gaussians + energy, σ = {DP_SIGMA:g}"),
    ("dp1 +energy", "DP federated Gaussians + energy, σ = 1"),
    ("no noise distance", "same estimator without noise"),
    ("no noise +energy", "same + energy, without noise"),
)


def _cell(fig: tuple) -> str:
    if len(fig) == 1:
        return f"{fig[0]:.3f}"
    text = f"{fig[0]:.3f} ({fig[1]:.0%} / {fig[2]:.0%})"
    return text + (f"; no model in {fig[3]:.0%} of draws" if len(fig) > 3 and fig[3] else "")


def _loto_rows(rows: dict[str, dict]) -> list[str]:
    head = " | ".join(label for _, label in LOTO_COLUMNS)
    out = [
        f"| held-out type | unseen / known events | {head} |",
        "|---" * (len(LOTO_COLUMNS) + 2) + "|",
    ]
    for t, r in rows.items():
        cells = " | ".join(_cell(r[k]) for k, _ in LOTO_COLUMNS)
        out.append(f"| `{t}` | {r['unseen']} / {r['known']} | {cells} |")
    mean = " | ".join(
        _cell(tuple(np.nanmean([r[k] for r in rows.values()], axis=0))) for k, _ in LOTO_COLUMNS
    )
    out.append(f"| **mean over types** | | {mean} |")
    return out


def _per_class_rows(o_cal: dict, o_test: dict, known, temp: float) -> list[str]:
    """Coverage per true class at 90 %: the global threshold beside per-class (Mondrian) ones."""
    p_cal = cal.softmax(o_cal["type_logits"][known(o_cal)], temp)
    p_test = cal.softmax(o_test["type_logits"][known(o_test)], temp)
    y_cal, y_test = o_cal["y_type"][known(o_cal)], o_test["y_type"][known(o_test)]
    glob = cal.coverage_per_class(
        p_test, y_test, cal.conformal_threshold(cal.scores(p_cal, y_cal), 0.9)
    )
    mond = cal.coverage_per_class(p_test, y_test, cal.mondrian_thresholds(p_cal, y_cal, 0.9))
    n_cal = {int(c): int((y_cal == c).sum()) for c in np.unique(y_cal)}
    out = [
        "Conformal coverage per true class at a nominal 90 % (the model above, calibrated on the "
        "calibration patients' windows, measured on the test patients' windows; set size: mean "
        "over the class's windows, of 6):",
        "",
        "| class | calibration / test windows | global threshold: coverage, set size | per-class (Mondrian): coverage, set size |",
        "|---|---|---|---|",
    ]
    for c in sorted(glob):
        out.append(
            f"| `{CLASSES[c]}` | {n_cal.get(c, 0)} / {glob[c][2]} | {glob[c][0]:.3f}, "
            f"{glob[c][1]:.2f} | {mond[c][0]:.3f}, {mond[c][1]:.2f} |"
        )
    return out


def run(ctx: BenchContext) -> str:
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    data = ctx.path("analysis") / "data"
    generate_consortium(
        data, sites=SITES, patients_per_site=PATIENTS, minutes_per_patient=MINUTES, seed=SEED
    )
    public = tuning_patients(ctx.path("analysis") / "public")
    site_dirs = sorted(data.glob("site-*"))
    wcfg = WindowConfig()
    patients = [p for s in site_dirs for p in load_patient_windows(s, wcfg)]
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(patients))
    n_held = max(4, (2 * len(patients)) // 5)
    held = [patients[i] for i in order[:n_held]]
    train_all = [patients[i] for i in order[n_held:]]
    cal_p, test_p = held[: n_held // 2], held[n_held // 2 :]

    loto, train_s = {}, []
    for t in LOTO_TYPES:
        m, tr, secs = _train_without(train_all, CLASS_INDEX[t])
        train_s.append(secs)
        loto[t] = _loto(m, tr, cal_p, test_p, public, CLASS_INDEX[t])
        if t == HELD_OUT_TYPE:
            model, train = m, tr
    unknown = CLASS_INDEX[HELD_OUT_TYPE]

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

    lines = [
        "## Clinical analysis (bench_analysis)",
        "",
        f"Synthetic consortium: {SITES} sites × {PATIENTS} patients × {MINUTES:g} min (seed {SEED}); "
        f"{len(train)} training patients with every `{HELD_OUT_TYPE}` window removed, {len(cal_p)} calibration "
        f"and {len(test_p)} test patients held out. Small non-DP SemioNet, {STEPS} steps "
        f"({np.mean(train_s):.0f} s per model, one model per held-out type).",
        "",
        "Open-set detection, leave one type out: for each type, a model trained without its "
        "windows; AUROC of the held-out type's events (every held-out patient's) against the "
        "test patients' known-type events, an event's score being the mean of its windows'; in "
        "brackets the share of known / unseen events flagged at the threshold meant to flag 5 % "
        "of known events (local scorer: 95 % quantile of the calibration patients' known events; "
        "DP models: of the public tuning patients' known events, the held-out type removed from "
        f"them too; random: its own 95 % quantile). DP rows: mean over {NOISE_DRAWS} noise draws "
        f"of σ per site (one release per site: ε = {epsilon([(DP_SIGMA, 1.0, 1)], 1e-5, 'rdp'):.2f} "
        f"at σ = {DP_SIGMA:g}, {epsilon([(1.0, 1.0, 1)], 1e-5, 'rdp'):.2f} at σ = 1, δ = 1e-5, RDP; a "
        "draw whose noisy class counts all fall below the minimum gives no model: AUROC 0.5, "
        f"nothing flagged), from the {len(train)} training patients of {SITES} sites (about "
        f"{len(train) // SITES} a site, fewer than the {cal.MIN_PATIENTS} a site needs to "
        "release: `site` commands refuse it), features: the fused embedding projected on "
        f"{DEFAULT_RANK} principal directions of the public patients.",
        "",
        *_loto_rows(loto),
        "",
        "| measure | value |",
        "|---|---|",
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
        *_per_class_rows(o_cal, o_test, known, temp),
        "",
        *_dp_calibration_rows(),
        "",
        *_dp_mondrian_rows(),
        "",
        f"_All figures measured in this run ({time.perf_counter() - t_start:.0f} s)._",
    ]
    return "\n".join(lines)
