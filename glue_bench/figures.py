"""The Model-GLUE study's figures, drawn from the results store as PNGs.

Each drawing function takes its data (a `glue_bench.study` table, a similarity matrix, trial
values) and an output path, and returns the path, or None when there is nothing to draw.
`draw_all` draws whatever the store allows; notebooks/study_figures.ipynb shows them.
"""

from __future__ import annotations

import os
import textwrap
from itertools import accumulate
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from glue_bench import study
from glue_bench.zoo import zoo_members

SEARCH_STORAGE = "sqlite:///results/search/evolutionary.sqlite"  # evolutionary.SearchConfig's default


def _axes(width: float, height: float):
    """A figure without pyplot: it draws with Agg, headless, and leaves the caller's backend alone."""
    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def _error_bars(table: pd.DataFrame, values: pd.DataFrame) -> np.ndarray:
    """The (2, rows, columns) distances from each value down to its `low` and up to its `high`
    column (study's convention), 0 where a value has no interval."""
    bound = {b: table.reindex(columns=[f"{c} {b}" for c in values.columns]).to_numpy(float) for b in ("low", "high")}
    errors = np.stack([values.to_numpy(float) - bound["low"], bound["high"] - values.to_numpy(float)])
    return np.nan_to_num(errors, nan=0.0)


def _grouped_bars(table: pd.DataFrame, path, title: str, lines: dict[str, str]) -> Path | None:
    """One group per column (zoo), one bar per row with its 95 % interval; the rows named in
    `lines` ({row: line style}) are drawn as a horizontal line across their group instead."""
    errors_of = table
    table = table[[c for c in table.columns if study.is_value_column(c)]]
    references = table.loc[[r for r in lines if r in table.index]]
    bars = table.drop(index=references.index).dropna(how="all")
    if bars.empty:
        return None
    errors = _error_bars(errors_of.loc[bars.index], bars)
    x, width = np.arange(len(table.columns)), 0.8 / len(bars)
    fig, ax = _axes(max(6.0, 0.35 * bars.size + 2), 4.5)
    for i, (label, row) in enumerate(bars.iterrows()):
        ax.bar(x + (i - (len(bars) - 1) / 2) * width, row.to_numpy(float), width, label=label,
               yerr=errors[:, i, :], capsize=2, error_kw={"linewidth": 0.8})
    for label, row in references.iterrows():
        ax.hlines(row.to_numpy(float), x - 0.45, x + 0.45, colors="black", linestyles=lines[label],
                  linewidth=2, label=label)
    # scores differ by a few points: an axis from 0 would flatten every difference
    low = np.nanmin(table.to_numpy(float))
    ax.set_ylim(bottom=max(0.0, low - 0.05))
    ax.set_xticks(x, table.columns)
    ax.set_ylabel("average score")
    ax.set_title(title)
    ax.legend(bbox_to_anchor=(1.01, 1), loc="upper left", fontsize="small")
    return _save(fig, path)


def strategy_bars(table: pd.DataFrame, path, title: str = "") -> Path | None:
    """A strategy table (`study.strategies` and the like: rows = candidates, columns = zoos): the
    best single model as a line over each zoo's bars."""
    return _grouped_bars(table, path, title, {"best single": "solid"})


def mixture_bars(table: pd.DataFrame, path, title: str = "") -> Path | None:
    """A mixture table (`study.mixture_levels` and the like): the best single model and the zoo's
    linear merge as lines over each zoo's mixtures."""
    return _grouped_bars(table, path, title, {"best single": "solid", "linear merge": "dashed"})


def merge_vs_mixture_bars(table: pd.DataFrame, path, title: str = "") -> Path | None:
    """`study.merge_vs_mixture` (rows = (zoo, row)): per zoo, the best merge and the best mixture
    as bars, the best single model and the output ensemble (when run) as lines across them."""
    if table.empty:
        return None
    shown = [row for row in study.MERGE_VS_MIXTURE_ROWS if row in table.index.get_level_values("row")]
    matrix = pd.DataFrame(index=shown)
    for zoo in table.index.get_level_values("zoo").unique():
        for suffix in ("", " low", " high"):
            column = table.get(f"avg{suffix}", pd.Series(dtype=float))
            matrix[f"{zoo}{suffix}"] = [column.get((zoo, row), np.nan) for row in shown]
    return _grouped_bars(matrix, path, title, {"best single": "solid", study.ENSEMBLE_ROW: "dashed"})


