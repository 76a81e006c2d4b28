"""lm-eval on the in-memory model equals `lm_eval --model hf` on the saved directory; code opt-in."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from glue_bench.evaluate import EvalConfig, EvalError, evaluate_model, render_tasks, selected_tasks


@pytest.fixture(scope="module")
def tasks_dir(micro_cache, tmp_path_factory):
    from glue_bench.zoo.mini.build import ensure_data

    return render_tasks(ensure_data("micro"), tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module")
def chat_a(micro_cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from glue_bench.zoo.mini.build import model_dir

    path = model_dir("chat_a", "micro")
    return path, AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_in_memory_scores_equal_the_lm_eval_cli_on_the_saved_directory(chat_a, tasks_dir, tmp_path):
    path, model, tok = chat_a
    cfg = EvalConfig(tasks=["mini_arc", "mini_winogrande", "mini_gsm8k"], limit=12, batch_size=8)
    rows, stats = evaluate_model(model, tok, tasks_dir, cfg)
    assert stats["tokens"] > 0 and stats["eval_s"] > 0
    cli = [sys.executable, "-m", "lm_eval", "run", "--model", "hf",
           "--model_args", f"pretrained={path},add_bos_token=True,dtype=float32",
           "--tasks", ",".join(cfg.tasks), "--include_path", str(tasks_dir), "--device", "cpu",
           "--batch_size", "8", "--limit", "12", "--output_path", str(tmp_path / "out")]
    proc = subprocess.run(cli, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result_file = next(Path(tmp_path / "out").rglob("results_*.json"))
    cli_results = json.loads(result_file.read_text())["results"]
    for row in rows:
        metric, _, filt = row["metric"].partition(",")
        assert cli_results[row["task"]][f"{metric},{filt or 'none'}"] == row["value"], row
    assert {r["task"] for r in rows} == set(cfg.tasks)
    # the per-item outcomes are each document's values: their mean is the task's score
    outcomes = pd.DataFrame(stats["outcomes"])
    for row in rows:
        mine = outcomes[(outcomes.task == row["task"]) & (outcomes.metric == row["metric"])]
        assert sorted(mine.doc_id) == list(range(12)), row
        assert mine.value.mean() == pytest.approx(row["value"], abs=1e-12), row
        # and the row's standard error is theirs in closed form: sample std / sqrt(n)
        assert row["stderr"] == pytest.approx(mine.value.std(ddof=1) / 12 ** 0.5, abs=1e-12), row


def test_code_tasks_need_the_opt_in():
    assert selected_tasks(EvalConfig(tasks=["mini_arc", "mini_mbpp", "mini_humaneval"])) == ["mini_arc"]
    assert selected_tasks(EvalConfig(tasks=["mini_mbpp"], allow_code_execution=True)) == ["mini_mbpp"]
    with pytest.raises(EvalError, match="unknown task"):
        selected_tasks(EvalConfig(tasks=["mini_nope"]))


def test_lm_eval_itself_refuses_code_tasks_without_confirmation(chat_a, tasks_dir):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    _, model, tok = chat_a
    with pytest.raises(ValueError, match="unsafe"):
        simple_evaluate(model=HFLM(pretrained=model, tokenizer=tok, device="cpu"), tasks=["mini_mbpp"],
                        limit=1, task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False))


def test_code_tasks_score_pass_at_1_in_the_sandbox(chat_a, tasks_dir):
    _, model, tok = chat_a
    cfg = EvalConfig(tasks=["mini_mbpp", "mini_humaneval"], limit=3, allow_code_execution=True)
    rows, _ = evaluate_model(model, tok, tasks_dir, cfg)
    assert {(r["task"], r["metric"]) for r in rows} == {("mini_mbpp", "pass_at_1"), ("mini_humaneval", "pass_at_1")}
    assert all(0.0 <= r["value"] <= 1.0 for r in rows)


def test_reference_solutions_score_one_and_wrong_ones_zero():
    from glue_bench.evaluate.tasks import functions
    from glue_bench.zoo.mini import data

    splits = data.build_splits()
    he, mb = splits["mini_humaneval"]["test"][0], splits["mini_mbpp"]["test"][0]
    assert functions.humaneval_pass_at_1(he, [he["canonical_solution"]]) == {"pass_at_1": 1.0}
    assert functions.humaneval_pass_at_1(he, ["    return None\n"]) == {"pass_at_1": 0.0}
    assert functions.mbpp_pass_at_1(mb, [mb["code"] + "\n"]) == {"pass_at_1": 1.0}
    assert functions.mbpp_pass_at_1(mb, ["import os\nos.system('true')\n" + mb["code"]]) == {"pass_at_1": 0.0}


def _simple_evaluate(lm, tasks_dir, cfg, samples=None):
    """What glue_bench evaluated with before tasks were prepared: one `simple_evaluate` per call."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from glue_bench.evaluate import item_outcomes, results_to_rows, with_stderr

    tasks = [t for t in selected_tasks(cfg) if samples is None or t in samples]
    out = simple_evaluate(model=lm, tasks=tasks, limit=None if samples else cfg.limit,
                          samples={t: samples[t] for t in tasks} if samples else None, bootstrap_iters=0,
                          log_samples=True, task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False),
                          confirm_run_unsafe_code=cfg.allow_code_execution, random_seed=0, numpy_random_seed=0,
                          torch_random_seed=0, fewshot_random_seed=0)
    return with_stderr(results_to_rows(out["results"]), item_outcomes(out)), out["samples"]


