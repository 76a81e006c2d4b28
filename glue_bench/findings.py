"""The study's findings (../shared/reference/FINDINGS.md) checked, in shape, against the study
tables built from the store: one row per (finding, zoo or case) with what was measured and whether
it agrees. A finding whose table has no rows yet is listed as "not run"."""

from __future__ import annotations

import pandas as pd

from glue_bench import study

# zoos of near-duplicate chat models (the study's which2 and which4-chat, and their mirrors); the
# other zoos are domain experts
CHAT_ZOOS = {"mini2", "mini4_chat", "which2", "which4_chat"}
# models trained far from their init (CodeLlama's case): merging them is expected to fail
FAR_TRAINED = {"code_far", "code_far_instruct", "codellama/CodeLlama-7b-Instruct-hf", "ise-uiuc/Magicoder-S-CL-7B"}


def _verdict(agrees: bool) -> str:
    return "agrees" if agrees else "DISAGREES"


def _best(values: pd.Series) -> str:
    return values.idxmax() if not values.dropna().empty else ""


def failure_case(t):
    for (zoo, merge), row in t.iterrows():
        far = any(name in merge for name in FAR_TRAINED)
        expected = "below the better parent" if far else "above both parents"
        yield zoo + ": " + merge, expected, f"Δ better parent {row['Δ better parent']:+.3f}", \
            (row["Δ better parent"] < 0) == far


def heuristics(t):
    for zoo in t.columns:
        rows = t[zoo][[i for i in t.index if i.startswith("heuristic_") and "evolutionary" not in i]].dropna()
        if rows.empty:
            continue
        expected = "heuristic_average" if study.zoo_size(zoo) <= 4 else "heuristic_coefficient"
        top = rows[rows == rows.max()].index
        yield zoo, f"{expected} best", f"best: {', '.join(top)} ({rows.max():.3f})", \
            any(label.startswith(expected) for label in top)


def _method(label: str) -> str:
    return label.split("(", 1)[1].split(")", 1)[0]


def warm_start(t):
    for zoo in t.columns:
        for warm_label in [i for i in t.index if i.startswith("heuristic_evolutionary(")]:
            method = _method(warm_label)  # against CMA-ES alone with the same merge method
            cold = t[zoo][[i for i in t.index if i.startswith(f"evolutionary({method})")]].dropna()
            warm = t[zoo].get(warm_label)
            if pd.notna(warm) and len(cold):
                yield f"{zoo} {method}", "heuristic + CMA-ES ≥ CMA-ES", f"{warm:.3f} vs {cold.max():.3f}", \
                    warm >= cold.max()


def simple_methods(t):
    for zoo in t.columns:
        rows = t[zoo][[i for i in t.index if i.startswith("evolutionary(")]].dropna()
        if len(rows) > 1:
            best = _best(rows)
            yield zoo, "linear or task arithmetic best", f"best: {best} ({rows.max():.3f})", \
                best.startswith(("evolutionary(linear", "evolutionary(task_arithmetic"))


def model_level(t):
    for zoo in t.columns:
        levels = t[zoo][[i for i in t.index if i in ("ffn", "block", "model")]].dropna()
        if len(levels) > 1:
            yield zoo, "model level best", " / ".join(f"{k} {v:.3f}" for k, v in levels.items()), \
                levels.get("model", -1) == levels.max()


def routing(t):
    for zoo in t.columns:
        for level in ("ffn", "block"):
            token, sample = t[zoo].get(f"{level}, token"), t[zoo].get(f"{level}, sample")
            if pd.notna(token) and pd.notna(sample):
                expected = "token" if zoo in CHAT_ZOOS else "sample"
                yield f"{zoo} {level}", f"{expected} better", f"token {token:.3f} / sample {sample:.3f}", \
                    (token >= sample) == (expected == "token")


def hybrid(t):
    for zoo in t.columns:
        for level in ("ffn", "block"):
            rows = t[zoo][[i for i in t.index if i.startswith(f"{level}, dense_layers")]].dropna()
            dense0 = rows.get(f"{level}, dense_layers 0")
            if dense0 is not None and len(rows) > 1:
                hybrid_best = rows.drop(f"{level}, dense_layers 0").max()
                yield f"{zoo} {level}", "dense first layers help", f"{hybrid_best:.3f} vs {dense0:.3f} (dense 0)", \
                    hybrid_best > dense0


def merge_or_mix(t):
    for zoo, row in t.iterrows():
        expected = "merge" if zoo in CHAT_ZOOS else "mixture"
        yield zoo, f"{expected} wins", f"merge {row['best merge']:.3f} / mixture {row['best mixture']:.3f}", \
            (row["best merge"] >= row["best mixture"]) == (expected == "merge")


def recipe_gain(t):
    for (zoo, candidate), row in t.iterrows():
        if candidate.startswith("glue_recipe("):
            yield zoo, f"+{study.STUDY_RECIPE_GAIN} % over the best single", f"{row['gain %']:+.1f} %", \
                row["gain %"] > 0


CHECKS = [  # (finding, study table, check)
    ("merging near-duplicates beats both; a far-trained model breaks the merge", "failure_case", failure_case),
    ("heuristic-average is best on a 4-model zoo, heuristic-coefficient on larger ones", "strategies", heuristics),
    ("heuristic search then CMA-ES beats CMA-ES alone", "heuristic_evolution", warm_start),
    ("simple methods (linear, task arithmetic) work best with CMA-ES", "method_evolution", simple_methods),
    ("model-level mixture is the best level", "mixture_levels", model_level),
    ("token routing better for chat zoos, sample routing for domain experts", "mixture_routing", routing),
    ("keeping the first layers dense improves a mixture", "mixture_hybrid", hybrid),
    ("merging wins on near-homogeneous zoos, mixture on domain experts", "merge_vs_mixture", merge_or_mix),
    ("the Model-GLUE recipe beats the best single model", "recipe", recipe_gain),
]


def findings(df: pd.DataFrame) -> pd.DataFrame:
    """The study's findings, each checked where the store has its table's rows."""
    builders = {t.name: t.build for t in study.TABLES}
    rows = []
    for finding, table, check in CHECKS:
        checked = list(check(builders[table](df)))
        for where, expected, measured, agrees in checked:
            rows.append({"finding": finding, "where": where, "expected": expected, "measured": measured,
                         "verdict": _verdict(agrees)})
        if not checked:
            rows.append({"finding": finding, "where": "-", "expected": "-", "measured": f"not run ({table})",
                         "verdict": "-"})
    return pd.DataFrame(rows).set_index(["finding", "where"])


FINDINGS_TABLE = study.StudyTable("findings", findings, "every preset")
