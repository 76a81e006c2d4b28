"""The study's findings (../shared/reference/FINDINGS.md) checked, in shape, against the study
tables built from the store, with the evidence each verdict rests on.

Every check reads one study table and yields claims "a beats b" (the merge beats its better parent,
the model-level mixture beats the best other level...), each naming the two jobs compared. A claim
is tested on the per-item differences of the two jobs (paired bootstrap, stratified per task;
glue_bench.stats), pooled over the replicate zoos the store holds, and lands in one of four states:

    agrees (significant)      the difference is in the expected direction and significant
    agrees (within noise)     in the expected direction, not significant
    inconclusive              against the expected direction, not significant
    DISAGREES (significant)   against the expected direction and significant

"Significant" is after Holm's correction over every verdict of the table (p_Holm < 0.05): the
table makes some thirty claims that a reader takes one by one, so the guarantee wanted is that
*any* verdict marked significant is wrong with probability under 5 % (family-wise error), and
Holm gives it whatever the dependence between the verdicts (they share candidates); Benjamini–
Hochberg would only bound the share of wrong ones, and needs positive dependence to do that.
A claim whose jobs have no per-item outcomes (a store written before they were kept) keeps its
point verdict, marked "(no interval)". A finding whose table has no rows yet is "not run".

Where a side is "the best of several" (the best other level, the best merge), it is chosen on the
same items: that favours the competitor, so "agrees" errs on the side of caution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from glue_bench import study
from glue_bench.evidence import Evidence
from glue_bench.stats import holm, min_detectable_effect

# zoos of near-duplicate chat models (the study's which2 and which4-chat, and their mirrors); the
# other zoos are domain experts
CHAT_ZOOS = {"mini2", "mini4_chat", "which2", "which4_chat"}
# models trained far from their init (CodeLlama's case): merging them is expected to fail
FAR_TRAINED = {"code_far", "code_far_instruct", "codellama/CodeLlama-7b-Instruct-hf", "ise-uiuc/Magicoder-S-CL-7B"}
ALPHA = 0.05


@dataclass(frozen=True)
class Claim:
    """`a` is expected to score above `b` (at least as high, for `ties_agree`)."""
    where: str
    expected: str
    measured: str
    a: study.Cell
    b: study.Cell
    ties_agree: bool = False

    @property
    def delta(self) -> float:
        return self.a.value - self.b.value

    @property
    def agrees(self) -> bool:
        return self.delta > 0 or (self.ties_agree and self.delta == 0)


def _best(cells: dict[str, study.Cell], labels) -> tuple[str, study.Cell] | None:
    chosen = [(label, cells[label]) for label in labels if not math.isnan(cells[label].value)]
    return max(chosen, key=lambda kv: kv[1].value) if chosen else None


# ---- the checks: one study table each -> claims ----------------------------------------------------

def failure_case(df):
    table = study.failure_case(df)
    for (zoo, merge), row in table.iterrows():
        merged = study.Cell(row["avg"], math.nan, row["key"])
        parent = study.Cell(row["parent avg"], math.nan, row["parent key"])
        far = any(name in merge for name in FAR_TRAINED)
        measured = f"Δ better parent {row['Δ better parent']:+.3f}"
        if far:
            yield Claim(f"{zoo}: {merge}", "below the better parent", measured, parent, merged)
        else:
            yield Claim(f"{zoo}: {merge}", "above both parents", measured, merged, parent)


def heuristics(df):
    for column, cells in study.selective_cells(df, study.in_strategies).items():
        rows = [label for label in cells if label.startswith("heuristic_") and "evolutionary" not in label]
        expected = "heuristic_average" if study.zoo_size(column.split()[0]) <= 4 else "heuristic_coefficient"
        mine = _best(cells, [label for label in rows if label.startswith(expected)])
        others = _best(cells, [label for label in rows if not label.startswith(expected)])
        if mine and others:
            yield Claim(column, f"{expected} best", f"{mine[0]} {mine[1].value:.3f} / {others[0]} {others[1].value:.3f}",
                        mine[1], others[1])


def _method(label: str) -> str:
    return label.split("(", 1)[1].split(")", 1)[0]


def warm_start(df):
    for column, cells in study.selective_cells(df, study.in_heuristic_evolution).items():
        for warm_label in [label for label in cells if label.startswith("heuristic_evolutionary(")]:
            method = _method(warm_label)  # against CMA-ES alone with the same merge method
            cold = _best(cells, [label for label in cells if label.startswith(f"evolutionary({method})")])
            if cold and not math.isnan(cells[warm_label].value):
                yield Claim(f"{column} {method}", "heuristic + CMA-ES ≥ CMA-ES",
                            f"{cells[warm_label].value:.3f} vs {cold[1].value:.3f}", cells[warm_label], cold[1],
                            ties_agree=True)


SIMPLE = ("evolutionary(linear", "evolutionary(task_arithmetic")


def simple_methods(df):
    for column, cells in study.selective_cells(df, study.in_method_evolution).items():
        rows = [label for label in cells if label.startswith("evolutionary(")]
        simple = _best(cells, [label for label in rows if label.startswith(SIMPLE)])
        other = _best(cells, [label for label in rows if not label.startswith(SIMPLE)])
        if simple and other:
            yield Claim(column, "linear or task arithmetic best",
                        f"{simple[0]} {simple[1].value:.3f} / {other[0]} {other[1].value:.3f}", simple[1], other[1])


def model_level(df):
    for zoo, cells in study.mixture_cells(df, ("level",)).items():
        other = _best(cells, [level for level in ("ffn", "block") if level in cells])
        if "model" in cells and other:
            yield Claim(zoo, "model level best",
                        " / ".join(f"{k} {cells[k].value:.3f}" for k in ("ffn", "block", "model") if k in cells),
                        cells["model"], other[1])


def routing(df):
    for zoo, cells in study.mixture_cells(df, ("routing",), levels=("ffn", "block")).items():
        for level in ("ffn", "block"):
            token, sample = cells.get(f"{level}, token"), cells.get(f"{level}, sample")
            if token and sample:
                chat = zoo in CHAT_ZOOS
                yield Claim(f"{zoo} {level}", f"{'token' if chat else 'sample'} better",
                            f"token {token.value:.3f} / sample {sample.value:.3f}",
                            *((token, sample) if chat else (sample, token)))


def hybrid(df):
    for zoo, cells in study.mixture_cells(df, ("dense_layers",), levels=("ffn", "block")).items():
        for level in ("ffn", "block"):
            dense0 = cells.get(f"{level}, dense_layers 0")
            hybrids = _best(cells, [label for label in cells if label.startswith(f"{level}, dense_layers")
                                    and label != f"{level}, dense_layers 0"])
            if dense0 and hybrids:
                yield Claim(f"{zoo} {level}", "dense first layers help",
                            f"{hybrids[0].split(', ')[1]} {hybrids[1].value:.3f} vs dense 0 {dense0.value:.3f}",
                            hybrids[1], dense0)


def merge_or_mix(df):
    for zoo, (merge, mixture) in study.best_merge_and_mixture(df).items():
        chat = zoo in CHAT_ZOOS
        yield Claim(zoo, f"{'merge' if chat else 'mixture'} wins",
                    f"merge {merge.value:.3f} / mixture {mixture.value:.3f}",
                    *((merge, mixture) if chat else (mixture, merge)))


def recipe_gain(df):
    table = study.recipe(df)
    for (zoo, candidate), row in table.iterrows():
        if candidate.startswith("glue_recipe("):
            best = study.Cell(row["avg"] - row["Δ best single"], math.nan, row["best single key"])
            yield Claim(zoo, f"+{study.STUDY_RECIPE_GAIN} % over the best single", f"{row['gain %']:+.1f} %",
                        study.Cell(row["avg"], math.nan, row["key"]), best)


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


# ---- verdicts --------------------------------------------------------------------------------------

def verdict(agrees: bool, p_holm: float) -> str:
    """One of the four states (see the module's doc); a point verdict where there is no p-value.
    `agrees`: the measured difference points the expected way."""
    if math.isnan(p_holm):
        return ("agrees" if agrees else "DISAGREES") + " (no interval)"
    if p_holm < ALPHA:
        return "agrees (significant)" if agrees else "DISAGREES (significant)"
    return "agrees (within noise)" if agrees else "inconclusive"


def _tested(claims: list[Claim], ev: Evidence | None) -> dict:
    """One verdict's evidence, pooled over its replicates: the paired difference of expected minus
    competitor, its interval, p-value and minimum detectable effect at 80 % power."""
    pairs = [(c.a.key, c.b.key) for c in claims]
    found = ev.paired(pairs) if ev is not None and all(a and b for a, b in pairs) else None
    delta = found.delta if found else sum(c.delta for c in claims) / len(claims)
    return {"Δ": delta, "agrees": delta > 0 or (claims[0].ties_agree and delta == 0), "Δ low": found.low if found else math.nan, "Δ high": found.high if found else math.nan,
            "p": found.p_value if found else math.nan,
            "MDE": min_detectable_effect(found.se) if found else math.nan,
            "replicates": f"{sum(c.agrees for c in claims)}/{len(claims)} agree"}


def findings(df: pd.DataFrame, ev: Evidence | None = None) -> pd.DataFrame:
    """The study's findings, each checked where the store has its table's rows, on every replicate
    zoo the store holds.

    `ev`: the store's per-item outcomes (without it, point verdicts only)."""
    claims: dict[tuple[str, str], list[Claim]] = {}
    not_run = {finding: table for finding, table, _ in CHECKS}
    for replicate in study.replicates(df):
        rows = study.at_replicate(df, replicate)
        for finding, _, check in CHECKS:
            for claim in check(rows):
                claims.setdefault((finding, claim.where), []).append(claim)
                not_run.pop(finding, None)
    records = []
    for (finding, where), found in claims.items():
        first = found[0]
        records.append({"finding": finding, "where": where, "expected": first.expected, "measured": first.measured,
                        **_tested(found, ev)})
    for finding, table in not_run.items():
        records.append({"finding": finding, "where": "-", "expected": "-", "measured": f"not run ({table})"})
    table = pd.DataFrame(records, columns=["finding", "where", "expected", "measured", "Δ", "Δ low", "Δ high",
                                           "p", "MDE", "replicates", "agrees"])
    table["p Holm"] = holm(table["p"])
    table["verdict"] = [verdict(agrees, p) if isinstance(r, str) else "-"
                        for agrees, p, r in zip(table.pop("agrees"), table["p Holm"], table["replicates"])]
    order = {finding: i for i, (finding, _, _) in enumerate(CHECKS)}
    table = table.sort_values("finding", key=lambda f: f.map(order), kind="stable")
    return table.set_index(["finding", "where"])


def verdict_counts(table: pd.DataFrame) -> pd.Series:
    """How many verdicts in each state (the findings table's summary line)."""
    return table["verdict"][table["verdict"] != "-"].value_counts()


FINDINGS_TABLE = study.StudyTable("findings", findings, "every preset")
