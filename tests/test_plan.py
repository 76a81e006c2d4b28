"""`reproduce --plan`: the sweeps expanded as Hydra expands them, each job's evaluations counted by
hand, priced from a costs file written here."""

import json
import os

import pytest

from glue_bench.plan import Evaluation, PresetPlan, plan, print_plan, search_steps, seconds, sweep


def test_a_preset_s_sweep_is_crossed_with_the_command_s_overrides():
    jobs = sweep("method_evolution", ["zoo.replicate=0,1,2", "eval.limit=5"])
    # the preset sweeps method over six merges on mini8; three replicates; a fixed override rides along
    assert len(jobs) == 6 * 3
    assert all("eval.limit=5" in j and "zoo=mini8" in j for j in jobs)
    assert {j[1] for j in jobs} >= {"method=linear", "method=ramplus_tl"}
    zoos = {o for job in sweep("method_evolution", ["zoo=mini4,mini2"]) for o in job if o.startswith("zoo=")}
    assert zoos == {"zoo=mini4", "zoo=mini2"}  # the command's sweep wins over the preset's mini8


def test_search_steps_count_what_each_search_evaluates():
    assert search_steps({"_target_": "glue_bench.select.evolutionary.Evolutionary", "n_trials": 30}, 8) == 30
    assert search_steps({"_target_": "glue_bench.select.heuristic.Heuristic", "kind": "average"}, 8) == 7
    assert search_steps({"_target_": "glue_bench.select.heuristic.Heuristic", "kind": "coefficient"}, 8) == 7 * 9
    assert search_steps({"_target_": "glue_bench.select.heuristic.Heuristic", "kind": "similarity",
                         "grid": [0.3, 0.7]}, 4) == 3 * 2
    warm = {"_target_": "glue_bench.select.evolutionary.WarmStarted",
            "heuristic": {"_target_": "glue_bench.select.heuristic.Heuristic", "kind": "coefficient", "grid": [0.5]},
            "evolutionary": {"_target_": "glue_bench.select.evolutionary.Evolutionary", "n_trials": 10}}
    assert search_steps(warm, 4) == 3 + 10


def test_a_merge_job_is_its_zoo_s_singles_once_and_itself_once(tmp_path, monkeypatch):
    monkeypatch.setenv("GLUE_BENCH_CACHE", str(tmp_path / "cache"))  # nothing built: nothing skipped
    plans = plan(["merge_methods"], ["zoo=mini2", "method=linear,ties", "eval.limit=7"], tmp_path / "r.sqlite")
    (p,) = plans
    assert p.jobs == 2 and p.swept == 2
    # mini2 is two models and the base: three singles, counted once for both jobs, then one evaluation a job
    assert [e.what for e in p.evaluations] == ["single"] * 3 + ["merge"] * 2
    assert all(e.items == dict.fromkeys(e.items, 7) and len(e.items) == 6 for e in p.evaluations)
    assert p.builds == {"mini r0": None}  # never built here: no time to count, and the plan says so