def recipe_bars(table: pd.DataFrame, path, title: str = "") -> Path | None:
    """`study.recipe`: each candidate's average, best first; the recipe's own candidates blue, the
    single models grey, the best single model orange."""
    if table.empty:
        return None
    # several final item sets repeat the candidates: the first set's (study.recipe's order)
    table = table[~table.index.duplicated()]
    zoo = table.index[0][0]
    scores = table["avg"].droplevel("zoo")
    singles = scores[scores.index.isin(zoo_members(zoo))]
    best = singles.idxmax() if not singles.empty else None
    colors = ["tab:orange" if c == best else "tab:gray" if c in singles.index else "tab:blue" for c in scores.index]
    fig, ax = _axes(8, 0.3 * len(scores) + 1.2)
    errors = _error_bars(table.droplevel("zoo"), scores.to_frame())[:, :, 0]
    ax.barh(range(len(scores)), scores.to_numpy(float), color=colors, xerr=errors, capsize=2)
    ax.set_yticks(range(len(scores)), scores.index)
    ax.invert_yaxis()  # best on top
    ax.set_xlim(left=max(0.0, scores.min() - 0.05))
    ax.set_xlabel("average score")
    ax.set_title(title or f"{zoo}: the Model-GLUE recipe")
    ax.legend(handles=[Patch(color=c, label=k) for c, k in (("tab:blue", "recipe"), ("tab:gray", "single model"),
                                                            ("tab:orange", "best single"))], fontsize="small")
    return _save(fig, path)


def similarity_heatmap(matrix: pd.DataFrame, path, title: str = "") -> Path | None:
    """A zoo's model-similarity matrix (`merge.similarity.similarity_matrix`), values annotated;
    n/a where the shapes differ."""
    if matrix.empty:
        return None
    values = matrix.to_numpy(float)
    size = 0.45 * len(matrix) + 2
    fig, ax = _axes(size + 1, size)
    image = ax.imshow(np.ma.masked_invalid(values), cmap=colormaps["Blues"].with_extremes(bad="lightgray"))
    for (i, j), value in np.ndenumerate(values):
        dark = not np.isnan(value) and image.norm(value) > 0.6
        ax.text(j, i, "n/a" if np.isnan(value) else f"{value:.2f}", ha="center", va="center",
                fontsize=7, color="white" if dark else "black")
    ax.set_xticks(range(len(matrix)), matrix.columns, rotation=60, ha="right")
    ax.set_yticks(range(len(matrix)), matrix.index)
    fig.colorbar(image, ax=ax, shrink=0.8, label="cosine similarity")
    ax.set_title(title)
    return _save(fig, path)


def _short(study_name: str) -> str:
    """evolutionary-linear-013ef08679df -> linear-013ef0"""
    head, _, digest = study_name.removeprefix("evolutionary-").rpartition("-")
    return f"{head}-{digest[:6]}" if head else study_name


def convergence_curve(curves: dict[str, list[float]], path, title: str = "") -> Path | None:
    """Per study ({name: completed trials' proxy scores in trial order}): the best score so far."""
    curves = {name: values for name, values in curves.items() if values}
    if not curves:
        return None
    fig, ax = _axes(7, 4.5)
    for name, values in curves.items():
        ax.plot(range(1, len(values) + 1), list(accumulate(values, max)), label=f"{_short(name)} ({len(values)})")
    ax.set_xlabel("completed trial")
    ax.set_ylabel("best proxy score so far")
    ax.set_title(title or "CMA-ES convergence")
    ax.legend(fontsize="small", title="study (trials)")
    return _save(fig, path)


# ---- the data behind the figures that do not come from the store --------------------------------

