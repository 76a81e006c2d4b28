"""Uncertainty of scores and of differences between candidates, from per-item outcomes.

A table's score is the mean over tasks of each task's mean over its items (tasks weighted
equally, as the study does). For two candidates judged on the same items, a difference is read
from the per-item differences d = a - b (paired): two merges of one zoo agree on most items, so
the paired standard error is far smaller than the unpaired sqrt(se_a^2 + se_b^2).

    task_se(values)                  closed-form standard error of one task's mean
    average_se(ses)                  of the mean of T task means: sqrt(sum se_t^2) / T
    paired_se(a, b)                  closed form, for the mean of task means of a - b
    paired_bootstrap(a, b)           percentile 95 % CI and p-value, items resampled within each task
    normalized_bootstrap(a, best)    MergeBench's normalized performance with its percentile 95 % CI
    mcnemar_exact(a, b)              the classical test for one binary task
    min_detectable_effect(se)        at 80 % power, two-sided alpha 0.05: about 2.8 se
    holm(p_values)                   p-values adjusted for many tests at once (family-wise error)
    wilson(successes, n)             95 % interval of one task's proportion, sound near 0 and 1

Replicate zoos (independent builds: other data draws, inits and seeds) are the unit of inference
for a claim about zoos in general, not about the ones trained:

    random_effects(deltas, ses)      pool per-replicate differences: DerSimonian-Laird tau^2,
                                     Hartung-Knapp-Sidik-Jonkman interval with R - 1 degrees of freedom
    replicate_mde(ses, tau, R)       the smallest true difference R replicates detect at 80 % power
    replicates_needed(effect, ...)   the R that detects `effect` at 80 % power

`a` and `b` map each task to its per-item values, in the same item order for both.
References: E. Miller, "Adding Error Bars to Evals" (arXiv 2411.00640); B. Efron and R. Tibshirani,
"An Introduction to the Bootstrap" (1993), ch. 13 and 16; R. DerSimonian and N. Laird, Control.
Clin. Trials 7 (1986); J. Hartung and G. Knapp, Stat. Med. 20 (2001); K. Sidik and J. Jonkman,
Stat. Med. 21 (2002); C. Röver, G. Knapp and T. Friede, BMC Med. Res. Methodol. 15:99 (2015) (the
modification that keeps the interval from being narrower than the DerSimonian-Laird one);
E. B. Wilson, JASA 22 (1927).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from scipy import stats as _scipy_stats

Outcomes = dict[str, np.ndarray]  # task -> per-item values


def task_se(values) -> float:
    """sample std / sqrt(n), as lm-eval computes it for a mean (nan below two items)."""
    values = np.asarray(values, dtype=float)
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan


def average_se(ses) -> float:
    """Standard error of the mean of task means, tasks independent."""
    ses = list(ses)
    return math.sqrt(sum(se * se for se in ses)) / len(ses)


def paired_se(a: Outcomes, b: Outcomes) -> float:
    """Closed-form standard error of the mean over tasks of mean(a_t - b_t)."""
    return average_se(task_se(_diffs(a, b, t)) for t in a)


@dataclass(frozen=True)
class PairedDifference:
    delta: float       # mean over tasks of mean(a_t - b_t)
    low: float         # 95 % percentile interval
    high: float
    p_value: float     # two-sided, of delta = 0
    se: float          # closed form (paired_se)

    @property
    def significant(self) -> bool:
        return self.p_value < 0.05


def paired_bootstrap(a: Outcomes, b: Outcomes, iters: int = 10_000, seed: int = 0) -> PairedDifference:
    """Resample items within each task (stratified), recompute the mean of task means of the
    differences; its 2.5 and 97.5 percentiles are the CI. The p-value is the share of resampled
    statistics at least as far from the observed one as the observed one is from 0 (the null
    distribution is the bootstrap one shifted to 0)."""
    rng = np.random.default_rng(seed)
    diffs = [_diffs(a, b, t) for t in a]
    delta = float(np.mean([d.mean() for d in diffs]))
    boot = np.zeros(iters)
    for d in diffs:
        boot += d[rng.integers(0, len(d), size=(iters, len(d)))].mean(axis=1)
    boot /= len(diffs)
    low, high = np.percentile(boot, [2.5, 97.5])
    p_value = (1 + np.count_nonzero(np.abs(boot - delta) >= abs(delta))) / (iters + 1)
    return PairedDifference(delta, float(low), float(high), float(p_value), paired_se(a, b))


@dataclass(frozen=True)
class Interval:
    value: float
    low: float         # 95 % percentile interval
    high: float


def normalized_performance(a: Outcomes, best: Outcomes) -> float:
    """MergeBench's normalized performance: the mean over tasks of mean(a_t) / mean(best_t), `best_t`
    being the outcomes of the best single model on task t (each task its own expert). Tasks where
    that best scores 0 have no ratio and are left out (nan when none is left)."""
    ratios = [np.mean(a[t]) / np.mean(best[t]) for t in _same_tasks(a, best) if np.mean(best[t]) > 0]
    return float(np.mean(ratios)) if ratios else math.nan


def normalized_bootstrap(a: Outcomes, best: Outcomes, iters: int = 10_000, seed: int = 0) -> Interval:
    """`normalized_performance` with a percentile 95 % interval: items resampled within each task,
    the same draw for the candidate and the task's best (paired: their covariance counts, as the
    ratio's denominator is as uncertain as its numerator). A resample in which the best scores 0
    gives an infinite ratio (nan when the candidate scores 0 too, left out): with few successes
    behind a task's best, the upper bound is infinite, which is what such a ratio is worth."""
    rng = np.random.default_rng(seed)
    tasks = [t for t in _same_tasks(a, best) if np.mean(best[t]) > 0]
    if not tasks:
        return Interval(math.nan, math.nan, math.nan)
    boot = np.zeros(iters)
    with np.errstate(divide="ignore", invalid="ignore"):
        for t in tasks:
            x, y = np.asarray(a[t], dtype=float), np.asarray(best[t], dtype=float)
            draw = rng.integers(0, len(x), size=(iters, len(x)))
            boot += x[draw].mean(axis=1) / y[draw].mean(axis=1)
    boot /= len(tasks)
    low, high = np.nanpercentile(boot, [2.5, 97.5], method="inverted_cdf")  # no interpolation with inf
    return Interval(normalized_performance({t: a[t] for t in tasks}, {t: best[t] for t in tasks}),
                    float(low), float(high))


