"""Evolutionary merging: CMA-ES over merge coefficients, fitness = the proxy set, resumable.

Search space: one weight per model in [0, 1]; with `search_density`, also one density per model
in [0.1, 1] for the methods that have one (TIES, DARE, ...); and the shared coefficients a method
declares searchable (`Param.search`: e.g. SCE's `select_topk`, RAM+'s `r` and `alpha`), which is
all there is to search for methods without weights. With `layer_groups` = G > 1, each value is G
anchors over depth, interpolated across layers as mergekit's gradients are. A space of one
dimension (SCE alone, G = 1) is sampled at random: Optuna's CMA-ES needs two.
Fitness: the problem's `ProxyFitness`, the proxy score of the merged model (kept in memory; the
merge engine caches the inputs and, for TIES/DARE, the sparsified task vectors, so a trial is one
pass of arithmetic plus an evaluation). `search` also takes another space and candidate mapping:
dataflow.py searches layer paths with it.

The study lives in an Optuna RDB storage (a SQLite file by default; any SQLAlchemy URL, e.g.
PostgreSQL's, lets workers on many machines share one search), named after everything that
defines it. So a killed search resumes where it stopped, and N workers started on the same job
share one search: the budget is global and exact, the study ends with exactly `n_trials` complete
trials whatever the number of runs or workers. A trial is admitted only while fewer than
`n_trials` trials numbered before it are complete or running (`_admitted`), else it is pruned;
trials a killed worker left running are failed once stale (`_fail_dead_trials`), which frees their
places; a worker that finds the budget taken waits for the running trials to end, so every worker
reads the same best trial. A candidate evaluated before (the same parameters, in this study or in
the fitness's cache) reuses its score.

A warm start (`WarmStarted`, strategy heuristic_evolutionary) runs a heuristic first and starts
CMA-ES from its weights, with a smaller step: the study's "heuristic for rough coefficients, then
CMA-ES to refine".

    python -m glue_bench.select.evolutionary --zoo mini8 --method linear --trials 20
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from glue_bench.errors import JobError
from glue_bench.merge import MergeError, get_method
from glue_bench.select.heuristic import Heuristic
from glue_bench.select.problem import Choice, Problem


@dataclass
class SearchConfig:
    n_trials: int = 200            # completed trials the search ends with (the study's 200)
    seed: int = 0                  # CMA-ES sampler
    sigma0: float | None = None    # initial step; None: optuna's default, a sixth of the range
    popsize: int | None = None     # None: CMA-ES's default, 4 + 3 ln(dimensions)
    layer_groups: int = 1          # anchors over depth per model and parameter
    search_density: bool = False   # also search each model's density (methods that have one)
    storage: str = "sqlite:///results/search/evolutionary.sqlite"
    x0: dict = field(default_factory=dict)  # warm start {optuna parameter name: value}

    def __post_init__(self):
        """Each setting as the search needs it, one line naming it (strategy.search.<name>)."""
        for name, lowest in (("n_trials", 1), ("layer_groups", 1), ("popsize", 2)):
            value = getattr(self, name)
            if value is None and name == "popsize":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
                raise ValueError(f"{name}={value!r}: expected an integer >= {lowest}")
        if self.sigma0 is not None and (isinstance(self.sigma0, bool) or not isinstance(self.sigma0, (int, float))
                                        or not 0 < self.sigma0 < float("inf")):
            raise ValueError(f"sigma0={self.sigma0!r}: expected null or a positive number")


@dataclass
class SearchResult:
    best_params: dict              # the merge method's parameters of the best trial
    best_value: float
    completed: int
    trials_per_minute: float       # of this run's completed trials (0 when it ran none)
    merge_share: float             # merging / (merging + evaluating), over every completed trial
    study_name: str


_PER_MODEL_BOUNDS = {"weights": (0.0, 1.0), "density": (0.1, 1.0)}


def search_space(method_name: str, n_models: int, cfg: SearchConfig) -> dict[str, tuple[float, float]]:
    """Optuna parameters: `<name>.<model>.<anchor>` per model, `<name>.<anchor>` shared."""
    params = get_method(method_name).params
    names = {p.name for p in params}
    per_model = [p for p in ("weights", "density") if p in names and (p == "weights" or cfg.search_density)]
    shared = {p.name: p.search for p in params if p.search is not None}
    if not per_model and not shared:
        raise ValueError(f"{method_name}: has no coefficients to search")
    groups = range(cfg.layer_groups)
    return {**{f"{p}.{i}.{g}": _PER_MODEL_BOUNDS[p] for p in per_model for i in range(n_models) for g in groups},
            **{f"{p}.{g}": bounds for p, bounds in shared.items() for g in groups}}


def _to_params(values: dict, n_models: int, cfg: SearchConfig) -> dict:
    def value(anchors: list[float]):
        return anchors[0] if cfg.layer_groups == 1 else anchors

    out: dict = {}
    for name in sorted({k.split(".")[0] for k in values}):
        if f"{name}.0" in values:  # shared
            out[name] = value([values[f"{name}.{g}"] for g in range(cfg.layer_groups)])
        else:
            out[name] = [value([values[f"{name}.{i}.{g}"] for g in range(cfg.layer_groups)]) for i in range(n_models)]
    return out


def study_name(members: list[str], method: str, fixed: dict, cfg: SearchConfig, proxy_key: str,
               space: dict) -> str:
    defining = {k: v for k, v in asdict(cfg).items() if k not in ("n_trials", "storage")}
    payload = {"members": members, "method": method, "fixed": fixed, "search": defining, "proxy": proxy_key,
               "space": sorted(space.items())}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"evolutionary-{method}-{digest}"


def search(problem: Problem, cfg: SearchConfig, progress: bool = True,
           space: dict[str, tuple[float, float]] | None = None, to_candidate=None) -> SearchResult:
    """CMA-ES over `space` ({optuna parameter: (low, high)}; by default the merge coefficients of
    `problem.method`); `to_candidate(values)` turns a trial's values into a candidate description
    (by default the method's parameters)."""
    import optuna
    from optuna.samplers import CmaEsSampler
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n = len(problem.names)
    if space is None:
        space = search_space(problem.method, n, cfg)
        get_method(problem.method).validate(
            {**problem.fixed, **_to_params({k: lo for k, (lo, _) in space.items()}, n, cfg)}, n)

        def to_candidate(values: dict) -> dict:
            return {**problem.fixed, **_to_params(values, n, cfg)}
    storage = open_storage(cfg.storage)
    # model keys, not names: the same names in the micro and the mini zoo are other models
    name = study_name([r.key for r in problem.refs], problem.method, problem.fixed, cfg, problem.fitness.proxy.key, space)
    sampler = CmaEsSampler(x0=cfg.x0 or None, sigma0=cfg.sigma0, popsize=cfg.popsize, seed=cfg.seed,
                           independent_sampler=_per_trial_random(cfg.seed))
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, direction="maximize",
                                load_if_exists=True)

    def objective(trial) -> float:
        # a heartbeat before anything else (Optuna's heartbeat thread may not have beaten yet): from
        # here on, if this worker dies, the trial goes stale and is failed (`_fail_dead_trials`)
        storage.record_heartbeat(trial._trial_id)
        if not _admitted(study, trial.number, cfg.n_trials):
            raise optuna.TrialPruned(f"beyond the budget of {cfg.n_trials} trials")
        params = to_candidate({k: trial.suggest_float(k, lo, hi) for k, (lo, hi) in space.items()})
        candidate = json.dumps(params, sort_keys=True)
        trial.set_user_attr("candidate", candidate)
        # the same candidate as a completed trial (of any run or worker): its score
        for earlier in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if earlier.user_attrs.get("candidate") == candidate:
                trial.set_user_attr("cached", True)
                return earlier.value
        evaluation = problem.fitness.evaluate(params)
        trial.set_user_attr("merge_s", evaluation.build_s)
        trial.set_user_attr("eval_s", evaluation.eval_s)
        trial.set_user_attr("per_task", evaluation.per_task)
        return evaluation.score

    start = time.perf_counter()
    mine = _run_to_budget(study, objective, cfg.n_trials, progress)
    minutes = (time.perf_counter() - start) / 60
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    merge_s = sum(t.user_attrs.get("merge_s", 0.0) for t in completed)
    eval_s = sum(t.user_attrs.get("eval_s", 0.0) for t in completed)
    # of equal scores the earliest trial: every worker reads the same best one (the storage's
    # order among ties is not defined)
    best = max(completed, key=lambda t: (t.value, -t.number))
    if problem.out_dir is not None:
        write_convergence([t.value for t in sorted(completed, key=lambda t: t.number)],
                          problem.out_dir / "convergence.svg", f"{name}: best proxy score so far")
    return SearchResult(
        best_params=json.loads(best.user_attrs["candidate"]), best_value=best.value,
        completed=len(completed), trials_per_minute=mine / minutes if mine and minutes else 0.0,
        merge_share=merge_s / (merge_s + eval_s) if merge_s + eval_s else 0.0, study_name=name)


