"""Results tables from the store.

Printed, per zoo: rows = candidates, columns = tasks + average + delta to the best single model.
Written, per study table (glue_bench.study), as Markdown, LaTeX and CSV into --out (results/tables/).

    python -m glue_bench.tables                       # every zoo in the default store
    python -m glue_bench.tables --zoo mini4 --results results/store/results.sqlite --out results/tables
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import pandas as pd
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import OmegaConf

from glue_bench.findings import FINDINGS_TABLE
from glue_bench.results import read_results
from glue_bench.study import TABLES, best_single, candidate_scores, final_item_sets, tasks_of
from glue_bench.zoo import ZooError

DEFAULT_RESULTS = os.path.join("results", "store", "results.sqlite")
DEFAULT_OUT = os.path.join("results", "tables")
FORMATS = ("md", "tex", "csv")


def zoo_table(df: pd.DataFrame, zoo: str, items: str | None = None, **where) -> pd.DataFrame:
    """Scores of the zoo's single models and of every candidate built from the zoo, on the whole
    test split (`items=None`) or on the named item set (the final items of a selective search).
    `where`: the zoo's config and mini size, as `candidate_scores` takes them."""
    scores = candidate_scores(df, zoo, items, **where)
    if scores.empty:
        return pd.DataFrame()
    table = scores[tasks_of(scores) + ["avg"]].copy()
    table["Δ best single"] = table["avg"] - best_single(scores)[1]
    # order: the base, the single models, then the candidates; best first within each
    order = scores["kind"].map({"base": 0, "single": 1, "built": 2})
    table = table.assign(order=order).sort_values(["order", "avg"], ascending=[True, False]).drop(columns="order")
    return table.rename(index=_base_label(scores))


def zoo_half_widths(df: pd.DataFrame, zoo: str, items: str | None = None, **where) -> pd.DataFrame:
    """95 % half-widths (1.96 standard errors) of `zoo_table`'s scores, same rows and columns;
    missing where a row has no standard error."""
    errors = candidate_scores(df, zoo, items, values="stderr", **where)
    if errors.empty:
        return pd.DataFrame()
    return (1.96 * errors[tasks_of(errors) + ["avg"]].astype(float)).rename(index=_base_label(errors))


def _base_label(scores: pd.DataFrame) -> dict[str, str]:
    return {lbl: f"{lbl} (zoo base)" for lbl in scores.index[scores["kind"] == "base"]}


def format_table(table: pd.DataFrame, zoo: str, items: str | None = None, half_widths: pd.DataFrame | None = None) -> str:
    """The printed table: `value ± 95 % half-width` where the standard error is known."""
    shown = table.astype(object)
    halves = (half_widths if half_widths is not None else pd.DataFrame()).reindex(index=table.index,
                                                                                 columns=table.columns)
    for column in table.columns:
        for label, value in table[column].items():
            half = halves.at[label, column]
            shown.at[label, column] = "-" if pd.isna(value) else f"{value:+.3f}" if column.startswith("Δ") \
                else f"{value:.3f}" + ("" if pd.isna(half) else f" ± {half:.3f}")
    where = "whole test split" if items is None else items
    return (f"\n== {zoo}, {where}: primary metric per task (acc_norm / acc / exact match / pass@1), "
            f"± 95 % half-width ==\n{shown.to_string()}\n")


def print_tables(results_path: str, zoos: list[str] | None = None, **where) -> None:
    """Print one table per zoo (default: every zoo in the store). `where`: the zoo's config and
    mini size (`candidate_scores`), for one zoo."""
    df = read_results(results_path)
    if zoos is None:
        zoos = sorted(set(df["zoo"].dropna()))
    for zoo in zoos:
        for items in [None, *final_item_sets(df, zoo)]:
            try:
                table = zoo_table(df, zoo, items, **where)
            except ZooError as err:  # its config is gone, or not where this process looks
                print(f"no table for zoo {zoo}: {err}", flush=True)
                break
            if not table.empty:
                print(format_table(table, zoo, items, zoo_half_widths(df, zoo, items, **where)), flush=True)


