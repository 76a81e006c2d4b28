"""The proxy set: the fitness every search (heuristic or evolutionary) optimises.

A small, fixed, seeded subset of each task's test split (`size` documents per task, fewer than
the split holds), as the study's tinyBenchmarks subsets are of the real test sets. Unlike the
study, the final scores of a selective merge are to be read on the test items *outside* the proxy
set (`ProxySet.final`), so a search never sees the items it is judged on.

    proxy = ProxySet.draw(tasks_dir, ["mini_arc", "mini_gsm8k"], size=50, seed=0)
    score, per_task = proxy.score(model, tokenizer, tasks_dir, eval_cfg)
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass

from glue_bench.evaluate import PRIMARY_METRIC, EvalConfig, EvalError, evaluate_lm, hf_lm


def split_sizes(tasks_dir, tasks: list[str]) -> dict[str, int]:
    """Number of documents in each task's test split, as lm-eval loads it."""
    from lm_eval.tasks import TaskManager

    loaded = TaskManager(include_path=str(tasks_dir), include_defaults=False).load(tasks)["tasks"]
    return {name: len(list(task.eval_docs)) for name, task in loaded.items()}


@dataclass(frozen=True)
class ProxySet:
    items: dict[str, tuple[int, ...]]   # task -> sorted test-split document indices
    sizes: dict[str, int]               # task -> test-split size
    seed: int

    @classmethod
    def draw(cls, tasks_dir, tasks: list[str], size: int, seed: int = 0, limit: int | None = None) -> "ProxySet":
        """`limit`: only each task's first `limit` documents (eval.limit, as lm-eval reads it) are
        drawn from and judged on, so a limited run's final items are limited too."""
        if size < 1:
            raise EvalError(f"proxy size must be >= 1, got {size}")
        sizes = {t: n if limit is None else min(n, limit) for t, n in split_sizes(tasks_dir, tasks).items()}
        for task, n in sizes.items():
            if size >= n:
                limited = "" if limit is None or n < limit else f", eval.limit={limit}"
                raise EvalError(f"proxy size {size} would leave no final test items for {task} ({n} items{limited})")
        # one generator per task, seeded by (seed, task): a task's items do not depend on the others
        items = {t: tuple(sorted(random.Random(f"{seed}:{t}").sample(range(n), min(size, n))))
                 for t, n in sizes.items()}
        return cls(items, sizes, seed)

    @property
    def final(self) -> dict[str, tuple[int, ...]]:
        """The test items outside the proxy set: where selective merges are to be judged."""
        return {t: tuple(sorted(set(range(self.sizes[t])) - set(chosen))) for t, chosen in self.items.items()}

    @property
    def key(self) -> str:
        """Identifies the item set, for caching a candidate's proxy score."""
        return hashlib.sha256(json.dumps(self.items, sort_keys=True).encode()).hexdigest()[:16]

    def score(self, model, tokenizer, tasks_dir, cfg: EvalConfig) -> tuple[float, dict[str, float]]:
        """The unweighted mean over tasks of each task's primary metric on the proxy items."""
        return primary_mean(self.evaluate(model, tokenizer, tasks_dir, cfg)[0])

    def evaluate(self, model, tokenizer, tasks_dir, cfg: EvalConfig) -> tuple[list[dict], list[dict]]:
        """The proxy items' result rows and per-item outcomes ({task, metric, doc_id, value})."""
        # evaluate_lm, not evaluate_model: a search has no use for the count of tokens processed
        rows, stats = evaluate_lm(hf_lm(model, tokenizer, cfg), tasks_dir, cfg,
                                  samples={t: list(i) for t, i in self.items.items()})
        return rows, stats["outcomes"]


def primary_mean(rows: list[dict]) -> tuple[float, dict[str, float]]:
    per_task = {r["task"]: r["value"] for r in rows if PRIMARY_METRIC.get(r["task"]) == r["metric"]}
    if not per_task:
        raise EvalError("no primary metric in the evaluation's results")
    # rounded: the float noise of a mean of fractions must not decide which candidate is better
    return round(sum(per_task.values()) / len(per_task), 10), per_task


@dataclass
class Evaluation:
    score: float                   # the proxy score (mean over tasks of the primary metric)
    per_task: dict[str, float]
    build_s: float = 0.0           # building the candidate (0 when it came from the cache)
    eval_s: float = 0.0
    cached: bool = False


class ProxyFitness:
    """The proxy score of a candidate, each distinct candidate evaluated once.

    `build(params)` makes the candidate model from a JSON-able description (merge parameters, a
    single model's name, a layer path...); `identity` names what `build` builds from (members,
    method) so that a persistent `cache` (any mapping: a dict, or the results store's
    `ProxyCache`) never confuses two searches. Counts what it spent in `builds`, `build_s`, `eval_s`.
    """

    def __init__(self, build, identity: dict, proxy: ProxySet, tokenizer, tasks_dir, eval_cfg: EvalConfig, *,
                 cache=None):
        self.build, self.proxy, self.tokenizer, self.tasks_dir, self.eval_cfg = (
            build, proxy, tokenizer, tasks_dir, eval_cfg)
        # what changes a score: the items, and the eval settings other than batch size and limit
        settings = {k: v for k, v in vars(eval_cfg).items() if k not in ("batch_size", "limit", "tasks")}
        self.identity = {**identity, "proxy": proxy.key, "tasks": sorted(proxy.items), "eval": settings}
        self.cache = {} if cache is None else cache
        self.builds, self.build_s, self.eval_s = 0, 0.0, 0.0

    def key(self, candidate: dict) -> str:
        payload = {"candidate": candidate, **self.identity}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def evaluate(self, candidate: dict) -> Evaluation:
        key = self.key(candidate)
        if key in self.cache:
            score, per_task = self.cache[key][:2]
            return Evaluation(score, per_task, cached=True)
        start = time.perf_counter()
        model = self.build(candidate)
        built = time.perf_counter()
        rows, outcomes = self.proxy.evaluate(model, self.tokenizer, self.tasks_dir, self.eval_cfg)
        score, per_task = primary_mean(rows)
        done = time.perf_counter()
        self.builds += 1
        self.build_s += built - start
        self.eval_s += done - built
        # (score, per_task, outcomes): a cache that keeps outcomes (ProxyCache) stores them too
        self.cache[key] = (score, per_task, outcomes)
        return Evaluation(score, per_task, built - start, done - built)

    def __call__(self, candidate: dict) -> float:
        return self.evaluate(candidate).score
