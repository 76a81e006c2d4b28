"""The study's findings (../shared/reference/FINDINGS.md) checked, in shape, against the study
tables built from the store, with the evidence each verdict rests on.

Every check reads one study table and yields claims "a beats b" (the merge beats its better parent,
the model-level mixture beats the best other level...), each naming the two jobs compared, once per
replicate zoo the store holds. A claim is tested with the replicate zoo as the unit of inference
(glue_bench.evidence.across_replicates): per replicate r the paired difference Δ_r of the two jobs
on their items, with its items-only standard error; the R differences pooled as a random-effects
model (DerSimonian–Laird τ², Hartung–Knapp–Sidik–Jonkman interval on R − 1 degrees of freedom;
glue_bench.stats.random_effects). So a verdict is about zoos built the way the mini zoo is, not
about the R zoos that were trained: pooling the replicates' items as one sample (zoos fixed) calls
a null difference "significant" in ~12 % of cases at a between-zoo sd of 0.01 with three
replicates. That items-only interval is kept beside it, labelled "on these zoos". A claim lands in
one of four states:

    agrees (significant)      the difference is in the expected direction and significant
    agrees (within noise)     in the expected direction, not significant
    inconclusive              against the expected direction, not significant
    DISAGREES (significant)   against the expected direction and significant

"Significant" is across zoos, after Holm's correction over every verdict of the table
(p_Holm < 0.05): the table makes some thirty claims that a reader takes one by one, so the
guarantee wanted is that *any* verdict marked significant is wrong with probability under 5 %
(family-wise error), and Holm gives it whatever the dependence between the verdicts (they share
candidates); Benjamini–Hochberg would only bound the share of wrong ones, and needs positive
dependence to do that. A claim measured on one replicate zoo cannot be significant across zoos:
it is "agrees (within noise; 1 zoo)" or "inconclusive (1 zoo)" whatever its items say (they are in
the "on these zoos" columns). A claim whose jobs have no per-item outcomes (a store written before
they were kept) keeps its point verdict, marked "(no interval)". A finding whose table has no rows
yet is "not run".

Where a side is "the best of several" (the best other level, the best merge, the best hybrid), it
is chosen on other items than it is tested on (glue_bench.evidence.Evidence.best_of: cross-fitted
on two halves of every task's items), so neither side gains from being the maximum of noisy scores.

Power at the replicate level: "MDE" is the smallest true Δ the verdict's R replicates detect at 80 %
power given the τ̂ and items-only standard errors measured (glue_bench.stats.replicate_mde), and
"R for 0.03" the replicates needed to detect 0.03 (the effect the mini splits are sized for).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from glue_bench import study
from glue_bench.evidence import Evidence
from glue_bench.stats import holm, min_detectable_effect, replicate_mde, replicates_needed

# zoos of near-duplicate chat models (the study's which2 and which4-chat, and their mirrors); the
# other zoos are domain experts
CHAT_ZOOS = {"mini2", "mini4_chat", "which2", "which4_chat"}
# models trained far from their init (CodeLlama's case): merging them is expected to fail
FAR_TRAINED = {"code_far", "code_far_instruct", "codellama/CodeLlama-7b-Instruct-hf", "ise-uiuc/Magicoder-S-CL-7B"}
ALPHA = 0.05
TARGET_EFFECT = 0.03  # the effect the mini splits were sized to see: "R for 0.03" is the R that sees it


@dataclass(frozen=True)
class Claim:
    """`a` is expected to score above `b` (at least as high, for `ties_agree`)."""
    where: str
    expected: str
    measured: str
    a: study.Cell
    b: study.Cell
    ties_agree: bool = False
    a_of: tuple[str, ...] = ()   # the jobs `a` is the best of, when it is the best of several
    b_of: tuple[str, ...] = ()

    @property
    def sides(self):
        """The two sides as glue_bench.evidence tests them: a job key, or the keys of a best of several."""
        return (self.a_of if len(self.a_of) > 1 else self.a.key, self.b_of if len(self.b_of) > 1 else self.b.key)

    @property
    def delta(self) -> float:
        return self.a.value - self.b.value

    @property
    def agrees(self) -> bool:
        return self.delta > 0 or (self.ties_agree and self.delta == 0)


@dataclass(frozen=True)
class Best:
    """The best of several candidates on the table's scores (what `measured` shows), with the jobs
    it was chosen from (what the test cross-fits)."""
    label: str
    cell: study.Cell
    of: tuple[str, ...]


def _best(cells: dict[str, study.Cell], labels) -> Best | None:
    chosen = [(label, cells[label]) for label in labels if not math.isnan(cells[label].value)]
    if not chosen:
        return None
    label, cell = max(chosen, key=lambda kv: kv[1].value)
    return Best(label, cell, tuple(c.key for _, c in chosen))


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
            yield Claim(column, f"{expected} best", f"{mine.label} {mine.cell.value:.3f} / {others.label} "
                        f"{others.cell.value:.3f}", mine.cell, others.cell, a_of=mine.of, b_of=others.of)


def _method(label: str) -> str:
    return label.split("(", 1)[1].split(")", 1)[0]


def warm_start(df):
    for column, cells in study.selective_cells(df, study.in_heuristic_evolution).items():
        for warm_label in [label for label in cells if label.startswith("heuristic_evolutionary(")]:
            method = _method(warm_label)  # against CMA-ES alone with the same merge method
            cold = _best(cells, [label for label in cells if label.startswith(f"evolutionary({method})")])
            if cold and not math.isnan(cells[warm_label].value):
                yield Claim(f"{column} {method}", "heuristic + CMA-ES ≥ CMA-ES",
                            f"{cells[warm_label].value:.3f} vs {cold.cell.value:.3f}", cells[warm_label], cold.cell,
                            ties_agree=True, b_of=cold.of)


SIMPLE = ("evolutionary(linear", "evolutionary(task_arithmetic")


def simple_methods(df):
    for column, cells in study.selective_cells(df, study.in_method_evolution).items():
        rows = [label for label in cells if label.startswith("evolutionary(")]
        simple = _best(cells, [label for label in rows if label.startswith(SIMPLE)])
        other = _best(cells, [label for label in rows if not label.startswith(SIMPLE)])
        if simple and other:
            yield Claim(column, "linear or task arithmetic best",
                        f"{simple.label} {simple.cell.value:.3f} / {other.label} {other.cell.value:.3f}",
                        simple.cell, other.cell, a_of=simple.of, b_of=other.of)


def model_level(df):
    for zoo, cells in study.mixture_cells(df, ("level",)).items():
        other = _best(cells, [level for level in ("ffn", "block") if level in cells])
        if "model" in cells and other:
            yield Claim(zoo, "model level best",
                        " / ".join(f"{k} {cells[k].value:.3f}" for k in ("ffn", "block", "model") if k in cells),
                        cells["model"], other.cell, b_of=other.of)


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
                            f"{hybrids.label.split(', ')[1]} {hybrids.cell.value:.3f} vs dense 0 {dense0.value:.3f}",
                            hybrids.cell, dense0, a_of=hybrids.of)


def merge_or_mix(df):
    for zoo, ((merge, merges), (mixture, mixtures)) in study.best_merge_and_mixture(df).items():
        chat = zoo in CHAT_ZOOS
        (a, a_of), (b, b_of) = ((merge, merges), (mixture, mixtures)) if chat else ((mixture, mixtures), (merge, merges))
        yield Claim(zoo, f"{'merge' if chat else 'mixture'} wins",
                    f"merge {merge.value:.3f} / mixture {mixture.value:.3f}", a, b, a_of=a_of, b_of=b_of)


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

def verdict(agrees: bool, p_holm: float, replicates: int = 2, tested: bool = True) -> str:
    """One of the four states (see the module's doc). `agrees`: the measured difference points the
    expected way; `replicates`: the zoos it rests on (one zoo cannot make it significant across
    zoos); `tested`: whether per-item outcomes gave it an interval (else a point verdict)."""
    if not tested or (replicates > 1 and math.isnan(p_holm)):
        return ("agrees" if agrees else "DISAGREES") + " (no interval)"
    if replicates == 1:
        return "agrees (within noise; 1 zoo)" if agrees else "inconclusive (1 zoo)"
    if p_holm < ALPHA:
        return "agrees (significant)" if agrees else "DISAGREES (significant)"
    return "agrees (within noise)" if agrees else "inconclusive"


R_NEEDED = f"R for {TARGET_EFFECT}"
COLUMNS = ["finding", "where", "expected", "measured", "Δ", "Δ low", "Δ high", "p", "τ", "MDE", R_NEEDED,
           "Δ on these zoos", "Δ on these zoos low", "Δ on these zoos high", "p on these zoos", "MDE on these zoos",
           "replicates", "agrees", "zoos"]


def _signs(deltas) -> str:
    return " ".join("+" if d > 0 else "−" if d < 0 else "0" for d in deltas)


def _tested(claims: list[Claim], ev: Evidence | None) -> dict:
    """One verdict's evidence, one claim per replicate zoo: the expected winner minus its competitor
    across zoos (random effects) and on these zoos (items only), their intervals, p-values and
    minimum detectable effects at 80 % power."""
    known = ev is not None and all(c.a.key and c.b.key for c in claims)
    found = ev.across_replicates([c.sides for c in claims]) if known else None
    deltas = found.deltas if found else tuple(c.delta for c in claims)
    ties_agree = claims[0].ties_agree

    def agrees(delta: float) -> bool:
        return delta > 0 or (ties_agree and delta == 0)

    row = {"replicates": f"{sum(map(agrees, deltas))}/{len(deltas)} agree ({_signs(deltas)})", "zoos": len(deltas)}
    if found is None:
        delta = sum(deltas) / len(deltas)
        return {**row, "Δ": delta, "agrees": agrees(delta)}
    items = found.on_these_zoos
    row.update({"Δ on these zoos": items.delta, "Δ on these zoos low": items.low, "Δ on these zoos high": items.high,
                "p on these zoos": items.p_value, "MDE on these zoos": min_detectable_effect(items.se)})
    across = found.across_zoos
    if across is None:  # one replicate: its own difference, no interval across zoos
        return {**row, "Δ": deltas[0], "agrees": agrees(deltas[0])}
    needed = replicates_needed(TARGET_EFFECT, across.ses, across.tau)
    return {**row, "Δ": across.delta, "Δ low": across.low, "Δ high": across.high, "p": across.p_value,
            "τ": across.tau, "MDE": replicate_mde(across.ses, across.tau, across.replicates),
            R_NEEDED: float(needed) if needed else math.inf, "agrees": agrees(across.delta)}


def findings(df: pd.DataFrame, ev: Evidence | None = None) -> pd.DataFrame:
    """The study's findings, each checked where the store has its table's rows, across the replicate
    zoos the store holds.

    `ev`: the store's per-item outcomes (without it, point verdicts only)."""
    claims: dict[tuple[str, str], list[Claim]] = {}
    not_run = {finding: table for finding, table, _ in CHECKS}
    for replicate in study.replicates(df):
        rows = study.at_replicate(df, replicate)
        for finding, preset, check in CHECKS:
            for claim in check(study.study_table(preset).rows(rows)):
                claims.setdefault((finding, claim.where), []).append(claim)
                not_run.pop(finding, None)
    records = []
    for (finding, where), found in claims.items():
        first = found[0]
        records.append({"finding": finding, "where": where, "expected": first.expected, "measured": first.measured,
                        **_tested(found, ev)})
    for finding, table in not_run.items():
        records.append({"finding": finding, "where": "-", "expected": "-", "measured": f"not run ({table})"})
    table = pd.DataFrame(records, columns=COLUMNS)
    table["p Holm"] = holm(table["p"])
    tested = table["Δ on these zoos"].notna()
    table["verdict"] = [verdict(agrees, p, int(zoos), was_tested) if isinstance(r, str) else "-"
                        for agrees, p, r, zoos, was_tested in zip(table.pop("agrees"), table["p Holm"],
                                                                  table["replicates"], table.pop("zoos"), tested)]
    order = {finding: i for i, (finding, _, _) in enumerate(CHECKS)}
    table = table.sort_values("finding", key=lambda f: f.map(order), kind="stable")
    return table.set_index(["finding", "where"])


def verdict_counts(table: pd.DataFrame) -> pd.Series:
    """How many verdicts in each state (the findings table's summary line)."""
    return table["verdict"][table["verdict"] != "-"].value_counts()


FINDINGS_TABLE = study.StudyTable("findings", findings, "every preset", by_preset=False)  # each check its table's preset
