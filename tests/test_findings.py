"""Findings in four states, from per-item outcomes: per-replicate paired differences pooled with
the replicate zoo as the unit of inference, Holm's correction, the minimum detectable effect across
zoos and on these zoos, a best of several cross-fitted. Each state is reached by a hand-made store whose
outcomes make it so; the numbers are checked against glue_bench.stats computed here by hand."""

import math

import numpy as np
import pytest

from glue_bench.evidence import Evidence
from glue_bench.findings import findings, verdict_counts
from glue_bench.stats import holm, min_detectable_effect, paired_se, random_effects, replicate_mde, replicates_needed
from glue_bench.tables import write_study_tables, zoo_table
from test_study import Store, mixture

LEVELS = "model-level mixture is the best level"
ROUTING = "token routing better for chat zoos, sample routing for domain experts"
N = 200


def outcomes(rate: float, seed: int, flip: float = 0.0, base=None) -> list[int]:
    """N binary outcomes at `rate`; with `base`, a copy of it whose items flip with probability `flip`
    (a candidate close to another one, as two mixtures of one zoo are)."""
    rng = np.random.default_rng(seed)
    if base is None:
        return [int(x) for x in rng.random(N) < rate]
    return [int(b) ^ int(f) for b, f in zip(base, rng.random(N) < flip)]


def add_zoo(store: Store, replicate: int, model_gain: float, sample_gain: float):
    """mini2 at one replicate: singles, FFN token / sample and model-level mixtures whose outcomes
    differ from the FFN token mixture's on chosen items."""
    rng = np.random.default_rng(100 + replicate)
    token = {t: [int(x) for x in rng.random(N) < 0.5] for t in ("arc", "mmlu")}

    def better(values, gain, seed):  # turn round(|gain| * N) failures into successes (successes into failures)
        values = list(values)
        turned = [i for i, v in enumerate(values) if v == (0 if gain > 0 else 1)]
        for i in np.random.default_rng(seed).permutation(turned)[:round(abs(gain) * N)]:
            values[i] = 1 - values[i]
        return values

    for name, rate in (("base", 0.2), ("chat_a", 0.4), ("chat_b", 0.3)):
        store.add(name, outcomes(rate, 1 + replicate), outcomes(rate, 2 + replicate), replicate=replicate)
    common = dict(method="linear", strategy="all", router="prompt", replicate=replicate)
    store.add("mixture(ffn, prompt, token)", token["arc"], token["mmlu"], mixture="ffn", config=mixture("ffn"), **common)
    store.add("mixture(ffn, prompt, sample)", better(token["arc"], sample_gain, 7), better(token["mmlu"], sample_gain, 8),
              mixture="ffn", config=mixture("ffn", "sample"), **common)
    store.add("mixture(model, prompt)", better(token["arc"], model_gain, 9), better(token["mmlu"], model_gain, 10),
              mixture="model", config=mixture("model"), **{**common, "method": "none"})


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "r.sqlite")


def add_zoos(store: Store, model_gains, sample_gains):
    for replicate, (model_gain, sample_gain) in enumerate(zip(model_gains, sample_gains)):
        add_zoo(store, replicate, model_gain=model_gain, sample_gain=sample_gain)


def test_a_large_gain_on_every_zoo_is_significant_across_zoos_and_a_small_one_within_noise(store):
    add_zoos(store, [0.15, 0.14, 0.16], [0.01, -0.01, 0.0])
    table = findings(store.df(), Evidence.of(store.path))
    levels, routing = table.loc[(LEVELS, "mini2")], table.loc[(ROUTING, "mini2 ffn")]
    assert levels["verdict"] == "agrees (significant)"      # model .15 above token on every zoo
    assert levels["Δ low"] < levels["Δ"] < levels["Δ high"] and levels["Δ low"] > 0
    assert levels["replicates"] == "3/3 agree (+ + +)"
    # chat zoo: token expected to win; sample is as good, far below what the items and zoos can see
    assert routing["verdict"] in ("inconclusive", "agrees (within noise)")
    assert routing["MDE"] > abs(routing["Δ"])


