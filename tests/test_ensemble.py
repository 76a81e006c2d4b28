"""The output ensemble: its next-token distribution is the members' mean, computed here directly;
its log-likelihoods are sums of log mean probabilities; N copies of one model are that model;
generation is greedy on the mean; members with other tokenizers are averaged per continuation and
cannot generate, which a job refuses before any model is built."""

import copy
import json
import math
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lm_eval.api.instance import Instance

from glue_bench.evaluate import EvalConfig, evaluate_lm, hf_lm, render_tasks
from glue_bench.mixture.ensemble import (EnsembleError, EnsembleHFLM, EnsembleModel, SequenceEnsembleLM,
                                         greedy_generate, log_mean_probs, same_tokenizer)
from glue_bench.zoo.mini.spec import VERSION

CFG = EvalConfig(tasks=["mini_arc", "mini_gsm8k"], limit=4, batch_size=4)


@pytest.fixture(scope="module")
def zoo(micro_cache, tmp_path_factory):
    from glue_bench.zoo import load_model, load_tokenizer, model_ref
    from glue_bench.zoo.mini.build import ensure_data, ensure_models

    names = ["chat_a", "chat_b", "foreign_chat"]
    ensure_models(names, "micro", progress=False)
    loaded = {n: (load_model(model_ref(n, "mini", "micro")), load_tokenizer(model_ref(n, "mini", "micro")))
              for n in names}
    return loaded, render_tasks(ensure_data("micro"), tmp_path_factory.mktemp("tasks"))


def _ensemble(loaded, names, cfg=CFG):
    return hf_lm(EnsembleModel([loaded[n][0] for n in names]), loaded[names[0]][1], cfg, lm_class=EnsembleHFLM)


def _ll(context, continuation):
    return Instance("loglikelihood", {}, (context, continuation), 0)


def _gen(context, until=("\n\n",), max_gen_toks=12):
    return Instance("generate_until", {}, (context, {"until": list(until), "do_sample": False,
                                                      "max_gen_toks": max_gen_toks}), 0)


def test_the_next_token_distribution_is_the_mean_of_the_members_softmaxes(zoo):
    loaded, _ = zoo
    ids = loaded["chat_a"][1]("Question: Tom has 3 apples and buys 4 more.", return_tensors="pt")["input_ids"]
    members = [loaded[n][0] for n in ("chat_a", "chat_b")]
    with torch.no_grad():
        direct = sum(torch.softmax(m(ids).logits.double(), -1) for m in members) / 2
        ensemble = EnsembleModel(members)(ids).logits
    assert torch.allclose(ensemble.double().exp(), direct, atol=1e-6)
    assert not torch.allclose(direct, torch.softmax(members[0](ids).logits.double(), -1), atol=1e-3)


def test_the_log_mean_is_stable_where_probabilities_underflow():
    logits = [torch.tensor([[0.0, -2000.0, -4000.0]]), torch.tensor([[-4000.0, -2000.0, 0.0]])]
    out = log_mean_probs(logits)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, torch.tensor([[-math.log(2), -2000.0, -math.log(2)]]), atol=1e-4)


def test_a_continuation_s_log_likelihood_is_the_sum_of_log_mean_probabilities(zoo):
    loaded, _ = zoo
    tok = loaded["chat_a"][1]
    requests = [_ll("Question: What is 2 plus 3?\nAnswer:", " #### 5"), _ll("The cat sat on the", " mat.")]
    got = _ensemble(loaded, ["chat_a", "chat_b"]).loglikelihood(requests)
    for request, (ll, greedy) in zip(requests, got):
        context, continuation = request.args
        whole = tok(context + continuation, return_tensors="pt")["input_ids"]  # the mini tokenizer prepends BOS
        n_context = len(tok(context)["input_ids"])
        with torch.no_grad():
            probs = sum(torch.softmax(loaded[n][0](whole).logits[0].double(), -1) for n in ("chat_a", "chat_b")) / 2
        targets = whole[0, n_context:]
        predicted = probs[n_context - 1:-1]
        assert ll == pytest.approx(predicted[torch.arange(len(targets)), targets].log().sum().item(), abs=1e-4)
        assert greedy == bool((predicted.argmax(-1) == targets).all())