def write_convergence(values: list[float], path: Path, title: str) -> Path:
    """Each completed trial's proxy score (dots) and the best so far (line), as an SVG."""
    width, height, pad = 640, 360, 40
    path.parent.mkdir(parents=True, exist_ok=True)
    if not values:
        path.write_text(f'<svg xmlns="http://www.w3.org/2000/svg"><text y="20">{title}: no trials</text></svg>\n')
        return path
    low, high = min(values), max(values)
    span = (high - low) or 1.0

    def xy(i: int, v: float) -> str:
        x = pad + (width - 2 * pad) * (i / max(len(values) - 1, 1))
        return f"{x:.1f},{height - pad - (height - 2 * pad) * (v - low) / span:.1f}"

    best = [max(values[:i + 1]) for i in range(len(values))]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11">', f'<text x="4" y="14" font-size="12">{title}</text>',
             f'<text x="{pad}" y="{height - 8}">trial 1 .. {len(values)}; score {low:.3f} .. {high:.3f}</text>',
             f'<polyline fill="none" stroke="#1f5fbf" stroke-width="2" '
             f'points="{" ".join(xy(i, v) for i, v in enumerate(best))}"/>']
    parts += [f'<circle cx="{xy(i, v).split(",")[0]}" cy="{xy(i, v).split(",")[1]}" r="2" fill="#999"/>'
              for i, v in enumerate(values)]
    path.write_text("\n".join(parts + ["</svg>"]) + "\n")
    return path


