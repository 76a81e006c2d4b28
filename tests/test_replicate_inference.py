"""The replicate zoo as the unit of inference: random-effects pooling checked against direct
computation, and simulated where it matters (a null difference between zoos that vary).

Independent computations used here: the one-sample t-test of the per-replicate differences
(scipy.stats.ttest_1samp), which the Hartung-Knapp interval reduces to when every replicate has the
same items-only standard error and the replicates vary more than their items do; DerSimonian-Laird
written out in plain Python loops; Wilson's interval's closed forms at 0 and n successes."""

import math
import statistics

import numpy as np
import pytest
from scipy import stats as scipy_stats

from glue_bench.stats import paired_se, random_effects, replicate_mde, replicates_needed, wilson


def test_equal_item_errors_make_it_the_one_sample_t_test_of_the_replicates():
    deltas, se = [0.031, -0.004, 0.022, 0.040, 0.009], 0.004  # spread far beyond the items' se
    pooled = random_effects(deltas, [se] * 5)
    t = scipy_stats.ttest_1samp(deltas, 0.0)
    low, high = t.confidence_interval(0.95)
    assert pooled.delta == pytest.approx(statistics.mean(deltas))
    assert (pooled.low, pooled.high) == pytest.approx((low, high))
    assert pooled.p_value == pytest.approx(t.pvalue)
    assert pooled.tau == pytest.approx(math.sqrt(statistics.variance(deltas) - se * se))  # s^2 - se^2


def test_replicates_that_agree_closer_than_their_items_keep_the_items_width():
    # tau^2 is 0 and Hartung-Knapp's q is below the items' variance: the interval is the items', on t(R-1)
    deltas, se = [0.0100, 0.0102, 0.0098], 0.01
    pooled = random_effects(deltas, [se] * 3)
    half = scipy_stats.t(2).ppf(0.975) * se / math.sqrt(3)
    assert pooled.tau == 0.0
    assert (pooled.low, pooled.high) == pytest.approx((pooled.delta - half, pooled.delta + half))


def test_dersimonian_laird_with_unequal_errors_by_hand():
    deltas, ses = [0.05, 0.01, 0.03, -0.02], [0.010, 0.020, 0.015, 0.012]
    w = [1 / s ** 2 for s in ses]
    fixed = sum(wi * d for wi, d in zip(w, deltas)) / sum(w)
    q = sum(wi * (d - fixed) ** 2 for wi, d in zip(w, deltas))
    tau2 = max(0.0, (q - 3) / (sum(w) - sum(wi * wi for wi in w) / sum(w)))
    w_star = [1 / (s ** 2 + tau2) for s in ses]
    delta = sum(wi * d for wi, d in zip(w_star, deltas)) / sum(w_star)
    hk = sum(wi * (d - delta) ** 2 for wi, d in zip(w_star, deltas)) / (3 * sum(w_star))
    se = math.sqrt(max(hk, 1 / sum(w_star)))
    pooled = random_effects(deltas, ses)
    assert pooled.tau == pytest.approx(math.sqrt(tau2)) and tau2 > 0
    assert pooled.delta == pytest.approx(delta)
    assert pooled.se == pytest.approx(se)
    assert pooled.high - pooled.delta == pytest.approx(scipy_stats.t(3).ppf(0.975) * se)
    assert pooled.p_value == pytest.approx(2 * scipy_stats.t(3).sf(abs(delta) / se))
    assert pooled.deltas == tuple(deltas) and pooled.replicates == 4


def test_one_replicate_cannot_be_pooled():
    with pytest.raises(ValueError, match="at least two replicates"):
        random_effects([0.1], [0.01])


# ---- simulation: six tasks shaped like the mini splits, candidates agreeing on ~88 % of items ----

SIZES, RATES, DISAGREE = (400, 400, 200, 400, 400, 400), (0.35, 0.55, 0.30, 0.15, 0.10, 0.10), 0.12


def one_replicate(rng, shift: float):
    """Per-item outcomes of two candidates whose 6-task difference is `shift` in expectation."""
    a, b = {}, {}
    for t, (n, p) in enumerate(zip(SIZES, RATES)):
        x = rng.random(n) < p
        up, down = (DISAGREE + shift) / 2 / (1 - p), (DISAGREE - shift) / 2 / p  # flip rates 0->1, 1->0
        r = rng.random(n)
        a[t], b[t] = np.where(x, r >= down, r < up).astype(float), x.astype(float)
    return a, b


def simulate(replicates: int, tau: float, delta: float, runs: int, seed: int):
    """Share of runs called significant by random effects, its coverage of `delta`, and the share
    called significant when the replicates' items are pooled as one sample (the zoos fixed)."""
    rng = np.random.default_rng(seed)
    significant = covered = fixed_significant = 0
    for _ in range(runs):
        deltas, ses = [], []
        for _ in range(replicates):
            a, b = one_replicate(rng, delta + rng.normal(0.0, tau))
            deltas.append(float(np.mean([np.mean(a[t] - b[t]) for t in a])))
            ses.append(paired_se(a, b))
        pooled = random_effects(deltas, ses)
        significant += pooled.p_value < 0.05
        covered += pooled.low <= delta <= pooled.high
        fixed_se = math.sqrt(sum(s * s for s in ses)) / replicates  # the items-only interval in closed form
        fixed_significant += abs(np.mean(deltas) - 0.0) > 1.96 * fixed_se
    return significant / runs, covered / runs, fixed_significant / runs


@pytest.mark.parametrize("replicates", [3, 5])
def test_a_null_difference_between_varying_zoos_is_rarely_significant(replicates):
    runs = 2000
    mc_error = 2 * math.sqrt(0.05 * 0.95 / runs)
    false_rate, coverage, fixed_rate = simulate(replicates, tau=0.01, delta=0.0, runs=runs, seed=replicates)
    assert false_rate <= 0.05 + mc_error
    assert coverage >= 0.93
    assert fixed_rate > 0.08  # what pooling the items as if the zoos were fixed gives: far above 0.05


def test_power_at_the_replicate_mde_is_about_80_percent():
    # the items-only se of one simulated replicate, measured as the tables would
    a, b = one_replicate(np.random.default_rng(0), 0.0)
    se, tau = paired_se(a, b), 0.01
    effect = replicate_mde([se] * 5, tau, 5)
    power, _, _ = simulate(5, tau=tau, delta=effect, runs=400, seed=11)
    assert 0.7 <= power <= 0.9
    assert replicates_needed(effect, [se], tau) == 5
    assert replicate_mde([se], tau, 1) != replicate_mde([se], tau, 1)  # nan: one zoo has no power across zoos


def test_three_replicates_miss_a_003_effect_that_five_see():
    # the design's numbers: tau 0.01, items se ~0.006: power ~0.57 at R = 3, ~0.97 at R = 5
    assert replicate_mde([0.006], 0.01, 3) > 0.03 > replicate_mde([0.006], 0.01, 5)
    assert replicates_needed(0.03, [0.006], 0.01) in (4, 5)


def test_wilson_at_no_success_and_at_all_successes_by_its_closed_forms():
    z2 = 1.959963984540054 ** 2
    assert wilson(0, 400) == pytest.approx((0.0, z2 / (400 + z2)))
    assert wilson(400, 400) == pytest.approx((400 / (400 + z2), 1.0))
    low, high = wilson(200, 400)  # at one half it is centred, close to Wald's
    assert (low + high) / 2 == pytest.approx(0.5)
    assert high - 0.5 == pytest.approx(1.96 * math.sqrt(0.25 / 400), rel=0.01)
    assert all(math.isnan(x) for x in wilson(0, 0))
