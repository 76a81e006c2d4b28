"""Standard errors, paired intervals and tests, against independent computation: formulas done
by hand on small cases, scipy's exact binomial test, and a coverage simulation."""

import math

import numpy as np
import pytest

from glue_bench.stats import (
    average_se,
    holm,
    mcnemar_exact,
    min_detectable_effect,
    normalized_bootstrap,
    normalized_performance,
    paired_bootstrap,
    paired_se,
    task_se,
)


def test_exact_mcnemar_is_the_binomial_test_of_the_discordant_pairs():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    for _ in range(20):
        a, b = rng.random(60) < 0.6, rng.random(60) < 0.45
        only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
        expected = scipy_stats.binomtest(only_a, only_a + only_b, 0.5).pvalue
        assert mcnemar_exact(a, b) == pytest.approx(expected, rel=1e-12)
    assert mcnemar_exact([1, 0, 1], [1, 0, 1]) == 1.0  # no discordant pair: no evidence


def test_paired_standard_error_in_closed_form_on_a_hand_made_case():
    a = {"t1": [1, 0, 1, 0], "t2": [1, 1, 1, 0, 0, 1]}
    b = {"t1": [0, 0, 1, 1], "t2": [0, 0, 1, 0, 0, 1]}
    # differences: t1 [1, 0, 0, -1] (mean 0, var 2/3), t2 [1, 1, 0, 0, 0, 0] (mean 1/3, var 4/15)
    se_t1, se_t2 = math.sqrt(2 / 3 / 4), math.sqrt(4 / 15 / 6)
    assert paired_se(a, b) == pytest.approx(math.sqrt(se_t1 ** 2 + se_t2 ** 2) / 2)
    assert task_se([1, 0, 0, -1]) == pytest.approx(se_t1)
    assert average_se([se_t1, se_t2]) == pytest.approx(math.sqrt(se_t1 ** 2 + se_t2 ** 2) / 2)
    diff = paired_bootstrap(a, b, iters=2000)
    assert diff.delta == pytest.approx((0 + 1 / 3) / 2)
    assert diff.low <= diff.delta <= diff.high


def test_the_bootstrap_spread_matches_the_closed_form():
    rng = np.random.default_rng(2)
    a = {t: (rng.random(300) < 0.6).astype(float) for t in "xyz"}
    b = {t: np.where(rng.random(300) < 0.8, a[t], 1 - a[t]) for t in "xyz"}
    diff = paired_bootstrap(a, b, iters=20_000)
    # a percentile interval of a near-normal statistic is about delta +- 1.96 se
    assert (diff.high - diff.low) / (2 * 1.96) == pytest.approx(diff.se, rel=0.05)


def _correlated_pair(rng, p_a, p_b, rho, n):
    """n items of two candidates: Bernoulli(p_a) and Bernoulli(p_b) with correlation rho."""
    both = p_a * p_b + rho * math.sqrt(p_a * (1 - p_a) * p_b * (1 - p_b))
    cells = np.array([both, p_a - both, p_b - both, 1 - p_a - p_b + both])  # 11, 10, 01, 00
    draw = rng.choice(4, size=n, p=cells)
    return (draw <= 1).astype(float), ((draw == 0) | (draw == 2)).astype(float)


def test_the_paired_interval_covers_the_true_difference_95_percent_of_the_time():
    """Two simulated candidates on three tasks of 200 items, known accuracies and correlation:
    the 95 % interval should cover the true mean-of-task-means difference in 93-97 % of draws."""
    rng = np.random.default_rng(0)
    accuracies = {"t1": (0.62, 0.58), "t2": (0.40, 0.41), "t3": (0.75, 0.70)}
    truth = np.mean([p_a - p_b for p_a, p_b in accuracies.values()])
    covered = 0
    for draw in range(1000):
        a, b = {}, {}
        for task, (p_a, p_b) in accuracies.items():
            a[task], b[task] = _correlated_pair(rng, p_a, p_b, 0.6, 200)
        diff = paired_bootstrap(a, b, iters=1000, seed=draw)
        covered += diff.low <= truth <= diff.high
    print(f"coverage of the 95 % paired bootstrap interval: {covered / 10:.1f} % of 1000 draws")
    assert 930 <= covered <= 970