# Optuna's heartbeat: a running trial whose worker has not beaten for _GRACE_S is failed
_HEARTBEAT_S, _GRACE_S = 10, 30
_POLL_S = 2.0  # how often a worker that waits for other workers' trials looks again


def open_storage(url: str):
    """The Optuna RDB storage at `url`, or one line naming it (password hidden) and the fault."""
    import sqlalchemy.exc
    from optuna.storages import RDBStorage
    from sqlalchemy.engine import make_url

    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        raise JobError(f"study storage {url!r}: not a database URL (e.g. sqlite:///path.sqlite, "
                       "postgresql+psycopg://user@host/db)") from None
    # SQLite: workers on one machine queue behind each other's writes instead of failing
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    if url.startswith("sqlite:///"):
        try:
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JobError(f"study storage {shown}: cannot create its folder ({exc.strerror})") from None
    for attempt in range(3):
        try:
            storage = RDBStorage(url, engine_kwargs=engine, heartbeat_interval=_HEARTBEAT_S, grace_period=_GRACE_S)
            _check_writable(storage, shown)
            return storage
        except ImportError as exc:
            extra = (" (pip install 'glue_bench[postgres]' installs psycopg, for postgresql+psycopg:// URLs)"
                     if url.startswith("postgres") else "")
            raise JobError(f"study storage {shown}: its database driver is not installed{extra}: "
                           f"{exc.__cause__ or exc}") from None
        except sqlalchemy.exc.NoSuchModuleError as exc:
            raise JobError(f"study storage {shown}: {exc}") from None
        except (sqlalchemy.exc.SQLAlchemyError, RuntimeError) as exc:
            # workers opening a new database at once race to create its tables: the loser retries
            if attempt == 2 or isinstance(exc, RuntimeError):  # RuntimeError: Optuna's schema check
                why = " ".join(str(getattr(exc, "orig", None) or exc).split())
                raise JobError(f"study storage {shown}: cannot open it: {why}") from None
            time.sleep(1 + attempt)


def _check_writable(storage, shown: str) -> None:
    """A storage that opens but cannot be written fails before the search, not at its first trial.
    The probe is an UPDATE of no row: a write to the database's engine (refused when read-only),
    a change to nothing, and DML, so every driver runs it inside the transaction rolled back."""
    import sqlalchemy.exc

    try:
        with storage.engine.connect() as conn:
            probe = conn.begin()
            try:
                conn.exec_driver_sql("UPDATE version_info SET schema_version = schema_version WHERE 1 = 0")
            finally:
                probe.rollback()
    except sqlalchemy.exc.SQLAlchemyError as exc:
        why = " ".join(str(getattr(exc, "orig", None) or exc).split())
        raise JobError(f"study storage {shown}: cannot write to it: {why}") from None


def _run_to_budget(study, objective, n_trials: int, progress: bool) -> int:
    """Runs trials until the study holds `n_trials` complete ones and none running, whichever
    workers ran them; returns how many this worker completed."""
    from optuna.trial import TrialState

    from glue_bench.console import log

    live = (TrialState.COMPLETE, TrialState.RUNNING)  # the trials that hold places in the budget
    mine = 0

    def after_trial(study, trial) -> None:
        nonlocal mine
        if trial.state == TrialState.COMPLETE:
            mine += 1
        if _count(study, *live) >= n_trials:  # the budget is taken: ask for no more trials
            study.stop()

    waiting = False
    while True:
        _fail_dead_trials(study)
        taken, running = _count(study, *live), _count(study, TrialState.RUNNING)
        if taken < n_trials:
            # a candidate the method refuses (e.g. every weight clipped to 0) is a failed trial
            study.optimize(objective, n_trials=n_trials - taken, callbacks=[after_trial], catch=(MergeError,),
                           show_progress_bar=progress)
        elif running:  # other workers' trials, or a dead one's until it is failed: one may be the best
            if not waiting:
                log(f"{study.study_name}: waiting for {running} running trial(s) of other workers (a killed "
                    f"worker's is failed once {_GRACE_S} s without a heartbeat)")
                waiting = True
            time.sleep(_POLL_S)
        else:
            return mine


