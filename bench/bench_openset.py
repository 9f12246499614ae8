"""Open-set detection on semiology events, leave one type out (every seizure type and PNES),
on held-out patients: the federated DP anomaly model of ``shared/analysis/semiology_anomaly.py``
beside non-private references, and whether the simulator's types are distinguishable there.

No network is trained: an event's features are the mean of its windows' fixed semiology
features. For each of ``SPLITS`` random patient splits (60 % training, 40 % held out) and
each held-out type ``u``: the training patients' events of the other types fit the models;
the held-out patients' events are scored (unseen = type ``u``). The public space and the
threshold (meant to flag 5 % of known events) come from the anomaly model's public patients
(:func:`~semiofed.shared.public_data.anomaly_patients`) with type ``u`` removed. DP rows: one summary per site of its training patients (≈ 24 a site), mean over
``NOISE_DRAWS`` noise draws. Public only / shrunk: the public patients' class means
alone (ε = 0), and the DP means shrunk to them (:func:`~.semiology_anomaly.merge` with a prior).
"""

from __future__ import annotations

import time

import numpy as np

from bench.run import BenchContext
from semiofed.privacy.accounting import epsilon
from semiofed.shared.analysis.anomaly import SEIZURE_CLASSES, dp_anomaly_summary, merge_anomaly
from semiofed.shared.analysis.openset import OpenSetScorer, ProjectionSpace
from semiofed.shared.analysis.semiology_anomaly import (
    NOISE_SDS,
    PRIOR_STRENGTH,
    THRESHOLD_MARGIN,
    dp_threshold,
    dp_threshold_summary,
    events_of,
    merge,
    patient_events,
    public_log_centre,
    public_prior,
    public_space,
    window_features,
)
from semiofed.shared.dataset import load_patient_windows
from semiofed.shared.errors import SemioFedError
from semiofed.shared.labels import CLASSES
from semiofed.shared.metrics import auroc
from semiofed.shared.public_data import ANOMALY_SEED, anomaly_patients
from semiofed.shared.semiology_features import FEATURE_NAMES
from semiofed.shared.synth import generate_consortium

#: the demo's consortium shape, longer recordings for more events (seed used nowhere else)
SITES, PATIENTS, MINUTES, SEED = 3, 40, 8.0, 41
SPLITS, NOISE_DRAWS, SIGMAS = 3, 10, (1.0, 3.0)
THRESHOLD_SIGMA = 3.0  # σ of the threshold release of the whitened shrunk rows
RANK = 3  # public discriminant directions of the low-rank space
#: the motion-energy baseline: the summed log-speed of the body regions
SPEEDS = [i for i, n in enumerate(FEATURE_NAMES) if n.endswith("_speed")]
COLUMNS = (
    ("random", "random score"),
    ("motion", "motion energy (summed region speeds)"),
    ("knn", "1-NN distance, pooled (not DP)"),
    ("pooled", "class Gaussians, pooled events (not DP)"),
    ("local", "class Gaussians, one site's own events (not DP; mean over sites)"),
    ("fed0", "federated estimator, no noise"),
    *((f"dp{s:g}", f"DP federated, σ = {s:g}") for s in SIGMAS),
    ("public", "class means of the public patients only (ε = 0)"),
    *((f"s-dp{s:g}", f"DP means shrunk to the public ones, σ = {s:g}") for s in SIGMAS),
    ("v-fed0", "DP second moments as covariance: no noise"),
    *((f"v-dp{s:g}", f"DP second moments: DP, σ = {s:g}") for s in SIGMAS),
    ("r-fed0", f"{RANK} public directions: no noise"),
    *((f"r-dp{s:g}", f"{RANK} public directions: DP, σ = {s:g}") for s in SIGMAS),
    ("w-fed0", "whitened space: federated, no noise"),
    *((f"w-dp{s:g}", f"whitened: DP federated, σ = {s:g}") for s in SIGMAS),
    ("w-public", "whitened: public class means only (ε = 0)"),
    *(
        (f"ws-dp{s:g}", f"**whitened: DP means shrunk to the public ones, σ = {s:g}**")
        for s in SIGMAS
    ),
)


def _fed(
    train: list, space: ProjectionSpace, sigma: float, rng, dp_variance: bool, prior
) -> OpenSetScorer:
    by_site: dict[str, list] = {}
    for site, rows, lab in train:
        by_site.setdefault(site, []).append((rows, lab))
    sums = [dp_anomaly_summary(by_site[s], space, sigma, rng) for s in sorted(by_site)]
    if dp_variance:  # the DP second moments instead of the public covariance
        return merge_anomaly(sums, space, noise_sds=NOISE_SDS)
    return merge(sums, space, prior, PRIOR_STRENGTH)