def _same_tasks(a: Outcomes, b: Outcomes) -> list[str]:
    for t in a:
        _diffs(a, b, t)  # the same tasks and items, or a ValueError naming the difference
    return list(a)


def mcnemar_exact(a, b) -> float:
    """Two-sided exact McNemar p-value for paired binary outcomes: the discordant pairs are
    Binomial(n_discordant, 1/2) under the null."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    only_a, only_b = int(np.count_nonzero(a & ~b)), int(np.count_nonzero(~a & b))
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def min_detectable_effect(se: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference a two-sided test at `alpha` detects with `power`."""
    z = NormalDist()
    return (z.inv_cdf(1 - alpha / 2) + z.inv_cdf(power)) * se


def holm(p_values) -> list[float]:
    """Holm's step-down adjustment: the i-th smallest of m p-values becomes
    max over j <= i of min(1, (m - j + 1) p_(j)), in the input's order. Rejecting where the adjusted
    value is below alpha keeps the chance of any false rejection below alpha, whatever the
    dependence between the tests (S. Holm, Scand. J. Statist. 6, 1979). nan stays nan, not counted."""
    p_values = [float(p) for p in p_values]
    known = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted, running = list(p_values), 0.0
    for rank, (p, i) in enumerate(known):
        running = max(running, min(1.0, (len(known) - rank) * p))
        adjusted[i] = running
    return adjusted


def _diffs(a: Outcomes, b: Outcomes, task: str) -> np.ndarray:
    if set(a) != set(b):
        raise ValueError(f"paired outcomes need the same tasks: {sorted(a)} vs {sorted(b)}")
    x, y = np.asarray(a[task], dtype=float), np.asarray(b[task], dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"task {task}: {len(x)} items against {len(y)}; paired outcomes need the same items")
    return x - y