def test_one_zoo_is_never_significant_across_zoos(store):
    add_zoo(store, 0, model_gain=0.15, sample_gain=0.01)
    table = findings(store.df(), Evidence.of(store.path))
    levels = table.loc[(LEVELS, "mini2")]
    assert levels["verdict"] == "agrees (within noise; 1 zoo)"
    assert levels["Δ"] == pytest.approx(0.15) and math.isnan(levels["Δ low"]) and math.isnan(levels["p"])
    # on this one zoo its items say it plainly: the interval labelled "on these zoos"
    assert 0 < levels["Δ on these zoos low"] < 0.15 < levels["Δ on these zoos high"]
    assert levels["p on these zoos"] < 0.001
    assert table.loc[(ROUTING, "mini2 ffn"), "verdict"] == "inconclusive (1 zoo)"  # sample .01 above token


def test_a_large_gain_against_the_expectation_disagrees_significantly(store):
    add_zoos(store, [0.0, 0.0, 0.0], [0.2, 0.19, 0.21])
    table = findings(store.df(), Evidence.of(store.path))
    assert table.loc[(ROUTING, "mini2 ffn"), "verdict"] == "DISAGREES (significant)"
    # model equals token, and sample is 0.2 above: the model level is not the best
    assert table.loc[(LEVELS, "mini2"), "verdict"] == "inconclusive"
    counts = verdict_counts(table)
    assert counts["DISAGREES (significant)"] >= 1 and counts.sum() == len(table[table["verdict"] != "-"])


def _per_replicate(store, ev, a: str, b: str):
    """(Δ_r, se_r) of candidate a minus b on each replicate zoo, computed here from the outcomes."""
    df = store.df()
    found = []
    for replicate in sorted(df["replicate"].unique()):
        rows = df[df["replicate"] == replicate]
        oa, ob = (ev.outcomes(rows.loc[rows["candidate"] == c, "job_key"].iloc[0]) for c in (a, b))
        va, vb = ({t: v for t, (_, v) in o.items()} for o in (oa, ob))
        found.append((float(np.mean([np.mean(va[t] - vb[t]) for t in va])), paired_se(va, vb)))
    return found


def test_the_verdict_is_the_random_effects_test_of_the_replicates_and_holm_adjusts_over_the_table(store):
    add_zoos(store, [0.05, 0.06, 0.04], [0.03, 0.02, 0.04])
    ev = Evidence.of(store.path)
    table = findings(store.df(), ev)
    tested = table[table["p"].notna()]
    assert list(tested["p Holm"]) == pytest.approx(holm(tested["p"]))
    assert (tested["p Holm"] >= tested["p"]).all()
    # routing on a chat zoo (token - sample): the pooled test of the per-replicate differences computed here
    deltas, ses = zip(*_per_replicate(store, ev, "mixture(ffn, prompt, token)", "mixture(ffn, prompt, sample)"))
    pooled = random_effects(deltas, ses)
    row = table.loc[(ROUTING, "mini2 ffn")]
    assert (row["Δ"], row["Δ low"], row["Δ high"], row["p"], row["τ"]) == pytest.approx(
        (pooled.delta, pooled.low, pooled.high, pooled.p_value, pooled.tau))
    assert row["Δ"] == pytest.approx(-0.03, abs=0.005)  # sample .02-.04 above token: a weighted mean of them
    assert row["MDE"] == pytest.approx(replicate_mde(ses, pooled.tau, 3))
    assert row["R for 0.03"] == replicates_needed(0.03, ses, pooled.tau)
    # beside it, on these zoos: the items of the three replicates as one sample, MDE from its paired se
    assert row["MDE on these zoos"] == pytest.approx(min_detectable_effect(
        math.sqrt(sum(se * se for se in ses)) / 3), rel=1e-6)


def test_replicates_that_disagree_widen_the_interval_across_zoos(store):
    add_zoos(store, [0.10, 0.10, -0.03], [0.0, 0.0, 0.0])  # a replicate where the model level loses
    table = findings(store.df(), Evidence.of(store.path))
    row = table.loc[(LEVELS, "mini2")]
    assert row["replicates"] == "2/3 agree (+ + −)"
    assert row["τ"] > 0.03
    # on these zoos the items are sure (Δ ~0.057 on 1,200 items); across zoos the third zoo is a
    # reason for doubt: not significant
    assert row["Δ on these zoos low"] > 0 and row["p on these zoos"] < 0.001
    assert row["Δ low"] < 0 < row["Δ high"] and row["verdict"] == "agrees (within noise)"


