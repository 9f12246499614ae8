"""The anomaly model on semiology events: a patient moves a site's DP sum by at most 1 in L2
however many or extreme its events; the public diagonal space is built from public rows only;
events are the runs of one annotated class; the merged DP model, alone or shrunk to the public
class means, separates an unseen type."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from semiofed.shared.analysis.anomaly import (
    SEIZURE_CLASSES,
    dp_anomaly_summary,
    merge_anomaly,
    patient_contribution,
)
from semiofed.shared.analysis.openset import OpenSetScorer, ProjectionSpace
from semiofed.shared.analysis.semiology_anomaly import (
    PRIOR_STRENGTH,
    THRESHOLD_MARGIN,
    THRESHOLD_WIDTH,
    dp_threshold,
    dp_threshold_summary,
    event_ids,
    features_of_windows,
    merge,
    patient_events,
    public_log_centre,
    public_prior,
    public_space,
    threshold_contribution,
    window_features,
)
from semiofed.shared.dataset import load_patient_windows
from semiofed.shared.errors import SemioFedError
from semiofed.shared.metrics import auroc
from semiofed.shared.semiology_features import N_FEATURES
from tests.anomaly_helpers import (
    assert_each_worst_case_moves_the_sum_by_at_most_one,
    assert_worst_cases_move_the_release_by_at_most_one,
)

D = N_FEATURES
# class centres of synthetic event rows: a few features differ per class, as signs do
CENTRES = np.zeros((len(SEIZURE_CLASSES), D))
for _k in range(len(SEIZURE_CLASSES)):
    CENTRES[_k, 6 * _k : 6 * _k + 6] = 6.0


def _events(rng: np.random.Generator, k: int, n: int) -> np.ndarray:
    return CENTRES[k] + rng.normal(0.0, 0.5, (n, D))


def _space(
    rng: np.random.Generator,
    known: tuple[int, ...],
    rank: int | None = None,
    whiten: bool = False,
    per_class: int = 6,
) -> ProjectionSpace:
    """Public rows: background-like windows and known-type events."""
    windows = rng.normal(0.0, 1.0, (2000, D))
    ev = np.concatenate([_events(rng, k, per_class) for k in known])
    lab = np.repeat([SEIZURE_CLASSES[k] for k in known], per_class)
    return public_space(windows, ev, lab, rank, whiten)


def _site(rng: np.random.Generator, n: int, known: tuple[int, ...]) -> list:
    """n patients with 1–4 events of one or two known classes."""
    out = []
    for i in range(n):
        ks = [known[i % len(known)], known[(i * 7 + 1) % len(known)]][: 1 + i % 2]
        rows = [_events(rng, k, int(rng.integers(1, 5))) for k in ks]
        labs = [np.full(len(r), SEIZURE_CLASSES[k]) for r, k in zip(rows, ks, strict=True)]
        out.append((np.concatenate(rows), np.concatenate(labs)))
    return out


@pytest.mark.parametrize(("rank", "whiten"), [(None, False), (3, False), (None, True)])
def test_a_worst_case_patient_moves_the_sum_by_at_most_one(rank: int | None, whiten: bool) -> None:
    rng = np.random.default_rng(0)
    space = _space(rng, (0, 1, 2, 3, 4), rank, whiten)
    others = _site(rng, 10, (0, 1, 2))
    # far out along one projected coordinate: clipped to norm 1, the bound is attained
    one_axis = space.centre + 1e9 * np.linalg.pinv(space.basis)[0] / space.scale
    worst = [
        (rng.normal(0, 1e6, (3000, D)), rng.integers(0, 6, 3000)),  # huge, many, every class
        (np.tile(one_axis, (500, 1)), np.full(500, SEIZURE_CLASSES[0])),
        (np.full((1, D), 1e12), np.array([SEIZURE_CLASSES[-1]])),
    ]
    assert_each_worst_case_moves_the_sum_by_at_most_one(space, others, worst, rng)
    assert np.linalg.norm(patient_contribution(space, *worst[1])) == pytest.approx(1.0)
    # the space is public: built from public rows alone, refused without enough of them
    with pytest.raises(SemioFedError, match="too few"):
        public_space(np.ones((10, D)), np.ones((3, D)), np.array([1, 2, 3]))


def _assert_flags_the_new_type(
    model: OpenSetScorer, rng: np.random.Generator, known: tuple[int, ...]
) -> None:
    """Threshold on known-type events, then class index 4's events rank and flag as new."""
    model.calibrate_events(np.concatenate([_events(rng, k, 10) for k in known]))
    test = np.concatenate([_events(rng, k, 15) for k in (0, 1, 2, 3, 4)])
    is_new = np.repeat(np.arange(5) == 4, 15)
    score = model.event_distance(test)
    assert auroc(is_new, score) > 0.9
    flagged = score > model.threshold
    assert flagged[is_new].mean() > 0.5 and flagged[~is_new].mean() < 0.2