def _admitted(study, number: int, n_trials: int) -> bool:
    """Whether trial `number` is within the budget: fewer than `n_trials` trials numbered before it
    are complete or running. Optuna numbers trials in the order it creates them, one at a time
    (under a lock on the study), so every trial numbered before this one is visible here: of
    trials racing for the last place the lowest number takes it, and no trial is admitted beyond
    the budget. A running trial that fails (or is pruned) frees its place for a new one."""
    from optuna.trial import TrialState

    live = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    return sum(t.number < number for t in live) < n_trials


def _fail_dead_trials(study) -> None:
    """Fails the trials killed workers left running, which hold places in the budget: those whose
    heartbeat is stale (Optuna's check), and those older than the grace period that never got as
    far as the objective's heartbeat (a worker killed right after creating its trial), which
    Optuna's check skips since they have none."""
    import optuna
    from optuna.trial import TrialState

    with warnings.catch_warnings():  # Optuna warns that these calls are experimental, or outside `optimize`
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", "Heartbeat of storage")
        optuna.storages.fail_stale_trials(study)
        too_old = datetime.now() - timedelta(seconds=_GRACE_S)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if "candidate" not in trial.user_attrs and trial.datetime_start < too_old:
                study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)


def _count(study, *states) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def _per_trial_random(seed: int | None):
    """The sampler of the trials CMA-ES cannot sample yet (until one is complete): Optuna's
    RandomSampler, reseeded with `seed` + the trial's number. Workers starting together on a study
    would otherwise all draw RandomSampler(seed)'s first point; trial 0 still gets it."""
    from optuna.samplers import RandomSampler

    class PerTrialRandom(RandomSampler):
        seeded_for: int | None = None

        def sample_independent(self, study, trial, param_name, param_distribution):
            if seed is not None and self.seeded_for != trial.number:
                self._rng.rng.seed(seed + trial.number)
                self.seeded_for = trial.number
            return super().sample_independent(study, trial, param_name, param_distribution)

    return PerTrialRandom(seed)


@dataclass
class Evolutionary(SearchConfig):
    """The strategy (conf/strategy/evolutionary.yaml)."""

    def run(self, problem: Problem) -> Choice:
        result = search(problem, self)
        return Choice(result.best_params, result.best_value, asdict(result))


@dataclass
class WarmStarted:
    """The strategy heuristic_evolutionary: the heuristic's weights are CMA-ES's starting point."""
    heuristic: Heuristic = field(default_factory=Heuristic)
    evolutionary: Evolutionary = field(default_factory=lambda: Evolutionary(sigma0=0.1))

    def run(self, problem: Problem) -> Choice:
        warm = self.heuristic.search(problem)
        groups = self.evolutionary.layer_groups
        x0 = {f"weights.{i}.{g}": warm.weights.get(name, 0.0)
              for i, name in enumerate(problem.names) for g in range(groups)}
        refined = Evolutionary(**{**asdict(self.evolutionary), "x0": x0})
        choice = refined.run(problem)
        if choice.proxy_score < warm.score:  # CMA-ES found nothing as good: keep the heuristic's merge
            choice = Choice(problem.merge_of(warm.weights), warm.score, choice.details)
        choice.details["heuristic"] = {"weights": warm.weights, "score": warm.score,
                                       "trace": [asdict(s) for s in warm.trace]}
        return choice


def main(argv: list[str] | None = None) -> None:
    from glue_bench.select.report import ZooSearch, print_final_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ZooSearch.add_arguments(parser, proxy_size=20)
    parser.add_argument("--trials", type=int, default=SearchConfig.n_trials)
    parser.add_argument("--layer-groups", type=int, default=1)
    parser.add_argument("--search-density", action="store_true")
    parser.add_argument("--storage", default=SearchConfig.storage)
    args = parser.parse_args(argv)
    zs = ZooSearch.from_args(args)
    cfg = SearchConfig(n_trials=args.trials, seed=args.seed, layer_groups=args.layer_groups,
                       search_density=args.search_density, storage=args.storage)
    result = search(zs.problem(args.method, {}), cfg)
    print(json.dumps(asdict(result), indent=2))
    label = f"evolutionary({args.method}, {result.completed} trials)"
    print_final_table(zs.compare(args.method, {label: result.best_params}), f"{args.zoo}, {label}")


if __name__ == "__main__":
    from glue_bench.errors import entry_point

    entry_point(main)()
