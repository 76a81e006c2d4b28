"""The study tables, from hand-made stores: each value checked against arithmetic done here."""

import json

import os

import pytest
from omegaconf import OmegaConf

from glue_bench.evaluate import EvalConfig, EvalError, selected_tasks
from glue_bench.evidence import Evidence
from glue_bench.findings import findings
from glue_bench.reference import STUDY_RECIPE_GAIN
from glue_bench.stats import wilson
from glue_bench.results import ResultStore, read_results
from glue_bench.study import (
    TABLES,
    made_by,
    merge_methods,
    merge_vs_mixture,
    mixture_levels,
    mixture_routing,
    recipe,
    release_and_leaderboard,
    strategies,
)
from glue_bench.tables import write_study_tables, zoo_table
from glue_bench.zoo import model_ref

SIZE = os.environ.get("GLUE_BENCH_MINI_SIZE", "mini")  # the tables' mini size when no candidate names one
FINAL = "final items: test minus proxy (20/task, seed 0, abcd1234)"


class Store:
    """Appends one job per call: scores on mini_arc (acc_norm) and mini_mmlu (acc)."""

    def __init__(self, path):
        self.store, self.path, self.n = ResultStore(path), path, 0

    def add(self, candidate, arc, mmlu, *, zoo="mini2", method="none", strategy="none", mixture="none",
            router="none", items=None, config=None, stderr=(None, None), replicate=0, preset=None):
        """`arc`, `mmlu`: a score, or the per-item outcomes (0/1 lists) it is the mean of."""
        self.n += 1
        if config is None and method == "none" and mixture == "none":  # a single model: rows name its key
            config = {"key": model_ref(candidate, "mini", SIZE, replicate).key}
        common = dict(zoo=zoo, candidate=candidate, method=method, strategy=strategy, mixture=mixture,
                      router=router, items=items, config=json.dumps(config or {}), replicate=replicate)
        outcomes = [{"task": task, "metric": metric, "doc_id": i, "value": v}
                    for task, metric, values in (("mini_arc", "acc_norm", arc), ("mini_mmlu", "acc", mmlu))
                    if isinstance(values, list) for i, v in enumerate(values)]
        arc, mmlu = (sum(v) / len(v) if isinstance(v, list) else v for v in (arc, mmlu))
        self.store.append_job(f"job{self.n}", [
            dict(common, task="mini_arc", metric="acc_norm", value=arc, stderr=stderr[0]),
            dict(common, task="mini_mmlu", metric="acc", value=mmlu, stderr=stderr[1])], outcomes=outcomes, preset=preset)

    def df(self):
        return read_results(self.path)


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "r.sqlite")
    s.add("base", 0.2, 0.2)
    s.add("chat_a", 0.4, 0.6)     # avg .5, the best single of mini2
    s.add("chat_b", 0.3, 0.5)     # avg .4
    return s


def test_merge_methods_rows_and_delta_to_best_single(store):
    store.add("linear(mini2)", 0.6, 0.6, method="linear", strategy="all", config={"strategy": {"models": None}})
    store.add("ties(chat_a+chat_b)", 0.9, 0.9, method="ties", strategy="all",  # a pair, not the zoo: left out
              config={"strategy": {"models": ["chat_a", "chat_b"]}})
    table = merge_methods(store.df())
    assert list(table.index) == [("mini2", "linear(mini2)"), ("mini2", "best single: chat_a")]
    assert table.loc[("mini2", "linear(mini2)"), "avg"] == pytest.approx(0.6)
    assert table.loc[("mini2", "linear(mini2)"), "Δ best single"] == pytest.approx(0.6 - 0.5)


def test_a_table_holds_its_preset_s_jobs_not_those_that_only_look_like_them(tmp_path):
    s = Store(tmp_path / "r.sqlite")
    whole_zoo = {"strategy": {"models": None}}
    for name, arc, mmlu in (("base", 0.2, 0.2), ("chat_a", 0.4, 0.6), ("chat_b", 0.3, 0.5)):
        s.add(name, arc, mmlu, preset="merge_methods")
    s.add("linear(mini2)", 0.6, 0.6, method="linear", strategy="all", config=whole_zoo, preset="merge_methods")
    s.add("ties(mini2)", 0.9, 0.9, method="ties", strategy="all", config=whole_zoo)  # a plain run
    s.add("slerp(mini2)", 0.8, 0.8, method="slerp", strategy="all", config=whole_zoo, preset="recipe")
    s.add("chat_b", 0.9, 0.9, items=FINAL)  # a reference, whichever preset stored it: kept, and not on the whole split
    table = next(t for t in TABLES if t.name == "merge_methods").table(s.df())
    assert list(table.index) == [("mini2", "linear(mini2)"), ("mini2", "best single: chat_a")]
    assert len(made_by(s.df(), "merge_methods")) == 2 * 5  # the three singles, the linear merge and chat_b on final items
    unlinked = s.df().drop(columns="presets")  # a store from before the links: the table's own selection
    assert made_by(unlinked, "merge_methods") is unlinked
    assert {c for _, c in merge_methods(unlinked).index} == {"ties(mini2)", "slerp(mini2)", "linear(mini2)",
                                                              "best single: chat_a"}