class PrintTableCallback(Callback):
    """Prints the tables of the zoos a run or sweep used, when it ends (in the launching process)."""

    def on_run_end(self, config, **kwargs) -> None:
        if config.get("print_table", True) and os.path.exists(config.results_path):
            zoo = OmegaConf.to_container(config.zoo, resolve=True)
            print_tables(config.results_path, zoos=[config.zoo.name], zoo_cfg=zoo, mini_size=config.mini_size)

    def on_multirun_end(self, config, **kwargs) -> None:
        if not (config.get("print_table", True) and os.path.exists(config.results_path)):
            return
        for zoo in _swept_zoos(config):
            where = {"zoo_cfg": _zoo_config(config.hydra.job.config_name, zoo), "mini_size": config.mini_size}
            print_tables(config.results_path, zoos=[zoo], **where)


def _swept_zoos(config) -> list[str]:
    """Zoo names from the last `zoo=a,b` override (Hydra's last one wins), else the config's zoo."""
    zoos = [config.zoo.name]
    for override in config.hydra.overrides.task:
        key, _, value = override.partition("=")
        if key.lstrip("+~") == "zoo":
            zoos = [z.strip() for z in value.split(",") if z.strip()]
    return zoos


def _zoo_config(config_name: str, name: str) -> dict | None:
    """The zoo's config as this run composed it: found on Hydra's search path (--config-dir too)."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
    if loader is None:
        return None
    try:
        zoo = loader.load_configuration(config_name, overrides=[f"zoo={name}"], run_mode=RunMode.RUN).zoo
    except Exception:  # noqa: BLE001  not composable here: the table then looks in conf/zoo
        return None
    return OmegaConf.to_container(zoo, resolve=True)


def _cell(column: str, value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        signed = column.startswith("Δ") or "−" in column
        return f"{value:+.2f}" if "%" in column and signed else f"{value:.2f}" if "%" in column \
            else f"{value:+.3f}" if signed else f"{value:.3f}"
    return str(value)


def to_markdown(table: pd.DataFrame) -> str:
    flat = table.reset_index()
    lines = ["| " + " | ".join(map(str, flat.columns)) + " |", "|" + "---|" * len(flat.columns)]
    lines += ["| " + " | ".join(_cell(str(c), v) for c, v in row.items()) + " |" for _, row in flat.iterrows()]
    return "\n".join(lines) + "\n"


def write_study_tables(results_path: str, out_dir: str | os.PathLike) -> list[Path]:
    """Regenerate every study table from the store into out_dir as .md, .tex and .csv. A table with
    no rows in the store has its files removed, so none is left over from an older store."""
    df = read_results(results_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for study in [*TABLES, FINDINGS_TABLE]:
        table = study.build(df)
        paths = {fmt: out / f"{study.name}.{fmt}" for fmt in FORMATS}
        if table.empty:
            for path in paths.values():
                path.unlink(missing_ok=True)
            continue
        table.to_csv(paths["csv"], float_format="%.4f")
        paths["md"].write_text(f"## {study.title}\n\nMade by `{study.preset}`; from `{results_path}`.\n\n"
                               + to_markdown(table))
        display = table.reset_index().map(lambda v: _cell("", v) if isinstance(v, float) else v)
        paths["tex"].write_text(display.to_latex(index=False, caption=study.title, label=f"tab:{study.name}"))
        written += paths.values()
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print results tables from the glue_bench store and write "
                                                 "the study's tables as Markdown, LaTeX and CSV.")
    parser.add_argument("--results", default=os.environ.get("GLUE_BENCH_RESULTS", DEFAULT_RESULTS))
    parser.add_argument("--zoo", action="append", help="zoo(s) to print (default: all in the store)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="where the study tables go (default: %(default)s)")
    parser.add_argument("--print-only", action="store_true", help="print the zoo tables, write nothing")
    args = parser.parse_args(argv)
    print_tables(args.results, zoos=args.zoo)
    if not args.print_only:
        written = write_study_tables(args.results, args.out)
        names = sorted({p.stem for p in written})
        print(f"wrote {len(names)} study tables ({', '.join(FORMATS)}) to {args.out}: {', '.join(names)}")


if __name__ == "__main__":
    main()
