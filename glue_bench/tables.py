"""Results tables from the store: rows = candidates, columns = tasks + average + delta to the
best single model of the zoo.

    python -m glue_bench.tables                       # every zoo in the default store
    python -m glue_bench.tables --zoo mini4 --results results/store/results.sqlite
"""

from __future__ import annotations

import argparse
import os

import pandas as pd
from hydra.experimental.callback import Callback

from glue_bench.evaluate import PRIMARY_METRIC
from glue_bench.results import read_results
from glue_bench.zoo import ZooError, entry_name, zoo_config

DEFAULT_RESULTS = os.path.join("results", "store", "results.sqlite")


def zoo_table(df: pd.DataFrame, zoo: str, items: str | None = None) -> pd.DataFrame:
    """Scores of the zoo's single models and of every candidate built from the zoo, on the whole
    test split (`items=None`) or on the named item set (the final items of a selective search)."""
    config = zoo_config(zoo)
    members = [entry_name(m, config["source"]) for m in config["models"]]
    base = entry_name(config["base"], config["source"])
    df = df[df["items"].isna()] if items is None else df[df["items"] == items]
    primary = df[[PRIMARY_METRIC.get(t) == m for t, m in zip(df["task"], df["metric"])]]
    singles = primary[(primary["method"] == "none") & primary["candidate"].isin(members + [base])]
    built = primary[((primary["method"] != "none") | (primary["mixture"].fillna("none") != "none"))
                    & (primary["zoo"] == zoo)]
    rows = pd.concat([singles, built])
    if rows.empty:
        return pd.DataFrame()
    # one candidate name may come from several configs (other weights...): tell them apart by key
    label = rows["candidate"].where(~rows.duplicated(["candidate", "task"], keep=False),
                                    rows["candidate"] + " [" + rows["job_key"].str[:6] + "]")
    table = rows.assign(label=label).pivot_table(index="label", columns="task", values="value", aggfunc="first")
    table = table[[t for t in PRIMARY_METRIC if t in table.columns]]
    table.columns = [c.removeprefix("mini_") for c in table.columns]
    table["avg"] = table.mean(axis=1, skipna=False)
    single_labels = [m for m in members if m in table.index]
    best = table.loc[single_labels, "avg"].max() if single_labels else float("nan")
    table["Δ best single"] = table["avg"] - best
    # order: the base, the single models, then the candidates; best first within each
    kind = pd.Series({lbl: 0 if lbl == base else 1 if lbl in single_labels else 2 for lbl in table.index})
    table = table.assign(kind=kind).sort_values(["kind", "avg"], ascending=[True, False]).drop(columns="kind")
    return table.rename(index={base: f"{base} (zoo base)"})


def final_item_sets(df: pd.DataFrame, zoo: str) -> list[str]:
    """The item sets on which selective strategies of this zoo were judged."""
    labels = df.loc[(df["zoo"] == zoo) & (df["strategy"] != "all"), "items"].dropna()
    return sorted({label for label in labels if label.startswith("final")})


def format_table(table: pd.DataFrame, zoo: str, items: str | None = None) -> str:
    body = table.to_string(float_format=lambda v: f"{v:+.3f}" if v < 0 else f"{v:.3f}", na_rep="-")
    where = "whole test split" if items is None else items
    return f"\n== {zoo}, {where}: primary metric per task (acc_norm / acc / exact match / pass@1) ==\n{body}\n"


def print_tables(results_path: str, zoos: list[str] | None = None) -> None:
    """Print one table per zoo (default: every zoo in the store)."""
    df = read_results(results_path)
    if zoos is None:
        zoos = sorted(set(df["zoo"].dropna()))
    for zoo in zoos:
        for items in [None, *final_item_sets(df, zoo)]:
            try:
                table = zoo_table(df, zoo, items)
            except ZooError:  # a zoo config removed since its rows were written
                break
            if not table.empty:
                print(format_table(table, zoo, items), flush=True)


class PrintTableCallback(Callback):
    """Prints the tables of the swept zoos when a run, or a whole sweep, ends (launching process)."""

    def on_run_end(self, config, **kwargs) -> None:
        if config.get("print_table", True) and os.path.exists(config.results_path):
            print_tables(config.results_path, zoos=_swept_zoos(config))

    on_multirun_end = on_run_end


def _swept_zoos(config) -> list[str]:
    """Zoo names from a `zoo=a,b` sweep override, else the config's zoo."""
    for override in config.hydra.overrides.task:
        key, _, value = override.partition("=")
        if key.lstrip("+~") == "zoo":
            return [z.strip() for z in value.split(",") if z.strip()]
    return [config.zoo.name]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print results tables from the glue_bench store.")
    parser.add_argument("--results", default=os.environ.get("GLUE_BENCH_RESULTS", DEFAULT_RESULTS))
    parser.add_argument("--zoo", action="append", help="zoo(s) to show (default: all in the store)")
    args = parser.parse_args(argv)
    print_tables(args.results, zoos=args.zoo)


if __name__ == "__main__":
    main()