def test_n_copies_of_one_model_score_and_generate_as_that_model(zoo):
    loaded, tasks_dir = zoo
    model, tok = loaded["chat_a"]
    copies = {"chat_a": (model, tok), **{f"copy{i}": (copy.deepcopy(model), tok) for i in range(2)}}
    ensemble = _ensemble(copies, list(copies))
    single = hf_lm(model, tok, CFG)
    assert evaluate_lm(ensemble, tasks_dir, CFG)[1]["outcomes"] == evaluate_lm(single, tasks_dir, CFG)[1]["outcomes"]
    scored = [_ll("Question: What is 2 plus 3?\nAnswer:", " #### 5"), _ll("The dog ran", " home.")]
    for (ll, greedy), (ll_alone, greedy_alone) in zip(ensemble.loglikelihood(scored), single.loglikelihood(scored)):
        assert ll == pytest.approx(ll_alone, abs=1e-4) and greedy == greedy_alone
    # contexts of different lengths: left-padded in one batch, as lm-eval batches them
    prompts = [_gen("Question: Ann has 5 pens and buys 2 more. How many pens?\nAnswer:"), _gen("def add(a, b):\n")]
    generated = ensemble.generate_until(prompts)
    assert generated == single.generate_until(prompts) and all(generated)


class _Fixed(torch.nn.Module):
    """A causal LM whose next-token distribution is `probs` whatever it reads."""

    def __init__(self, probs):
        super().__init__()
        self.logits = torch.tensor(probs).log()

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None, cache=None):
        return SimpleNamespace(logits=self.logits.expand(*input_ids.shape, -1), cache=None)


def test_generation_is_greedy_on_the_mean_where_it_differs_from_every_member():
    a, b = _Fixed([0.50, 0.10, 0.40, 0.0]), _Fixed([0.10, 0.50, 0.40, 0.0])  # means 0.3, 0.3, 0.4
    context = torch.tensor([[3, 3]])

    def generate(members):
        return greedy_generate(members, context, None, 5, lambda ids, scores: torch.tensor([False]), 3, {99})[0, 2:]

    assert generate([a]).tolist() == [0, 0, 0] and generate([b]).tolist() == [1, 1, 1]
    assert generate([a, b]).tolist() == [2, 2, 2]


def test_generation_follows_the_argmax_of_the_mean_step_by_step(zoo):
    """The cached greedy loop against full forward passes over the growing text, without a cache."""
    loaded, _ = zoo
    names = ["chat_a", "chat_b"]
    context = "Question: Bob has 7 coins and loses 2. How many coins?\nAnswer:"
    text = _ensemble(loaded, names).generate_until([_gen(context, until=["\n\n\n\n"])])[0]
    tok = loaded["chat_a"][1]
    ids = tok(context, return_tensors="pt")["input_ids"]
    for _ in range(12):
        with torch.no_grad():
            mean = sum(torch.softmax(loaded[n][0](ids).logits[0, -1].double(), -1) for n in names)
        token = mean.argmax().view(1, 1)
        if token.item() == tok.eos_token_id:
            break
        ids = torch.cat([ids, token], dim=1)
    expected = tok.decode(ids[0, len(tok(context)["input_ids"]):], skip_special_tokens=True)
    assert text == expected.split("\n\n\n\n")[0]


def test_the_foreign_tokenizer_is_told_apart(zoo):
    loaded, _ = zoo
    assert same_tokenizer([loaded["chat_a"][1], loaded["chat_b"][1]])
    assert not same_tokenizer([loaded["chat_a"][1], loaded["foreign_chat"][1]])


class _Scores:
    def __init__(self, answers):
        self.answers = answers

    def loglikelihood(self, requests):
        return self.answers[:len(requests)]