def wilson(successes: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson's score interval for a proportion: unlike the Wald p ± z se, it does not collapse to
    a point at 0 or 1 successes (a task with no success in 400 items is [0, 0.0095], not 0 ± 0)."""
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if successes <= 0 else max(0.0, centre - half)  # exactly 0 (1) at none (all): no rounding residue
    high = 1.0 if successes >= n else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class PooledDifference:
    """A difference pooled over R replicate zoos as a random-effects model: each replicate's own
    difference delta_r = delta + u_r + e_r, u_r ~ N(0, tau^2) between zoos, e_r ~ N(0, se_r^2) its
    items. `delta`'s interval and p-value are about the population of zoos the replicates are
    drawn from, not about the R zoos that were trained."""
    delta: float
    low: float         # 95 % Hartung-Knapp-Sidik-Jonkman interval (t with R - 1 degrees of freedom)
    high: float
    p_value: float     # two-sided, of delta = 0
    se: float          # the interval's standard error
    tau: float         # between-zoo standard deviation (DerSimonian-Laird), 0 when none is seen
    deltas: tuple[float, ...]   # each replicate's difference
    ses: tuple[float, ...]      # and its items-only standard error

    @property
    def replicates(self) -> int:
        return len(self.deltas)

    @property
    def significant(self) -> bool:
        return self.p_value < 0.05


_FLOOR_VARIANCE = 1e-12  # a replicate whose two candidates agree on every item has se 0: weight it finitely


def random_effects(deltas, ses, alpha: float = 0.05) -> PooledDifference:
    """Pool per-replicate differences (`deltas`, each with its items-only standard error `ses`).

    tau^2 by DerSimonian-Laird's moment estimator, max(0, (Q - (R - 1)) / (S1 - S2 / S1)) with
    w_r = 1 / se_r^2, Q = sum w_r (delta_r - delta_FE)^2, S1 = sum w_r, S2 = sum w_r^2; delta the
    mean weighted by w*_r = 1 / (se_r^2 + tau^2). Its variance is Hartung-Knapp's
    q = sum w*_r (delta_r - delta)^2 / ((R - 1) sum w*_r), taken no smaller than DerSimonian-Laird's
    1 / sum w*_r (Röver et al.'s modification: with few replicates that agree by chance, q alone
    gives intervals narrower than the items allow), with t quantiles on R - 1 degrees of freedom:
    simulated in tests/test_stats.py, false "significant" at or below alpha and coverage at or above
    0.93 at R = 3 and 5 where a fixed-zoo item bootstrap gives 0.12 and 0.77. Needs R >= 2."""
    d = np.asarray(deltas, dtype=float)
    v = np.maximum(np.asarray(ses, dtype=float) ** 2, _FLOOR_VARIANCE)
    if len(d) < 2 or len(v) != len(d):
        raise ValueError(f"random_effects needs at least two replicates with one se each, got {len(d)} and {len(v)}")
    w = 1 / v
    fixed = float(np.sum(w * d) / np.sum(w))
    q_stat = float(np.sum(w * (d - fixed) ** 2))
    tau2 = max(0.0, (q_stat - (len(d) - 1)) / (np.sum(w) - np.sum(w * w) / np.sum(w)))
    w_star = 1 / (v + tau2)
    delta = float(np.sum(w_star * d) / np.sum(w_star))
    hartung_knapp = float(np.sum(w_star * (d - delta) ** 2) / ((len(d) - 1) * np.sum(w_star)))
    se = math.sqrt(max(hartung_knapp, 1 / float(np.sum(w_star))))
    t = _scipy_stats.t(df=len(d) - 1)
    half = float(t.ppf(1 - alpha / 2)) * se
    p_value = float(2 * t.sf(abs(delta) / se))
    return PooledDifference(delta, delta - half, delta + half, p_value, se, math.sqrt(tau2),
                            tuple(float(x) for x in d), tuple(float(x) for x in np.asarray(ses, dtype=float)))


def replicate_mde(ses, tau: float, replicates: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference that `replicates` zoos detect with `power` by `random_effects`'
    test: (t_{1-alpha/2} + t_power) on R - 1 degrees of freedom, times the standard error of a mean of
    R replicates whose differences vary by tau^2 + se^2 (se^2 the mean of the `ses`' squares: the
    items of a replicate like the ones measured). nan below two replicates."""
    if replicates < 2:
        return math.nan
    variance = tau * tau + float(np.mean(np.asarray(ses, dtype=float) ** 2))
    t = _scipy_stats.t(df=replicates - 1)
    return float((t.ppf(1 - alpha / 2) + t.ppf(power)) * math.sqrt(variance / replicates))


def replicates_needed(effect: float, ses, tau: float, alpha: float = 0.05, power: float = 0.8,
                      most: int = 1000) -> int | None:
    """The fewest replicate zoos (>= 2) whose `replicate_mde` is at most `effect`; None beyond `most`."""
    for replicates in range(2, most + 1):
        if replicate_mde(ses, tau, replicates, alpha, power) <= effect:
            return replicates
    return None
