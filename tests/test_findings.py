"""Findings in four states, from per-item outcomes: paired differences, Holm's correction, the
minimum detectable effect, replicate zoos pooled. Each state is reached by a hand-made store whose
outcomes make it so; the numbers are checked against glue_bench.stats computed here by hand."""

import math

import numpy as np
import pytest

from glue_bench.evidence import Evidence
from glue_bench.findings import findings, verdict_counts
from glue_bench.stats import holm, min_detectable_effect, paired_se
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


def test_a_large_paired_gain_is_significant_and_a_small_one_within_noise(store):
    add_zoo(store, 0, model_gain=0.15, sample_gain=0.01)
    table = findings(store.df(), Evidence.of(store.path))
    levels, routing = table.loc[(LEVELS, "mini2")], table.loc[(ROUTING, "mini2 ffn")]
    assert levels["verdict"] == "agrees (significant)"      # model .15 above token on the same items
    assert levels["Δ"] == pytest.approx(0.15) and levels["Δ low"] < 0.15 < levels["Δ high"]
    # chat zoo: token expected to win; sample is 0.01 better, far below what 200 items per task can see
    assert routing["verdict"] == "inconclusive"
    assert routing["Δ"] == pytest.approx(-0.01)
    assert routing["MDE"] > 0.01


def test_a_large_gain_against_the_expectation_disagrees_significantly(store):
    add_zoo(store, 0, model_gain=0.0, sample_gain=0.2)
    table = findings(store.df(), Evidence.of(store.path))
    assert table.loc[(ROUTING, "mini2 ffn"), "verdict"] == "DISAGREES (significant)"
    # model equals token, and sample is 0.2 above: the model level is not the best
    assert table.loc[(LEVELS, "mini2"), "verdict"] == "inconclusive"
    counts = verdict_counts(table)
    assert counts["DISAGREES (significant)"] >= 1 and counts.sum() == len(table[table["verdict"] != "-"])


def test_holm_adjusts_over_the_table_and_mde_is_from_the_paired_se(store):
    add_zoo(store, 0, model_gain=0.05, sample_gain=0.03)
    ev = Evidence.of(store.path)
    table = findings(store.df(), ev)
    tested = table[table["p"].notna()]
    assert list(tested["p Holm"]) == pytest.approx(holm(tested["p"]))
    assert (tested["p Holm"] >= tested["p"]).all()
    # the routing verdict's MDE: 2.8 x the closed-form paired SE of sample - token, by hand
    df = store.df()
    keys = {c: df.loc[df["candidate"] == c, "job_key"].iloc[0]
            for c in ("mixture(ffn, prompt, token)", "mixture(ffn, prompt, sample)")}
    a, b = (ev.outcomes(keys[c]) for c in ("mixture(ffn, prompt, token)", "mixture(ffn, prompt, sample)"))
    se = paired_se({t: v for t, (_, v) in a.items()}, {t: v for t, (_, v) in b.items()})
    assert table.loc[(ROUTING, "mini2 ffn"), "MDE"] == pytest.approx(min_detectable_effect(se))
    assert min_detectable_effect(se) == pytest.approx(2.8 * se, rel=0.01)


def test_replicates_pool_and_count_agreement(store):
    add_zoo(store, 0, model_gain=0.04, sample_gain=0.0)
    add_zoo(store, 1, model_gain=0.04, sample_gain=0.0)
    add_zoo(store, 2, model_gain=-0.01, sample_gain=0.0)  # a replicate where the model level loses
    table = findings(store.df(), Evidence.of(store.path))
    row = table.loc[(LEVELS, "mini2")]
    assert row["replicates"] == "2/3 agree"
    assert row["Δ"] == pytest.approx((0.04 + 0.04 - 0.01) / 3)  # pooled: the mean over replicates
    single = findings(store.df()[store.df()["replicate"] == 0], Evidence.of(store.path)).loc[(LEVELS, "mini2")]
    assert row["MDE"] < single["MDE"]  # three replicates' items see smaller effects than one's


def test_written_tables_carry_intervals_and_findings_their_counts(store, tmp_path):
    add_zoo(store, 0, model_gain=0.15, sample_gain=0.0)
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