def test_a_best_of_several_is_chosen_on_the_other_half_of_the_items(store):
    """Three mixtures, equal but for chance: the best other level is cross-fitted, so on each half of
    the items it is the level that is best on the other half (checked here item by item)."""
    rng = np.random.default_rng(5)
    for name, rate in (("base", 0.2), ("chat_a", 0.4), ("chat_b", 0.3)):
        store.add(name, outcomes(rate, 1), outcomes(rate, 2))
    common = dict(method="linear", strategy="all", router="prompt")
    levels = {}
    for level in ("ffn", "block", "model"):
        levels[level] = ([int(x) for x in rng.random(N) < 0.5], [int(x) for x in rng.random(N) < 0.5])
        store.add(f"mixture({level}, prompt)" if level == "model" else f"mixture({level}, prompt, token)",
                  *levels[level], mixture=level, config=mixture(level),
                  **({**common, "method": "none"} if level == "model" else common))
    ev = Evidence.of(store.path)
    df = store.df()
    keys = {level: df.loc[df["mixture"] == level, "job_key"].iloc[0] for level in levels}
    best = ev.best_of((keys["ffn"], keys["block"]))
    half = np.arange(N) % 2
    for task, i in (("mini_arc", 0), ("mini_mmlu", 1)):
        for h in (0, 1):
            def on_other_half(level):  # mean of the two task means on the other half
                return np.mean([np.mean(np.array(levels[level][j])[half == 1 - h]) for j in (0, 1)])
            chosen = max(("ffn", "block"), key=on_other_half)
            assert list(best[task][1][half == h]) == list(np.array(levels[chosen][i])[half == h])
    row = findings(df, ev).loc[(LEVELS, "mini2")]
    arc_m, mmlu_m = (np.array(v, dtype=float) for v in levels["model"])
    expected = np.mean([np.mean(arc_m - best["mini_arc"][1]), np.mean(mmlu_m - best["mini_mmlu"][1])])
    assert row["Δ"] == pytest.approx(expected)


def test_cross_fitting_removes_the_winners_bias_of_a_best_of_three():
    """Simulated: four candidates equal in truth, the expected side the best of three. Chosen on the
    tested items, the best of three beats the fourth in most runs; cross-fitted, about half."""
    from glue_bench.evidence import Evidence

    class Outcomes(Evidence):
        def __init__(self, jobs):
            self.jobs = jobs

        def outcomes(self, key):
            return self.jobs[key]

    rng = np.random.default_rng(0)
    naive = crossed = 0
    runs = 300
    for _ in range(runs):
        jobs = {k: {"t": (np.arange(200), (rng.random(200) < 0.5).astype(float))} for k in "abcd"}
        ev = Outcomes(jobs)
        best_same_items = max("abc", key=lambda k: jobs[k]["t"][1].mean())
        naive += jobs[best_same_items]["t"][1].mean() > jobs["d"]["t"][1].mean()
        crossed += ev.best_of(("a", "b", "c"))["t"][1].mean() > jobs["d"]["t"][1].mean()
    assert naive / runs > 0.65
    assert 0.35 < crossed / runs < 0.6


def test_written_tables_carry_intervals_and_findings_their_counts(store, tmp_path):
    add_zoos(store, [0.15, 0.15, 0.15], [0.0, 0.0, 0.0])
    store.add("linear(mini2)", outcomes(0.3, 3), outcomes(0.3, 4), method="linear", strategy="all",
              config={"strategy": {"models": None}})
    out = tmp_path / "tables"
    write_study_tables(str(store.path), out)
    md = (out / "findings.md").read_text()
    assert "agrees (significant): 1" in md and "r.sqlite" in md and str(tmp_path) not in md
    csv = (out / "merge_methods.csv").read_text().splitlines()[0]
    assert "avg low" in csv and "Δ best single high" in csv and "Δ best single p" in csv
    merge_md = (out / "merge_methods.md").read_text()
    assert " ± " in merge_md and "[" in merge_md  # a score's half-width, a difference's interval
    assert "avg low" in (out / "merge_methods.tex").read_text()
    table = zoo_table(store.df(), "mini2", ev=Evidence.of(store.path))
    linear = table.loc["linear(mini2)"]
    assert linear["Δ best single low"] < linear["Δ best single"] < linear["Δ best single high"]
    assert not math.isnan(linear["Δ best single p"])