def test_sequence_level_averaging_is_the_log_mean_exp_and_greedy_only_if_every_member_is():
    a, b = _Scores([(-1.0, True), (-2.0, True)]), _Scores([(-3.0, False), (-2.5, True)])
    out = SequenceEnsembleLM({"a": a, "b": b}).loglikelihood([_ll("x", " y"), _ll("x", " z")])
    assert out[0][0] == pytest.approx(math.log((math.exp(-1) + math.exp(-3)) / 2))
    assert out[1][0] == pytest.approx(math.log((math.exp(-2) + math.exp(-2.5)) / 2))
    assert [greedy for _, greedy in out] == [False, True]


def test_members_with_their_own_tokenizers_each_score_the_continuation(zoo):
    loaded, _ = zoo
    members = {n: hf_lm(*loaded[n], CFG) for n in ("chat_a", "foreign_chat")}
    requests = [_ll("Question: What is 4 plus 4?\nAnswer:", " #### 8"), _ll("Once upon a", " time")]
    alone = {n: lm.loglikelihood(requests) for n, lm in members.items()}
    together = SequenceEnsembleLM(members).loglikelihood(requests)
    for i, (ll, greedy) in enumerate(together):
        mean_p = sum(math.exp(alone[n][i][0]) for n in members) / 2
        assert ll == pytest.approx(math.log(mean_p), rel=1e-9)
        assert greedy == all(alone[n][i][1] for n in members)
    with pytest.raises(EnsembleError, match="do not share one tokenizer") as err:
        SequenceEnsembleLM(members).generate_until([_gen("Once")])
    assert "\n" not in str(err.value)


def test_a_job_with_other_tokenizers_and_generation_tasks_fails_before_any_model_is_built(run_cli, tmp_path):
    empty = tmp_path / "empty_cache"
    out = run_cli("zoo=mini16", "mixture=ensemble", "strategy.models=[chat_a,foreign_chat]",
                  extra_env={"GLUE_BENCH_CACHE": str(empty)})
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("glue_bench: error: mixture=ensemble: members chat_a, foreign_chat do not share")
    assert "mini_gsm8k" in last
    assert not (empty / f"mini-{VERSION}" / "micro" / "models").exists()


def test_the_cli_runs_the_ensemble_and_stores_its_compute(run_cli):
    out = run_cli("zoo=mini2", "mixture=ensemble", "eval.limit=3", "eval.tasks=[mini_arc,mini_gsm8k]")
    assert out.returncode == 0, out.stderr[-2000:]
    with sqlite3.connect(run_cli.results) as db:
        rows = db.execute("SELECT candidate, method, router, config FROM results WHERE mixture = 'ensemble'").fetchall()
    assert rows and {r[:3] for r in rows} == {("ensemble(mini2)", "none", "none")}
    config = json.loads(rows[0][3])
    assert config["forward_passes_per_token"] == 2 and config["params_per_token_vs_one_model"] == 2.0
    assert config["ensemble_averaging"] == "token"
    refused = run_cli("zoo=mini2", "mixture=ensemble", "router=prompt")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1].startswith("glue_bench: error: router=prompt: mixture=ensemble")


def test_other_tokenizers_are_accepted_when_no_task_generates(micro_cache, tmp_path):
    from hydra import compose, initialize_config_dir

    from glue_bench.errors import JobError
    from glue_bench.job import Job
    from glue_bench.kinds import kind_for

    def check(*overrides):
        with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=["zoo=mini16", "mixture=ensemble", "mini_size=micro",
                                               f"results_path={tmp_path}/r.sqlite", *overrides])
        kind = kind_for(cfg)
        kind.check(Job.from_config(cfg, unused=kind.unused(cfg)))

    check("strategy.models=[chat_a,foreign_chat]", "eval.tasks=[mini_arc,mini_mmlu]")
    check("strategy.models=[chat_a,chat_b]")  # one tokenizer: generation tasks too
    with pytest.raises(JobError, match=r"generation tasks \(mini_gsm8k\)"):
        check("strategy.models=[chat_a,foreign_chat]", "eval.tasks=[mini_arc,mini_gsm8k]")
