"""Judging a selective merge where its search could not look: on the test items outside the proxy
set, side by side with every single model and with merging the whole zoo."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from glue_bench.evaluate import EvalConfig, evaluate_model
from glue_bench.merge.engine import Merger, TensorSource
from glue_bench.select.problem import CandidateBuilder, Problem
from glue_bench.select.proxy import ProxyFitness, ProxySet, primary_mean


def final_table(candidates: dict[str, Callable[[], object]], tokenizer, tasks_dir, eval_cfg: EvalConfig,
                proxy: ProxySet) -> pd.DataFrame:
    """One row per candidate (label -> a function building its model, called once): each task's
    primary metric on `proxy.final` and their mean, best mean first."""
    rows, final = {}, {t: list(i) for t, i in proxy.final.items()}
    for label, build in candidates.items():
        results, _ = evaluate_model(build(), tokenizer, tasks_dir, eval_cfg, samples=final)
        mean, per_task = primary_mean(results)
        rows[label] = {**per_task, "avg": mean}
    return pd.DataFrame.from_dict(rows, orient="index").sort_values("avg", ascending=False)


def print_final_table(table: pd.DataFrame, title: str) -> None:
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(f"\n== {title}: primary metric on the final items (test split minus the proxy set) ==")
        print(table.round(3).to_string())


@dataclass
class ZooSearch:
    """What a search over a zoo's members needs, prepared once (the CLIs of heuristic.py,
    evolutionary.py and dataflow.py)."""
    refs: list                      # the members' ModelRefs
    members: list[TensorSource]
    base: TensorSource
    tokenizer: object
    tasks_dir: Path
    eval_cfg: EvalConfig
    proxy: ProxySet

    @classmethod
    def prepare(cls, zoo: str, size: str, proxy_size: int, seed: int, allow_code_execution: bool,
                tasks_dir: str | Path, replicate: int = 0) -> "ZooSearch":
        from glue_bench.evaluate import render_tasks, selected_tasks
        from glue_bench.zoo import ensure_available, load_tokenizer, local_dir, resolve_zoo, task_data, zoo_config

        refs, base_ref = resolve_zoo({**zoo_config(zoo), "replicate": replicate}, size)
        ensure_available(refs + [base_ref], size)
        eval_cfg = EvalConfig(allow_code_execution=allow_code_execution)
        rendered = render_tasks(task_data(size, base_ref.replicate), tasks_dir)
        return cls(refs, [TensorSource(r.name, local_dir(r)) for r in refs],
                   TensorSource(base_ref.name, local_dir(base_ref)), load_tokenizer(refs[0]), rendered,
                   eval_cfg, ProxySet.draw(rendered, selected_tasks(eval_cfg), proxy_size, seed))

    @staticmethod
    def add_arguments(parser, proxy_size: int) -> None:
        """The command-line options `from_args` reads (shared by the search CLIs)."""
        parser.add_argument("--zoo", default="mini8")
        parser.add_argument("--size", default="mini", help="mini-zoo size (mini or micro)")
        parser.add_argument("--method", default="linear")
        parser.add_argument("--proxy-size", type=int, default=proxy_size, help="documents per task")
        parser.add_argument("--seed", type=int, default=0, help="proxy-set draw (and search) seed")
        parser.add_argument("--tasks-dir", default="results/search/tasks", help="rendered task YAMLs")
        parser.add_argument("--allow-code-execution", action="store_true",
                            help="include the code tasks (runs generated code, sandboxed)")

    @classmethod
    def from_args(cls, args) -> "ZooSearch":
        return cls.prepare(args.zoo, args.size, args.proxy_size, args.seed, args.allow_code_execution,
                           args.tasks_dir)

    def problem(self, method: str, fixed: dict, cache=None, out_dir: Path | None = None) -> Problem:
        """A search problem over the members (architecture-checked by the merge engine)."""
        merger = Merger(self.members, method, self.base, device=self.eval_cfg.device, cache=True)
        builder = CandidateBuilder(self.refs, merger, self.eval_cfg.device)
        identity = {"members": [r.key for r in self.refs], "method": method}
        fitness = ProxyFitness(builder, identity, self.proxy, self.tokenizer, self.tasks_dir, self.eval_cfg, cache=cache)
        return Problem(self.refs, method, fixed, merger, builder, fitness, out_dir)

    def compare(self, method: str, chosen: dict[str, dict], problem: Problem | None = None) -> pd.DataFrame:
        """Final-item scores of every single model, of `method` over the whole zoo (its default
        parameters) and of each chosen {label: candidate description (problem.py)}, built by the
        search's `problem` when given (it knows the strategy's own candidate kinds)."""
        builder = (problem or self.problem(method, {})).builder
        candidates = {r.name: (lambda name=r.name: builder({"model": name})) for r in self.refs}
        candidates[f"{method}(all)"] = lambda: builder({})
        candidates.update({label: (lambda c=c: builder(c)) for label, c in chosen.items()})
        return final_table(candidates, self.tokenizer, self.tasks_dir, self.eval_cfg, self.proxy)
