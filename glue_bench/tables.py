"""Results tables from the store.

Printed, per zoo: rows = candidates, columns = tasks + average + delta to the best single model.
Written, per study table (glue_bench.study), as Markdown, LaTeX and CSV into --out (results/tables/).

    python -m glue_bench.tables                       # every zoo in the default store
    python -m glue_bench.tables --zoo mini4 --results results/store/results.sqlite --out results/tables
    python -m glue_bench.tables --results results/evidence.parquet --out /tmp/tables   # the committed evidence
    python -m glue_bench.tables --results my.sqlite --archive my_evidence.parquet      # a store as an archive

--results takes a store or an evidence archive (glue_bench.archive): the committed tables are
regenerated from results/evidence.parquet, and a CI test checks they are byte-identical to it.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import pandas as pd

from glue_bench.archive import is_archive
from glue_bench.evidence import Evidence
from glue_bench.findings import FINDINGS_TABLE, verdict_counts
from glue_bench.results import ResultsError, check_one_build_per_replicate, open_store, read_results
from glue_bench.stats import holm
from glue_bench.study import (COMPUTE, TABLES, TASK_OF_COLUMN, add_delta_to_best_single, add_interval,
                              add_normalized, add_proportion_interval, at_replicate, best_single, candidate_scores,
                              final_item_sets, is_value_column, replicates, tasks_of)
from glue_bench.zoo import ZooError

DEFAULT_RESULTS = os.path.join("results", "store", "results.sqlite")
DEFAULT_OUT = os.path.join("results", "tables")
FORMATS = ("md", "tex", "csv")


def zoo_table(df: pd.DataFrame, zoo: str, items: str | None = None, ev: Evidence | None = None,
              **where) -> pd.DataFrame:
    """Scores of the zoo's single models and of every candidate built from the zoo, on the whole
    test split (`items=None`) or on the named item set (the final items of a selective search),
    each task's with its 95 % Wilson interval (`<task> low/high`: sound at 0 and 1 successes; from
    the items counted in `ev`, else from the stored standard error; missing where neither is),
    the average's closed form, and the difference to the best single model, paired per item where `ev`
    holds both jobs' outcomes, and the normalized performance (`study.add_normalized`). `where`:
    the zoo's config and mini size, as `candidate_scores` takes them."""
    scores = candidate_scores(df, zoo, items, **where)
    if scores.empty:
        return pd.DataFrame()
    errors = candidate_scores(df, zoo, items, values="stderr", **where)
    table = pd.DataFrame(index=scores.index)
    for column in tasks_of(scores):
        table[column] = scores[column]
        add_proportion_interval(table, column, _items_counted(scores, column, errors[column].astype(float), ev))
    table["avg"] = scores["avg"]
    add_interval(table, "avg", errors["avg"].astype(float))
    best, best_value = best_single(scores)
    best_key = scores.loc[best, "job_key"] if best else None
    add_delta_to_best_single(table, scores["job_key"], best_value, best_key, ev)
    add_normalized(table, scores, scores.index, ev)
    # order: the base, the single models, then the candidates; best first within each
    order = scores["kind"].map({"base": 0, "single": 1, "built": 2})
    table = table.assign(order=order).sort_values(["order", "avg"], ascending=[True, False]).drop(columns="order")
    return table.rename(index={lbl: f"{lbl} (zoo base)" for lbl in scores.index[scores["kind"] == "base"]})


def _items_counted(scores: pd.DataFrame, column: str, se: pd.Series, ev: Evidence | None) -> pd.Series:
    """Each row's number of items of the task: counted in its per-item outcomes, else worked back
    from a mean of 0/1 values p and its stored se = sqrt(p (1 - p) / (n - 1)); nan where neither
    tells (no outcomes, and p at 0 or 1, where se is 0 whatever n)."""
    task = TASK_OF_COLUMN.get(column, column)
    counts = []
    for label in scores.index:
        found = ev.outcomes(scores.loc[label, "job_key"]).get(task) if ev is not None else None
        p, error = scores.loc[label, column], se[label]
        if found is not None:
            counts.append(float(len(found[0])))
        elif 0 < p < 1 and error > 0:
            counts.append(p * (1 - p) / error ** 2 + 1)
        else:
            counts.append(math.nan)
    return pd.Series(counts, index=scores.index)