def test_a_mixture_table_keeps_the_linear_merge_it_is_judged_against_whichever_preset_stored_it(tmp_path):
    s = Store(tmp_path / "r.sqlite")
    for name, arc, mmlu in (("base", 0.2, 0.2), ("chat_a", 0.4, 0.6), ("chat_b", 0.3, 0.5)):
        s.add(name, arc, mmlu, preset="merge_methods")
    s.add("linear(mini2)", 0.6, 0.6, method="linear", strategy="all", config={"strategy": {"models": None}},
          preset="merge_methods")
    s.add("mixture(ffn, prompt, token)", 0.5, 0.7, method="linear", strategy="all", mixture="ffn", router="prompt",
          config=mixture("ffn"), preset="mixture_levels")
    s.add("mixture(model, prompt)", 0.6, 0.6, strategy="all", mixture="model", router="prompt",
          config=mixture("model"), preset="merge_vs_mixture")  # another preset's mixture: not this table's
    column = next(t for t in TABLES if t.name == "mixture_levels").table(s.df())["mini2"].dropna()
    assert column.to_dict() == pytest.approx({"best single": 0.5, "linear merge": 0.6, "ffn": 0.6})
    routers = next(t for t in TABLES if t.name == "mixture_routers").table(s.df())  # it made no mixture
    assert routers.empty


def test_strategies_on_final_items_with_trials(store):
    store.add("chat_a", 0.3, 0.3, items=FINAL)
    store.add("chat_b", 0.5, 0.3, items=FINAL)          # on the final items chat_b is the best single: .4
    store.add("linear(all 2)", 0.2, 0.4, method="linear", strategy="all", items=FINAL)
    store.add("evolutionary(linear)", 0.5, 0.4, method="linear", strategy="evolutionary", items=FINAL,
              config={"strategy": {"search": {"n_trials": 7}}})
    store.add("heuristic_average(linear)", 0.9, 0.9, method="linear", strategy="heuristic_average")  # whole split
    column = strategies(store.df())["mini2"]
    assert column["best single"] == pytest.approx(0.4)
    assert column["merge all (linear)"] == pytest.approx(0.3)
    assert column["evolutionary(linear), 7 trials"] == pytest.approx(0.45)
    assert "heuristic_average(linear)" not in column.index  # not judged on final items


def mixture(level, routing="token"):
    return {"strategy": {"models": None}, "mixture": {"level": level, "routing": routing, "dense_layers": 0}}


def add_mixtures(store, ffn_token_mmlu):
    """mini2 mixtures, prompt router: FFN token (.5, ffn_token_mmlu), FFN sample (.7, .7), model (.6, .6)."""
    store.add("mixture(ffn, prompt, token)", 0.5, ffn_token_mmlu, method="linear", strategy="all", mixture="ffn",
              router="prompt", config=mixture("ffn"))
    store.add("mixture(ffn, prompt, sample)", 0.7, 0.7, method="linear", strategy="all", mixture="ffn",
              router="prompt", config=mixture("ffn", "sample"))
    store.add("mixture(model, prompt)", 0.6, 0.6, strategy="all", mixture="model", router="prompt",
              config=mixture("model"))


