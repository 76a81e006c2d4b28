"""How close a CMA-ES trial comes to the forward passes it cannot avoid.

    python benchmarks/search_bench.py --trials 8                # mini8, linear, 20 proxy items per task
    python benchmarks/search_bench.py --reproduce-before HEAD~3 # also time `reproduce --quick` (micro), then and now

A trial is what the evolutionary strategy pays per candidate: the sampler, the merge, and the
candidate's proxy score (lm-eval's requests, filters, metrics, and the generated programs run in
the sandbox). Its wall time is the median gap between consecutive trials' completions in a real
Optuna study (the first trial, which also loads the tasks, is left out). The floor is the same
requests (the six tasks' proxy items) through the candidate's model alone, lm-eval's
`loglikelihood` and `generate_until` of its HFLM, measured in the same run (median of 3). The last
line is `trial X s, floor Y s, ratio Z`.

To compare with an older version, run this file with that version first on the path:
`PYTHONPATH=<worktree of the old commit> python benchmarks/search_bench.py`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def floor_s(model, tokenizer, tasks_dir, proxy, eval_cfg, repeats: int = 3) -> float:
    """The proxy items' requests, built once with lm-eval, through the model alone."""
    from lm_eval.tasks import TaskManager

    from glue_bench.evaluate import hf_lm, selected_tasks

    tasks = [t for t in selected_tasks(eval_cfg) if t in proxy.items]
    loaded = TaskManager(include_path=str(tasks_dir), include_defaults=False).load(tasks)["tasks"]
    by_type: dict[str, list] = {}
    for name, task in loaded.items():
        if task.get_config("num_fewshot") is None:  # as simple_evaluate does
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=0)
        task.build_all_requests(samples=list(proxy.items[name]))
        for instance in task.instances:
            by_type.setdefault(instance.request_type, []).extend([instance] * instance.repeats)
    lm = hf_lm(model, tokenizer, eval_cfg)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for request_type, requests in by_type.items():
            getattr(lm, request_type)(requests)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def trial_times(args, zs, problem) -> tuple[list[float], list, object]:
    """Run a real CMA-ES study of `args.trials` trials; the gaps between completions, the trials,
    and the best candidate's model."""
    import optuna

    from glue_bench.select.evolutionary import SearchConfig, search

    with tempfile.TemporaryDirectory() as tmp:
        cfg = SearchConfig(n_trials=args.trials, seed=0, storage=f"sqlite:///{tmp}/study.sqlite")
        result = search(problem, cfg, progress=False)
        study = optuna.load_study(study_name=result.study_name, storage=cfg.storage)
        trials = sorted((t for t in study.trials if t.datetime_complete), key=lambda t: t.datetime_complete)
    gaps = [(b.datetime_complete - a.datetime_complete).total_seconds() for a, b in zip(trials, trials[1:])]
    return gaps, trials, problem.builder(result.best_params)


def reproduce_s(tree: Path) -> float:
    """`GLUE_BENCH_MINI_SIZE=micro python -m glue_bench.reproduce --quick` in `tree`, fresh store."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GLUE_BENCH_MINI_SIZE": "micro", "PYTHONPATH": str(tree)}
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "glue_bench.reproduce", "--quick", "--no-figures",
                        "--results", f"{tmp}/results.sqlite", "--out", f"{tmp}/out", "--hydra-dir", f"{tmp}/hydra"],
                       cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", default="mini8")
    parser.add_argument("--size", default="mini", help="mini-zoo size (mini or micro)")
    parser.add_argument("--method", default="linear")
    parser.add_argument("--trials", type=int, default=8, help="CMA-ES trials measured (one more than gaps)")
    parser.add_argument("--proxy-size", type=int, default=20, help="proxy items per task")
    parser.add_argument("--reproduce-before", metavar="REV",
                        help="also time reproduce --quick at REV (a temporary git worktree) and in this tree")
    args = parser.parse_args()
    import torch

    from glue_bench.select.report import ZooSearch

    with tempfile.TemporaryDirectory() as tasks_dir:
        zs = ZooSearch.prepare(args.zoo, args.size, args.proxy_size, 0, True, tasks_dir)
        problem = zs.problem(args.method, {})
        print(f"{args.zoo} ({args.size}), {args.method} over {len(problem.names)} models, {args.proxy_size} proxy "
              f"items per task, tasks {', '.join(zs.proxy.items)}; torch threads {torch.get_num_threads()}")
        gaps, trials, best = trial_times(args, zs, problem)
        floor = floor_s(best, zs.tokenizer, zs.tasks_dir, zs.proxy, zs.eval_cfg)
    trial = statistics.median(gaps)
    merge = statistics.median(t.user_attrs.get("merge_s", float("nan")) for t in trials[1:])
    evaluate = statistics.median(t.user_attrs.get("eval_s", float("nan")) for t in trials[1:])
    print(f"per trial (median of {len(gaps)} gaps between completions): {trial:.2f} s "
          f"(min {min(gaps):.2f}, max {max(gaps):.2f}); of it merge {merge:.2f} s, proxy evaluation {evaluate:.2f} s")
    print(f"200-trial CMA-ES on {args.zoo}, estimated from the median trial: {200 * trial / 60:.1f} min")
    if args.reproduce_before:
        if (REPO / "results" / "search").exists():  # the default CMA-ES storage, relative to the tree
            raise SystemExit(f"{REPO}/results/search exists: its searches would resume, not run; move it aside")
        with tempfile.TemporaryDirectory() as tmp:
            old = Path(tmp) / "old"
            subprocess.run(["git", "worktree", "add", "--detach", str(old), args.reproduce_before], cwd=REPO,
                           check=True, capture_output=True)
            try:
                before = reproduce_s(old)
                after = reproduce_s(REPO)
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=REPO, capture_output=True)
                shutil.rmtree(REPO / "results" / "search", ignore_errors=True)  # this run's own searches
        print(f"reproduce --quick (micro): {args.reproduce_before} {before:.0f} s, this tree {after:.0f} s, "
              f"ratio {after / before:.2f}")
    print(f"trial {trial:.2f} s, floor {floor:.2f} s, ratio {trial / floor:.2f}")


if __name__ == "__main__":
    main()