def test_a_difference_far_beyond_its_noise_is_significant_and_none_is_not():
    rng = np.random.default_rng(3)
    a = {"t": (rng.random(400) < 0.7).astype(float)}
    same = paired_bootstrap(a, {"t": a["t"].copy()})
    assert same.delta == 0 and same.p_value == 1.0 and not same.significant
    worse = {"t": np.where(rng.random(400) < 0.3, 0.0, a["t"])}
    assert paired_bootstrap(a, worse).significant


def test_minimum_detectable_effect_is_2_8_standard_errors():
    assert min_detectable_effect(0.01) == pytest.approx(0.0280158, rel=1e-5)


def test_outcomes_on_other_items_are_refused():
    with pytest.raises(ValueError, match="same items"):
        paired_se({"t": [1, 0]}, {"t": [1, 0, 1]})
    with pytest.raises(ValueError, match="same tasks"):
        paired_se({"t": [1, 0]}, {"u": [1, 0]})


def test_holm_adjustment_by_hand():
    # m = 4, sorted 0.01, 0.02, 0.03, 0.5 -> 4*0.01 = 0.04, 3*0.02 = 0.06, max(0.06, 2*0.03) = 0.06, max(0.06, 0.5)
    adjusted = holm([0.03, 0.5, 0.01, float("nan"), 0.02])
    assert adjusted[:3] == pytest.approx([0.06, 0.5, 0.04])
    assert math.isnan(adjusted[3])
    assert adjusted[4] == pytest.approx(0.06)
    assert holm([0.9, 0.8]) == [1.0, 1.0]  # 2 * 0.8 capped at 1; the larger one never adjusts below it
    assert holm([0.2, 0.01]) == pytest.approx([0.2, 0.02])


def test_normalized_performance_by_hand():
    # task x: candidate 3/4 against its best 2/4 -> 1.5; task y: 1/4 against 2/4 -> 0.5; mean 1.0.
    # task z: its best scores 0, so it has no ratio and is left out
    a = {"x": np.array([1, 1, 1, 0]), "y": np.array([1, 0, 0, 0]), "z": np.array([1, 0, 0, 0])}
    best = {"x": np.array([1, 1, 0, 0]), "y": np.array([0, 1, 1, 0]), "z": np.zeros(4)}
    assert normalized_performance(a, best) == pytest.approx((1.5 + 0.5) / 2)
    interval = normalized_bootstrap(a, best, iters=2000)
    assert interval.value == pytest.approx(1.0)
    assert interval.low < 1.0 < interval.high


def test_normalized_interval_of_the_best_itself_is_one_and_pairing_narrows_it():
    rng = np.random.default_rng(3)
    best = {"x": (rng.random(400) < 0.6).astype(float), "y": (rng.random(400) < 0.4).astype(float)}
    itself = normalized_bootstrap(best, best, iters=2000)
    assert (itself.value, itself.low, itself.high) == pytest.approx((1.0, 1.0, 1.0))
    # a candidate that agrees with the best on all but a few items: the paired resampling moves both
    # means together, so the interval is far narrower than the ratio of two independent means
    close = {t: v.copy() for t, v in best.items()}
    close["x"][:8] = 1 - close["x"][:8]
    paired = normalized_bootstrap(close, best, iters=2000)
    # the unpaired spread, by the delta method: se(a/b) ~ sqrt(se_a^2 + se_b^2) / b per task, averaged
    unpaired_se = np.sqrt(sum((2 * close[t].var() / len(close[t])) / best[t].mean() ** 2 for t in best)) / 2
    assert paired.high - paired.low < 0.5 * (2 * 1.96 * unpaired_se)
    assert paired.low <= paired.value <= paired.high


def test_a_best_with_few_successes_leaves_the_ratio_unbounded_above():
    a = {"x": np.array([1.0] * 10 + [0.0] * 390)}
    best = {"x": np.array([1.0] * 2 + [0.0] * 398)}  # a resample misses both successes 13 % of the time
    interval = normalized_bootstrap(a, best, iters=4000)
    assert interval.value == pytest.approx(5.0)
    assert math.isinf(interval.high)