def test_the_dp_model_flags_a_type_no_site_has() -> None:
    """In the low-rank public space, at σ = 1 per site (ε ≈ 4.7 per release) and 3 × 40
    patients (at σ = 3 the noisy class counts drop known classes: see bench_openset)."""
    rng = np.random.default_rng(1)
    known = (0, 1, 2, 3)  # class index 4 (pnes) is at no site and not in the public rows
    space = _space(rng, known, rank=3)
    assert space.rank == 3 and space.digest() != _space(rng, known).digest()
    sites = [_site(rng, 40, known) for _ in range(3)]
    model = merge([dp_anomaly_summary(s, space, 1.0, rng) for s in sites], space)
    assert model.classes == [SEIZURE_CLASSES[k] for k in known]
    _assert_flags_the_new_type(model, rng, known)


def test_events_are_runs_of_one_annotated_class(small_consortium: Path) -> None:
    p = next(q for q in load_patient_windows(small_consortium / "site-01") if q.y_detect.any())
    ids = event_ids(p)
    assert [i is None for i in ids] == [
        not (d and t in SEIZURE_CLASSES) for d, t in zip(p.y_detect, p.y_type, strict=True)
    ]
    f = window_features(p)
    assert f.shape == (len(p), D) and np.isfinite(f).all()
    rows, lab = patient_events(p, f)
    assert len(rows) == len({i for i in ids if i is not None}) > 0
    first = next(i for i in ids if i is not None)
    sel = np.array([i == first for i in ids])
    assert np.allclose(rows[0], f[sel].mean(0)) and lab[0] == p.y_type[sel][0]
    assert {int(p.y_type[k]) for k in np.flatnonzero(sel)} == {lab[0]}
    alone, lab_alone = patient_events(p)  # only the event windows' features computed
    assert np.allclose(alone, rows) and (lab_alone == lab).all()
    none = features_of_windows(
        {k: v[:0] for k, v in p.x.items()}, {k: v[:0] for k, v in p.mask.items()}
    )
    assert none.shape == (0, D)  # no window: still D features wide (rows concatenate)


def test_merge_drops_a_class_within_the_noise_and_refuses_a_bad_sigma() -> None:
    rng = np.random.default_rng(2)
    space = _space(rng, (0, 1, 2, 3), rank=3)
    doc = dp_anomaly_summary(_site(rng, 40, (0, 1, 2, 3)), space, 1e-9, rng)
    doc["noise_multiplier"] = 3.0  # the weight's noise s.d. is then 3 / √0.2 ≈ 6.7
    sums = np.reshape(doc["noisy_sums"], (len(SEIZURE_CLASSES), -1))
    sums[-1, 0] = 4.0 * np.sqrt(0.2)  # an absent class whose noisy weight came out at 4
    doc["noisy_sums"] = sums.ravel().tolist()
    assert SEIZURE_CLASSES[-1] in merge_anomaly([doc], space).classes  # the fixed minimum 2
    assert SEIZURE_CLASSES[-1] not in merge([doc], space).classes  # one noise s.d.
    for bad in ("3", -1.0, float("nan")):
        with pytest.raises(SemioFedError, match="noise_multiplier"):
            merge([{**doc, "noise_multiplier": bad}], space)


