"""Evolutionary merging: CMA-ES over merge coefficients, fitness = the proxy set, resumable.

Search space: one weight per model in [0, 1]; with `search_density`, also one density per model
in [0.1, 1] for the methods that have one (TIES, DARE, ...); with `layer_groups` = G > 1, each
model's values are G anchors over depth, interpolated across layers as mergekit's gradients are.
Fitness: `ProxySet.score` of the merged model (kept in memory; the merge engine caches the inputs
and, for TIES/DARE, the sparsified task vectors, so a trial is one pass of arithmetic plus an
evaluation).

The study lives in an Optuna RDB storage (a SQLite file by default; any SQLAlchemy URL lets many
workers share one search), named after everything that defines it. So a killed search resumes
where it stopped: completed trials count, trials the killed process left running are failed by
Optuna's heartbeat once stale, and the search stops when `n_trials` trials are complete, whatever
the number of runs or workers. A candidate evaluated before (the same parameters) reuses its score.

    python -m glue_bench.select.evolutionary --zoo mini8 --method linear --trials 20
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from glue_bench.evaluate import EvalConfig
from glue_bench.merge import MergeError, get_method
from glue_bench.merge.engine import Merger, TensorSource
from glue_bench.select.proxy import ProxySet


@dataclass
class SearchConfig:
    n_trials: int = 200            # completed trials the search ends with (the study's 200)
    proxy_size: int = 20           # documents per task in the proxy set (the rest are final)
    seed: int = 0                  # CMA-ES sampler and proxy-set draw
    sigma0: float | None = None    # initial step; None: optuna's default, a sixth of the range
    popsize: int | None = None     # None: CMA-ES's default, 4 + 3 ln(dimensions)
    layer_groups: int = 1          # anchors over depth per model and parameter
    search_density: bool = False   # also search each model's density (methods that have one)
    storage: str = "sqlite:///results/search/evolutionary.sqlite"
    x0: dict = field(default_factory=dict)  # warm start {optuna parameter name: value}


@dataclass
class SearchResult:
    best_params: dict              # the merge method's parameters of the best trial
    best_value: float
    completed: int
    trials_per_minute: float       # of this run's completed trials (0 when it ran none)
    merge_share: float             # merging / (merging + evaluating), over every completed trial
    study_name: str


def _space(method_name: str, n_models: int, cfg: SearchConfig) -> dict[str, tuple[float, float]]:
    params = {p.name for p in get_method(method_name).params}
    if "weights" not in params:
        raise ValueError(f"{method_name}: has no weights to search")
    searched = ["weights"] + (["density"] if cfg.search_density and "density" in params else [])
    bounds = {"weights": (0.0, 1.0), "density": (0.1, 1.0)}
    return {f"{p}.{i}.{g}": bounds[p] for p in searched for i in range(n_models) for g in range(cfg.layer_groups)}


def _to_params(values: dict, n_models: int, cfg: SearchConfig) -> dict:
    out: dict = {}
    for name in sorted({k.split(".")[0] for k in values}):
        per_model = [[values[f"{name}.{i}.{g}"] for g in range(cfg.layer_groups)] for i in range(n_models)]
        out[name] = [anchors[0] if cfg.layer_groups == 1 else anchors for anchors in per_model]
    return out


def study_name(members: list[str], method: str, fixed: dict, cfg: SearchConfig, proxy: ProxySet) -> str:
    defining = {k: v for k, v in asdict(cfg).items() if k not in ("n_trials", "storage")}
    payload = {"members": members, "method": method, "fixed": fixed, "search": defining, "proxy": proxy.key}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"evolutionary-{method}-{digest}"


def search(members: list[TensorSource], base: TensorSource | None, method: str, fixed: dict,
           tokenizer, tasks_dir, eval_cfg: EvalConfig, cfg: SearchConfig, proxy: ProxySet | None = None,
           progress: bool = True) -> SearchResult:
    import optuna
    from optuna.samplers import CmaEsSampler
    from optuna.storages import RDBStorage
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if proxy is None:
        proxy = ProxySet.draw(tasks_dir, list(eval_cfg.tasks), cfg.proxy_size, cfg.seed)
    names = [m.name for m in members]
    space = _space(method, len(members), cfg)
    get_method(method).validate({**fixed, **_to_params({k: lo for k, (lo, _) in space.items()},
                                                        len(members), cfg)}, len(members))
    if cfg.storage.startswith("sqlite:///"):
        Path(cfg.storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    storage = RDBStorage(cfg.storage, heartbeat_interval=10, grace_period=30)
    name = study_name(names, method, fixed, cfg, proxy)
    sampler = CmaEsSampler(x0=cfg.x0 or None, sigma0=cfg.sigma0, popsize=cfg.popsize, seed=cfg.seed)
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, direction="maximize",
                                load_if_exists=True)
    merger = Merger(members, method, base, device=eval_cfg.device, cache=True)
    model = merger.empty_model()
    done_before = _completed(study)

    def objective(trial) -> float:
        nonlocal model
        params = {**fixed, **_to_params({k: trial.suggest_float(k, lo, hi) for k, (lo, hi) in space.items()},
                                        len(members), cfg)}
        candidate = json.dumps(params, sort_keys=True)
        trial.set_user_attr("candidate", candidate)
        for earlier in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if earlier.user_attrs.get("candidate") == candidate:  # the same candidate: its score
                trial.set_user_attr("cached", True)
                return earlier.value
        start = time.perf_counter()
        model = merger.to_model(params, model)
        merged = time.perf_counter()
        score, per_task = proxy.score(model, tokenizer, tasks_dir, eval_cfg)
        trial.set_user_attr("merge_s", merged - start)
        trial.set_user_attr("eval_s", time.perf_counter() - merged)
        trial.set_user_attr("per_task", per_task)
        return score

    start = time.perf_counter()
    if done_before < cfg.n_trials:
        callbacks = [MaxTrialsCallback(cfg.n_trials, states=(TrialState.COMPLETE,))]
        # a candidate the method refuses (e.g. every weight clipped to 0) is a failed trial
        study.optimize(objective, callbacks=callbacks, catch=(MergeError,), show_progress_bar=progress)
    minutes = (time.perf_counter() - start) / 60
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    merge_s = sum(t.user_attrs.get("merge_s", 0.0) for t in completed)
    eval_s = sum(t.user_attrs.get("eval_s", 0.0) for t in completed)
    ran_now = len(completed) - done_before
    return SearchResult(
        best_params=json.loads(study.best_trial.user_attrs["candidate"]), best_value=study.best_value,
        completed=len(completed), trials_per_minute=ran_now / minutes if ran_now and minutes else 0.0,
        merge_share=merge_s / (merge_s + eval_s) if merge_s + eval_s else 0.0, study_name=name)


def _completed(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def main(argv: list[str] | None = None) -> None:
    from glue_bench.select.report import ZooSearch, print_final_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ZooSearch.add_arguments(parser, proxy_size=SearchConfig.proxy_size)
    parser.add_argument("--trials", type=int, default=SearchConfig.n_trials)
    parser.add_argument("--layer-groups", type=int, default=1)
    parser.add_argument("--search-density", action="store_true")
    parser.add_argument("--storage", default=SearchConfig.storage)
    args = parser.parse_args(argv)
    zs = ZooSearch.from_args(args)
    cfg = SearchConfig(n_trials=args.trials, proxy_size=args.proxy_size, seed=args.seed,
                       layer_groups=args.layer_groups, search_density=args.search_density, storage=args.storage)
    result = search(zs.members, zs.base, args.method, {}, zs.tokenizer, zs.tasks_dir, zs.eval_cfg, cfg, zs.proxy)
    print(json.dumps(asdict(result), indent=2))
    label = f"evolutionary({args.method}, {result.completed} trials)"
    print_final_table(zs.compare(args.method, {label: result.best_params}), f"{args.zoo}, {label}")


if __name__ == "__main__":
    main()
