"""Temperature scaling, split conformal and its federated (quantile-summary) version, open-set scorer."""

from __future__ import annotations

import numpy as np

from semiofed.shared.analysis import calibration as cal
from semiofed.shared.analysis.openset import OpenSetScorer


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


def test_federated_threshold_matches_pooled_and_covers() -> None:
    rng = np.random.default_rng(1)
    sites = [_logits(rng, n) for n in (300, 500, 800)]
    test_z, test_y = _logits(rng, 4000)
    t_fed = cal.merge_temperature([cal.temperature_summary(z, y) for z, y in sites])
    pooled_z = np.concatenate([z for z, _ in sites])
    pooled_y = np.concatenate([y for _, y in sites])
    assert t_fed == cal.fit_temperature(pooled_z, pooled_y)  # round 1 is exact

    site_scores = [cal.scores(cal.softmax(z, t_fed), y) for z, y in sites]
    summaries = [cal.quantile_summary(s) for s in site_scores]
    assert set(summaries[0]) == {"n", "levels", "quantiles"}  # all that leaves a site
    thr_fed = cal.merge_quantile_summaries(summaries, 0.9)
    thr_pooled = cal.conformal_threshold(np.concatenate(site_scores), 0.9)
    assert abs(thr_fed - thr_pooled) < 0.03
    cov, size = cal.coverage_and_size(cal.softmax(test_z, t_fed), test_y, thr_fed)
    assert 0.87 <= cov <= 0.95
    assert 1.0 <= size < 6.0


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
