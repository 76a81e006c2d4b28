"""What a reproduction will cost on this machine, before it runs (`python -m glue_bench.reproduce --plan`).

Each preset's sweep is expanded into its jobs (the preset's `hydra.sweeper.params` crossed with the
command's overrides, as Hydra's basic sweeper does), each job into the evaluations it runs, and each
evaluation priced from the per-item costs this machine measured (`glue_bench.costs`: medians by
task, for the candidate's kind where one was measured). What a job evaluates:

- every model of its zoo and the base once on the whole test split (shared by every job that
  names them: counted once per plan);
- a merge, mixture, ensemble or stack: the candidate once on the whole test split (an ensemble's
  per-item cost is that of its kind, measured with every member answering);
- a selective job (a heuristic, CMA-ES or both, the recipe's within-family searches): each model
  on the proxy set (once per zoo and merge method: every strategy reuses them), then one proxy
  evaluation per step of its search (heuristic average: one per
  model after the first; coefficient and similarity: one per share of the grid; CMA-ES: n_trials),
  then the singles, the merge of all and its candidate on the final items (the singles and the
  merge of all once per zoo and item set: every selective job of that zoo shares them). The recipe's families
  are known only once it has clustered: it is priced as one coefficient search over the whole zoo,
  an upper bound.

A job or a single already in the store is not counted (it will be skipped), nor is a job two
presets share counted twice (CMA-ES on mini8 with linear is in three presets); a model not built here
adds its training time as measured here (its builds' `train_seconds`), or the plan says it has none.
Not counted: building merges and mixtures and training MLP routers (seconds each on the mini zoo).
The figures are estimates from medians: the plan states what it assumed, and a task whose cost was
never measured at that size is named rather than guessed.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"


@dataclass
class Evaluation:
    what: str                  # cost kind: single, merge, mixture/ffn, selective...
    items: dict[str, int]      # task -> items


@dataclass
class PresetPlan:
    preset: str
    jobs: int = 0
    evaluations: list[Evaluation] = field(default_factory=list)
    builds: dict[str, float | None] = field(default_factory=dict)  # zoo replicate -> build seconds
    swept: int = 0             # jobs in its sweep, stored ones included (Hydra launches each)

    def items(self) -> int:
        return sum(sum(e.items.values()) for e in self.evaluations)


def sweep(preset: str, overrides: list[str]) -> list[list[str]]:
    """The override lists of a preset's jobs, as `python -m glue_bench -m experiment=<preset> <overrides>` runs them."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    given = OverridesParser.create().parse_overrides(overrides)
    fixed = [o.input_line for o in given if not o.is_sweep_override()]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        hydra_cfg = compose("config", overrides=[f"experiment={preset}", *fixed], return_hydra_config=True)
    params = dict(hydra_cfg.hydra.sweeper.get("params") or {})
    for override in given:  # the command's overrides win over the preset's own sweep of a key (prefix kept: ++key)
        params.pop(override.key_or_group, None)
        params[override.get_key_element()] = (",".join(override.sweep_string_iterator()) if override.is_sweep_override()
                                         else override.get_value_element_as_str())
    axes = []
    for key, value in params.items():
        parsed = OverridesParser.create().parse_overrides([f"{key}={value}"])[0]
        values = list(parsed.sweep_string_iterator()) if parsed.is_sweep_override() else [parsed.get_value_element_as_str()]
        axes.append([f"{key}={v}" for v in values])
    return [list(combo) for combo in itertools.product(*axes)]


def compose_job(preset: str, job_overrides: list[str], results: Path) -> DictConfig:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[f"experiment={preset}", *job_overrides, f"results_path={results}"])


def whole_split(cfg: DictConfig) -> dict[str, int]:
    from glue_bench.evaluate.tasks import TEST_ITEMS

    limit = cfg.eval.limit  # a task of lm-eval's registry: its size is not known here, so only the limit counts
    return {t: min(n for n in (TEST_ITEMS.get(t), limit) if n is not None) if (t in TEST_ITEMS or limit) else 0
            for t in cfg.eval.tasks}