def _lms(cfg):
    """One lm-eval LM of each kind glue_bench evaluates: a single model, a merge, FFN mixtures
    routed per token and per sample, a block mixture and a model-level mixture."""
    from glue_bench.evaluate import hf_lm
    from glue_bench.merge.engine import Merger, TensorSource
    from glue_bench.mixture.build import layered_mixture_lm, model_mixture
    from glue_bench.zoo import load_model, load_tokenizer, local_dir, resolve_zoo, zoo_config

    refs, base = resolve_zoo(zoo_config("mini2"), "micro")
    tok = load_tokenizer(refs[0])
    router = {"name": "prompt", "prompts": None, "n_prompts": 4, "layer": None}
    yield "single", hf_lm(load_model(refs[0]), tok, cfg)
    merger = Merger([TensorSource(r.name, local_dir(r)) for r in refs], "linear", TensorSource(base.name, local_dir(base)))
    yield "merge", hf_lm(merger.to_model({}), tok, cfg)
    for level, routing in [("ffn", "token"), ("ffn", "sample"), ("block", "token")]:
        mixture = {"level": level, "routing": routing, "top_k": 1, "dense_layers": 0, "shared": "merge"}
        yield f"{level} {routing}", layered_mixture_lm(refs, base, "linear", {}, mixture, router, eval_cfg=cfg)[0]
    yield "model", model_mixture(refs, base, {"top_k": 1}, router, cfg)


@pytest.mark.parametrize("subset", [False, True], ids=["whole split", "sample subset"])
def test_prepared_tasks_score_every_kind_of_lm_exactly_as_simple_evaluate(tasks_dir, subset):
    """Scores and every sample's filtered answers equal `simple_evaluate`'s, for each kind of LM,
    each evaluated right after another on the same prepared requests (so nothing of one carries
    over into the next)."""
    from glue_bench.evaluate import evaluate_lm
    from glue_bench.evaluate.prepared import prepared

    cfg = EvalConfig(tasks=["mini_arc", "mini_winogrande", "mini_gsm8k", "mini_mbpp"], limit=5, batch_size=4,
                     allow_code_execution=True)
    samples = {"mini_arc": [3, 0, 17], "mini_winogrande": [1, 8], "mini_gsm8k": [2, 5], "mini_mbpp": [0, 4]} \
        if subset else None
    prepared.cache_clear()
    seen = set()
    for kind, lm in _lms(cfg):
        rows, _ = evaluate_lm(lm, tasks_dir, cfg, samples=samples)
        reference, reference_samples = _simple_evaluate(lm, tasks_dir, cfg, samples)
        assert rows == reference, kind
        assert prepared.cache_info().currsize == 1  # one PreparedTasks, reused by every LM
        answers = {t: [s["filtered_resps"] for s in ss] for t, ss in reference_samples.items()}
        again = prepared(Path(tasks_dir), tuple(cfg.tasks), cfg.limit,
                         tuple((t, tuple(samples[t])) for t in cfg.tasks) if samples else None, include_defaults=False)
        got = again.evaluate(lm, True)["samples"]
        assert {t: [s["filtered_resps"] for s in ss] for t, ss in got.items()} == answers, kind
        seen.add(json.dumps(answers, sort_keys=True, default=str))
    # the kinds answer differently (log-likelihoods), so equal answers are not one cached answer;
    # on a few items two mixtures may route alike
    assert len(seen) >= 4


def test_an_evaluation_runs_on_its_threads_and_torch_keeps_its_own_after(monkeypatch):
    import os

    import torch

    from glue_bench.evaluate import eval_threads, evaluating_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert eval_threads(None) == 2 and eval_threads(5) == 5
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert eval_threads(None) == 1
    before = torch.get_num_threads()
    with evaluating_threads(None):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
