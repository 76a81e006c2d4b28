"""Paired evidence between stored candidates, from the store's per-item outcomes.

Two candidates judged on the same items are compared item by item (glue_bench.stats): this module
only finds those items. A job's outcomes are its primary metric per task, ordered by document, so
two jobs on the same item set line up. Jobs stored before outcomes were kept have none: their
differences have no interval (None), never an invented one.

    ev = Evidence.of(results_path)
    ev.paired([(key_a, key_b)])                       # one comparison
    ev.paired([(a_r0, b_r0), (a_r1, b_r1)])           # pooled over replicate zoos, the zoos fixed
    ev.across_replicates([(a_r0, b_r0), (a_r1, b_r1)])  # the replicate zoo as the unit of inference
    ev.normalized(key, {task: best_key_of_task})      # normalized performance, with its interval

A side of a comparison may be "the best of several" (a tuple of job keys: the best other mixture
level, the best merge): choosing it on the items it is then tested on favours it (the maximum of k
noisy scores is biased up: with k = 3, a null difference "agrees" in ~15 % of cases). So it is
cross-fitted (`best_of`): each task's items are split in two halves by position (even, odd), the
best candidate is chosen on one half (mean of task means) and scored on the other, and the other
way round. Every item's outcome then comes from a candidate chosen without it, so the difference
is unbiased, and it is still measured on every item.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from glue_bench.evaluate import PRIMARY_METRIC
from glue_bench.results import ResultStore, open_store
from glue_bench.stats import (Interval, PairedDifference, PooledDifference, normalized_bootstrap, paired_bootstrap,
                              paired_se, random_effects)

BOOTSTRAP_ITERS = 10_000  # p-values resolve to 1e-4: below any Holm threshold of a table's verdicts

Side = str | tuple[str, ...]  # one job, or the jobs a "best of several" is chosen from


@dataclass(frozen=True)
class ReplicateEvidence:
    """One comparison over R replicate zoos: the zoo the unit of inference (`across_zoos`, None for
    one replicate: one zoo says nothing about the next) beside the items-only interval that holds
    for the zoos trained (`on_these_zoos`)."""
    across_zoos: PooledDifference | None
    on_these_zoos: PairedDifference
    deltas: tuple[float, ...]  # per replicate: a - b, the mean of task means
    ses: tuple[float, ...]     # and its items-only closed-form standard error

    @property
    def replicates(self) -> int:
        return len(self.deltas)


class Evidence:
    def __init__(self, store: ResultStore):
        self.store = store
        self._outcomes = lru_cache(maxsize=None)(self._load)

    @classmethod
    def of(cls, results_path: str | os.PathLike) -> "Evidence":
        return cls(open_store(results_path))

    def outcomes(self, job_key: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """task -> (document ids, primary-metric values), by document; {} when none were kept."""
        return self._outcomes(job_key)

    def _load(self, job_key: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        frame = self.store.job_outcomes(job_key)
        frame = frame[frame["task"].map(PRIMARY_METRIC.get) == frame["metric"]]
        return {task: (rows["doc_id"].to_numpy(), rows["value"].to_numpy(dtype=float))
                for task, rows in frame.groupby("task", sort=True)}

    def paired(self, pairs: list[tuple[Side, Side]], iters: int = BOOTSTRAP_ITERS,
               tasks: tuple[str, ...] | None = None) -> PairedDifference | None:
        """The difference a - b over the pairs' items (each pair's tasks a stratum of its own, so
        several pairs pool replicate zoos as if the zoos were fixed: the mean over pairs of their
        mean of task means, its interval about these zoos only); None when a job of the pairs has
        no outcomes. Raises ValueError when a pair was judged on other items (a table comparing
        what cannot be compared). `tasks`: these of the jobs' tasks only (e.g. a domain's)."""
        strata = self._strata(pairs, tasks)
        return _pooled_bootstrap(strata, iters) if strata is not None else None

    def across_replicates(self, pairs: list[tuple[Side, Side]], iters: int = BOOTSTRAP_ITERS,
                          tasks: tuple[str, ...] | None = None) -> ReplicateEvidence | None:
        """The difference a - b with one pair per replicate zoo: each replicate's own difference and
        items-only standard error, pooled as a random-effects model (glue_bench.stats.random_effects)
        when there are two or more; beside it the items-only interval (`paired`). None when a job of
        the pairs has no outcomes; `tasks` as for `paired`."""
        strata = self._strata(pairs, tasks)
        on_these = _pooled_bootstrap(strata, iters) if strata is not None else None
        if on_these is None:
            return None
        deltas = tuple(float(np.mean([np.mean(a[t] - b[t]) for t in a])) for a, b in strata)
        ses = tuple(paired_se(a, b) for a, b in strata)
        across = random_effects(deltas, ses) if len(strata) >= 2 else None
        return ReplicateEvidence(across, on_these, deltas, ses)

    def _strata(self, pairs: list[tuple[Side, Side]], tasks: tuple[str, ...] | None = None) -> list[tuple[dict, dict]] | None:
        """Per pair: task -> values of a and of b on the same items; None when a job has no outcomes
        (or none of `tasks`, when given)."""
        strata = []
        for side_a, side_b in pairs:
            a, b = self.side(side_a), self.side(side_b)
            if tasks is not None:
                a, b = ({t: v for t, v in side.items() if t in tasks} for side in (a, b))
            if not a or not b:
                return None
            if set(a) != set(b):
                raise ValueError(f"jobs {side_a} and {side_b} were judged on other tasks: {sorted(a)} vs {sorted(b)}")
            for task in a:
                if not np.array_equal(a[task][0], b[task][0]):
                    raise ValueError(f"jobs {side_a} and {side_b} were judged on other items of {task}")
            strata.append(({t: a[t][1] for t in a}, {t: b[t][1] for t in b}))
        return strata

    def side(self, side: Side) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """A side's outcomes: one job's, or the cross-fitted best of several (`best_of`)."""
        return self.outcomes(side) if isinstance(side, str) else self.best_of(side)

    def best_of(self, keys: tuple[str, ...]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The best of several jobs, cross-fitted (see the module's doc): on each half of every task's
        items, the outcomes of the job with the highest mean of task means on the other half (the
        first of them on a tie). {} when a job has no outcomes."""
        found = [self.outcomes(k) for k in keys]
        if not found or not all(found):
            return {}
        first = found[0]
        for key, theirs in zip(keys[1:], found[1:]):
            if set(theirs) != set(first) or any(not np.array_equal(theirs[t][0], first[t][0]) for t in first):
                raise ValueError(f"jobs {keys[0]} and {key} were judged on other items: no best of them can be chosen")
        halves = {t: np.arange(len(first[t][0])) % 2 for t in first}

        def score_on(job: dict, half: int) -> float:
            means = [job[t][1][halves[t] == half].mean() for t in job if (halves[t] == half).any()]
            return float(np.mean(means)) if means else 0.0  # a half with no item chooses nothing: the first

        out = {}
        for half in (0, 1):
            chosen = max(range(len(found)), key=lambda i: (score_on(found[i], 1 - half), -i))
            for t in first:
                values = out.setdefault(t, np.zeros(len(first[t][0])))
                mask = halves[t] == half
                values[mask] = found[chosen][t][1][mask]
        return {t: (first[t][0], out[t]) for t in first}

    def normalized(self, job_key: str, best_of_task: dict[str, str], iters: int = BOOTSTRAP_ITERS) -> Interval | None:
        """The job's normalized performance over the tasks of `best_of_task` (task -> the job of the
        best single model on that task, judged on the same items), with its paired bootstrap
        interval (glue_bench.stats.normalized_bootstrap); None when a job has no outcomes."""
        mine, best = self.outcomes(job_key), {}
        for task, key in best_of_task.items():
            theirs = self.outcomes(key)
            if task not in mine or task not in theirs:
                return None
            if not np.array_equal(mine[task][0], theirs[task][0]):
                raise ValueError(f"jobs {job_key} and {key} were judged on other items of {task}")
            best[task] = theirs[task][1]
        return normalized_bootstrap({t: mine[t][1] for t in best}, best, iters=iters) if best else None


def _pooled_bootstrap(strata: list[tuple[dict, dict]], iters: int) -> PairedDifference | None:
    """The items-only paired bootstrap over every pair's tasks, each pair's tasks strata of their own."""
    a_strata = {f"{i}/{task}": a[task] for i, (a, _) in enumerate(strata) for task in a}
    b_strata = {f"{i}/{task}": b[task] for i, (_, b) in enumerate(strata) for task in b}
    return paired_bootstrap(a_strata, b_strata, iters=iters) if a_strata else None
