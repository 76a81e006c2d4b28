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
from dataclasses import dataclass

from glue_bench.evaluate import PRIMARY_METRIC, EvalConfig, EvalError, evaluate_model


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
    def draw(cls, tasks_dir, tasks: list[str], size: int, seed: int = 0) -> "ProxySet":
        if size < 1:
            raise EvalError(f"proxy size must be >= 1, got {size}")
        sizes = split_sizes(tasks_dir, tasks)
        for task, n in sizes.items():
            if size >= n:
                raise EvalError(f"proxy size {size} would leave no final test items for {task} ({n} items)")
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
        rows, _ = evaluate_model(model, tokenizer, tasks_dir, cfg,
                                 samples={t: list(i) for t, i in self.items.items()})
        return primary_mean(rows)


def primary_mean(rows: list[dict]) -> tuple[float, dict[str, float]]:
    per_task = {r["task"]: r["value"] for r in rows if PRIMARY_METRIC.get(r["task"]) == r["metric"]}
    if not per_task:
        raise EvalError("no primary metric in the evaluation's results")
    return sum(per_task.values()) / len(per_task), per_task