def test_the_public_model_and_the_shrunk_merge() -> None:
    rng = np.random.default_rng(3)
    space = _space(rng, (0, 1, 2, 3), rank=3)
    public = _site(rng, 12, (0, 1, 2))  # class index 3 has no public support
    prior = public_prior(public, space)
    alone = merge([], space, prior)  # no site data: the public patients' class means
    exact = merge_anomaly([dp_anomaly_summary(public, space, 1e-12, rng)], space)
    assert alone.classes == exact.classes == [SEIZURE_CLASSES[k] for k in (0, 1, 2)]
    assert np.allclose(alone.means, exact.means)
    doc = dp_anomaly_summary(_site(rng, 40, (0, 1, 2, 3)), space, 1e-9, rng)
    doc["noise_multiplier"] = 3.0  # the weight's noise s.d. is then 3 / √0.2 ≈ 6.7
    assert SEIZURE_CLASSES[3] in merge([doc], space, prior).classes
    sums = np.reshape(doc["noisy_sums"], (len(SEIZURE_CLASSES), -1))
    sums[0, 0] = -5.0  # a negative noisy count: clipped at 0, the public mean is kept
    sums[3, 0] = 4.0 * np.sqrt(0.2)  # no public support, a weight within the noise: dropped
    doc["noisy_sums"] = sums.ravel().tolist()
    model = merge([doc], space, prior)
    assert model.classes == [SEIZURE_CLASSES[k] for k in (0, 1, 2)]
    p = prior.reshape(len(SEIZURE_CLASSES), -1)
    n0 = PRIOR_STRENGTH * 9.0 * p[0, 0] / np.sqrt(0.2)
    want = (PRIOR_STRENGTH * 9.0 * p[0, 1:4] + sums[0, 1:4]) / np.sqrt(0.6) / n0
    assert np.allclose(model.means[0], want)
    with pytest.raises(SemioFedError, match="no public patients"):
        public_prior([], space)


def test_the_shrunk_dp_model_flags_a_type_no_site_has_at_sigma_3() -> None:
    """σ = 3 per site (ε ≈ 1.4 per release), 3 × 40 patients, a public prior of 12 patients
    (the unshrunk DP means often fall to AUROC ≈ 0.75 here)."""
    rng = np.random.default_rng(4)
    known = (0, 1, 2, 3)  # class index 4 (pnes) is at no site and not in the public rows
    space = _space(rng, known, rank=3)
    prior = public_prior(_site(rng, 12, known), space)
    sites = [_site(rng, 40, known) for _ in range(3)]
    model = merge([dp_anomaly_summary(s, space, 3.0, rng) for s in sites], space, prior)
    assert model.classes == [SEIZURE_CLASSES[k] for k in known]
    _assert_flags_the_new_type(model, rng, known)


def test_the_threshold_release_has_sensitivity_one_and_follows_the_sites() -> None:
    """A patient moves a site's threshold sums by at most 1 however many or extreme its events;
    the DP threshold (σ = 3 a site) sits where the sites' known events are (their patients'
    mean log distance plus the margin), though they sit further from the public class means
    than the public events, whose 95 % quantile flags most of them."""
    rng = np.random.default_rng(5)
    known = (0, 1, 2, 3)
    space = _space(rng, known, whiten=True, per_class=30)
    public = _site(rng, 40, known)
    model = merge([], space, public_prior(public, space))
    pub_rows = np.concatenate([r for r, _ in public])
    centre = public_log_centre(model, pub_rows)
    assert_worst_cases_move_the_release_by_at_most_one(
        lambda ps: dp_threshold_summary(ps, model, centre, 1e-12, rng)["noisy_sums"],
        lambda rows: threshold_contribution(model, rows, centre),
        [r for r, _ in _site(rng, 10, known)],
        [rng.normal(0, 1e6, (300, D)), np.zeros((1, D)), np.full((1, D), 1e12), pub_rows[:0]],
    )
    # the sites' patients: two events each, every sign 30 % noisier than in the public ones
    sites = [[CENTRES[k] + rng.normal(0, 0.65, (2, D)) for k in np.resize(known, 40)]] * 3
    sums = [dp_threshold_summary(site, model, centre, 3.0, rng) for site in sites]
    model.calibrate_events(pub_rows)
    logs = [np.log(model.mahalanobis(r)) for r in sites[0]]
    assert np.mean(np.concatenate(logs) > np.log(model.mahalanobis(pub_rows)).max()) > 0.5
    dp_threshold(model, sums, pub_rows)
    d2 = model.threshold * model.maha_stats[1] + model.maha_stats[0]
    want = np.mean([np.clip((v - centre) / THRESHOLD_WIDTH, -1, 1).mean() for v in logs])
    want = centre + THRESHOLD_WIDTH * want + THRESHOLD_MARGIN
    assert np.log(d2) == pytest.approx(want, abs=0.2)
    with pytest.raises(SemioFedError, match="threshold summary 1"):
        dp_threshold(model, [{**sums[0], "centre": centre + 1.0}], pub_rows)
