"""What evaluating and building cost on this machine, measured as jobs run and kept for planning
(`python -m glue_bench.reproduce --plan`).

Every evaluation times lm-eval's request calls (one per request type: loglikelihood, generation)
and gives each task its share of a call's time by the characters its requests read and wrote
(context, continuation, generated text); the rest of the evaluation (lm-eval's filters and
metrics, above all running generated programs for pass@1) goes to the code tasks by their items,
or to every task by its items when there is none. Divided by the task's items, that is a cost per
item. Each evaluation appends one JSON line to <cache>/costs.jsonl (the mini-zoo cache: one
machine's), tagged with what was evaluated (`context`: the zoo's size, the candidate's kind) and
the torch threads it ran on and the machine's load then (the 1-minute load average and the
cores); the plan takes medians, of the evaluations that had a core to themselves where there are
any (load below the cores: a busy machine's costs say what the other work cost too).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from pathlib import Path

from glue_bench.cache import cache_root

CODE_METRIC = "pass_at_1"
_context: dict = {}  # what the evaluations of this process are of (`measuring`)


def costs_path() -> Path:
    return cache_root() / "costs.jsonl"


def cost_size(cfg) -> str:
    """What a job's models are, for their costs: the mini zoo's size, or the zoo's name."""
    return cfg.mini_size if cfg.zoo.get("source") == "mini" else cfg.zoo.name


def cost_kind(cfg, kind: str) -> str:
    """A candidate kind, with the mixture level for mixtures (a model-level one runs two models)."""
    return kind if cfg.mixture.name == "none" else f"{kind}/{cfg.mixture.name}"


@contextlib.contextmanager
def measuring(**context):
    """Tag the evaluations inside with `context` (size=..., kind=...)."""
    before = dict(_context)
    _context.update(context)
    try:
        yield
    finally:
        _context.clear()
        _context.update(before)


class RequestTimer:
    """Wraps an lm-eval LM's request methods in place to time them per task (see the module doc)."""
    TYPES = ("loglikelihood", "loglikelihood_rolling", "generate_until")

    def __init__(self, lm):
        self.calls: list[tuple[float, list]] = []
        for name in self.TYPES:
            method = getattr(lm, name, None)
            if callable(method):
                setattr(lm, name, self._timed(method))
        self.lm = lm

    def _timed(self, method):
        def run(requests, *args, **kwargs):
            start = time.perf_counter()
            out = method(requests, *args, **kwargs)
            self.calls.append((time.perf_counter() - start, list(zip(requests, out))))
            return out
        return run

    def restore(self) -> None:
        for name in self.TYPES:
            if name in vars(self.lm):
                delattr(self.lm, name)

    def per_task(self, total_s: float, items: dict[str, int], code_tasks: set[str]) -> dict[str, float]:
        """Seconds per task: each call's time by the characters of its tasks' requests, the rest
        (total_s minus the calls) by items over the code tasks (or every task)."""
        seconds = dict.fromkeys(items, 0.0)
        for elapsed, pairs in self.calls:
            size: dict[str, int] = {}
            for request, response in pairs:
                task = getattr(request, "task_name", None)
                if task in seconds:
                    texts = [a for a in request.args if isinstance(a, str)] + ([response] if isinstance(response, str) else [])
                    size[task] = size.get(task, 0) + sum(len(t) for t in texts) + 1
            total = sum(size.values())
            for task, n in size.items():
                seconds[task] += elapsed * n / total
        rest = max(0.0, total_s - sum(elapsed for elapsed, _ in self.calls))
        takers = [t for t in items if t in code_tasks] or list(items)
        for task in takers:
            seconds[task] += rest * items[task] / sum(items[t] for t in takers)
        return seconds


def record(items: dict[str, int], seconds: dict[str, float], threads: int) -> None:
    """Append one evaluation's cost per item and task on `threads` torch threads (a failure to write is not the job's)."""
    _append({**_context, "threads": threads, "time": round(time.time()), "load": round(os.getloadavg()[0], 2),
             "cores": os.cpu_count(), "per_item": {t: seconds[t] / items[t] for t in items if items[t]},
             "items": items})


def record_preset(preset: str, overrides: list[str], seconds: float) -> None:
    """Append one preset sweep's measured wall time (`reproduce`), beside the evaluations' costs."""
    _append({"preset": preset, "overrides": overrides, "size": os.environ.get("GLUE_BENCH_MINI_SIZE", "mini"),
             "seconds": round(seconds, 1), "time": round(time.time())})


def _append(line: dict) -> None:
    try:
        path = costs_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as handle:  # one short write in append mode: lines of parallel jobs never tear
            handle.write(json.dumps(line) + "\n")
    except OSError:
        pass


@functools.lru_cache(maxsize=4)  # a plan asks once per evaluation (~1,600 a replicate): the file is read once
def _records(path: str, mtime_ns: int, size: int) -> tuple[dict, ...]:
    lines = []
    for text in Path(path).read_text().splitlines():
        with contextlib.suppress(ValueError):
            lines.append(json.loads(text))
    return tuple(lines)


def per_item_costs(size: str, kind: str | None = None, path: Path | None = None) -> dict[str, float]:
    """Median seconds per item of each task, over this machine's recorded evaluations at `size`
    (of `kind` when given and recorded, else of every kind), of those made on a machine not
    oversubscribed (load below its cores) where there are any."""
    import statistics

    path = path or costs_path()
    try:
        stat = path.stat()
    except OSError:
        return {}
    lines = _records(str(path), stat.st_mtime_ns, stat.st_size)
    at_size = [ln for ln in lines if ln.get("size") == size]
    chosen = ([ln for ln in at_size if ln.get("kind") == kind] if kind else []) or at_size
    quiet = [ln for ln in chosen if "load" in ln and ln["load"] < ln.get("cores", 1)]
    values: dict[str, list[float]] = {}
    for line in quiet or chosen:
        for task, cost in line.get("per_item", {}).items():  # (a preset's line has none)
            values.setdefault(task, []).append(cost)
    return {task: statistics.median(v) for task, v in values.items()}

