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

`a` and `b` map each task to its per-item values, in the same item order for both.
References: E. Miller, "Adding Error Bars to Evals" (arXiv 2411.00640); B. Efron and R. Tibshirani,
"An Introduction to the Bootstrap" (1993), ch. 13 and 16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

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
