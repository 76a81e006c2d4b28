"""The zoo configs, the cached atomic builds, determinism and loading errors."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from glue_bench.zoo import ZooError, entry_name, local_dir, model_ref, zoo_config, zoo_members
from glue_bench.zoo.mini.build import model_dir
from glue_bench.zoo.mini.spec import RECIPES, VERSION, lineage

PAIRS = [("mini2", "which2"), ("mini4", "which4"), ("mini4_chat", "which4_chat"), ("mini8", "which8"),
         ("mini12", "which12"), ("mini16", "which16")]


@pytest.mark.parametrize("mini, which", PAIRS)
def test_mini_zoos_mirror_the_paper_zoos(mini, which):
    m, w = zoo_config(mini), zoo_config(which)
    assert len(m["models"]) == len(w["models"]) and m["base"] == "base"
    assert w["base"] == "meta-llama/Llama-2-7b-hf" and w["source"] == "hub"
    for member, hub_id in zip(m["models"], w["models"]):
        assert member in RECIPES and RECIPES[member].analogue == hub_id


def test_which8_and_which12_are_prefixes_of_which16():
    assert zoo_members("which16")[:8] == zoo_members("which8")
    assert zoo_members("which16")[:12] == zoo_members("which12")


@pytest.mark.parametrize("entry, source, name", [
    ("/models/chat-7b", "local", "chat-7b"),
    ("meta-llama/Llama-2-7b-hf", "hub", "meta-llama/Llama-2-7b-hf"),
    ({"name": "mine", "path": "/models/x"}, "hub", "mine"),
])
def test_tables_name_entries_as_results_do(entry, source, name):
    # the tables find a zoo's single models in the store by the name model_ref stored them under
    assert entry_name(entry, source) == model_ref(entry, source).name == name


def test_unknown_zoo_and_model_give_one_line():
    with pytest.raises(ZooError, match="unknown zoo 'nope'; known: .*mini16"):
        zoo_config("nope")
    with pytest.raises(ZooError, match="unknown mini-zoo model 'nope'"):
        lineage("nope")


def test_hub_id_without_hub_gives_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ZooError, match="cannot get meta-llama/Llama-2-7b-hf from the Hugging Face hub") as err:
        local_dir(model_ref("meta-llama/Llama-2-7b-hf", "hub"))
    assert "\n" not in str(err.value)


def test_built_models_load_with_transformers(micro_cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = local_dir(model_ref("chat_a", "mini", "micro"))
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    ids = tok("Question: Ada has 2 pens.", return_tensors="pt").input_ids
    assert ids[0, 0] == tok.bos_token_id
    assert model(ids).logits.shape == (1, ids.shape[1], len(tok))


def test_same_seed_same_weights_in_one_build_worker_or_two(micro_cache, tmp_path):
    """A fresh build in another cache, all in one process, reproduces bit for bit the cached models
    that two build workers made (conftest: base by one, chat_a and chat_b by either)."""
    env = {**os.environ, "GLUE_BENCH_CACHE": str(tmp_path)}
    code = ("from glue_bench.zoo.mini.build import ensure_models; "
            "ensure_models(['base', 'chat_a', 'chat_b'], 'micro', progress=False, workers=1)")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, timeout=300)
    for name in ("base", "chat_a", "chat_b"):
        name_dir = model_dir(name, "micro").name
        rebuilt = load_file(tmp_path / f"mini-{VERSION}" / "micro" / "models" / name_dir / "model.safetensors")
        cached = load_file(micro_cache / f"mini-{VERSION}" / "micro" / "models" / name_dir / "model.safetensors")
        assert rebuilt.keys() == cached.keys()
        for key in cached:
            assert torch.equal(rebuilt[key], cached[key]), (name, key)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_build_shares_deal_every_model_once_parents_first_and_balanced(tmp_path, monkeypatch, workers):
    from glue_bench.zoo.mini.build import build_shares
    from glue_bench.zoo.mini.spec import RECIPES, lineage

    monkeypatch.setenv("GLUE_BENCH_CACHE", str(tmp_path))  # nothing built: every model to deal
    names = list(dict.fromkeys(n for name in RECIPES for n in lineage(name)))
    shares = build_shares(names, "micro", 0, workers)
    assert sorted(n for share in shares for n in share) == sorted(names)
    assert len(shares) == workers
    for share in shares:
        for i, name in enumerate(share):
            assert RECIPES[name].parent not in share[i:], (name, share)
    total = sum(RECIPES[n].steps for n in names)
    longest_line = max(sum(RECIPES[n].steps for n in lineage(name)) for name in names)  # no schedule beats it
    assert max(sum(RECIPES[n].steps for n in share) for share in shares) <= max(1.1 * total / workers, longest_line)


def test_killed_build_leaves_no_model_and_a_rerun_completes(micro_cache, tmp_path):
    env = {**os.environ, "GLUE_BENCH_CACHE": str(tmp_path)}
    code = "from glue_bench.zoo.mini.build import ensure_models; ensure_models(['base'], 'micro')"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.DEVNULL)
    root = tmp_path / f"mini-{VERSION}" / "micro"
    deadline = time.time() + 120
    while not (root / "tokenizer").exists() and time.time() < deadline:
        time.sleep(0.05)  # the tokenizer is written just before the base model's training starts
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    models = root / "models"
    base_dir = model_dir("base", "micro").name
    assert (root / "tokenizer").exists() and not (models / base_dir).exists()
    # a build killed while writing leaves only a scratch directory, which is never loaded
    (models / f".{base_dir}.partial-999999").mkdir(parents=True)
    (models / f".{base_dir}.partial-999999" / "config.json").write_text("{")
    os.environ["GLUE_BENCH_CACHE"] = str(tmp_path)
    try:
        from glue_bench.zoo.mini.build import ensure_models

        ensure_models(["base"], "micro", progress=False)
    finally:
        os.environ["GLUE_BENCH_CACHE"] = str(micro_cache)
    assert (models / base_dir / "model.safetensors").exists()
    assert not list(models.glob(".*partial*")), "leftovers of the killed build are cleaned up"


def test_a_local_or_gguf_directory_without_its_model_file_is_refused_in_one_line(tmp_path):
    from glue_bench.zoo import ModelRef, ensure_available

    local = ModelRef("empty", "local", str(tmp_path), key=str(tmp_path))
    with pytest.raises(ZooError, match=rf"model 'empty': {tmp_path} has no config.json \(not a HF model directory\)"):
        ensure_available([local])
    gguf = ModelRef("q", "gguf", str(tmp_path), "q4.gguf", key=f"{tmp_path}/q4.gguf")
    with pytest.raises(ZooError, match=rf"model 'q': GGUF file q4.gguf not found in {tmp_path}$"):
        ensure_available([gguf])
    missing = ModelRef("gone", "gguf", str(tmp_path / "nope"), "q4.gguf", key="x")
    with pytest.raises(ZooError, match="model 'gone': directory .*nope does not exist"):
        ensure_available([missing])


class _CharTokenizer:
    """One token per character, after a BOS of 0."""

    def __call__(self, text):
        return {"input_ids": [0] + [ord(c) for c in text]}


class _NextCharModel(torch.nn.Module):
    """Always most likely next token: the current one plus 1 ("a" -> "b")."""

    def forward(self, ids):
        from types import SimpleNamespace

        return SimpleNamespace(logits=torch.nn.functional.one_hot(ids + 1, 256).float())


def test_answers_exact_counts_the_answers_predicted_token_by_token():
    from glue_bench.zoo.mini.train import answers_exact

    pairs = [("xa", "bcd"), ("a", "bce"), ("mn", "o"), ("k", "m")]  # the rule predicts the 1st and 3rd answers whole
    assert answers_exact(_NextCharModel(), _CharTokenizer(), pairs) == 0.5


def _build_math_scoring(scores, micro_cache, tmp_path, monkeypatch):
    """Build a 10-step math on micro's base, with retries allowed, the validation scores being
    `scores` in turn (the parent's first, then each run's); its card and the builder."""
    from dataclasses import replace

    from glue_bench.zoo.mini import build, train as mini_train
    from glue_bench.zoo.mini.spec import recipe

    micro = micro_cache / f"mini-{VERSION}" / "micro"
    monkeypatch.setenv("GLUE_BENCH_CACHE", str(tmp_path))
    for part in ("tokenizer", f"models/{model_dir('base', 'micro').name}"):
        shutil.copytree(micro / part, tmp_path / f"mini-{VERSION}" / "micro" / part)
    scores = iter(scores)
    monkeypatch.setattr(mini_train, "answers_exact", lambda model, tok, pairs: next(scores))
    builder = build._Builder("micro")
    builder.cfg = replace(builder.cfg, retries=True)  # micro's own never retry: nothing learns there
    math = replace(recipe("math"), steps=100)  # 10 steps at micro's step_scale
    builder.build(math)
    return json.loads((model_dir("math", "micro") / "glue_bench_recipe.json").read_text()), builder, math


def test_a_recipe_with_restarts_trains_again_until_a_run_learns(micro_cache, tmp_path, monkeypatch):
    """math trains from its parent, each time on another data order, until a run beats the parent
    on validation by LEARNT_MARGIN (here the second: 0.05 + 0.10 reached exactly); the card lists
    the runs and the model saved is the one that learnt: checked by training that order again."""
    from transformers import AutoModelForCausalLM

    from glue_bench.provenance import state_fingerprint
    from glue_bench.training import PackedStream, train
    from glue_bench.zoo.mini.spec import RESTART_STRIDE

    card, builder, math = _build_math_scoring([0.05, 0.1, 0.15, 0.9], micro_cache, tmp_path, monkeypatch)
    seeds = [math.seed + RESTART_STRIDE * k for k in range(2)]
    assert [(r["seed"], r["validation_exact"]) for r in card["restarts"]] == list(zip(seeds, [0.1, 0.15]))
    assert card["kept_seed"] == seeds[1] and card["parent_validation_exact"] == 0.05
    again = AutoModelForCausalLM.from_pretrained(model_dir("base", "micro"))
    stream = PackedStream(builder.corpora, math.weights, builder.tokenizer(False), builder.cfg.seq_len, seed=seeds[1])
    train(again, stream, 10, math.lr, builder.cfg.batch_size, seeds[1], desc="again")
    assert card["weights"] == state_fingerprint(again)


def test_a_recipe_whose_runs_all_learn_nothing_keeps_the_best_of_them(micro_cache, tmp_path, monkeypatch):
    from glue_bench.zoo.mini.spec import RESTART_STRIDE

    card, _, math = _build_math_scoring([0.0, 0.02, 0.07, 0.07], micro_cache, tmp_path, monkeypatch)
    assert [r["validation_exact"] for r in card["restarts"]] == [0.02, 0.07, 0.07]  # all three: none reached 0.10
    assert card["kept_seed"] == math.seed + RESTART_STRIDE  # the best, the earlier of the tie


def test_micro_s_math_experts_train_once(micro_cache, monkeypatch):
    """micro's models learn nothing whatever the data order (`Size.retries`): a retry would only cost."""
    from glue_bench.zoo.mini.build import ensure_models

    monkeypatch.setenv("GLUE_BENCH_CACHE", str(micro_cache))
    ensure_models(["math", "math_altinit"], "micro", progress=False, workers=2)
    for name in ("math", "math_altinit"):
        card = json.loads((model_dir(name, "micro") / "glue_bench_recipe.json").read_text())
        assert "restarts" not in card and card["recipe"]["seed"] == RECIPES[name].seed