def shown(table: pd.DataFrame) -> pd.DataFrame:
    """The table as text, each value with its uncertainty in one cell: a score `0.428 ± 0.044`
    (95 % half-width), a difference `+0.012 [-0.010, +0.034]` (its interval), marked `*` where
    its p-value is significant after Holm's correction over the column; key columns left out."""
    out = pd.DataFrame(index=table.index)
    for column in [c for c in table.columns if is_value_column(c)]:
        low, high = (table.get(f"{column} {b}", pd.Series(math.nan, index=table.index)) for b in ("low", "high"))
        p_values = table.get(f"{column} p")
        marks = [p < 0.05 for p in holm(p_values)] if p_values is not None else [False] * len(table)
        signed = str(column).startswith("Δ")
        out[column] = [_with_uncertainty(str(column), v, lo, hi, signed, mark)
                       for v, lo, hi, mark in zip(table[column], low, high, marks)]
    return out


def _with_uncertainty(column: str, value, low, high, signed: bool, mark: bool) -> str:
    text = _cell(column, value)
    if not isinstance(value, float) or math.isnan(value) or math.isnan(low) or math.isnan(high):
        return text
    if signed:
        return f"{text} [{low:+.3f}, {high:+.3f}]" + ("*" if mark else "")
    if abs((high - value) - (value - low)) > 1e-9:  # Wilson's, a ratio's bootstrap interval (maybe unbounded)
        return f"{text} [{low:.3f}, {high:.3f}]"
    return f"{text} ± {(high - low) / 2:.3f}"


def format_table(table: pd.DataFrame, zoo: str, items: str | None = None) -> str:
    """The printed zoo table (`zoo_table`), uncertainty in each cell (`shown`)."""
    where = "whole test split" if items is None else items
    return (f"\n== {zoo}, {where}: primary metric per task (acc_norm / acc / exact match / pass@1), "
            f"[95 % Wilson interval], avg ± 95 % half-width; Δ [95 % paired CI], * significant (Holm); "
            f"normalized: per task ÷ the best single on it, averaged [95 % CI] ==\n{shown(table).to_string()}\n")


def print_tables(results_path: str, zoos: list[str] | None = None, **where) -> None:
    """Print one table per zoo (default: every zoo in the store). `where`: the zoo's config and
    mini size (`candidate_scores`), for one zoo."""
    df = read_results(results_path)
    ev = Evidence.of(results_path)
    if zoos is None:
        zoos = sorted(set(df["zoo"].dropna()))
    printed = 0
    for zoo in zoos:
        for replicate in replicates(df[df["zoo"] == zoo]):
            rows = at_replicate(df, replicate)
            shown_zoo = zoo if replicate == 0 else f"{zoo} (replicate {replicate})"
            for items in [None, *final_item_sets(rows, zoo)]:
                try:
                    table = zoo_table(df, zoo, items, ev, replicate=replicate, **where)
                except ZooError as err:  # its config is gone, or not where this process looks
                    print(f"no table for zoo {zoo}: {err}", flush=True)
                    break
                if not table.empty:
                    print(format_table(table, shown_zoo, items), flush=True)
                    printed += 1
    if not printed:
        print(f"no table: {results_path} holds no scores of {', '.join(zoos) or 'any zoo'} on a whole test "
              "split or a job's final items (a search's proxy scores are not tables)", flush=True)


