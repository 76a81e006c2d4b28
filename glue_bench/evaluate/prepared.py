"""lm-eval's tasks prepared once per item set, evaluated many times.

`simple_evaluate` re-indexes the task YAMLs, reloads the datasets, rebuilds every request (few-shot
contexts included) and writes an environment report (torch's `collect_env`, a `pip list`
subprocess) on every call: in a search that evaluates hundreds of candidates on the same items,
that was most of the time. A `PreparedTasks` does the first three once, as `simple_evaluate`
does them (same seeds, same few-shot defaults), then hands the built requests to lm-eval's own
`evaluate()` for each model: lm-eval's filters, metrics and aggregation, no report. Scores are
identical to `simple_evaluate`'s (tests/test_evaluate.py checks every kind of LM).
"""

from __future__ import annotations

import contextlib
import random
from functools import lru_cache
from pathlib import Path


class PreparedTasks:
    def __init__(self, tasks_dir: str, tasks: tuple[str, ...], limit: int | None,
                 samples: tuple[tuple[str, tuple[int, ...]], ...] | None, include_defaults: bool):
        from lm_eval.evaluator_utils import get_sample_size
        from lm_eval.tasks import TaskManager

        self.samples = {t: list(i) for t, i in samples} if samples is not None else None
        self.limit = None if samples is not None else limit
        _seed_as_simple_evaluate()
        self.loaded = TaskManager(include_path=tasks_dir, include_defaults=include_defaults).load(list(tasks))
        self.instances = []
        for name, task in self.loaded["tasks"].items():
            if task.get_config("num_fewshot") is None:  # simple_evaluate's default
                task.set_config(key="num_fewshot", value=0)
            task.set_fewshot_seed(seed=0)
            task.build_all_requests(limit=get_sample_size(task, self.limit),
                                    samples=self.samples.get(name) if self.samples is not None else None)
            # evaluate() builds the requests on every call: these are built, keep them
            task.build_all_requests = _already_built
            self.instances += task.instances

    def evaluate(self, lm, allow_code_execution: bool) -> dict:
        """lm-eval's `evaluate()` of `lm` on the prepared requests: its results dict (with samples)."""
        from lm_eval.evaluator import evaluate

        for instance in self.instances:  # the previous model's answers
            instance.resps, instance.filtered_resps = [], {}
        _seed_as_simple_evaluate()
        with _templates_compiled_once():
            return evaluate(lm=lm, task_dict=self.loaded, limit=self.limit, samples=self.samples, bootstrap_iters=0,
                            log_samples=True, confirm_run_unsafe_code=allow_code_execution)


def _already_built(**kwargs) -> None:
    pass


@contextlib.contextmanager
def _templates_compiled_once():
    """lm-eval compiles a task's Jinja template (doc_to_target, doc_to_choice) anew for every
    document it renders: ~0.1 s of a mini8 proxy evaluation. The same template compiles to the same
    renderer, so compile each once (only inside `evaluate`; lm-eval is left as it was after)."""
    import lm_eval.utils as utils

    original = utils.apply_template
    utils.apply_template = _apply_template
    try:
        yield
    finally:
        utils.apply_template = original


@lru_cache(maxsize=None)
def _compiled(template: str):
    from lm_eval.utils import env

    return env.from_string(template)


def _apply_template(template: str, doc: dict) -> str:
    return _compiled(template).render(**doc)


def _seed_as_simple_evaluate() -> None:
    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@lru_cache(maxsize=8)
def prepared(tasks_dir: Path, tasks: tuple[str, ...], limit: int | None,
             samples: tuple[tuple[str, tuple[int, ...]], ...] | None, include_defaults: bool) -> PreparedTasks:
    """One `PreparedTasks` per (tasks, item set) in this process: a job's whole-split singles, its
    final items and its search's proxy set each prepare once."""
    return PreparedTasks(str(tasks_dir), tasks, limit, samples, include_defaults)
