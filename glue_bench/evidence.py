"""Paired evidence between stored candidates, from the store's per-item outcomes.

Two candidates judged on the same items are compared item by item (glue_bench.stats): this module
only finds those items. A job's outcomes are its primary metric per task, ordered by document, so
two jobs on the same item set line up. Jobs stored before outcomes were kept have none: their
differences have no interval (None), never an invented one.

    ev = Evidence.of(results_path)
    ev.paired([(key_a, key_b)])                       # one comparison
    ev.paired([(a_r0, b_r0), (a_r1, b_r1)])           # pooled over replicate zoos
    ev.normalized(key, {task: best_key_of_task})      # normalized performance, with its interval
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

from glue_bench.evaluate import PRIMARY_METRIC
from glue_bench.results import ResultStore
from glue_bench.stats import Interval, PairedDifference, normalized_bootstrap, paired_bootstrap

BOOTSTRAP_ITERS = 10_000  # p-values resolve to 1e-4: below any Holm threshold of a table's verdicts


class Evidence:
    def __init__(self, store: ResultStore):
        self.store = store
        self._outcomes = lru_cache(maxsize=None)(self._load)

    @classmethod
    def of(cls, results_path: str | os.PathLike) -> "Evidence":
        return cls(ResultStore(results_path, create=False))

    def outcomes(self, job_key: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """task -> (document ids, primary-metric values), by document; {} when none were kept."""
        return self._outcomes(job_key)

    def _load(self, job_key: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        frame = self.store.job_outcomes(job_key)
        frame = frame[frame["task"].map(PRIMARY_METRIC.get) == frame["metric"]]
        return {task: (rows["doc_id"].to_numpy(), rows["value"].to_numpy(dtype=float))
                for task, rows in frame.groupby("task", sort=True)}

    def paired(self, pairs: list[tuple[str, str]], iters: int = BOOTSTRAP_ITERS) -> PairedDifference | None:
        """The difference a - b over the pairs' items (each pair's tasks a stratum of its own, so
        several pairs pool replicate zoos: the mean over pairs of their mean of task means); None
        when a job of the pairs has no outcomes. Raises ValueError when a pair was judged on other
        items (a table comparing what cannot be compared)."""
        a_strata, b_strata = {}, {}
        for i, (key_a, key_b) in enumerate(pairs):
            a, b = self.outcomes(key_a), self.outcomes(key_b)
            if not a or not b:
                return None
            if set(a) != set(b):
                raise ValueError(f"jobs {key_a} and {key_b} were judged on other tasks: {sorted(a)} vs {sorted(b)}")
            for task in a:
                if not np.array_equal(a[task][0], b[task][0]):
                    raise ValueError(f"jobs {key_a} and {key_b} were judged on other items of {task}")
                a_strata[f"{i}/{task}"], b_strata[f"{i}/{task}"] = a[task][1], b[task][1]
        return paired_bootstrap(a_strata, b_strata, iters=iters) if a_strata else None

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
