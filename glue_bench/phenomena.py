"""The mini zoo's phenomena, measured: what the study's zoo is made of, checked on the one built.

    python -m glue_bench -m experiment=zoo_phenomena zoo.replicate=0,1,2,3,4   # the singles, evaluated
    python -m glue_bench.phenomena                                         # the table
    python -m glue_bench.phenomena --results results/evidence.parquet --size mini

Three checks, each per replicate zoo (independent builds) and over them:
1. Every domain expert (the mini zoo's design, `zoo.mini_design()`: a fine-tune with at least half its fine-tuning data
   in one benchmark domain) beats the base on its domain's tasks: the paired difference on those
   tasks' items (mean of task means), its 95 % interval on each replicate, and pooled over the
   replicates as a random-effects model (`stats.random_effects`).
2. The far-trained model is far: ||theta - theta_base|| / ||theta_base|| over all weights, beside an
   ordinary fine-tune's and the other init's.
3. The recipe's clustering (`mixture.recipe.families`, the study's rule at its threshold) sets the
   other-init and the other-architecture models apart from the family of the base's fine-tunes.

1 reads the singles' per-item outcomes from a store or an evidence archive; 2 and 3 read the
weights those singles were read from, where this machine has them (a replicate not built here says so).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from glue_bench.evaluate.tasks import TASK_DOMAIN
from glue_bench.evidence import Evidence
from glue_bench.results import read_results
from glue_bench.zoo import ZooError, mini_design, mini_key_parts, mini_sizes, model_ref

DESIGN = mini_design()

ZOO = "mini16"  # every model of the mini zoo


def domain_tasks(model: str) -> tuple[str, ...]:
    return tuple(t for t, d in TASK_DOMAIN.items() if d in DESIGN.domain_experts[model])


def single_jobs(df: pd.DataFrame, size: str, version: str | None = None) -> dict[tuple[str, int], str]:
    """(model name, replicate) -> the job key of its whole-test-split evaluation at `size` (and zoo
    `version`, e.g. "v4", when given: a store may hold builds of several zoo versions). Of two
    builds of one model (a recipe changed within a version), today's recipe's."""
    singles = df[(df["method"] == "none") & df["items"].isna()].drop_duplicates("job_key")
    out = {}
    for row in singles.itertuples(index=False):
        key = json.loads(row.config).get("key", "") if isinstance(row.config, str) else ""
        parts = mini_key_parts(key)
        if parts and parts[1].split("-r")[0] == size and version in (None, parts[0]):
            slot = (row.candidate, int(row.replicate or 0))
            if slot not in out or key == _todays_key(*slot, size):
                out[slot] = row.job_key
    return out


def _todays_key(name: str, replicate: int, size: str) -> str | None:
    try:
        return model_ref(name, "mini", size, replicate).key
    except ZooError:
        return None


@dataclass
class ExpertRow:
    model: str
    tasks: tuple[str, ...]
    deltas: tuple[float, ...]           # per replicate: expert - base on the domain's tasks
    lows: tuple[float, ...]             # and the low end of its 95 % paired interval
    pooled: tuple[float, float, float] | None  # across replicates: delta, low, high (None for one)

    @property
    def above_on_every_replicate(self) -> bool:
        return bool(self.lows) and all(low > 0 for low in self.lows)


def expert_rows(ev: Evidence, jobs: dict[tuple[str, int], str]) -> list[ExpertRow]:
    rows = []
    for model in DESIGN.domain_experts:
        replicates = sorted(r for (name, r) in jobs if name == model and ("base", r) in jobs)
        if not replicates:
            continue
        tasks = domain_tasks(model)
        pairs = [(jobs[(model, r)], jobs[("base", r)]) for r in replicates]
        found = ev.across_replicates(pairs, tasks=tasks)
        if found is None:
            continue
        lows = tuple(ev.paired([pair], tasks=tasks).low for pair in pairs)
        pooled = (found.across_zoos.delta, found.across_zoos.low, found.across_zoos.high) if found.across_zoos else None
        rows.append(ExpertRow(model, tasks, found.deltas, lows, pooled))
    return rows


def expert_table(rows: list[ExpertRow]) -> pd.DataFrame:
    def signs(row):
        return " ".join("+" if low > 0 else ("-" if d < 0 else "0") for d, low in zip(row.deltas, row.lows))

    return pd.DataFrame([{
        "expert": r.model, "domain tasks": ", ".join(t.removeprefix("mini_") for t in r.tasks),
        "Δ vs base": f"{r.pooled[0]:+.3f} [{r.pooled[1]:+.3f}, {r.pooled[2]:+.3f}]" if r.pooled
        else f"{r.deltas[0]:+.3f} (1 zoo)",
        "replicates above": f"{sum(low > 0 for low in r.lows)}/{len(r.lows)} ({signs(r)})",
        "smallest Δ": f"{min(r.deltas):+.3f}",
        "verdict": "above on every replicate" if r.above_on_every_replicate else "NOT above on every replicate",
    } for r in rows])


def relative_distance(model_dir, base_dir) -> float:
    """||theta - theta_base|| / ||theta_base|| over every weight the two share, nan if shapes differ."""
    from safetensors.torch import load_file

    model, base = load_file(model_dir / "model.safetensors"), load_file(base_dir / "model.safetensors")
    if set(model) != set(base) or any(model[k].shape != base[k].shape for k in base):
        return math.nan
    diff = sum(float((model[k].double() - base[k].double()).pow(2).sum()) for k in base)
    norm = sum(float(base[k].double().pow(2).sum()) for k in base)
    return math.sqrt(diff / norm)


def stored_locations(df: pd.DataFrame, jobs: dict[tuple[str, int], str]) -> dict[tuple[str, int], Path]:
    """(model name, replicate) -> the folder its evaluated weights were read from, as its single's
    row stored it (the cache of the machine that ran it: the weights the evidence is about, at
    whatever zoo version, where this machine has them)."""
    configs = df.drop_duplicates("job_key").set_index("job_key")["config"]
    named = {slot: json.loads(configs[key]).get("model") for slot, key in jobs.items() if isinstance(configs.get(key), str)}
    return {slot: Path(folder) for slot, folder in named.items() if folder}  # a row without its folder: not located


def weight_checks(size: str, replicates: list[int], located: dict[tuple[str, int], Path],
                  version: str = DESIGN.version) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per replicate whose evaluated weights are on this machine (`located`): the relative
    distances, and the recipe's families."""
    from glue_bench.merge.engine import TensorSource
    from glue_bench.mixture.recipe import families
    from glue_bench.merge.cluster import THRESHOLD
    from glue_bench.zoo import zoo_config

    distances, clusters = [], []
    names = list(zoo_config(ZOO)["models"])
    ordinary = next(m for m in DESIGN.domain_experts if m not in (*DESIGN.far_trained, *DESIGN.other_init))
    not_kin = (*DESIGN.other_init, *DESIGN.other_architecture)
    for r in replicates:
        dirs = {n: located.get((n, r)) for n in ["base", *names]}
        if not all(d is not None and (d / "model.safetensors").exists() for d in dirs.values()):
            how = (f"python -m glue_bench.zoo.mini.build --size {size} --replicate {r} {ZOO}" if version == DESIGN.version
                   else f"zoo {version}'s weights, which today's code ({DESIGN.version}) no longer builds")
            clusters.append({"replicate": r, "families": f"(not built here: {how})"})
            continue
        for name in (ordinary, *DESIGN.other_init, *DESIGN.far_trained):
            distances.append({"replicate": r, "model": name, "distance": relative_distance(dirs[name], dirs["base"])})
        members = [SimpleNamespace(name=n) for n in names]
        groups = families(members, {n: TensorSource(n, dirs[n]) for n in names}, THRESHOLD, "threshold")
        family_of = {m.name: i for i, g in enumerate(groups) for m in g}
        # set apart: in no family with a model of the base's own init (a fine-tune, near or far)
        kin_families = {family_of[n] for n in names if n not in not_kin}
        apart = [n for n in not_kin if family_of[n] not in kin_families]
        clusters.append({"replicate": r, "families": " | ".join(", ".join(m.name for m in g) for g in groups),
                         "set apart": f"{len(apart)}/{len(not_kin)}"})
    return pd.DataFrame(distances), pd.DataFrame(clusters)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="results/store/results.sqlite", help="a store or an evidence archive")
    parser.add_argument("--size", default="mini", choices=mini_sizes(), help="the mini-zoo size (default: %(default)s)")
    parser.add_argument("--version", default=DESIGN.version,
                        help="the zoo version whose builds are read (default: today's, %(default)s)")
    args = parser.parse_args(argv)
    try:
        df = read_results(args.results)
    except Exception as err:  # a missing or foreign file: one line naming it
        sys.exit(f"glue_bench.phenomena: error: {args.results}: {err}")
    jobs = single_jobs(df, args.size, args.version)
    if ("base", 0) not in jobs and not any(name == "base" for name, _ in jobs):
        sys.exit(f"glue_bench.phenomena: error: {args.results} holds no evaluation of the {args.size} zoo's base at zoo {args.version}; "
                 "run: python -m glue_bench -m experiment=zoo_phenomena")
    replicates = sorted({r for name, r in jobs if name == "base"})
    print(f"== the mini zoo {args.version} ({args.size} size): its phenomena, replicates {', '.join(map(str, replicates))}")
    print("\n1. each domain expert against the base on its domain's tasks (paired, mean of task means; "
          "across replicates: random effects, 95 %; a replicate is above when its items-only 95 % interval is)")
    print(expert_table(expert_rows(Evidence.of(args.results), jobs)).to_string(index=False))
    distances, clusters = weight_checks(args.size, replicates, stored_locations(df, jobs), args.version)
    if not distances.empty:
        print("\n2. ||theta - theta_base|| / ||theta_base|| (median over replicates, [min, max])")
        summary = distances.groupby("model", sort=False)["distance"].agg(["median", "min", "max"])
        print(summary.apply(lambda s: f"{s['median']:.2f} [{s['min']:.2f}, {s['max']:.2f}]", axis=1).to_string())
    print(f"\n3. the recipe's families (study's rule, threshold 0.95); set apart: of {', '.join(DESIGN.other_init + DESIGN.other_architecture)}")
    print(clusters.to_string(index=False))


if __name__ == "__main__":
    from glue_bench.errors import entry_point

    entry_point(main)()