def test_minutes_are_items_times_the_measured_median_cost(tmp_path, monkeypatch):
    monkeypatch.setenv("GLUE_BENCH_CACHE", str(tmp_path))
    lines = [{"size": "micro", "kind": "merge", "per_item": {"mini_arc": c}} for c in (0.1, 0.3, 0.2)]
    lines += [{"size": "micro", "kind": "single", "per_item": {"mini_arc": 1.0}},
              {"size": "mini", "kind": "merge", "per_item": {"mini_arc": 9.0}},
              {"preset": "merge_methods", "size": "micro", "seconds": 99.0}]
    (tmp_path / "costs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + "not json\n")
    p = PresetPlan("x", 1, [Evaluation("merge", {"mini_arc": 10}), Evaluation("single", {"mini_arc": 2}),
                            Evaluation("merge", {"mini_gsm8k": 5})], {"micro r1": 30.0})
    estimated, unmeasured = seconds([p], "micro")
    assert estimated["x"] == pytest.approx(10 * 0.2 + 2 * 1.0 + 30.0)  # the median 0.2, not the mean or mini's
    assert unmeasured == {"mini_gsm8k"}
    # once evaluations that had a core each are recorded, the busy machine's are left out
    busy = [{"size": "micro", "kind": "merge", "load": 3.9, "cores": 2, "per_item": {"mini_arc": 0.5}}] * 3
    quiet = [{"size": "micro", "kind": "merge", "load": 1.1, "cores": 2, "per_item": {"mini_arc": c}} for c in (0.05, 0.07)]
    with open(tmp_path / "costs.jsonl", "a") as handle:
        handle.write("".join(json.dumps(x) + "\n" for x in busy + quiet))
    assert seconds([p], "micro")[0]["x"] == pytest.approx(10 * 0.06 + 2 * 1.0 + 30.0)


def test_two_lanes_take_the_next_sweep_when_free_and_the_search_presets_after_the_first_go_last(tmp_path, monkeypatch,
                                                                                                   capsys):
    from glue_bench.reproduce import queue_of

    monkeypatch.setenv("GLUE_BENCH_CACHE", str(tmp_path))
    sweeps = [(name, []) for name in ("merge_methods", "strategies", "mixture_levels", "recipe")]
    assert queue_of(sweeps, 1) == sweeps
    assert [name for name, _ in queue_of(sweeps, 2)] == ["strategies", "merge_methods", "mixture_levels", "recipe"]
    quick = [("merge_methods", ["a"]), ("strategies", ["h"]), ("strategies", ["e"]), ("method_evolution", [])]
    assert queue_of(quick, 2) == [("strategies", ["h"]), ("strategies", ["e"]), ("merge_methods", ["a"]),
                                  ("method_evolution", [])]
    (tmp_path / "costs.jsonl").write_text(json.dumps({"size": "micro", "kind": "merge", "per_item": {"mini_arc": 1.0}}))

    def preset(name, seconds, build=0.0):  # `seconds` of evaluation at 1 s an item, and its build
        return PresetPlan(name, 1, [Evaluation("merge", {"mini_arc": seconds})], {"micro r1": build} if build else {})

    plans = [preset("strategies", 600, build=180), preset("merge_methods", 120), preset("mixture_levels", 200),
             preset("recipe", 300)]
    # by hand: the build first (180 s); then strategies on lane 1 until 600 s; lane 2 runs merge_methods
    # (0-120), mixture_levels (120-320), then recipe (320-620), being free first: the wall is
    # 180 + 620 = 800 s, not the 1,400 s sum
    assert print_plan(plans, "micro", lanes=2) == pytest.approx(800.0)
    shown = capsys.readouterr().out
    assert ("the zoo's build first (3.0 min on every core), then 2 lanes, each taking the next sweep when its last "
            "ends: strategies: 10.0 min | merge_methods, mixture_levels, recipe: 10.3 min; wall time 13.3 min") in shown
    assert print_plan(plans, "micro") == pytest.approx(1400.0)  # one lane: the sum
    from glue_bench.plan import lane_schedule

    assert lane_schedule([0.0, 0.0, 0.0], 2) == [[0, 2], [1]]  # nothing priced yet: both lanes still start one


def test_a_request_call_s_time_is_shared_by_characters_and_the_rest_goes_to_the_code_tasks():
    from types import SimpleNamespace

    from glue_bench.costs import RequestTimer

    class LM:
        def loglikelihood(self, requests):
            return [(0.0, True)] * len(requests)

    lm = LM()
    timer = RequestTimer(lm)
    arc = SimpleNamespace(task_name="mini_arc", args=("abc", "d"))          # 4 characters + 1
    mbpp = SimpleNamespace(task_name="mini_mbpp", args=("abcdefghi",))      # 9 characters + 1
    lm.loglikelihood([arc, arc, mbpp])
    timer.calls = [(12.0, timer.calls[0][1])]                               # the call took 12 s
    timer.restore()
    assert "loglikelihood" not in vars(lm)
    shares = timer.per_task(20.0, {"mini_arc": 2, "mini_mbpp": 1}, {"mini_mbpp"})
    assert shares == pytest.approx({"mini_arc": 12.0 * 10 / 20, "mini_mbpp": 12.0 * 10 / 20 + 8.0})


def test_reproduce_plan_prints_the_table_and_runs_nothing(tmp_path, monkeypatch, capsys):
    from glue_bench.reproduce import main

    monkeypatch.setenv("GLUE_BENCH_CACHE", str(tmp_path / "cache"))
    main(["--plan", "--presets", "mixture_levels", "--replicates", "2", "--results", str(tmp_path / "r.sqlite")])
    out = capsys.readouterr().out
    row = next(line.split() for line in out.splitlines() if line.startswith("mixture_levels"))
    assert row[1] == "12"  # mini2 and mini4, three levels, two replicates
    assert "not counted: building mini r0, mini r1" in out and "no evaluation at size mini measured" in out
    assert not (tmp_path / "cache" / "costs.jsonl").exists()


def test_quick_s_forced_keys_keep_their_prefix():
    (job,) = sweep("recipe", ["++strategy.search.kind=average", "++strategy.proxy.size=5"])
    assert job == ["++strategy.search.kind=average", "++strategy.proxy.size=5"]


def test_the_progress_bar_counts_each_job_of_a_sweep_as_it_ends(tmp_path, monkeypatch):
    import io

    from tqdm import tqdm

    import glue_bench.reproduce as reproduce

    class Sweeper:  # what `python -m glue_bench --multirun` prints: one line as each job starts
        returncode = 0

        def sweep(self, args):
            yield "[HYDRA] Launching 3 jobs locally"
            for i in range(3):
                yield f"[2026-12-06 02:36:54,387][HYDRA] \t#{i} : zoo=mini2 method=m{i}"
                yield f"log of job {i}"

    monkeypatch.setenv("GLUE_BENCH_CACHE", str(tmp_path))
    seen = []
    with tqdm(total=5, file=io.StringIO()) as bar:
        monkeypatch.setattr(bar, "write", seen.append)
        reproduce.run_preset("merge_methods", [], tmp_path / "r.sqlite", Sweeper(), bar=bar)
        assert bar.n == 3
    assert "log of job 2" in seen and seen[-1].startswith("[reproduce] merge_methods: ")
    assert json.loads((tmp_path / "costs.jsonl").read_text())["preset"] == "merge_methods"


def test_what_selective_jobs_share_is_counted_once_and_a_job_two_presets_share_once(tmp_path, monkeypatch):
    monkeypatch.setenv("GLUE_BENCH_CACHE", str(tmp_path / "cache"))
    overrides = ["zoo=mini8", "eval.limit=30", "++strategy.search.n_trials=5"]  # proxy 20 a task, final 10
    seen: set = set()
    (p,) = plan(["strategies"], [*overrides, "strategy=heuristic_average,evolutionary"], tmp_path / "r.sqlite", seen)
    assert p.jobs == 2

    def on(n):
        return [e.what for e in p.evaluations if set(e.items.values()) == {n}]

    assert on(30) == ["single"] * 9  # mini8's eight models and the base on the whole split, once
    # on the proxy set: the eight singles once for both jobs (same zoo and method), then each job's
    # search steps (heuristic average: one per model after the first; CMA-ES: its trials)
    assert on(20) == ["single"] * 8 + ["selective"] * 7 + ["selective"] * 5
    # on the final items: the singles and the merge of all once for both jobs, then each job's choice
    assert on(10) == ["single"] * 9 + ["selective"] + ["selective"] * 2
    (ties,) = plan(["strategies"], [*overrides, "strategy=evolutionary", "method=ties"], tmp_path / "r.sqlite", seen)
    assert [e.what for e in ties.evaluations if set(e.items.values()) == {20}] == ["single"] * 8 + ["selective"] * 5
    # heuristic_evolution's CMA-ES on mini8 with linear is the job strategies ran: counted there only
    (q,) = plan(["heuristic_evolution"], [*overrides, "strategy=evolutionary"], tmp_path / "r.sqlite", seen)
    assert q.swept == 1 and q.jobs == 0 and q.evaluations == []


def test_a_model_s_build_is_counted_once_over_the_presets_of_one_reproduction(tmp_path, monkeypatch):
    monkeypatch.setenv("GLUE_BENCH_CACHE", str(tmp_path / "cache"))
    seen: set = set()
    (first,) = plan(["merge_methods"], ["zoo=mini2", "method=linear", "eval.limit=7"], tmp_path / "r.sqlite", seen)
    (second,) = plan(["mixture_levels"], ["zoo=mini2", "eval.limit=7"], tmp_path / "r.sqlite", seen)
    assert first.builds == {"mini r0": None} and second.builds == {}  # mini2's models: built by the first


def test_a_build_s_time_is_its_schedule_on_the_cores_from_this_version_s_builds(tmp_path, monkeypatch):
    from glue_bench.zoo.mini.build import build_seconds, model_dir
    from glue_bench.zoo.mini.spec import VERSION

    monkeypatch.setenv("GLUE_BENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    def card(size_dir: str, name: str, seconds: float) -> None:
        path = tmp_path / size_dir / "models" / f"{name}-0000" / "glue_bench_recipe.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"train_seconds": seconds}))

    for replicate, scale in ((1, 1.0), (2, 3.0), (3, 2.0)):  # medians: base 10, chat_a 4, chat_b 6
        for name, seconds in (("base", 10.0), ("chat_a", 4.0), ("chat_b", 6.0)):
            card(f"mini-{VERSION}/micro-r{replicate}", name, seconds * scale / 2.0)
    card(f"mini-{VERSION}/micro_full-r1", "base", 999.0)  # another size
    card("mini-v1/micro-r1", "chat_b", 999.0)             # another zoo version
    assert not model_dir("base", "micro", 4).exists()
    # base first (10 s), then chat_a and chat_b side by side on the two cores: 10 + max(4, 6)
    assert build_seconds(["chat_a", "chat_b"], "micro", 4) == pytest.approx(16.0)
    assert build_seconds(["chat_a"], "micro", 4) == pytest.approx(14.0)
    assert build_seconds(["math"], "micro", 4) is None  # never built here