def test_mixture_tables_keep_only_their_axis(store):
    add_mixtures(store, ffn_token_mmlu=0.7)
    levels = mixture_levels(store.df())["mini2"].dropna()
    assert dict(levels) == pytest.approx({"best single": 0.5, "ffn": 0.6, "model": 0.6})
    routing = mixture_routing(store.df())["mini2"].dropna()
    assert dict(routing) == pytest.approx({"best single": 0.5, "ffn, sample": 0.7, "ffn, token": 0.6})
    store.add("linear(mini2)", 0.4, 0.4, method="linear", strategy="all", config={"strategy": {"models": None}})
    table = merge_vs_mixture(store.df()).loc["mini2"]
    assert list(table.index) == ["best single", "best merge", "best mixture"]  # no ensemble run: no reference row
    assert table.loc["best merge", ["avg", "Δ best mixture"]].tolist() == pytest.approx([0.4, 0.4 - 0.7])
    assert table.loc["best mixture", "candidate"] == "mixture(ffn, prompt, sample)"
    assert table.loc["best single", "forward passes / token"] == 1 and table["Δ ensemble"].isna().all()
    store.add("ensemble(mini2)", 0.8, 0.6, strategy="all", mixture="ensemble",
              config={"mixture": {"name": "ensemble"}, "forward_passes_per_token": 2})
    table = merge_vs_mixture(store.df()).loc["mini2"]
    assert table.loc["ensemble (reference)", ["avg", "forward passes / token"]].tolist() == pytest.approx([0.7, 2])
    assert table.loc["best mixture", "Δ ensemble"] == pytest.approx(0.0)
    assert table.loc["best single", "Δ ensemble"] == pytest.approx(0.5 - 0.7)


def test_recipe_gain_beside_the_study(tmp_path):
    s = Store(tmp_path / "r.sqlite")
    for name, arc in [("instruct_reason", 0.4), ("code", 0.5), ("story", 0.3), ("math", 0.2)]:
        s.add(name, arc, arc, zoo="mini4", items=FINAL)
    s.add("glue_recipe(linear, prompt)", 0.6, 0.6, zoo="mini4", method="linear", strategy="glue_recipe",
          mixture="model", router="prompt", items=FINAL)
    table = recipe(s.df())
    row = table.loc[("mini4", "glue_recipe(linear, prompt)")]
    assert row["gain %"] == pytest.approx(100 * (0.6 - 0.5) / 0.5)
    assert row["study gain % (which16)"] == STUDY_RECIPE_GAIN == 5.61
    assert row["gain % − study"] == pytest.approx(20 - 5.61)
    assert table.loc[("mini4", "code"), "Δ best single"] == 0


def test_reference_beside_a_measured_hub_single(tmp_path):
    s = Store(tmp_path / "r.sqlite")
    s.store.append_job("vicuna", [dict(zoo="which2", candidate="lmsys/vicuna-7b-v1.5", method="none",
                                       strategy="none", mixture="none", router="none", task="tinyArc",
                                       metric="acc_norm", value=0.5)])
    row = release_and_leaderboard(s.df()).loc[("lmsys/vicuna-7b-v1.5", "tinyArc")]
    # modelglue_model_acc.csv: arc_challenge 0.537542662; open_llm_leaderboard_v1.csv: arc 53.24
    assert row["Δ release"] == pytest.approx(0.5 - 0.537542662)
    assert row["Δ leaderboard"] == pytest.approx(0.5 - 0.5324)


def test_written_tables_and_stale_ones_removed(store, tmp_path):
    out = tmp_path / "tables"
    out.mkdir()
    (out / "strategies.md").write_text("from an older store")
    store.add("linear(mini2)", 0.6, 0.6, method="linear", strategy="all", config={"strategy": {"models": None}})
    written = {p.name for p in write_study_tables(str(store.path), out)}
    assert {"merge_methods.md", "merge_methods.tex", "merge_methods.csv"} <= written
    assert not (out / "strategies.md").exists()  # no strategy rows in this store
    assert "| mini2 | linear(mini2) | 0.600 | 0.600 | 0.600 | +0.100 |" in (out / "merge_methods.md").read_text()
    assert "\\begin{tabular}" in (out / "merge_methods.tex").read_text()


def test_lm_eval_registry_tasks_are_accepted_and_unknown_ones_named():
    assert selected_tasks(EvalConfig(tasks=["tinyArc", "mini_arc"])) == ["tinyArc", "mini_arc"]
    with pytest.raises(EvalError, match="unknown task.*tinyNope"):
        selected_tasks(EvalConfig(tasks=["tinyNope"]))