def zoo_similarity(zoo: str, size: str | None = None, replicate: int = 0) -> pd.DataFrame:
    """The similarity matrix of the zoo's base and models (a mini zoo's `replicate`), as `python -m
    glue_bench.merge.similarity` computes it (the mini models are built first if missing)."""
    from glue_bench.merge.engine import TensorSource
    from glue_bench.merge.similarity import similarity_matrix
    from glue_bench.zoo import ensure_available, local_dir, resolve_zoo, zoo_config

    size = size or os.environ.get("GLUE_BENCH_MINI_SIZE", "mini")  # conf/config.yaml's mini_size
    refs, base = resolve_zoo({**zoo_config(zoo), "replicate": replicate}, size)
    ensure_available([base] + refs, size)
    return similarity_matrix([TensorSource(r.name, local_dir(r)) for r in [base] + refs])


def study_curves(storage: str = SEARCH_STORAGE) -> dict[str, list[float]]:
    """{study name: completed trials' values in trial order} of every study in an Optuna storage;
    empty when a SQLite storage's file does not exist (opening it would create one)."""
    import optuna
    from optuna.trial import TrialState

    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).is_file():
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    curves = {}
    for summary in optuna.get_all_study_summaries(storage):
        trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials(
            deepcopy=False, states=(TrialState.COMPLETE,))
        curves[summary.study_name] = [t.value for t in sorted(trials, key=lambda t: t.number)]
    return curves


# ---- drawing what there is ----------------------------------------------------------------------

TABLE_FIGURES = {  # study table (and the preset that fills it) -> its drawing function
    "strategies": strategy_bars,
    "method_evolution": strategy_bars,
    "heuristic_evolution": strategy_bars,
    "mixture_levels": mixture_bars,
    "mixture_routers": mixture_bars,
    "mixture_routing": mixture_bars,
    "mixture_hybrid": mixture_bars,
    "merge_vs_mixture": merge_vs_mixture_bars,
    "recipe": recipe_bars,
}


def _report(name: str, path: Path | None, why: str) -> Path | None:
    print(f"{name}: wrote {path}" if path else f"{name}: skipped ({why})")
    return path


def draw_table(name: str, df: pd.DataFrame, figures_dir) -> Path | None:
    """The figure of one study table (a TABLE_FIGURES name) from the store's DataFrame: its first
    replicate zoo's, as the written tables."""
    table = study.study_table(name)
    built = table.table(study.at_replicate(df, study.replicates(df)[0]))
    path = TABLE_FIGURES[name](built, Path(figures_dir) / f"{name}.png", textwrap.fill(table.title, 80))
    return _report(name, path, f"no rows for it in the store: run the {table.preset} preset")


def draw_heatmap(zoo: str | None, figures_dir, df: pd.DataFrame | None = None) -> Path | None:
    """The zoo's similarity heatmap; with the results `df`, of the build their tables read (the
    mini size their candidates were built at, the first replicate they hold)."""
    from glue_bench.zoo import ZooError

    if not zoo:
        return _report("similarity", None, "no zoo given")
    try:
        if df is None or df.empty:
            matrix = zoo_similarity(zoo)
        else:
            matrix = zoo_similarity(zoo, study.table_mini_size(df, zoo), study.replicates(df)[0])
    except ZooError as e:
        return _report(f"similarity {zoo}", None, str(e))
    path = similarity_heatmap(matrix, Path(figures_dir) / f"similarity_{zoo}.png",
                              f"{zoo}: column-wise cosine similarity of the weights")
    return _report(f"similarity {zoo}", path, "no models")


def draw_convergence(storage: str | None, figures_dir) -> Path | None:
    if not storage:
        return _report("convergence", None, "no search storage given")
    path = convergence_curve(study_curves(storage), Path(figures_dir) / "convergence.png")
    return _report("convergence", path, f"no completed CMA-ES trials in {storage}")


def draw_all(results_path, figures_dir, storage: str | None = None, heatmap_zoo: str | None = None) -> list[Path]:
    """Every figure the store (and the search storage, and the zoo) allows; one line printed per
    figure, written or skipped and why."""
    from glue_bench.results import read_results

    df = read_results(results_path)
    paths = [draw_table(name, df, figures_dir) for name in TABLE_FIGURES]
    paths += [draw_heatmap(heatmap_zoo, figures_dir, df), draw_convergence(storage, figures_dir)]
    return [p for p in paths if p]