def _one(train: list, test_rows, is_new, spaces, pub_rows, pub_patients, rng) -> dict:
    """Figures of one held-out type in one split: AUROC (and flag rates where thresholded)."""
    tr_rows = np.concatenate([r for _, r, _ in train])
    tr_lab = np.concatenate([y for _, _, y in train])
    space = spaces[0]
    z_tr, z_te = space.project(tr_rows), space.project(test_rows)
    rand = rng.random(len(is_new))
    res: dict = {
        "random": (auroc(is_new, rand),),
        "motion": (auroc(is_new, test_rows[:, SPEEDS].sum(1)),),
        "knn": (auroc(is_new, ((z_te[:, None] - z_tr[None]) ** 2).sum(2).min(1)),),
    }
    pooled = OpenSetScorer.fit(z_tr, tr_lab)
    res["pooled"] = (auroc(is_new, pooled.mahalanobis(z_te)),)
    local = []
    for site in sorted({s for s, _, _ in train}):
        own = [(r, y) for s, r, y in train if s == site]
        scorer = OpenSetScorer.fit(
            space.project(np.concatenate([r for r, _ in own])), np.concatenate([y for _, y in own])
        )
        local.append(auroc(is_new, scorer.mahalanobis(z_te)))
    res["local"] = (float(np.mean(local)),)
    res["local_sites"] = tuple(local)
    priors = [public_prior(pub_patients, space) for space in spaces]
    for key, space, prior in (("public", spaces[0], priors[0]), ("w-public", spaces[2], priors[2])):
        public = merge([], space, prior)
        public.calibrate_events(pub_rows)
        ev = public.event_distance(test_rows)
        res[key] = (auroc(is_new, ev), *_flags(ev > public.threshold, is_new))
    variants = (  # (prefix, space, DP second moments, prior, DP threshold)
        ("", spaces[0], False, None, False),
        ("s-", spaces[0], False, priors[0], False),
        ("v-", spaces[0], True, None, False),
        ("r-", spaces[1], False, None, False),
        ("w-", spaces[2], False, None, False),
        ("ws-", spaces[2], False, priors[2], True),
    )
    for prefix, space, dp_var, pri, dp_thr in variants:
        sigmas = SIGMAS if pri is not None else (1e-9, *SIGMAS)
        for sigma in sigmas:
            key = prefix + ("fed0" if sigma < 1e-6 else f"dp{sigma:g}")
            res[key] = _federated(
                train, test_rows, is_new, space, pub_rows, sigma, rng, dp_var, pri, dp_thr
            )
    return res


def _flags(flag: np.ndarray, is_new: np.ndarray) -> tuple[float, float]:
    """Shares of known and unseen events flagged."""
    return float(flag[~is_new].mean()), float(flag[is_new].mean())


def _federated(
    train: list,
    test_rows: np.ndarray,
    is_new: np.ndarray,
    space: ProjectionSpace,
    pub_rows: np.ndarray,
    sigma: float,
    rng: np.random.Generator,
    dp_variance: bool,
    prior: np.ndarray | None,
    dp_thr: bool,
) -> tuple:
    """AUROC and flag rates of the federated model, mean over noise draws (``dp_thr``: the
    DP threshold's flag rates first, then the public one's)."""
    figs = []
    for _ in range(1 if sigma < 1e-6 else NOISE_DRAWS):
        try:
            model = _fed(train, space, sigma, rng, dp_variance, prior)
        except SemioFedError:  # no class above the noisy minimum: no model, nothing flagged
            figs.append((0.5, *((0.0,) * (4 if dp_thr else 2))))
            continue
        model.calibrate_events(pub_rows)
        ev = model.event_distance(test_rows)
        fig = (auroc(is_new, ev), *_flags(ev > model.threshold, is_new))
        if dp_thr:
            fig = (fig[0], *_dp_flags(model, train, test_rows, is_new, pub_rows, rng), *fig[1:])
        figs.append(fig)
    return tuple(np.mean(figs, axis=0))


