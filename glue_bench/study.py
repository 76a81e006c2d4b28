"""The Model-GLUE study's tables, regenerated from the results store.

Each `StudyTable` is one table of the study, made by one experiment preset (`conf/experiment/`),
built from the store by one small function. Scores are the mean of the tasks' primary metrics
("avg"); selective strategies and the recipe are scored on their final items (the test split minus
their proxy set), merges and mixtures on the whole test split. Where a reference exists it stands
beside the measured value with the difference (see `glue_bench.reference`).

Uncertainty travels in columns of its own: `<column> low` / `<column> high` (a score's 95 %
interval, closed form; a difference's paired bootstrap interval) and `<column> p` (a difference's
p-value), and the jobs a value comes from in `key` columns, so that a reader (glue_bench.findings)
can pair them again. Differences are paired only where an `Evidence` (the store's per-item
outcomes) is given; otherwise, and for jobs stored without outcomes, their interval is missing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from glue_bench.evaluate import PRIMARY_METRIC
from glue_bench.evidence import Evidence
from glue_bench.mixture.settings import MixtureSettings
from glue_bench.reference import STUDY_RECIPE_GAIN, primary_rows, release_and_leaderboard
from glue_bench.stats import wilson
from glue_bench.zoo import ZooError, mini_key_parts, resolve_zoo, zoo_config

META = ("job_key", "zoo", "candidate", "method", "strategy", "mixture", "router", "items", "config")


def candidate_scores(df: pd.DataFrame, zoo: str, items: str | None = None, *, zoo_cfg: dict | None = None,
                     mini_size: str | None = None, values: str = "value", replicate: int = 0) -> pd.DataFrame:
    """One row per candidate scored on the zoo's item set (`items=None`: the whole test split):
    `kind` (base / single / built), the job's META columns (config parsed), the primary metric per
    task and their mean `avg`, indexed by a label unique within the zoo.

    Single models are found by their key (what they resolve to), not their name: two zoos may
    each hold a `base`. `zoo_cfg`: the zoo's config when it is not in conf/zoo (--config-dir);
    `mini_size`: which size of the mini zoo (default: the one the zoo's candidates were built at).
    `values="stderr"`: the standard errors instead, `avg`'s that of the mean of task means
    (missing where a row has none: rows stored before per-item outcomes were kept).
    `replicate`: which build of a mini zoo (its built rows, and its models' singles)."""
    df = df[df["items"].isna()] if items is None else df[df["items"] == items]
    primary = primary_rows(df)
    single_rows = single_models(primary)
    of_replicate = primary["replicate"].fillna(0) == replicate if "replicate" in primary else replicate == 0
    built = primary[~single_rows & (primary["zoo"] == zoo) & of_replicate]
    refs, base = resolve_zoo({**(zoo_cfg or zoo_config(zoo)), "replicate": replicate},
                             mini_size or table_mini_size(df, zoo))
    singles = primary[single_rows]
    *refs, base = as_stored([*refs, base], set().union(*singles["config"].map(_ids)))
    zoo_models = _known([*refs, base])
    singles = singles[singles["config"].map(lambda c: bool(_ids(c) & zoo_models)).astype(bool)]
    rows = pd.concat([singles, built])
    if rows.empty:
        return pd.DataFrame(columns=["kind", *META, "avg"])
    # one candidate name may come from several configs (other weights...): tell them apart by key
    label = rows["candidate"].where(~rows.duplicated(["candidate", "task"], keep=False),
                                    rows["candidate"] + " [" + rows["job_key"].str[:6] + "]")
    rows = rows.assign(label=label)
    scores = rows.pivot_table(index="label", columns="task", values=values, aggfunc="first", dropna=False)
    scores = scores[[t for t in PRIMARY_METRIC if t in scores.columns]]
    scores.columns = [c.removeprefix("mini_") for c in scores.columns]
    if values == "stderr":  # tasks independent: sqrt(sum se_t^2) / T
        scores["avg"] = (scores ** 2).sum(axis=1, skipna=False) ** 0.5 / scores.shape[1]
    else:
        scores["avg"] = scores.mean(axis=1, skipna=False)
    meta = rows.drop_duplicates("label").set_index("label")[list(META)]
    meta["config"] = meta["config"].map(lambda c: json.loads(c) if isinstance(c, str) else {})
    ids = rows.drop_duplicates("label").set_index("label")["config"].map(_ids)
    kind = pd.Series({lbl: "base" if ids[lbl] & _known([base]) else "single" if ids[lbl] & _known(refs) else "built"
                      for lbl in scores.index}, name="kind")
    return pd.concat([kind, meta, scores], axis=1)


def table_mini_size(df: pd.DataFrame, zoo: str) -> str:
    """The mini-zoo size the zoo's candidates were built at, when they agree on one; else
    $GLUE_BENCH_MINI_SIZE, else mini."""
    configs = df.loc[(df["zoo"] == zoo) & (df["method"] != "none"), "config"].dropna().unique()
    sizes = {json.loads(c).get("mini_size") for c in configs} - {None}
    return sizes.pop() if len(sizes) == 1 else os.environ.get("GLUE_BENCH_MINI_SIZE", "mini")


def as_stored(refs: list, stored: set[str]) -> list:
    """The zoo's refs as the store knows them. A mini-zoo model's key names the zoo version and its
    recipe's fingerprint, which change with the code: a store (an evidence archive) made at another
    version holds none of today's keys. Then each mini model is the one stored single of its size,
    replicate and name, where the store holds exactly one for each and all of one version (one
    build of the zoo); otherwise today's keys stay, so that a store holding today's build (or two
    builds) is read as today's."""
    if any(r.key in stored for r in refs) or not all(r.source == "mini" for r in refs):
        return refs
    parsed = {k: mini_key_parts(k) for k in stored}
    found = [{k for k, p in parsed.items() if p and p[1:] == mini_key_parts(r.key)[1:]} for r in refs]
    if any(len(keys) != 1 for keys in found) or len({parsed[next(iter(k))][0] for k in found}) != 1:
        return refs
    return [dataclasses.replace(r, key=next(iter(keys))) for r, keys in zip(refs, found)]


def _known(refs: list) -> set[str]:
    """What single-model rows may call these models: their keys, and for hub and GGUF models the
    location that rows written before keys were stored give."""
    return {r.key for r in refs} | {r.location for r in refs if r.source in ("hub", "gguf")}


def _ids(config) -> set[str]:
    """The model a row's config names, as `_known` spells it. Rows written before keys were stored
    give a location: a mini-zoo model's is <cache>/<version>/<size>/models/<name-fingerprint>."""
    parsed = json.loads(config) if isinstance(config, str) else {}
    if "key" in parsed:
        return {parsed["key"]}
    if "model" not in parsed:
        return set()
    location = Path(parsed["model"])
    if location.parent.name == "models" and location.parent.parent.parent.name.startswith("mini-v"):
        return {f"{location.parent.parent.parent.name}/{location.parent.parent.name}/{location.name}"}
    return {parsed["model"]}


def tasks_of(scores: pd.DataFrame) -> list[str]:
    return [c for c in scores.columns if c not in ("kind", *META, "avg", "avg_se")]


def scored(df: pd.DataFrame, zoo: str, items: str | None = None) -> pd.DataFrame:
    """`candidate_scores` with the standard error of each row's average beside it (`avg_se`), at
    the replicate zoo `df` holds (`at_replicate`; replicate 0 when it holds several)."""
    held = replicates(df)
    replicate = held[0] if len(held) == 1 else 0
    scores = candidate_scores(df, zoo, items, replicate=replicate)
    scores["avg_se"] = candidate_scores(df, zoo, items, values="stderr", replicate=replicate)["avg"].reindex(scores.index)
    return scores


def replicates(df: pd.DataFrame) -> list[int]:
    """The replicate zoos the store holds rows of (rows without the column: replicate 0)."""
    if "replicate" not in df.columns or df.empty:
        return [0]
    return sorted({int(r) for r in df["replicate"].fillna(0)})


def at_replicate(df: pd.DataFrame, replicate: int) -> pd.DataFrame:
    if "replicate" not in df.columns:
        return df
    return df[df["replicate"].fillna(0) == replicate]


UNCERTAINTY = (" low", " high", " p")


def is_value_column(column) -> bool:
    """Not an interval bound, a p-value or a job key: what a figure or a reader shows as a value."""
    name = str(column)
    return not name.endswith(UNCERTAINTY) and not (name == "key" or name.endswith(" key"))


def add_interval(table: pd.DataFrame, column: str, se: pd.Series) -> pd.DataFrame:
    """`column low` and `column high`: the 95 % interval of each value, 1.96 standard errors."""
    table[f"{column} low"] = table[column] - 1.96 * se
    table[f"{column} high"] = table[column] + 1.96 * se
    return table


def add_proportion_interval(table: pd.DataFrame, column: str, items: pd.Series) -> pd.DataFrame:
    """`column low` and `column high`: Wilson's 95 % interval of each proportion over its `items`
    (glue_bench.stats.wilson; nan where the count is unknown). Not the Wald p ± 1.96 se, which a
    task with no success prints as 0.000 ± 0.000."""
    bounds = [wilson(p * n, n) if not (math.isnan(p) or math.isnan(n)) else (math.nan, math.nan)
              for p, n in zip(table[column], items.reindex(table.index))]
    table[f"{column} low"] = [low for low, _ in bounds]
    table[f"{column} high"] = [high for _, high in bounds]
    return table


def add_delta_to_best_single(table: pd.DataFrame, keys, best_value: float, best_key: str | None,
                             ev: Evidence | None) -> pd.DataFrame:
    """`Δ best single` (the rows' `avg` minus the best single model's), paired per row against the
    best single model's job (`keys`: each row's job); the best single's own row has no interval."""
    table["Δ best single"] = table["avg"] - best_value
    return add_paired(table, "Δ best single", [(k, best_key) if best_key and k != best_key else None
                                               for k in keys], ev)


NORMALIZED = "normalized"
TASK_OF_COLUMN = {task.removeprefix("mini_"): task for task in PRIMARY_METRIC}


def add_normalized(table: pd.DataFrame, scores: pd.DataFrame, labels, ev: Evidence | None) -> pd.DataFrame:
    """`normalized` (MergeBench's normalized performance) for the table's rows, `labels` naming each
    row's candidate in `scores`: per task, the row's score divided by the best single model's on
    that task (each task its own expert), averaged over the tasks; tasks whose best scores 0 are
    left out. Its `low`/`high`: the paired bootstrap interval where `ev` holds the outcomes."""
    tasks = tasks_of(scores)
    singles = scores.loc[scores["kind"] == "single", tasks]
    best_of_task = {t: singles[t].idxmax() for t in tasks if singles[t].notna().any() and singles[t].max() > 0}
    if not best_of_task:
        table[NORMALIZED] = float("nan")
        return add_interval(table, NORMALIZED, pd.Series(float("nan"), index=table.index))
    best_scores = pd.Series({t: singles.loc[label, t] for t, label in best_of_task.items()})
    ratios = scores[list(best_of_task)].div(best_scores, axis=1).mean(axis=1, skipna=False)
    table[NORMALIZED] = [ratios[label] for label in labels]
    best_keys = {TASK_OF_COLUMN.get(t, t): scores.loc[label, "job_key"] for t, label in best_of_task.items()}
    found = [ev.normalized(scores.loc[label, "job_key"], best_keys) if ev is not None else None for label in labels]
    table[f"{NORMALIZED} low"] = [f.low if f is not None else float("nan") for f in found]
    table[f"{NORMALIZED} high"] = [f.high if f is not None else float("nan") for f in found]
    return table


def add_paired(table: pd.DataFrame, column: str, pairs: list[tuple[str, str] | None], ev: Evidence | None):
    """`column low`, `column high` and `column p` of a difference column, paired per row: `pairs`
    gives each row's (job a, job b), None where the row has no b (the reference itself)."""
    found = [ev.paired([pair]) if ev is not None and pair is not None else None for pair in pairs]
    for what in ("low", "high", "p"):
        attribute = "p_value" if what == "p" else what
        table[f"{column} {what}"] = [getattr(d, attribute) if d is not None else float("nan") for d in found]
    return table


def best_single(scores: pd.DataFrame) -> tuple[str | None, float]:
    singles = scores.loc[scores["kind"] == "single", "avg"].dropna()
    return (singles.idxmax(), singles.max()) if not singles.empty else (None, float("nan"))


def zoo_size(zoo: str) -> int:
    return len(zoo_config(zoo)["models"])


def zoos_in(df: pd.DataFrame) -> list[str]:
    """The store's zoos that still have a config, smallest zoo first."""
    known = []
    for zoo in set(df["zoo"].dropna()):
        try:
            known.append((zoo_size(zoo), zoo))
        except ZooError:  # a zoo config removed since its rows were written
            continue
    return [zoo for _, zoo in sorted(known)]


def final_item_sets(df: pd.DataFrame, zoo: str) -> list[str]:
    """The item sets on which selective strategies of this zoo were judged."""
    labels = df.loc[(df["zoo"] == zoo) & (df["strategy"] != "all"), "items"].dropna()
    return sorted({label for label in labels if label.startswith("final")})


def _setting(config: dict, group: str, key: str, default=None):
    return (config.get(group) or {}).get(key, default)


def _trials(config: dict) -> int | None:
    search = _setting(config, "strategy", "search", {}) or {}
    return search.get("n_trials") or (search.get("evolutionary") or {}).get("n_trials")


def _whole_zoo(row) -> bool:
    return _setting(row["config"], "strategy", "models") is None


# ---- the tables ---------------------------------------------------------------------------------

def merge_methods(df: pd.DataFrame, ev: Evidence | None = None) -> pd.DataFrame:
    """Per zoo: the best single model and every merge method's merge of the whole zoo."""
    parts = []
    for zoo in zoos_in(df):
        s = scored(df, zoo)
        merges = s[(s["kind"] == "built") & (s["strategy"] == "all") & (s["mixture"] == "none")
                   & s.apply(_whole_zoo, axis=1)]
        if merges.empty:
            continue
        name, best = best_single(s)
        rows = pd.concat([s.loc[[name]].assign(candidate=f"best single: {name}"), merges]) if name else merges
        labels = list(rows.index)
        rows = rows.assign(zoo=zoo).set_index(["zoo", "candidate"])
        table = add_interval(rows[tasks_of(s) + ["avg"]].copy(), "avg", rows["avg_se"])
        best_key = s.loc[name, "job_key"] if name else None
        add_delta_to_best_single(table, rows["job_key"], best, best_key, ev)
        add_normalized(table, s, labels, ev)
        table["key"], table["best single key"] = rows["job_key"], best_key
        parts.append(table.sort_values("avg", ascending=False))
    return pd.concat(parts) if parts else pd.DataFrame()


def failure_case(df: pd.DataFrame, ev: Evidence | None = None) -> pd.DataFrame:
    """Merges of two chosen models against the better of the two."""
    rows = []
    for zoo in zoos_in(df):
        s = scored(df, zoo)
        for _, row in s[(s["kind"] == "built") & (s["mixture"] == "none")].iterrows():
            pair = _setting(row["config"], "strategy", "models") or []
            if len(pair) != 2 or row["strategy"] != "all" or not all(p in s.index for p in pair):
                continue
            better = max(pair, key=lambda p: s.loc[p, "avg"])
            rows.append({"zoo": zoo, "merge": row["candidate"], "avg": row["avg"], "avg_se": row["avg_se"],
                         "better parent": better, "parent avg": s.loc[better, "avg"],
                         "Δ better parent": row["avg"] - s.loc[better, "avg"],
                         "key": row["job_key"], "parent key": s.loc[better, "job_key"]})
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows).set_index(["zoo", "merge"])
    add_interval(table, "avg", table.pop("avg_se"))
    add_paired(table, "Δ better parent", list(zip(table["key"], table["parent key"])), ev)
    return table[[c for c in table.columns if not c.endswith("key")] + ["key", "parent key"]]


@dataclass(frozen=True)
class Cell:
    """One value of a candidates x zoos table, with its standard error and the job it comes from."""
    value: float
    se: float
    key: str


def _cell(scores: pd.DataFrame, label: str) -> Cell:
    row = scores.loc[label]
    return Cell(row["avg"], row["avg_se"], row["job_key"])


def _best_single_cell(scores: pd.DataFrame) -> Cell:
    name, best = best_single(scores)
    return _cell(scores, name) if name else Cell(best, float("nan"), "")


def cells_table(cells: dict[str, dict[str, Cell]]) -> pd.DataFrame:
    """Columns = the cells' columns (zoos), each with its `low` and `high`; rows = candidates."""
    values = pd.DataFrame({column: {label: c.value for label, c in by_label.items()}
                           for column, by_label in cells.items()}, dtype=float)
    ses = pd.DataFrame({column: {label: c.se for label, c in by_label.items()}
                        for column, by_label in cells.items()}, dtype=float).reindex(values.index)
    table = pd.DataFrame(index=values.index)
    for column in values.columns:
        table[column] = values[column]
        add_interval(table, column, ses[column])
    return _baselines_first(table)


def selective_cells(df: pd.DataFrame, keep: Callable[[pd.Series], bool]) -> dict[str, dict[str, Cell]]:
    """Rows = the kept selective jobs (labelled strategy(method), with CMA-ES's trials), the best
    single model and the merge of all candidates; columns = zoo (and proxy set); cells = avg on
    the final items."""
    columns = {}
    for zoo in zoos_in(df):
        sets = final_item_sets(df, zoo)
        for items in sets:
            s = scored(df, zoo, items)
            chosen = s[(s["kind"] == "built") & (s["strategy"] != "all") & s.apply(keep, axis=1)]
            if chosen.empty:
                continue
            column = zoo if len(sets) == 1 else f"{zoo} {items.removeprefix('final items: test minus proxy ')}"
            cells = {"best single": _best_single_cell(s)}
            for label, row in s[(s["kind"] == "built") & (s["strategy"] == "all")].iterrows():
                cells[f"merge all ({row['method']})"] = _cell(s, label)
            for label, row in chosen.iterrows():
                trials = _trials(row["config"])
                cells[f"{row['strategy']}({row['method']})" + (f", {trials} trials" if trials else "")] = _cell(s, label)
            columns[column] = cells
    return columns


def in_strategies(row) -> bool:
    return row["method"] == "linear" and row["strategy"] not in ("glue_recipe",)


def in_method_evolution(row) -> bool:
    return row["strategy"] == "evolutionary"


def in_heuristic_evolution(row) -> bool:
    return row["strategy"] in ("heuristic_coefficient", "evolutionary", "heuristic_evolutionary")


def strategies(df: pd.DataFrame, ev: Evidence | None = None) -> pd.DataFrame:
    """The merging benchmark's strategy comparison (linear merges)."""
    return cells_table(selective_cells(df, in_strategies))


def method_evolution(df: pd.DataFrame, ev: Evidence | None = None) -> pd.DataFrame:
    """Evolutionary (CMA-ES) merging with each merge method."""
    return cells_table(selective_cells(df, in_method_evolution))


def heuristic_evolution(df: pd.DataFrame, ev: Evidence | None = None) -> pd.DataFrame:
    """The heuristic, CMA-ES, and CMA-ES started from the heuristic's coefficients."""
    return cells_table(selective_cells(df, in_heuristic_evolution))


# the settings a mixture table holds fixed where they are not its axis
MIXTURE_DEFAULTS = {"router": "prompt", "routing": MixtureSettings.routing, "dense_layers": MixtureSettings.dense_layers}


def _mixture_settings(row) -> dict:
    mixture = row["config"].get("mixture") or {}
    level = mixture.get("level")
    settings = MixtureSettings.of(mixture) if level in ("ffn", "block") else None
    return {"level": level, "router": row["router"],
            "routing": settings.routing if settings else "-",
            "dense_layers": settings.dense_layers if settings else "-"}


def mixture_cells(df: pd.DataFrame, axes: tuple[str, ...], levels=("ffn", "block", "model")) -> dict[str, dict[str, Cell]]:
    """Rows = mixtures (whole test split) that vary only along `axes` (the others at
    MIXTURE_DEFAULTS), plus the best single model and the zoo's linear merge; columns = zoo."""
    columns = {}
    for zoo in zoos_in(df):
        s = scored(df, zoo)
        mixtures = s[(s["kind"] == "built") & (s["mixture"] != "none") & (s["strategy"] == "all")]
        cells = {}
        for label, row in mixtures.iterrows():
            settings = _mixture_settings(row)
            fixed = all(settings[k] in (v, "-") for k, v in MIXTURE_DEFAULTS.items() if k not in axes)
            if settings["level"] in levels and fixed and _whole_zoo(row):
                shown = ("level", *(a for a in axes if a != "level"))
                cells[", ".join(f"{a} {settings[a]}" if a == "dense_layers" else str(settings[a])
                                for a in shown)] = _cell(s, label)
        if not cells:
            continue
        merges = s[(s["kind"] == "built") & linear_merges_of_all(s) & s.apply(_whole_zoo, axis=1)]
        columns[zoo] = {"best single": _best_single_cell(s),
                        **({"linear merge": _cell(s, merges.index[0])} if len(merges) else {}), **cells}
    return columns


def _baselines_first(table: pd.DataFrame) -> pd.DataFrame:
    """Rows: the best single model and the merges of all first, then the candidates by name."""
    first = [i for i in table.index if i == "best single" or i.startswith(("merge all", "linear merge"))]
    return table.loc[first + sorted(i for i in table.index if i not in first)].rename_axis("candidate")


def mixture_levels(df: pd.DataFrame, ev: Evidence | None = None) -> pd.DataFrame:
    """FFN-, block- and model-level mixtures (prompt router, token routing)."""
    return cells_table(mixture_cells(df, ("level",)))


def mixture_routers(df: pd.DataFrame, ev: Evidence | None = None) -> pd.DataFrame:
    """The training-free prompt router against the trained MLP router, per level."""
    return cells_table(mixture_cells(df, ("router",)))


def mixture_routing(df: pd.DataFrame, ev: Evidence | None = None) -> pd.DataFrame:
    """Token against sample routing (FFN and block level, prompt router)."""
    return cells_table(mixture_cells(df, ("routing",), levels=("ffn", "block")))


def mixture_hybrid(df: pd.DataFrame, ev: Evidence | None = None) -> pd.DataFrame:
    """Hybrid mixtures: the first layers dense (the experts' merge), the rest mixed."""
    return cells_table(mixture_cells(df, ("dense_layers",), levels=("ffn", "block")))


ENSEMBLE_ROW, COMPUTE = "ensemble (reference)", "forward passes / token"
MERGE_VS_MIXTURE_ROWS = (ENSEMBLE_ROW, "best single", "best merge", "best mixture")


def _passes_per_token(row) -> float:
    """Model forward passes per token: 1 for one model, N for the ensemble of N (stored with it);
    nan for a mixture (one expert's pass, or k experts' FFNs, plus its router: not one number)."""
    if row["mixture"] == "none":
        return 1.0
    return float(row["config"].get("forward_passes_per_token", float("nan")))


def merge_vs_mixture(df: pd.DataFrame, ev: Evidence | None = None) -> pd.DataFrame:
    """Per zoo: the output ensemble of the zoo's models (the reference, at N forward passes per
    token), the best single model, the best merge and the best mixture (whole test split), each
    paired against the ensemble and against the best mixture."""
    parts = []
    for zoo in zoos_in(df):
        s = scored(df, zoo)
        merges, mixtures, ensembles = _merges_mixtures_ensembles(s)
        if merges.empty or mixtures.empty:
            continue
        best_single_label, _ = best_single(s)
        chosen = {ENSEMBLE_ROW: ensembles["avg"].idxmax() if len(ensembles) else None,
                  "best single": best_single_label, "best merge": merges["avg"].idxmax(),
                  "best mixture": mixtures["avg"].idxmax()}
        chosen = {row: label for row, label in chosen.items() if label is not None}
        rows = s.loc[list(chosen.values())]
        table = pd.DataFrame({"candidate": list(chosen.values()), "avg": rows["avg"].to_numpy(),
                              COMPUTE: [_passes_per_token(r) for _, r in rows.iterrows()]},
                             index=pd.MultiIndex.from_tuples([(zoo, row) for row in chosen], names=["zoo", "row"]))
        add_interval(table, "avg", pd.Series(rows["avg_se"].to_numpy(), index=table.index))
        keys = rows["job_key"].to_list()
        for reference, column in ((ENSEMBLE_ROW, "Δ ensemble"), ("best mixture", "Δ best mixture")):
            if reference not in chosen:
                table[column] = float("nan")
                add_paired(table, column, [None] * len(table), None)
                continue
            ref_value, ref_key = s.loc[chosen[reference], "avg"], s.loc[chosen[reference], "job_key"]
            table[column] = table["avg"] - ref_value
            add_paired(table, column, [(k, ref_key) if k != ref_key else None for k in keys], ev)
        table["key"] = keys
        parts.append(table)
    return pd.concat(parts) if parts else pd.DataFrame()


def _merges_mixtures_ensembles(s: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """A zoo's whole-zoo merges, mixtures (ensembles apart) and output ensembles, from `scored`."""
    built = s[(s["kind"] == "built") & (s["strategy"] == "all") & s.apply(_whole_zoo, axis=1)]
    return (built[built["mixture"] == "none"], built[~built["mixture"].isin(["none", "ensemble"])],
            built[built["mixture"] == "ensemble"])


def best_merge_and_mixture(df: pd.DataFrame) -> dict[str, tuple[tuple[Cell, tuple[str, ...]], tuple[Cell, tuple[str, ...]]]]:
    """Per zoo of `merge_vs_mixture`: its best merge and best mixture, each with the jobs it is the
    best of (a claim about them chooses on other items than it tests: glue_bench.evidence.best_of)."""
    found = {}
    for zoo in zoos_in(df):
        merges, mixtures, _ = _merges_mixtures_ensembles(scored(df, zoo))
        if merges.empty or mixtures.empty:  # as merge_vs_mixture: no row for this zoo
            continue
        found[zoo] = tuple((Cell(of["avg"].max(), math.nan, of.loc[of["avg"].idxmax(), "job_key"]),
                            tuple(of["job_key"])) for of in (merges, mixtures))
    return found


def recipe(df: pd.DataFrame, ev: Evidence | None = None) -> pd.DataFrame:
    """The Model-GLUE recipe on the largest zoo it ran on, on its final items, beside every single
    model, each family's merge and the model-level mixture of all models; the recipe's gain over
    the best single model beside the study's (+5.61 % on which16)."""
    runs = [zoo for zoo in zoos_in(df) if (df.loc[df["zoo"] == zoo, "strategy"] == "glue_recipe").any()]
    if not runs:
        return pd.DataFrame()
    zoo = runs[-1]
    parts = []
    for items in final_item_sets(df, zoo):
        s = scored(df, zoo, items)
        shown = s[(s["kind"] == "single") | ((s["kind"] == "built") & (s["strategy"] == "glue_recipe"))]
        if not (shown["kind"] == "built").any():
            continue
        best = _best_single_cell(s)
        labels = list(shown.index)
        shown = shown.assign(zoo=zoo).set_index(["zoo", "candidate"])
        table = add_interval(shown[tasks_of(s) + ["avg"]].copy(), "avg", shown["avg_se"])
        add_delta_to_best_single(table, shown["job_key"], best.value, best.key, ev)
        add_normalized(table, s, labels, ev)
        table["gain %"] = 100 * table["Δ best single"] / best.value
        study = pd.Series(float("nan"), index=table.index)
        recipe_rows = [i for i in table.index if i[1].startswith("glue_recipe(")]
        study[recipe_rows] = STUDY_RECIPE_GAIN
        table["study gain % (which16)"] = study
        table["gain % − study"] = table["gain %"] - study
        table["key"], table["best single key"] = shown["job_key"], best.key
        parts.append(table.sort_values("avg", ascending=False))
    return pd.concat(parts) if parts else pd.DataFrame()


def single_models_reference(df: pd.DataFrame, ev: Evidence | None = None) -> pd.DataFrame:
    return release_and_leaderboard(df)


single_models_reference.__doc__ = release_and_leaderboard.__doc__


def single_models(df: pd.DataFrame) -> pd.Series:
    """The zoo's models alone: what every table judges its candidates against."""
    return (df["method"] == "none") & (df["mixture"].fillna("none") == "none")


def merges_of_all_on_final_items(df: pd.DataFrame) -> pd.Series:
    """The merge of all candidates on a selective search's final items (its reference there)."""
    return (df["strategy"] == "all") & df["items"].fillna("").str.startswith("final")


def linear_merges_of_all(df: pd.DataFrame) -> pd.Series:
    """Linear merges of the models a job took (`mixture_cells` keeps the whole zoo's): what a mixture of
    the same experts is judged against."""
    return (df["method"] == "linear") & (df["strategy"] == "all") & (df["mixture"].fillna("none") == "none")


JUDGED_AGAINST = (single_models, merges_of_all_on_final_items)


def made_by(df: pd.DataFrame, preset: str, references=JUDGED_AGAINST) -> pd.DataFrame:
    """The candidates experiment preset `preset` stored or reused (the store's links,
    glue_bench.results), so that a job another preset or a plain run stored never enters its table
    by looking like its jobs, and the rows each of `references` selects (the candidates they are
    judged against, whichever preset stored them: a preset that finds a search stored reuses it
    whole, these evaluations with it). A store without links (written before they were kept: zoo
    v5's evidence) is taken whole: each table's own selection by kind, strategy and mixture decides."""
    if "presets" not in df:
        return df
    keep = df["presets"].map(lambda names: isinstance(names, str) and preset in names.split(","))
    for selects in references:
        keep |= selects(df)
    return df[keep]


@dataclass(frozen=True)
class StudyTable:
    name: str
    build: Callable[..., pd.DataFrame]   # (df, ev: Evidence | None) -> table
    made_by: str = ""             # what fills it, when not the conf/experiment preset of the same name
    by_preset: bool = True        # its rows are its preset's jobs (`made_by`); else the whole store's
    references: tuple = JUDGED_AGAINST  # row selectors: what its candidates are judged against, whoever stored it

    @property
    def preset(self) -> str:
        return self.made_by or self.name

    def rows(self, df: pd.DataFrame) -> pd.DataFrame:
        """The rows of `df` it is built from: its preset's jobs and its references."""
        return made_by(df, self.preset, self.references) if self.by_preset else df

    def table(self, df: pd.DataFrame, ev: Evidence | None = None) -> pd.DataFrame:
        """The table, from its preset's jobs in `df`."""
        return self.build(self.rows(df), ev)

    @property
    def title(self) -> str:
        return " ".join((self.build.__doc__ or self.name).split("\n\n")[0].split())


MIXTURE_REFERENCES = (*JUDGED_AGAINST, linear_merges_of_all)  # mixture_cells' rows: the best single and the linear merge

TABLES = [
    StudyTable("merge_methods", merge_methods),
    StudyTable("failure_case", failure_case),
    StudyTable("strategies", strategies),
    StudyTable("method_evolution", method_evolution),
    StudyTable("heuristic_evolution", heuristic_evolution),
    StudyTable("mixture_levels", mixture_levels, references=MIXTURE_REFERENCES),
    StudyTable("mixture_routers", mixture_routers, references=MIXTURE_REFERENCES),
    StudyTable("mixture_routing", mixture_routing, references=MIXTURE_REFERENCES),
    StudyTable("mixture_hybrid", mixture_hybrid, references=MIXTURE_REFERENCES),
    StudyTable("merge_vs_mixture", merge_vs_mixture),
    StudyTable("recipe", recipe),
    StudyTable("single_models_reference", single_models_reference, "singles (any preset on a which zoo)", by_preset=False),
]


def study_table(name: str) -> StudyTable:
    """The study table called `name` (a conf/experiment preset's table)."""
    return next(t for t in TABLES if t.name == name)