def _cell(column: str, value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if column == COMPUTE:
            return f"{value:g}"
        if column.startswith("R for "):  # replicates needed: a count, or more than any search went
            return f"{value:.0f}" if math.isfinite(value) else "> 1000"
        if column in ("p", "p Holm") or column.endswith(" p") or column.startswith("p "):
            return f"{value:.3f}" if value >= 0.001 else "<0.001"
        signed = column.startswith("Δ") or "−" in column
        return f"{value:+.2f}" if "%" in column and signed else f"{value:.2f}" if "%" in column \
            else f"{value:+.3f}" if signed else f"{value:.3f}"
    return str(value)


def to_markdown(table: pd.DataFrame) -> str:
    flat = shown(table).reset_index()
    lines = ["| " + " | ".join(map(str, flat.columns)) + " |", "|" + "---|" * len(flat.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in flat.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def to_latex(table: pd.DataFrame, caption: str, label: str) -> str:
    """Every value column with its `low`, `high` and `p` columns as they are (no key columns)."""
    flat = table[[c for c in table.columns if not (c == "key" or str(c).endswith(" key"))]].reset_index()
    display = pd.DataFrame({c: [_cell(str(c), v) for v in flat[c]] for c in flat.columns})
    return display.to_latex(index=False, caption=caption, label=label)


def _store_name(results_path: str) -> str:
    """The store as the tables name it: relative to here when below here, else its file name
    (an absolute path names one machine)."""
    relative = os.path.relpath(results_path)
    return Path(results_path).name if relative.startswith("..") else relative


def write_study_tables(results_path: str, out_dir: str | os.PathLike) -> list[Path]:
    """Regenerate every study table from the store into out_dir as .md, .tex and .csv: each table
    of the first replicate zoo that has its rows (the others are in the store), the findings over
    every replicate. A table with no rows in the store has its files removed, so none is left over from
    an older store."""
    df = read_results(results_path)
    check_one_build_per_replicate(df)
    ev = Evidence.of(results_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    reps = replicates(df)
    for study in [*TABLES, FINDINGS_TABLE]:
        if study is FINDINGS_TABLE:
            table, where = study.table(df, ev), f"replicate zoos {', '.join(map(str, reps))}"
        else:
            table, replicate = _first_shown(study, df, ev, reps)
            where = f"replicate {replicate}"
        paths = {fmt: out / f"{study.name}.{fmt}" for fmt in FORMATS}
        if table.empty:
            for path in paths.values():
                path.unlink(missing_ok=True)
            continue
        table.to_csv(paths["csv"], float_format="%.4f")
        header = f"## {study.title}\n\nMade by `{study.preset}`; from `{_store_name(results_path)}`, {where}.\n\n"
        if study is FINDINGS_TABLE:
            header += FINDINGS_LEGEND + "\n\n" + ", ".join(f"{state}: {n}" for state, n in
                                                          verdict_counts(table).items()) + "\n\n"
        else:
            header += TABLE_LEGEND + "\n\n"
        paths["md"].write_text(header + to_markdown(table))
        paths["tex"].write_text(to_latex(table, study.title, f"tab:{study.name}"))
        written += paths.values()
    return written


def _first_shown(study, df: pd.DataFrame, ev, reps: list[int]):
    """The study's table at the first replicate zoo holding its rows (presets may have run on
    different replicates), and that replicate."""
    for replicate in reps:
        table = study.table(at_replicate(df, replicate), ev)
        if not table.empty:
            break
    return table, replicate


TABLE_LEGEND = ("Scores: value ± 95 % half-width (closed form from the per-item outcomes). Differences: "
                "value [95 % paired bootstrap interval], `*` where significant after Holm's correction over "
                "the column. normalized: MergeBench's normalized performance, each task's score divided by the "
                "best single model's on that task, averaged over tasks [95 % paired bootstrap interval]. Missing "
                "intervals: jobs stored without per-item outcomes.")
FINDINGS_LEGEND = ("measured: the first replicate zoo's scores. "
                   "Δ: the expected winner minus its competitor across replicate zoos (each zoo's paired "
                   "difference, pooled by random effects: DerSimonian–Laird τ, Hartung–Knapp interval on R − 1 "
                   "degrees of freedom), with its 95 % interval and p: what the verdict says of zoos built this "
                   "way, not only of these; τ: the between-zoo sd of Δ; MDE: the smallest true Δ these R zoos "
                   "find at 80 % power; R for 0.03: the zoos needed to find 0.03. Δ on these zoos: the replicates' "
                   "items as one sample (95 % paired bootstrap interval, its p and MDE): true of the zoos trained, "
                   "not of the next. A side that is the best of several is chosen on the other half of the items "
                   "it is tested on (cross-fitted). p Holm: the across-zoo p adjusted over the whole table "
                   "(family-wise, see glue_bench/findings.py); replicates: on how many zoos Δ points the expected "
                   "way, and each zoo's sign. One zoo is never significant across zoos.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print results tables from the glue_bench store (or an evidence "
                                                 "archive); with --out, write the study's tables as Markdown, "
                                                 "LaTeX and CSV.")
    parser.add_argument("--results", default=os.environ.get("GLUE_BENCH_RESULTS", DEFAULT_RESULTS))
    parser.add_argument("--zoo", action="append", help="zoo(s) to print (default: all in the store)")
    parser.add_argument("--out", metavar="DIR",
                        help=f"also write the study's tables into DIR as {', '.join(FORMATS)}, which then holds this "
                             f"store's: a study table it has no rows for is removed from DIR (the committed ones: "
                             f"--out {DEFAULT_OUT}). Without --out nothing is written")
    parser.add_argument("--archive", metavar="FILE.parquet",
                        help="also write the store's jobs and per-item outcomes as an evidence archive")
    args = parser.parse_args(argv)
    if args.archive:
        if not is_archive(args.archive):
            raise ResultsError(f"--archive {args.archive}: expected a .parquet file")
        jobs = open_store(args.results).archive(args.archive)
        print(f"wrote the evidence of {jobs} jobs to {args.archive}")
    print_tables(args.results, zoos=args.zoo)
    if args.out:
        try:
            written = write_study_tables(args.results, args.out)
        except OSError as err:
            raise ResultsError(f"--out {args.out}: cannot write the tables there ({err.strerror or err})") from None
        names = sorted({p.stem for p in written})
        print(f"wrote {len(names)} study tables ({', '.join(FORMATS)}) to {args.out}: {', '.join(names)}")


if __name__ == "__main__":
    from glue_bench.errors import entry_point

    entry_point(main)()
