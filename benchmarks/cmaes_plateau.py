"""Where CMA-ES stops paying: the best-so-far candidate's proxy score and its score on the final
items, trial by trial, on several replicate zoos.

    GLUE_BENCH_MINI_SIZE=micro python benchmarks/cmaes_plateau.py --zoo mini8 --replicates 0 1 2

A search's budget buys what its choice scores where the search could not look. Its proxy
best-so-far keeps rising with trials whatever the candidates are worth (the best of more noisy
draws is higher), so it cannot say when to stop; the final items can. For each replicate zoo,
one CMA-ES study of `--trials` trials (the strategy's settings: seed 0, optuna's default step and
population), run once in a temporary storage; at each checkpoint k the best of the first k
completed trials (by proxy score, as the strategy would choose had it stopped there) is built and
scored on the final items (the test split minus the proxy set), beside the merge of all with equal
weights (the search's starting point). Printed: per checkpoint and replicate the best-so-far's
proxy and final score, and the final score's gain over the 200-trial choice's, with their median
over replicates. A budget is justified by the smallest checkpoint whose choice scores within the
items' noise (about one standard error of a final-item mean) of the full budget's on every replicate.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time


def plateau(zoo: str, size: str, method: str, replicate: int, trials: int, checkpoints: list[int],
            proxy_size: int) -> list[dict]:
    import optuna

    from glue_bench.select.evolutionary import SearchConfig, search
    from glue_bench.select.report import ZooSearch, final_table

    with tempfile.TemporaryDirectory() as tmp:
        zs = ZooSearch.prepare(zoo, size, proxy_size, 0, True, f"{tmp}/tasks", replicate=replicate)
        problem = zs.problem(method, {})
        cfg = SearchConfig(n_trials=trials, seed=0, storage=f"sqlite:///{tmp}/study.sqlite")
        start = time.perf_counter()
        result = search(problem, cfg, progress=False)
        search_s = time.perf_counter() - start
        study = optuna.load_study(study_name=result.study_name, storage=cfg.storage)
        done = sorted((t for t in study.trials if t.value is not None), key=lambda t: t.number)
        # the first of equal scores, as optuna's best_trial
        best_at = {k: max(done[:k], key=lambda t: (t.value, -t.number)) for k in checkpoints}
        candidates = {f"best of {k}": (lambda t=best_at[k]: problem.builder(_params(problem, t, cfg)))
                      for k in checkpoints}
        candidates["all, equal weights"] = lambda: problem.builder(problem.fixed)
        table = final_table(candidates, zs.tokenizer, zs.tasks_dir, zs.eval_cfg, zs.proxy)
        n_final = sum(len(i) for i in zs.proxy.final.values())
    rows = []
    for k in checkpoints:
        label = f"best of {k}"
        rows.append({"replicate": replicate, "trials": k, "proxy": best_at[k].value, "final": table.loc[label, "avg"],
                     "trial_number": best_at[k].number})
    rows.append({"replicate": replicate, "trials": 0, "proxy": math.nan, "final": table.loc["all, equal weights", "avg"],
                 "trial_number": -1})
    print(f"replicate {replicate}: {trials} trials in {search_s:.0f} s ({search_s / trials:.2f} s a trial), "
          f"{n_final} final items", flush=True)
    return rows


def _params(problem, trial, cfg):
    from glue_bench.select.evolutionary import _to_params

    return {**problem.fixed, **_to_params(trial.params, len(problem.names), cfg)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", default="mini8")
    parser.add_argument("--size", default="micro")
    parser.add_argument("--method", default="linear")
    parser.add_argument("--replicates", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--checkpoints", default="10,25,50,100,150,200")
    parser.add_argument("--proxy-size", type=int, default=20)
    args = parser.parse_args()
    checkpoints = sorted({int(c) for c in args.checkpoints.split(",") if int(c) <= args.trials} | {args.trials})
    rows = [r for rep in args.replicates
            for r in plateau(args.zoo, args.size, args.method, rep, args.trials, checkpoints, args.proxy_size)]
    full = {r["replicate"]: r["final"] for r in rows if r["trials"] == args.trials}
    print(f"\n{args.zoo} ({args.size}), {args.method}, proxy {args.proxy_size}/task; final-item mean of the best-so-far "
          f"(by proxy) after k trials; gain = final(k) - final({args.trials}); k = 0: the merge of all, equal weights")
    print(f"{'k':>5} " + " ".join(f"{'r' + str(r) + ' proxy':>10}{'final':>8}{'gain':>8}" for r in args.replicates)
          + f"{'median gain':>13}")
    for k in [0] + checkpoints:
        cells, gains = [], []
        for rep in args.replicates:
            (r,) = [x for x in rows if x["replicate"] == rep and x["trials"] == k]
            gains.append(r["final"] - full[rep])
            cells.append(f"{r['proxy']:>10.3f}{r['final']:>8.3f}{gains[-1]:>+8.3f}")
        print(f"{k:>5} " + " ".join(cells) + f"{statistics.median(gains):>+13.3f}")


if __name__ == "__main__":
    main()
