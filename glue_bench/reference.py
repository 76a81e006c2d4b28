"""Reference numbers kept in results/reference/ (sources and dates in its README.md):
- study_reported.csv: numbers the Model-GLUE study reports (its headline recipe gain);
- modelglue_model_acc.csv: the study release's proxy scores of its single models (fractions);
- open_llm_leaderboard_v1.csv: Open LLM Leaderboard v1 scores of the which-zoo models (percent).
Measured which-zoo singles are matched to them by task: the paper eval (conf/eval/paper.yaml) runs
the tinyBenchmarks the release used, which estimate the leaderboard's full benchmarks.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "results" / "reference"

# our task -> (column in modelglue_model_acc.csv, column in open_llm_leaderboard_v1.csv)
REFERENCE_COLUMNS = {
    "tinyArc": ("arc_challenge", "arc"),
    "tinyWinogrande": ("winogrande", "winogrande"),
    "tinyMMLU": ("mmlu_tiny", "mmlu"),
    "tinyGSM8k": ("gsm8k", "gsm8k"),
}


def _study_recipe_gain() -> float:
    reported = pd.read_csv(REFERENCE_DIR / "study_reported.csv")
    return float(reported.loc[reported["table"] == "recipe", "value"].iloc[0])


STUDY_RECIPE_GAIN = _study_recipe_gain()   # % over the best single model, which16


def primary_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows whose metric is their task's primary one (a boolean Series: a list, empty, would
    select columns, not rows)."""
    from glue_bench.evaluate import PRIMARY_METRIC

    return df[pd.Series([PRIMARY_METRIC.get(t) == m for t, m in zip(df["task"], df["metric"])],
                        index=df.index, dtype=bool)]


def release_and_leaderboard(df: pd.DataFrame, reference_dir: Path = REFERENCE_DIR) -> pd.DataFrame:
    """Single hub models: the score measured here (whole test split, primary metric) beside the
    release's proxy score and the leaderboard's, with the differences; rows (model, task)."""
    release = pd.read_csv(reference_dir / "modelglue_model_acc.csv").set_index("model_name")
    board = pd.read_csv(reference_dir / "open_llm_leaderboard_v1.csv").set_index("model")
    singles = df[(df["method"] == "none") & df["items"].isna() & (df["mixture"].fillna("none") == "none")]
    singles = primary_rows(singles)
    measured = singles.groupby(["candidate", "task"])["value"].first()
    rows = []
    for model in dict.fromkeys([*release.index, *board.index]):
        for task, (release_column, board_column) in REFERENCE_COLUMNS.items():
            value = measured.get((model, task), float("nan"))
            ref = release[release_column].get(model, float("nan"))
            lb = board[board_column].get(model, float("nan")) / 100
            if pd.isna(ref) and pd.isna(lb):
                continue
            rows.append({"model": model, "task": task, "measured": value, "release": ref,
                         "Δ release": value - ref, "leaderboard v1": lb, "Δ leaderboard": value - lb})
    return pd.DataFrame(rows).set_index(["model", "task"])