def search_steps(search: dict, n_models: int) -> int:
    """Proxy evaluations of merges one search runs (its singles' proxy scores apart)."""
    target = str(search.get("_target_", ""))
    if target.endswith("WarmStarted"):
        return search_steps(search["heuristic"], n_models) + search_steps(search["evolutionary"], n_models)
    if target.endswith("Evolutionary"):
        return int(search.get("n_trials", 200))
    grid = search.get("grid") or (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    return (n_models - 1) * (1 if search.get("kind", "average") == "average" else len(grid))


def job_evaluations(job, kind: str) -> tuple[list[tuple[tuple, Evaluation]], list[tuple[tuple, Evaluation]],
                                             list[Evaluation]]:
    """(the singles on the whole split, the other shared evaluations, the job's own evaluations)
    for one job (`glue_bench.job.Job`), the shared ones as (identity, evaluation). Shared: what
    the run stores under a key of its own, so that every job naming it reuses it (the singles on
    the whole split, which even a skipped job evaluates, and on final items, the merge of all
    candidates on final items, the members' proxy scores); the plan counts each identity once."""
    from glue_bench.costs import cost_kind

    cfg = job.cfg
    whole = whole_split(cfg)
    members = job.members or job.refs
    singles = [((ref.key, json.dumps(whole, sort_keys=True)), Evaluation("single", whole)) for ref in [job.base, *job.refs]]
    if kind not in ("selective", "recipe"):
        return singles, [], [Evaluation(cost_kind(cfg, kind), whole)]
    size = int(cfg.strategy.proxy.size)
    proxy = {t: min(size, n) for t, n in whole.items()}
    final = {t: n - proxy[t] for t, n in whole.items()}
    items = (json.dumps(whole, sort_keys=True), size, int(cfg.strategy.proxy.seed))
    search = OmegaConf.to_container(cfg.strategy.search, resolve=True)
    steps = search_steps(search, len(members))
    shared = [((ref.key, *items), Evaluation("single", final)) for ref in [job.base, *job.refs]]
    method = json.dumps(OmegaConf.to_container(cfg.method, resolve=True), sort_keys=True)
    shared.append((("all", *(m.key for m in members), method, *items), Evaluation(kind, final)))
    # the members' proxy scores are kept under the search's members and method (select.proxy's
    # ProxyFitness): every strategy searching that zoo with that method reuses them
    searched = (tuple(m.key for m in members), str(cfg.method.name), *items)
    shared += [(("proxy", ref.key, *searched), Evaluation("single", proxy)) for ref in members]
    own = [Evaluation(kind, proxy) for _ in range(steps)]
    return singles, shared, own + [Evaluation(kind, final)]


def plan(presets: list[str], overrides: list[str], results: Path, seen: set | None = None) -> list[PresetPlan]:
    """Each preset's plan. `seen`: the jobs and shared evaluations counted already (by an earlier
    call of the same reproduction), each counted once, in the first preset that runs it, as the
    run skips what the store holds."""
    from glue_bench.job import Job
    from glue_bench.kinds import kind_for
    from glue_bench.zoo import mini_build_seconds

    seen = set() if seen is None else seen
    plans = []
    for preset in presets:
        p = PresetPlan(preset)
        for job_overrides in sweep(preset, overrides):
            p.swept += 1
            cfg = compose_job(preset, job_overrides, results)
            kind = kind_for(cfg)
            job = Job.from_config(cfg, unused=kind.unused(cfg))
            singles, shared, own = job_evaluations(job, kind.name)
            p.evaluations += [e for identity, e in singles if _first(identity, seen)]
            if kind.nothing_to_build(cfg) or job.store.has_job(job.key) or job.key in seen:
                continue
            seen.add(job.key)
            p.jobs += 1
            p.evaluations += [e for identity, e in shared if _first(identity, seen)] + own
            if cfg.zoo.source == "mini":  # each model's build counted once, by the first preset that needs it
                new = [r.name for r in [job.base, *job.refs] if _first(("build", cfg.mini_size, job.replicate, r.name), seen)]
                if new:
                    cost = mini_build_seconds(sorted(new), cfg.mini_size, job.replicate)
                    where = f"{cfg.mini_size} r{job.replicate}"
                    p.builds[where] = None if cost is None or p.builds.get(where, 0.0) is None else p.builds.get(where, 0.0) + cost
        plans.append(p)
    return plans


def _first(identity: tuple, seen: set) -> bool:
    if identity in seen:
        return False
    seen.add(identity)
    return True


def seconds(plans: list[PresetPlan], size: str) -> tuple[dict[str, float], set[str]]:
    """Per preset its estimated seconds from this machine's per-item costs, and the tasks never measured."""
    from glue_bench.costs import per_item_costs

    out, unmeasured = {}, set()
    for p in plans:
        total = sum(b or 0.0 for b in p.builds.values())
        for e in p.evaluations:
            costs = per_item_costs(size, e.what)
            unmeasured |= {t for t in e.items if t not in costs}
            total += sum(n * costs.get(t, 0.0) for t, n in e.items.items())
        out[p.preset] = total
    return out, unmeasured


def lane_schedule(minutes: list[float], lanes: int) -> list[list[int]]:
    """Which lane runs each of the queue's sweeps (by index) when `lanes` run side by side, each
    taking the next when its last ends: list scheduling, as `reproduce` runs them."""
    ends, taken = [0.0] * lanes, [[] for _ in range(lanes)]
    for i, m in enumerate(minutes):
        # the first free; on a tie the one that has taken fewer (at the start both lanes take one)
        free = min(range(lanes), key=lambda lane: (ends[lane], len(taken[lane])))
        ends[free] += m
        taken[free].append(i)
    return taken


def print_plan(plans: list[PresetPlan], size: str, lanes: int = 1) -> float:
    """The plan as a table, in the queue's order (`reproduce --lanes 2` runs two at a time, each lane
    taking the next when its last ends); returns the estimated wall time in seconds: the sum for one
    lane, the last lane's end for two."""
    # each plan on its own: --quick runs a preset in two sweeps, two plans of one name
    priced = {id(p): seconds([p], size) for p in plans}
    unmeasured = set().union(*(u for _, u in priced.values()))

    def minutes(p: PresetPlan) -> float:
        return priced[id(p)][0][p.preset] / 60

    print(f"{'preset':<22}{'jobs':>6}{'evaluations':>13}{'items':>10}{'builds':>8}{'minutes':>9}")
    for p in plans:
        print(f"{p.preset:<22}{p.jobs:>6}{len(p.evaluations):>13}{p.items():>10}"
              f"{sum(1 for b in p.builds.values() if b):>8}{minutes(p):>9.1f}")
    total = sum(minutes(p) for p in plans) * 60
    print(f"{'total':<22}{sum(p.jobs for p in plans):>6}{sum(len(p.evaluations) for p in plans):>13}"
          f"{sum(p.items() for p in plans):>10}{'':>8}{total / 60:>9.1f}")
    if lanes > 1:  # the zoos' builds first, on every core (the other lane's jobs need them too: they wait)
        built = sum(b or 0.0 for p in plans for b in p.builds.values()) / 60
        work = [minutes(p) - sum(b or 0.0 for b in p.builds.values()) / 60 for p in plans]
        taken = lane_schedule(work, lanes)
        walls = [sum(work[i] for i in lane) for lane in taken]
        print((f"the zoo's build first ({built:.1f} min on every core), then " if built else "")
              + f"{lanes} lanes, each taking the next sweep when its last ends: "
              + " | ".join(f"{', '.join(plans[i].preset for i in lane)}: {w:.1f} min" for lane, w in zip(taken, walls))
              + f"; wall time {built + max(walls):.1f} min, from costs measured one job at a time (two jobs at once "
              "on shared cores and memory run slower)")
        total = (built + max(walls)) * 60
    unbuilt = sorted({r for p in plans for r, b in p.builds.items() if b is None})
    if unbuilt:
        print(f"not counted: building {', '.join(unbuilt)} (no build of this size was timed here)")
    if unmeasured:
        print(f"not counted: {', '.join(sorted(unmeasured))} (no evaluation at size {size} measured here yet: "
              "run any job of that size, e.g. `python -m glue_bench zoo=mini2 method=linear`)")
    return total
