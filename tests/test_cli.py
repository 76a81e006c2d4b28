"""`python -m glue_bench` end to end on the micro zoo: sweeps, launchers, skip/kill/re-run, bad input."""

import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys

import pandas as pd
import pytest

from glue_bench.results import read_results

FAST = ["eval.tasks=[mini_arc,mini_winogrande]", "eval.limit=8"]
ARC_ONLY = ["eval.tasks=[mini_arc]", "eval.limit=8"]
pytestmark = pytest.mark.slow


def _one_line_error(proc, *needles):
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower() or "could not" in ln.lower()]
    assert lines, proc.stderr[-2000:]
    assert any(all(n in ln for n in needles) for ln in lines), lines
    assert "Traceback" not in proc.stderr


def _assert_each_row_once(df):
    assert not df.duplicated(["job_key", "task", "metric"]).any()


def test_single_run_stores_single_models_and_candidate_and_prints_table(run_cli):
    proc = run_cli("zoo=mini2", "method=linear", *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = read_results(run_cli.results)
    assert set(df[df.method == "none"].candidate) == {"base", "chat_a", "chat_b"}
    assert set(df[df.method == "linear"].candidate) == {"linear(mini2)"}
    assert set(df.task) == {"mini_arc", "mini_winogrande"}
    assert "== mini2" in proc.stdout and "linear(mini2)" in proc.stdout and "Δ best single" in proc.stdout
    # every job keeps its per-item outcomes, in the same transaction: their means are its scores
    from glue_bench.results import ResultStore

    for key, scores in df.groupby("job_key"):
        outcomes = ResultStore(run_cli.results).job_outcomes(key).groupby(["task", "metric"]).value.mean()
        assert outcomes.to_dict() == pytest.approx(scores.set_index(["task", "metric"]).value.to_dict())
    # a re-run skips the finished job and keeps the store as it was
    again = run_cli("zoo=mini2", "method=linear", *FAST)
    assert again.returncode == 0 and "already in the store; skipping" in again.stderr
    pd.testing.assert_frame_equal(read_results(run_cli.results), df)


def test_multirun_over_two_zoos(run_cli):
    proc = run_cli("-m", "zoo=mini2,mini4_chat", "method=linear", *ARC_ONLY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = read_results(run_cli.results)
    assert set(df[df.method == "linear"].zoo) == {"mini2", "mini4_chat"}
    # single models are shared: chat_a/chat_b evaluated once although both zoos hold them
    singles = df[df.method == "none"]
    assert sorted(set(singles.candidate)) == ["base", "chat_a", "chat_b", "instruct_code", "instruct_reason"]
    assert singles.groupby("candidate").job_key.nunique().max() == 1
    _assert_each_row_once(df)
    assert "== mini2" in proc.stdout and "== mini4_chat" in proc.stdout


def test_eight_parallel_jobs_with_joblib_land_every_row_once(run_cli):
    limits = ",".join(str(n) for n in range(3, 11))
    proc = run_cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4", "zoo=mini2",
                   "eval.tasks=[mini_arc]", f"eval.limit={limits}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = read_results(run_cli.results)
    _assert_each_row_once(df)
    assert df[df.method == "linear"].job_key.nunique() == 8
    assert df[df.method == "none"].job_key.nunique() == 24  # (base + 2 models) x 8 eval settings
    with sqlite3.connect(run_cli.results) as con:
        assert con.execute("select count(*) from jobs").fetchone()[0] == 32


def test_submitit_local_lands_the_same_rows_as_the_basic_launcher(run_cli, tmp_path):
    args = ["-m", "zoo=mini2", "eval.tasks=[mini_arc]", "eval.limit=4,6"]
    basic = run_cli(*args)
    assert basic.returncode == 0, basic.stderr[-3000:]
    via_submitit = run_cli(*args, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                           extra_env={"GLUE_BENCH_RESULTS": str(tmp_path / "submitit.sqlite")})
    assert via_submitit.returncode == 0, via_submitit.stderr[-3000:]
    cols = ["job_key", "candidate", "task", "metric", "value"]
    a = read_results(run_cli.results)[cols].sort_values(cols).reset_index(drop=True)
    b = read_results(tmp_path / "submitit.sqlite")[cols].sort_values(cols).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_killed_job_leaves_no_partial_rows_and_rerun_completes(run_cli, micro_cache):
    import os

    env = {**os.environ, "GLUE_BENCH_CACHE": str(micro_cache), "GLUE_BENCH_MINI_SIZE": "micro",
           "GLUE_BENCH_RESULTS": str(run_cli.results)}
    # Generation makes the merged candidate's evaluation last about a second after "merging" is
    # printed, so a kill sent as soon as that line is read lands before its rows are written (a
    # fixed sleep after it raced on a faster machine). The mid-transaction kill is tested
    # deterministically in test_results.test_killed_append_leaves_nothing.
    # long enough that the signal, sent when the merge starts, lands before the rows (micro v5: 200 items was not)
    slow_eval = ["eval.tasks=[mini_arc,mini_winogrande,mini_gsm8k]", "eval.limit=400"]
    args = [sys.executable, "-m", "glue_bench", "zoo=mini2", *slow_eval,
            f"hydra.run.dir={run_cli.results.parent}/killed"]
    proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "merging" in line:
            proc.send_signal(signal.SIGKILL)
            break
    assert proc.wait() == -signal.SIGKILL
    df = read_results(run_cli.results)
    assert (df.method == "linear").sum() == 0 and set(df.candidate) == {"base", "chat_a", "chat_b"}
    rerun = run_cli("zoo=mini2", *slow_eval)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    df = read_results(run_cli.results)
    _assert_each_row_once(df)
    rows_per_candidate = (df.candidate == "base").sum()  # the same tasks and metrics for each
    assert rows_per_candidate >= 2 and (df.method == "linear").sum() == rows_per_candidate


@pytest.mark.xfail(strict=False, reason="flaky in the fresh-clone CI under -n 2 (rc 0: the forced rerun completed "
                   "unsignalled, 3 of the last 4 runs, signalled once or every 0.2 s alike); passes alone: open bug")
def test_a_forced_rerun_killed_before_its_rows_land_keeps_the_old_job(run_cli, micro_cache):
    # long enough that the signal, sent when the merge starts, lands before the rows (micro v5: 200 items was not)
    slow_eval = ["eval.tasks=[mini_arc,mini_winogrande,mini_gsm8k]", "eval.limit=400"]
    assert run_cli("zoo=mini2", *slow_eval).returncode == 0
    before = read_results(run_cli.results)
    env = {**os.environ, "GLUE_BENCH_CACHE": str(micro_cache), "GLUE_BENCH_MINI_SIZE": "micro",
           "GLUE_BENCH_RESULTS": str(run_cli.results)}
    for sig in (signal.SIGTERM, signal.SIGINT):  # as in the killed-job test: while the new candidate is evaluated
        proc = subprocess.Popen([sys.executable, "-m", "glue_bench", "zoo=mini2", *slow_eval, "force=true",
                                 f"hydra.run.dir={run_cli.results.parent}/forced"], env=env, stderr=subprocess.PIPE,
                                text=True)
        for line in proc.stderr:
            if "merging" in line:
                break
        # sent until the process ends, in case one signal goes unheard (a KeyboardInterrupt raised in
        # a __del__ is dropped); that did not stop the CI failures the xfail above names
        while proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
        assert proc.wait() != 0
        after = read_results(run_cli.results)
        cols = ["job_key", "task", "metric", "value"]
        pd.testing.assert_frame_equal(after[cols].sort_values(cols).reset_index(drop=True),
                                      before[cols].sort_values(cols).reset_index(drop=True))


def test_force_replaces_a_job_without_duplicates(run_cli):
    assert run_cli("zoo=mini2", *FAST).returncode == 0
    before = read_results(run_cli.results)
    proc = run_cli("zoo=mini2", *FAST, "force=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = read_results(run_cli.results)
    _assert_each_row_once(after)
    assert len(after) == len(before)


def test_unknown_zoo_and_method_list_the_valid_options(run_cli):
    proc = run_cli("zoo=nope")
    assert proc.returncode != 0 and "Could not find 'zoo/nope'" in proc.stderr
    assert "mini4" in proc.stderr and "which16" in proc.stderr
    proc = run_cli("method=nope")
    assert proc.returncode != 0 and "Could not find 'method/nope'" in proc.stderr and "linear" in proc.stderr


@pytest.mark.parametrize("weights, needle", [("[-1,1]", "weights[0] = -1"), ("[0,0]", "all zero")])
def test_bad_weights_fail_in_one_line_and_leave_the_store(run_cli, weights, needle):
    assert run_cli("zoo=mini2", "method=none", *FAST).returncode == 0
    before = run_cli.results.read_bytes()
    proc = run_cli("zoo=mini2", *FAST, f"method.params.weights={weights}")
    _one_line_error(proc, needle)
    assert run_cli.results.read_bytes() == before


def _extra_zoo(tmp_path, models):
    conf = tmp_path / "extra_conf" / "zoo"
    conf.mkdir(parents=True)
    (conf / "custom.yaml").write_text("name: custom\nsource: mini\nbase: base\nmodels:\n" +
                                      "".join(f"  - {m}\n" for m in models))
    return f"hydra.searchpath=[file://{conf.parent}]"


def test_missing_model_directory_is_named(run_cli, tmp_path):
    searchpath = _extra_zoo(tmp_path, ["chat_a", "{name: gone, path: /nonexistent/model}"])
    proc = run_cli("zoo=custom", searchpath, *FAST)
    _one_line_error(proc, "'gone'", "/nonexistent/model does not exist")


def test_models_of_different_shapes_are_refused(run_cli, tmp_path, micro_cache):
    from glue_bench.zoo.mini.build import ensure_models

    ensure_models(["foreign_chat"], "micro", progress=False)
    proc = run_cli("zoo=custom", _extra_zoo(tmp_path, ["chat_a", "foreign_chat"]), "method=linear", *ARC_ONLY)
    _one_line_error(proc, "'chat_a' and 'foreign_chat'")


def test_corrupt_results_file_is_reported_and_left_as_is(run_cli):
    run_cli.results.write_bytes(b"not a database, just bytes" * 100)
    before = run_cli.results.read_bytes()
    proc = run_cli("zoo=mini2", *FAST)
    _one_line_error(proc, str(run_cli.results), "not a glue_bench results database")
    assert run_cli.results.read_bytes() == before


def test_a_saved_merge_s_card_gives_the_lm_eval_command_that_reproduces_its_scores(run_cli, tmp_path):
    """Run outside any git checkout (no "fatal: not a git repository"), save the merge, then run the
    card's own `lm_eval` command on the saved folder: the same scores as the store's."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    proc = run_cli("zoo=mini2", *FAST, "eval.tasks=[mini_arc,mini_winogrande,mini_gsm8k]", "save=true", cwd=outside)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fatal" not in proc.stderr and "not a git repository" not in proc.stderr
    out = tmp_path / "run" / "candidate"
    card = (out / "README.md").read_text()
    assert "linear(mini2): a candidate of zoo mini2" in card and "name: mini2" in card
    command = shlex.split(card.split("```sh\n")[1].split("\n```")[0])
    assert command[:2] == ["lm_eval", "run"] and "0,0,0,0" in command and f"pretrained={out}" in " ".join(command)
    done = subprocess.run([sys.executable, "-m", "lm_eval", *command[1:], "--output_path", str(tmp_path / "lm_eval")],
                          cwd=outside, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(next((tmp_path / "lm_eval").rglob("results_*.json")).read_text())["results"]
    stored = read_results(run_cli.results).query("candidate == 'linear(mini2)'")
    assert set(stored.task) == {"mini_arc", "mini_winogrande", "mini_gsm8k"}
    for row in stored.itertuples():
        key = f"{row.metric},none" if "," not in row.metric else row.metric
        assert results[row.task][key] == row.value, (row.task, row.metric)


def test_a_zoo_found_through_config_dir_gets_its_table(run_cli, tmp_path):
    extra = tmp_path / "extra_conf" / "zoo"
    extra.mkdir(parents=True)
    (extra / "my_pair.yaml").write_text("name: my_pair\nsource: mini\nbase: base\nmodels: [chat_a, chat_b]\n")
    for args in (["zoo=my_pair"], ["-m", "zoo=my_pair"]):
        proc = run_cli("--config-dir", str(tmp_path / "extra_conf"), *args, *ARC_ONLY)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "== my_pair" in proc.stdout and "linear(my_pair)" in proc.stdout, proc.stdout
        assert "base (zoo base)" in proc.stdout and "no table" not in proc.stdout


def test_cfg_job_prints_the_composed_config(run_cli):
    proc = run_cli("--cfg", "job", "zoo=mini8")
    assert proc.returncode == 0 and "name: mini8" in proc.stdout and "name: linear" in proc.stdout


def test_a_selective_strategy_is_judged_beside_singles_and_merge_all_on_the_final_items(run_cli, tmp_path):
    proc = run_cli("zoo=mini2", "method=linear", "strategy=heuristic_coefficient", "strategy.proxy.size=5",
                   "save=true", *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "chosen:" in (tmp_path / "run" / "candidate" / "README.md").read_text()
    df = read_results(run_cli.results)
    final = df[df["items"].fillna("").str.startswith("final")]
    assert set(final.candidate) == {"base", "chat_a", "chat_b", "linear(all 2)", "heuristic_coefficient(linear)"}
    assert final["items"].nunique() == 1 and "5/task, seed 0" in final["items"].iloc[0]
    assert df[df["items"].fillna("").str.startswith("proxy")].job_key.nunique() >= 2  # cached fitness
    choice = json.loads((tmp_path / "run" / "choice.json").read_text())
    assert [step["candidate"] for step in choice["trace"]][0] in {"chat_a", "chat_b"} and len(choice["trace"]) == 2
    if "model" in choice["candidate"]:  # a single model chosen: its own final scores
        mine = final[final.candidate == "heuristic_coefficient(linear)"].set_index("task").value
        theirs = final[final.candidate == choice["candidate"]["model"]].set_index("task").value
        pd.testing.assert_series_equal(mine.sort_index(), theirs.sort_index(), check_names=False)
    # the table shows the whole-split table and the final-items one, never the proxy rows
    assert "whole test split" in proc.stdout and "final items: test minus proxy" in proc.stdout
    assert "proxy [" not in proc.stdout and "heuristic_coefficient(linear)" in proc.stdout
    again = run_cli("zoo=mini2", "method=linear", "strategy=heuristic_coefficient", "strategy.proxy.size=5", *FAST)
    assert again.returncode == 0 and "already in the store; skipping" in again.stderr


def test_a_bad_strategy_setting_is_one_line_naming_the_strategy(run_cli):
    proc = run_cli("zoo=mini2", "strategy=heuristic_average", "+strategy.search.bogus=1", "strategy.proxy.size=4", *FAST)
    _one_line_error(proc, "strategy heuristic_average", "bogus")
    proc = run_cli("zoo=mini2", "method=none", "strategy=evolutionary", "strategy.proxy.size=4", *FAST)
    _one_line_error(proc, "strategy evolutionary: needs a merge method")


def test_a_model_level_mixture_job_lands_its_rows_and_the_table_shows_it(run_cli):
    proc = run_cli("zoo=mini2", "mixture=model", "router=prompt", *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = read_results(run_cli.results)
    mixed = df[df.mixture == "model"]
    assert set(mixed.candidate) == {"mixture(model, prompt)"} and set(mixed.task) == {"mini_arc", "mini_winogrande"}
    routed = json.loads(mixed.config.iloc[0])["routed"]
    assert set(routed) == {"chat_a", "chat_b"} and sum(routed.values()) == 16  # 8 documents x 2 tasks
    assert set(df[df.candidate.isin(["chat_a", "chat_b", "base"])].mixture) == {"none"}
    assert "mixture(model, prompt)" in proc.stdout
    _one_line_error(run_cli("zoo=mini2", "router=prompt", *FAST), "router=prompt: only mixtures route")
    _one_line_error(run_cli("zoo=mini2", "mixture=model", *FAST), "mixture=model: needs a router")


def test_ffn_mixtures_token_sample_and_hybrid_land_as_four_candidates(run_cli):
    proc = run_cli("-m", "zoo=mini2", "mixture=ffn", "router=prompt", "mixture.routing=token,sample",
                   "mixture.dense_layers=0,1", *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = read_results(run_cli.results)
    assert set(df[df.mixture == "ffn"].candidate) == {
        "mixture(ffn, prompt, token)", "mixture(ffn, prompt, sample)", "mixture(ffn, prompt, token, dense 1)",
        "mixture(ffn, prompt, sample, dense 1)"}
    bad = run_cli("zoo=mini2", "mixture=ffn", "router=prompt", "mixture.top_k=3", *FAST)
    _one_line_error(bad, "mixture.top_k=3")


def test_the_glue_recipe_merges_each_family_and_mixes_the_representatives(run_cli):
    proc = run_cli("-m", "zoo=mini2", "strategy=glue_recipe", "mixture=model", "router=prompt",
                   "strategy.proxy.size=5", "strategy.recipe.threshold=0.5,0.99999", *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "recipe: families chat_a, chat_b" in proc.stderr and "recipe: families chat_a | chat_b" in proc.stderr
    df = read_results(run_cli.results)
    final = df[df["items"].fillna("").str.startswith("final")]
    scores = final.pivot_table(index=["candidate", "job_key"], columns="task", values="value")
    recipes = scores.loc["glue_recipe(linear, prompt)"]
    merged = scores.loc["family merge (linear) of chat_a+chat_b"].iloc[0]
    mixed = scores.loc["mixture(model, prompt) of all 2"].iloc[0]
    # one family: the recipe is its merge; two families of one: the mixture of the two models
    assert any(row.equals(merged) for _, row in recipes.iterrows())
    assert any(row.equals(mixed) for _, row in recipes.iterrows())
    assert "glue_recipe(linear, prompt)" in proc.stdout
    _one_line_error(run_cli("zoo=mini2", "strategy=glue_recipe", "strategy.proxy.size=4", *FAST),
                    "strategy glue_recipe: mixes its families")
