"""Temperature scaling, split conformal, their federated DP summaries (utility and attacks:
reconstruction of known scores, membership of a known patient), open-set scorer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from semiofed.shared.analysis import calibration as cal
from semiofed.shared.analysis.openset import OpenSetScorer
from semiofed.shared.errors import SemioFedError

DELTA = 1e-5


def _logits(rng: np.random.Generator, n: int, sharp: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Overconfident logits: the true class leads, but the scale is too large."""
    y = rng.integers(0, 6, n)
    z = rng.normal(0, 1, (n, 6))
    z[np.arange(n), y] += 1.2
    return sharp * z, y


def test_temperature_scaling_lowers_nll_of_overconfident_logits() -> None:
    rng = np.random.default_rng(0)
    z, y = _logits(rng, 2000)
    t = cal.fit_temperature(z, y)
    assert t > 1.5  # recognises the over-confidence
    assert cal.nll(z, y, t) < cal.nll(z, y, 1.0)


def _site(rng: np.random.Generator, patients: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [_logits(rng, int(rng.integers(10, 60))) for _ in range(patients)]


def test_dp_federated_calibration_is_near_the_pooled_one_and_covers() -> None:
    """Three sites of 30 patients release DP summaries only (σ = the default); over 30 noise
    draws the merged temperature stays near the pooled optimum and the merged conformal
    threshold covers about 90 % of new windows (on average over the noise)."""
    rng = np.random.default_rng(1)
    sites = [_site(rng, 30) for _ in range(3)]
    test_z, test_y = _logits(rng, 4000)
    pooled_z = np.concatenate([z for s in sites for z, _ in s])
    pooled_y = np.concatenate([y for s in sites for _, y in s])
    t_pooled = cal.fit_temperature(pooled_z, pooled_y)
    best, raw = cal.nll(test_z, test_y, t_pooled), cal.nll(test_z, test_y, 1.0)
    noise = np.random.default_rng(7)
    sigma = cal.DEFAULT_NOISE_MULTIPLIER
    covs, sizes = [], []
    for _ in range(30):
        t = cal.merge_temperature([cal.dp_temperature_summary(s, sigma, noise) for s in sites])
        assert cal.nll(test_z, test_y, t) < best + 0.25 * (raw - best)
        summaries = [
            cal.dp_conformal_summary(
                [cal.scores(cal.softmax(z, t), y) for z, y in s], t, sigma, noise
            )
            for s in sites
        ]
        # all that leaves a site: public parameters and the noisy values
        assert set(summaries[0]) == {
            "format", "version", "kind", "privacy_unit", "mechanism", "noise_multiplier",
            "temperature", "edges", "noisy_counts",
        }  # fmt: skip
        thr, mass = cal.merge_conformal(summaries, 0.9)
        assert mass == pytest.approx(sum(sum(s["noisy_counts"]) for s in summaries))
        cov, size = cal.coverage_and_size(cal.softmax(test_z, t), test_y, thr)
        covs.append(cov)
        sizes.append(size)
    assert 0.88 <= np.mean(covs) <= 0.97 and min(covs) >= 0.78, covs
    # the price of the noise: sometimes the threshold reaches 1 (every class); mostly not
    assert np.mean(np.array(sizes) < 6.0) >= 0.6, sizes


def test_dp_summaries_refuse_too_few_patients_and_foreign_files() -> None:
    rng = np.random.default_rng(0)
    few = _site(rng, cal.MIN_PATIENTS - 1)
    with pytest.raises(SemioFedError, match=f"at least {cal.MIN_PATIENTS}"):
        cal.dp_temperature_summary(few, 3.0, rng)
    with pytest.raises(SemioFedError, match=f"at least {cal.MIN_PATIENTS}"):
        cal.dp_conformal_summary(
            [cal.scores(cal.softmax(z, 1.0), y) for z, y in few], 1.0, 3.0, rng
        )
    ok = cal.dp_temperature_summary(_site(rng, cal.MIN_PATIENTS), 3.0, rng)
    assert cal.summary_problem(ok, "temperature") is None
    assert "expected 'conformal'" in cal.summary_problem(ok, "conformal")
    old = {"n": 40, "levels": [0.5], "quantiles": [0.3]}  # the former raw-quantile format
    assert "not a semiofed-dp-calibration summary" in cal.summary_problem(old, "conformal")


def _reconstruct(hist: np.ndarray, n: int) -> np.ndarray:
    """The attacker's best guess of ``n`` sorted scores from a (noisy) histogram: the
    inverse of its piecewise-linear CDF at the mid-ranks."""
    h = np.clip(hist, 0.0, None)
    cdf = np.concatenate([[0.0], np.cumsum(h)]) / max(h.sum(), 1e-12)
    return np.interp((np.arange(n) + 0.5) / n, cdf, np.asarray(cal.SCORE_EDGES))


def test_conformal_summary_of_40_known_scores_does_not_reveal_them() -> None:
    """40 patients of one window each: the former quantile summary gave back all 40 scores.
    From the DP summary the attacker's reconstruction error stays large, while the same attack
    on the noise-free histogram is accurate (so the attack is competent)."""
    rng = np.random.default_rng(5)
    truth = np.sort(rng.beta(0.5, 3.0, 40))  # skewed towards 0, as LAC scores are
    per_patient = [truth[i : i + 1] for i in range(40)]
    exact = np.sum([cal.patient_score_histogram(s) for s in per_patient], axis=0)
    assert np.abs(_reconstruct(exact, 40) - truth).mean() < 0.015
    errors = [
        np.abs(_reconstruct(np.array(s["noisy_counts"]), 40) - truth).mean()
        for s in (
            cal.dp_conformal_summary(per_patient, 1.0, cal.DEFAULT_NOISE_MULTIPLIER, rng)
            for _ in range(50)
        )
    ]
    assert min(errors) > 0.02 and np.median(errors) > 0.1, errors


def _membership_accuracy(release, target: np.ndarray, trials: int, rng) -> float:
    """The optimal test of an attacker who knows every other patient and the target's
    contribution ``target``: project (release − known sum) on the target's contribution."""
    correct = 0
    unit = target / np.linalg.norm(target)
    for member in [True] * trials + [False] * trials:
        stat = float(release(member) @ unit)
        correct += (stat > np.linalg.norm(target) / 2) == member
    return correct / (2 * trials)


def _dp_accuracy_bound(sigma: float, trials: int) -> float:
    """(ε, δ)-DP bounds a balanced test's accuracy by (e^ε + δ)/(1 + e^ε); plus a one-sided
    Hoeffding margin at confidence 1 − 10⁻⁶ for ``2·trials`` trials."""
    from semiofed.privacy.accounting import epsilon

    eps = epsilon([(sigma, 1.0, 1)], DELTA, "rdp")
    return (math.exp(eps) + DELTA) / (1 + math.exp(eps)) + math.sqrt(math.log(1e6) / (4 * trials))


def test_membership_of_a_known_patient_is_within_the_dp_bound() -> None:
    """The target patient has 50 windows (a summary without per-patient normalisation would
    expose them); an attacker who knows everyone else does no better than ε allows."""
    rng = np.random.default_rng(11)
    sigma = cal.DEFAULT_NOISE_MULTIPLIER
    others = _site(rng, cal.MIN_PATIENTS)
    tz, ty = _logits(rng, 50)
    known_t = np.sum([cal.patient_nll_curve(z, y) for z, y in others], axis=0)

    def temperature_release(member: bool) -> np.ndarray:
        pats = [*others, (tz, ty)] if member else others
        return np.array(cal.dp_temperature_summary(pats, sigma, rng)["noisy_sums"]) - known_t

    t_target = cal.patient_nll_curve(tz, ty)
    acc_t = _membership_accuracy(temperature_release, t_target, 150, rng)

    other_scores = [cal.scores(cal.softmax(z, 2.0), y) for z, y in others]
    target_scores = np.full(50, 0.97)  # every window in the top bin
    known_h = np.sum([cal.patient_score_histogram(s) for s in other_scores], axis=0)

    def conformal_release(member: bool) -> np.ndarray:
        pats = [*other_scores, target_scores] if member else other_scores
        return np.array(cal.dp_conformal_summary(pats, 2.0, sigma, rng)["noisy_counts"]) - known_h

    h_target = cal.patient_score_histogram(target_scores)
    acc_h = _membership_accuracy(conformal_release, h_target, 800, rng)
    # the attack works as well as the Gaussian allows (Φ(1/2σ) ≈ 0.57) …
    assert acc_t > 0.5 and acc_h > 0.53, (acc_t, acc_h)
    # … and no better than the DP bound
    assert acc_t <= _dp_accuracy_bound(sigma, 150), acc_t
    assert acc_h <= _dp_accuracy_bound(sigma, 800), acc_h


def test_open_set_scorer_flags_about_five_percent_and_separates_a_new_class() -> None:
    rng = np.random.default_rng(2)
    centres = rng.normal(0, 4, (4, 16))

    def sample(c: int, n: int) -> np.ndarray:
        return centres[c] + rng.normal(0, 1, (n, 16))

    fit_emb = np.concatenate([sample(c, 200) for c in range(3)])
    fit_y = np.repeat(np.arange(3), 200)
    scorer = OpenSetScorer.fit(fit_emb, fit_y)
    # held-out known events: 40 events of 10 windows each
    groups = np.repeat(np.arange(120), 10)
    held = np.concatenate([sample(g % 3, 10) for g in range(120)])
    logits = rng.normal(0, 1, (len(held), 6))
    logits[np.arange(len(held)), groups % 3] += 4
    scores = scorer.calibrate(held, logits, groups.tolist())
    assert np.mean(scores > scorer.threshold) <= 0.06
    new = sample(3, 10)
    new_logits = rng.normal(0, 1, (10, 6))
    assert scorer.window_scores(new, new_logits).mean() > scorer.threshold
    restored = OpenSetScorer.from_dict(scorer.to_dict())
    assert np.allclose(
        restored.window_scores(new, new_logits), scorer.window_scores(new, new_logits)
    )


def _imbalanced(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Background dominates (80 %) and is easy; the seizure classes are rare and hard."""
    y = np.where(rng.random(n) < 0.8, 0, rng.integers(1, 6, n))
    z = rng.normal(0, 1, (n, 6))
    z[np.arange(n), y] += np.where(y == 0, 5.0, 1.0)
    return z, y


def test_mondrian_conformal_covers_every_class_where_the_global_threshold_does_not() -> None:
    rng = np.random.default_rng(7)
    z_cal, y_cal = _imbalanced(rng, 6000)
    z_test, y_test = _imbalanced(rng, 6000)
    p_cal, p_test = cal.softmax(z_cal), cal.softmax(z_test)
    glob = cal.coverage_per_class(
        p_test, y_test, cal.conformal_threshold(cal.scores(p_cal, y_cal), 0.9)
    )
    per = cal.coverage_per_class(p_test, y_test, cal.mondrian_thresholds(p_cal, y_cal, 0.9))
    assert min(c for c, _, _ in glob.values()) < 0.85  # a seizure class is under-covered
    assert all(c >= 0.87 for c, _, _ in per.values())  # nominal 0.9, sampling error ~0.01
    assert 1.0 <= per[0][1] < per[1][1]  # background sets stay small, hard classes' grow


def test_dp_mondrian_summary_is_bounded_and_merges_to_per_class_thresholds() -> None:
    rng = np.random.default_rng(8)
    worst = cal.patient_class_histograms(rng.random(10_000), rng.integers(0, 6, 10_000), 6)
    assert np.linalg.norm(worst) <= 1.0 + 1e-9
    one = cal.patient_class_histograms(np.full(50, 0.99), np.full(50, 3), 6)
    assert np.linalg.norm(one) == pytest.approx(1.0)
    sites = []
    for _ in range(3):
        pats = [_imbalanced(rng, int(rng.integers(100, 300))) for _ in range(40)]
        sites.append([(cal.scores(cal.softmax(z), y), y) for z, y in pats])
    exact, mass = cal.merge_mondrian([cal.dp_mondrian_summary(s, 1.0, 6, 1e-9, rng) for s in sites])
    weight = [1 / math.sqrt(len(np.unique(y))) for s in sites for _, y in s]  # patient weights
    assert mass[0] == pytest.approx(sum(weight), abs=1e-6)
    z_test, y_test = _imbalanced(rng, 6000)
    per = cal.coverage_per_class(cal.softmax(z_test), y_test, exact)
    assert all(c >= 0.87 for c, _, _ in per.values())
    doc = cal.dp_mondrian_summary(sites[0], 1.0, 6, 3.0, rng)
    assert cal.summary_problem(doc, cal.MONDRIAN) is None
    assert "classes" in cal.summary_problem({**doc, "classes": 0}, cal.MONDRIAN)