def test_findings_verdicts_follow_the_measured_order(store):
    add_mixtures(store, ffn_token_mmlu=0.5)
    table = findings(store.df())
    # mini2 is a chat zoo: the study expects token routing to win there; here sample does
    # (no per-item outcomes in this store: point verdicts, marked so)
    assert table.loc[("token routing better for chat zoos, sample routing for domain experts", "mini2 ffn"),
                     "verdict"] == "DISAGREES (no interval)"
    # token-routed ffn .5 against model .6: the sample-routed .7 is not a level's default setting
    assert table.loc[("model-level mixture is the best level", "mini2"), "verdict"] == "agrees (no interval)"
    assert table.loc[("the Model-GLUE recipe beats the best single model", "-"), "measured"] == "not run (recipe)"


def test_single_models_are_told_apart_by_key_not_name(tmp_path):
    """Two mini sizes (or two zoos) each with a `base`: the table takes the zoo's own, by key."""
    s = Store(tmp_path / "r.sqlite")
    for size, value in [("micro", 0.3), ("mini", 0.9)]:
        for name in ("base", "chat_a", "chat_b"):
            s.add(name, value, value, config={"key": model_ref(name, "mini", size).key})
    s.add("linear(mini2)", 0.6, 0.6, method="linear", strategy="all", config={"mini_size": "micro"})
    table = zoo_table(s.df(), "mini2")
    assert list(table.index) == ["base (zoo base)", "chat_a", "chat_b", "linear(mini2)"]
    assert table.loc["chat_a", "avg"] == pytest.approx(0.3)  # the micro models, which the merge was built from
    assert table.loc["linear(mini2)", "Δ best single"] == pytest.approx(0.6 - 0.3)


def test_rows_written_before_keys_were_stored_are_found_by_location(tmp_path):
    s = Store(tmp_path / "r.sqlite")
    for name, value in [("base", 0.1), ("chat_a", 0.4), ("chat_b", 0.2)]:
        path = model_ref(name, "mini", "micro").location  # what such rows hold: {"model": <its directory>}
        s.add(name, value, value, config={"model": f"/elsewhere/cache/{'/'.join(path.split('/')[-4:])}"})
    s.add("linear(mini2)", 0.6, 0.6, method="linear", strategy="all", config={"mini_size": "micro"})
    table = zoo_table(s.df(), "mini2")
    assert table.loc["linear(mini2)", "Δ best single"] == pytest.approx(0.6 - 0.4)
    assert "base (zoo base)" in table.index


def test_a_zoo_given_twice_prints_the_one_hydra_used():
    from glue_bench.callbacks import _swept_zoos

    config = OmegaConf.create({"zoo": {"name": "mini4"},
                               "hydra": {"overrides": {"task": ["zoo=mini2", "method=linear", "zoo=mini4,mini8"]}}})
    assert _swept_zoos(config) == ["mini4", "mini8"]


def test_printed_scores_carry_their_95_percent_half_width_where_known(store):
    from glue_bench.tables import format_table

    store.add("linear(mini2)", 0.6, 0.6, method="linear", strategy="all", stderr=(0.03, 0.04))
    table = zoo_table(store.df(), "mini2")
    # a task's interval is Wilson's over the items its stored se implies: se = sqrt(p (1 - p) / (n - 1))
    assert (table.loc["linear(mini2)", "arc low"], table.loc["linear(mini2)", "arc high"]) == pytest.approx(
        wilson(0.6 * (0.24 / 0.03 ** 2 + 1), 0.24 / 0.03 ** 2 + 1))
    assert 0.6 - table.loc["linear(mini2)", "avg low"] == pytest.approx(1.96 * (0.03 ** 2 + 0.04 ** 2) ** 0.5 / 2)
    assert table.loc["chat_a", ["arc low", "avg high"]].isna().all()  # stored without a standard error: none invented
    assert table[["Δ best single low", "Δ best single p"]].isna().all().all()  # no outcomes: no paired interval
    text = format_table(table, "mini2")
    assert "0.600 [0.540, 0.657]" in text and "0.600 [0.520, 0.675]" in text and "0.600 ± 0.049" in text
    chat_a = next(line for line in text.splitlines() if line.startswith("chat_a"))
    assert "±" not in chat_a and "0.400" in chat_a


def test_normalized_performance_divides_each_task_by_its_own_best_single(tmp_path):
    s = Store(tmp_path / "r.sqlite")
    s.add("base", 0.2, 0.2)
    s.add("chat_a", 0.4, 0.5)     # the best single (avg .45) and arc's best
    s.add("chat_b", 0.2, 0.6)     # mmlu's best
    s.add("linear(mini2)", 0.6, 0.3, method="linear", strategy="all", config={"strategy": {"models": None}})
    table = merge_methods(s.df())
    assert table.loc[("mini2", "linear(mini2)"), "normalized"] == pytest.approx((0.6 / 0.4 + 0.3 / 0.6) / 2)
    assert table.loc[("mini2", "best single: chat_a"), "normalized"] == pytest.approx((1 + 0.5 / 0.6) / 2)
    assert table["normalized low"].isna().all()  # no per-item outcomes here: no interval invented