def _dp_flags(model, train: list, test_rows, is_new, pub_rows, rng) -> tuple[float, float]:
    """Flag rates at the DP threshold: one threshold release per site of its training
    patients' known-type events at σ = THRESHOLD_SIGMA (:func:`dp_threshold`)."""
    centre = public_log_centre(model, pub_rows)
    sums = [
        dp_threshold_summary(
            [r for s, r, _ in train if s == site], model, centre, THRESHOLD_SIGMA, rng
        )
        for site in sorted({s for s, _, _ in train})
    ]
    dp_threshold(model, sums, pub_rows)
    return _flags(model.event_distance(test_rows) > model.threshold, is_new)


def _cell(fig: tuple) -> str:
    if len(fig) == 5:
        return f"{fig[0]:.3f} ({fig[1]:.0%} / {fig[2]:.0%}; public: {fig[3]:.0%} / {fig[4]:.0%})"
    return f"{fig[0]:.3f}" if len(fig) == 1 else f"{fig[0]:.3f} ({fig[1]:.0%} / {fig[2]:.0%})"


def _confusion(events: list, pub, rng) -> list[str]:
    """Nearest class mean with every type known (pooled, not DP) on a 60/40 patient split."""
    order = rng.permutation(len(events))
    held = set(order[: (2 * len(events)) // 5].tolist())
    tr = [e for i, e in enumerate(events) if i not in held]
    te = [e for i, e in enumerate(events) if i in held]
    space = public_space(*pub)
    x_tr = space.project(np.concatenate([r for _, r, _ in tr]))
    y_tr = np.concatenate([y for _, _, y in tr])
    x_te = space.project(np.concatenate([r for _, r, _ in te]))
    y_te = np.concatenate([y for _, _, y in te])
    classes = sorted(set(y_tr.tolist()))
    means = np.stack([x_tr[y_tr == c].mean(0) for c in classes])
    var = ((x_tr - means[np.searchsorted(classes, y_tr)]) ** 2).mean(0) + 1e-6
    pred = np.array(classes)[(((x_te[:, None] - means[None]) ** 2) / var).sum(2).argmin(1)]
    names = [CLASSES[c] for c in classes]
    out = [
        "Are the types distinguishable there? Nearest class mean (diagonal covariance) with "
        "every type known, pooled training events, on held-out patients' events (rows: true "
        "type; share predicted as each type):",
        "",
        "| true \\ predicted | " + " | ".join(f"`{n}`" for n in names) + " | events |",
        "|---" * (len(names) + 2) + "|",
    ]
    for c, n in zip(classes, names, strict=True):
        sel = y_te == c
        shares = " | ".join(f"{np.mean(pred[sel] == k):.0%}" if sel.any() else "—" for k in classes)
        out.append(f"| `{n}` | {shares} | {int(sel.sum())} |")
    return out


def run(ctx: BenchContext) -> str:
    t_start = time.perf_counter()
    data = ctx.path("openset") / "data"
    generate_consortium(data, SITES, PATIENTS, MINUTES, seed=SEED, workers=2)
    events = []
    for site in sorted(data.glob("site-*")):
        for p in load_patient_windows(site):
            rows, lab = patient_events(p, window_features(p))
            events.append((p.site, rows, lab))
    public = anomaly_patients(ctx.path("openset") / "anomaly-public")
    pub_all = events_of(public)
    pub_events = [patient_events(p) for p in public]
    # the splits have their own stream: adding a column (more noise draws) leaves them as they are
    split_rng, rng = np.random.default_rng(SEED), np.random.default_rng([SEED, 1])
    orders = [split_rng.permutation(len(events)) for _ in range(SPLITS)]
    figs: dict[str, list[dict]] = {CLASSES[u]: [] for u in SEIZURE_CLASSES}
    counts = {CLASSES[u]: [0, 0] for u in SEIZURE_CLASSES}
    for order in orders:
        held = set(order[: (2 * len(events)) // 5].tolist())
        for u in SEIZURE_CLASSES:
            train = [
                (s, r[y != u], y[y != u])
                for i, (s, r, y) in enumerate(events)
                if i not in held and (y != u).any()
            ]
            test = [(r, y) for i, (_, r, y) in enumerate(events) if i in held and len(y)]
            rows = np.concatenate([r for r, _ in test])
            is_new = np.concatenate([y for _, y in test]) == u
            keep = pub_all[2] != u
            pub = (pub_all[0], pub_all[1][keep], pub_all[2][keep])
            spaces = (
                public_space(*pub),
                public_space(*pub, rank=RANK),
                public_space(*pub, whiten=True),
            )
            pub_patients = [(r[y != u], y[y != u]) for r, y in pub_events]
            figs[CLASSES[u]].append(
                _one(train, rows, is_new, spaces, pub_all[1][keep], pub_patients, rng)
            )
            counts[CLASSES[u]][0] += int(is_new.sum())
            counts[CLASSES[u]][1] += int((~is_new).sum())
    mean = {
        t: {k: tuple(np.nanmean([f[k] for f in fs], axis=0)) for k, _ in COLUMNS}
        for t, fs in figs.items()
    }
    overall = {k: tuple(np.nanmean([mean[t][k] for t in mean], axis=0)) for k, _ in COLUMNS}
    eps = {s: epsilon([(s, 1.0, 1)], 1e-5, "rdp") for s in SIGMAS}
    eps_thr = {s: epsilon([(s, 1.0, 1), (THRESHOLD_SIGMA, 1.0, 1)], 1e-5, "rdp") for s in SIGMAS}
    n_train = len(events) - (2 * len(events)) // 5
    lines = [
        "## Open-set detection on semiology events (bench_openset)",
        "",
        f"Synthetic consortium: {SITES} sites × {PATIENTS} patients × {MINUTES:g} min (seed {SEED}); "
        f"{SPLITS} random patient splits, {n_train} training patients (about {n_train // SITES} a site) "
        f"and {len(events) - n_train} held out. Leave one type out: the training patients' events "
        "of the other types fit the models; AUROC of the held-out patients' events of the "
        "held-out type against their known-type events (mean over splits; events: summed "
        "over splits). An event's features: the mean over its windows of the 91 fixed "
        "semiology features, in the public space of `shared/analysis/semiology_anomaly.py` "
        f"(public simulator patients, seed {ANOMALY_SEED}, {len(public)} patients, "
        f"{len(pub_all[2])} events, with the held-out type removed). In brackets: share of "
        "known / unseen events flagged at the threshold meant to flag 5 % of known events "
        "(95 % quantile of the public known-type events' scores). DP rows: one summary per "
        f"site, mean over {NOISE_DRAWS} noise draws; one release per site costs "
        + ", ".join(f"ε = {eps[s]:.2f} at σ = {s:g}" for s in SIGMAS)
        + " (δ = 1e-5, RDP, privacy unit: patient). Public only: class means of the public "
        "patients' events (held-out type removed) with the public covariance; no site "
        "data, ε = 0 (its brackets are in-sample: the same public events set the threshold). "
        "Shrunk: each DP class mean combined with the public one, "
        f"n0 = {PRIOR_STRENGTH:g} × Σ σ² × the public class weight (post-processing, same ε; "
        "`semiology_anomaly.merge`). Whitened: the space of `public_space(whiten=True)`, the "
        "features also whitened by the public within-class correlation, so the model's "
        "covariance is the full public one (the variant proposed for the demo in bold; its brackets: "
        "flags at the DP threshold first, one more release per site at "
        f"σ = {THRESHOLD_SIGMA:g} of its training patients' known-type event distances "
        f"(`semiology_anomaly.dp_threshold`; margin {THRESHOLD_MARGIN:g} log units), then at "
        "the public one; both releases together cost "
        + ", ".join(f"ε = {eps_thr[s]:.2f} at σ = {s:g}" for s in SIGMAS)
        + " per site, δ = 1e-5, RDP). "
        "The fused-embedding model's figures, "
        "energy alone among them, are bench_analysis's.",
        "",
        "| held-out type | unseen / known events | " + " | ".join(c for _, c in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 2) + "|",
    ]
    for t, m in mean.items():
        lines.append(
            f"| `{t}` | {counts[t][0]} / {counts[t][1]} | "
            + " | ".join(_cell(m[k]) for k, _ in COLUMNS)
            + " |"
        )
    lines.append(
        "| **mean over types** | | " + " | ".join(_cell(overall[k]) for k, _ in COLUMNS) + " |"
    )
    sites = sorted({s for s, _, _ in events})
    per_site = np.nanmean(
        [
            [np.mean([f["local_sites"][i] for f in fs]) for i in range(len(sites))]
            for fs in figs.values()
        ],
        axis=0,
    )
    lines += [
        "",
        "Local-only per site (AUROC, mean over held-out types; not DP): "
        + ", ".join(f"{s} {a:.3f}" for s, a in zip(sites, per_site, strict=True))
        + ".",
        "",
        *_confusion(events, pub_all, split_rng),
        "",
    ]
    lines.append(f"_All figures measured in this run ({time.perf_counter() - t_start:.0f} s)._")
    return "\n".join(lines)