def test_normalized_interval_from_the_outcomes(tmp_path):
    s = Store(tmp_path / "r.sqlite")
    s.add("base", [0, 0, 1, 0], [0, 0, 0, 1])
    s.add("chat_a", [1, 1, 0, 0], [1, 0, 0, 0])       # arc's best: 0.5
    s.add("chat_b", [1, 0, 0, 0], [1, 1, 0, 1])       # mmlu's best: 0.75
    s.add("linear(mini2)", [1, 1, 1, 0], [1, 1, 0, 0], method="linear", strategy="all")
    table = zoo_table(s.df(), "mini2", ev=Evidence.of(s.path))
    assert table.loc["linear(mini2)", "normalized"] == pytest.approx((0.75 / 0.5 + 0.5 / 0.75) / 2)
    assert table.loc["linear(mini2)", "normalized low"] < table.loc["linear(mini2)", "normalized"]
    assert table.loc["chat_b", "normalized"] == pytest.approx((0.25 / 0.5 + 1.0) / 2)


def test_a_task_with_no_success_gets_wilsons_interval_not_zero_plus_minus_zero(tmp_path):
    from glue_bench.tables import format_table

    s = Store(tmp_path / "r.sqlite")
    for name in ("base", "chat_a", "chat_b"):
        s.add(name, [0] * 400, [1] * 200 + [0] * 200)  # no success in 400 arc items
    table = zoo_table(s.df(), "mini2", ev=Evidence.of(s.path))
    z2 = 1.959963984540054 ** 2
    assert table.loc["chat_a", "arc low"] == 0 and table.loc["chat_a", "arc high"] == pytest.approx(z2 / (400 + z2))
    text = format_table(table, "mini2")
    assert "0.000 [0.000, 0.010]" in text and "0.000 ± 0.000" not in text


def test_a_store_of_another_zoo_version_is_read_as_the_build_it_holds():
    """An evidence archive made at an older mini-zoo version holds none of today's keys: each model
    is then the one stored build of its size, replicate and name; never a mix of builds."""
    from glue_bench.study import as_stored

    refs = [model_ref(m, "mini", "micro", 1) for m in ("base", "chat_a")]
    old = {"mini-v1/micro-r1/base-aaaa", "mini-v1/micro-r1/chat_a-bbbb", "mini-v1/micro/chat_a-cccc", "hub:x"}
    assert [r.key for r in as_stored(refs, old)] == ["mini-v1/micro-r1/base-aaaa", "mini-v1/micro-r1/chat_a-bbbb"]
    today = [r.key for r in refs]
    assert [r.key for r in as_stored(refs, old | {today[0]})] == today       # today's build is stored: today's
    assert [r.key for r in as_stored(refs, old | {"mini-v1/micro-r1/base-dddd"})] == today  # two builds of base
    mixed = {"mini-v1/micro-r1/base-aaaa", "mini-v0/micro-r1/chat_a-bbbb"}
    assert [r.key for r in as_stored(refs, mixed)] == today                  # two versions: not one build
    assert [r.key for r in as_stored(refs, {"mini-v1/micro-r1/base-aaaa"})] == today  # chat_a not stored


def test_the_tables_command_writes_nothing_unless_told_where(store, tmp_path, monkeypatch, capsys):
    from glue_bench.tables import main

    store.add("linear(mini2)", 0.6, 0.6, method="linear", strategy="all", config={"strategy": {"models": None}})
    monkeypatch.chdir(tmp_path)
    committed = tmp_path / "results" / "tables"
    committed.mkdir(parents=True)
    (committed / "recipe.md").write_text("a committed table this store has no rows for")
    main(["--results", str(store.path)])
    assert "linear(mini2)" in capsys.readouterr().out
    assert [p.name for p in committed.iterdir()] == ["recipe.md"]
    assert (committed / "recipe.md").read_text() == "a committed table this store has no rows for"
    main(["--results", str(store.path), "--out", str(tmp_path / "mine")])
    assert (tmp_path / "mine" / "merge_methods.md").exists() and [p.name for p in committed.iterdir()] == ["recipe.md"]
