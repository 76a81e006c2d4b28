"""The data-dependent merges (fisher, regmean): their arithmetic against independent computations,
their statistics against autograd and captured layer inputs, and a merge of two micro-zoo models."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from glue_bench.merge import MergeError, get_method
from glue_bench.merge.data_methods import fisher, regmean
from glue_bench.merge.statistics import (Calibration, calibration_texts, check_calibration, ensure_statistics,
                                         fisher_diagonal, input_grams)
from glue_bench.zoo import ModelRef, model_ref


def tiny_llama(seed: int = 0, layers: int = 1) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


def random_sequences(count: int = 4, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    # token ids 0..19 only: the embedding rows 20..31 are never read
    return [torch.randint(0, 20, (int(n),), generator=generator) for n in torch.randint(3, 9, (count,), generator=generator)]


# ---- RegMean --------------------------------------------------------------------------------------

def _layer_problem(n_models=3, inputs=5, outputs=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    xs = [torch.randn(12 + 3 * i, inputs, generator=generator, dtype=torch.float64) for i in range(n_models)]
    ws = [torch.randn(outputs, inputs, generator=generator, dtype=torch.float64) for _ in range(n_models)]
    return xs, ws


def test_regmean_at_alpha_1_is_the_least_squares_merge_of_the_layer():
    xs, ws = _layer_problem()
    weights = [2.0, 1.0, 0.5]
    # independently: min_W sum_i w_i ||X_i W^T - X_i W_i^T||^2 is one stacked least-squares problem
    stacked_x = torch.cat([x * w ** 0.5 for x, w in zip(xs, weights)])
    stacked_y = torch.cat([x @ wi.T * w ** 0.5 for x, wi, w in zip(xs, ws, weights)])
    expected = torch.linalg.lstsq(stacked_x, stacked_y).solution.T
    merged = regmean([w.float() for w in ws], weights, 1.0, [(x.T @ x).float() for x in xs])
    assert torch.allclose(merged.double(), expected, atol=1e-4)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9])
def test_regmean_scales_the_gram_matrices_off_diagonals_by_alpha(alpha):
    xs, ws = _layer_problem(seed=1)
    grams = [x.T @ x for x in xs]
    shrunk = [alpha * g + (1 - alpha) * torch.diag(torch.diag(g)) for g in grams]
    expected = (torch.linalg.inv(sum(shrunk)) @ sum(g @ w.T for g, w in zip(shrunk, ws))).T
    merged = regmean([w.float() for w in ws], [1.0] * 3, alpha, [g.float() for g in grams])
    assert torch.allclose(merged.double(), expected, atol=1e-4)
    if alpha == 0:  # diagonal Grams: each input column is the models' columns weighted by that input's energy
        energy = torch.stack([torch.diag(g) for g in grams])                       # [models, inputs]
        columns = torch.stack(ws)                                                  # [models, out, in]
        by_energy = (columns * energy[:, None, :]).sum(0) / energy.sum(0)
        assert torch.allclose(merged.double(), by_energy, atol=1e-4)


def test_regmean_gives_an_input_no_token_sets_the_weighted_average_column():
    xs, ws = _layer_problem(n_models=2, seed=2)
    for x in xs:
        x[:, 3] = 0
    merged = regmean([w.float() for w in ws], [3.0, 1.0], 1.0, [(x.T @ x).float() for x in xs])
    assert torch.allclose(merged[:, 3].double(), 0.75 * ws[0][:, 3] + 0.25 * ws[1][:, 3], atol=1e-6)
    assert torch.isfinite(merged).all()


def test_regmean_averages_tensors_without_a_gram_and_refuses_a_singular_one():
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    assert torch.allclose(regmean([a, b], [1.0, 3.0], 0.6, None), 0.25 * a + 0.75 * b)
    x = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # inputs 0 and 1 always equal: W's columns 0, 1 unidentified
    with pytest.raises(MergeError, match="singular: set alpha below 1"):
        regmean([a, b], [1.0, 1.0], 1.0, [x.T @ x, x.T @ x])
    assert torch.isfinite(regmean([a, b], [1.0, 1.0], 0.9, [x.T @ x, x.T @ x])).all()


def test_input_grams_are_the_mean_of_x_x_transposed_over_the_tokens_of_each_layer_input():
    model, sequences = tiny_llama(), random_sequences()
    grams = input_grams(model, sequences)
    layer = model.model.layers[0]
    with torch.no_grad():  # the inputs of q_proj, recomputed by hand: the embeddings, normalised
        x = torch.cat([layer.input_layernorm(model.model.embed_tokens(ids)) for ids in sequences])
    expected = x.T @ x / x.shape[0]
    for name in ("q_proj", "k_proj", "v_proj"):
        assert torch.allclose(grams[f"model.layers.0.self_attn.{name}.weight"], expected, atol=1e-5)
    linear_weights = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(grams) == linear_weights and "lm_head.weight" in grams
    assert all(grams[k].shape == (m.shape[1],) * 2 for k, m in model.state_dict().items() if k in grams)


# ---- Fisher ---------------------------------------------------------------------------------------

def test_fisher_is_the_mean_over_sequences_of_squared_log_likelihood_gradients():
    model, sequences = tiny_llama(layers=2), random_sequences()
    parameters = dict(model.named_parameters())
    expected = {name: torch.zeros_like(p) for name, p in parameters.items()}
    for ids in sequences:  # by hand: log p(x) = sum_t log softmax(logits_t)[x_{t+1}], its gradient squared
        log_probs = torch.log_softmax(model(input_ids=ids[None]).logits[0, :-1], dim=-1)
        log_likelihood = log_probs.gather(1, ids[1:, None]).sum()
        for (name, _), grad in zip(parameters.items(), torch.autograd.grad(log_likelihood, list(parameters.values()))):
            expected[name] += grad ** 2 / len(sequences)
    ours = fisher_diagonal(model, sequences)
    assert set(ours) == set(expected)
    for name in expected:
        assert torch.allclose(ours[name], expected[name], rtol=1e-4, atol=1e-10), name
    assert ours["model.embed_tokens.weight"][20:].abs().max() == 0  # rows no sequence reads
    assert ours["model.embed_tokens.weight"][:20].sum() > 0
    assert all(p.grad is None for p in model.parameters())  # leaves the model as it found it


def test_fisher_merge_is_the_fisher_weighted_average_entry_by_entry():
    generator = torch.Generator().manual_seed(3)
    thetas = [torch.randn(5, 4, generator=generator) for _ in range(3)]
    fishers = [torch.rand(5, 4, generator=generator) for _ in range(3)]
    fishers[1][0] = 0  # entries one model's data never moves
    for f in fishers:
        f[4] = 0        # entries no model's data moves
    weights, floor = [0.3, 1.2, 0.5], 1e-3
    expected = sum(w * (f + floor) * t for w, f, t in zip(weights, fishers, thetas)) / \
        sum(w * (f + floor) for w, f in zip(weights, fishers))
    snapshot = [f.clone() for f in fishers]
    merged = fisher(thetas, weights, floor, fishers)
    assert torch.allclose(merged, expected, atol=1e-6)
    assert torch.allclose(merged[4], sum(w * t[4] for w, t in zip(weights, thetas)) / sum(weights), atol=1e-6)
    assert all(torch.equal(f, s) for f, s in zip(fishers, snapshot))  # the statistics are left as they were
    assert torch.allclose(fisher(thetas, weights, floor, None), sum(w * t for w, t in zip(weights, thetas)) / 2.0)


# ---- calibration and the engine ------------------------------------------------------------------

def test_calibration_settings_and_data_fail_in_one_line_naming_the_setting(tmp_path):
    with pytest.raises(MergeError, match=r"method.calibration.documents=0: must be a whole number >= 1"):
        Calibration.from_settings({"documents": 0})
    with pytest.raises(MergeError, match=r"method.calibration: unknown setting\(s\) size"):
        Calibration.from_settings({"size": 3})
    local = ModelRef("mine", "local", str(tmp_path), key=str(tmp_path))
    with pytest.raises(MergeError, match=r"^fisher: model 'mine' has no training data here: set method.calibration.corpus"):
        check_calibration([local], Calibration(), "fisher")
    with pytest.raises(MergeError, match=r"method.calibration.corpus='nope.txt': `chat` .* or an existing"):
        check_calibration([local], Calibration(corpus="nope.txt"), "fisher")
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(f'{{"text": "document {i}"}}\n' for i in range(10)))
    texts = calibration_texts(local, Calibration(documents=4, seed=1, corpus=str(corpus)))
    assert len(texts) == 4 and len(set(texts)) == 4 and set(texts) < {f"document {i}" for i in range(10)}
    assert texts == calibration_texts(local, Calibration(documents=4, seed=1, corpus=str(corpus)))


def test_a_mini_model_s_calibration_data_is_its_own_training_data_never_a_test_item():
    from glue_bench.zoo.mini import data
    from glue_bench.zoo.mini.build import _splits, domain_texts

    ref = ModelRef("math", "mini", "unused", key="math")
    texts = calibration_texts(ref, Calibration(documents=20, seed=0))
    assert len(texts) == 20 and set(texts) <= set(domain_texts("math")) | set(domain_texts("chat")) \
        | set(domain_texts("knowledge")) | set(domain_texts("reason")) | set(domain_texts("code"))
    assert sum(t in set(domain_texts("math")) for t in texts) >= 16  # its fine-tuning data is all math
    splits = _splits(0)
    test_documents = {data.task_document(task, item) for task in splits for item in splits[task]["test"]}
    assert not set(texts) & test_documents


@pytest.fixture
def micro(micro_cache):
    refs = [model_ref(name, "mini", "micro") for name in ("chat_a", "chat_b")]
    return refs, model_ref("base", "mini", "micro")


def test_the_engine_refuses_a_data_dependent_merge_without_its_statistics(micro):
    from glue_bench.merge.engine import Merger, TensorSource

    refs, _ = micro
    with pytest.raises(MergeError, match="fisher: needs the fisher statistics of each of the 2 models"):
        Merger([TensorSource(r.name, r.location) for r in refs], "fisher")


@pytest.mark.parametrize("method", ["fisher", "regmean"])
def test_two_micro_models_merge_through_the_engine_into_a_model_with_finite_outputs(micro, method, tmp_path,
                                                                                   monkeypatch):
    from glue_bench.merge import statistics
    from glue_bench.merge.engine import Merger, TensorSource
    from glue_bench.zoo import load_tokenizer

    refs, base = micro
    calibration = Calibration(documents=6, max_tokens=48)
    needs = get_method(method).needs
    stats = ensure_statistics(refs, needs, calibration, cache_dir=tmp_path, progress=False)
    sources = [TensorSource(r.name, r.location) for r in refs]
    model = Merger(sources, method, statistics=stats).to_model({})
    ids = load_tokenizer(refs[0])("Question: what is 2 + 3?\nAnswer:", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert torch.isfinite(logits).all()
    # not the plain average: the statistics weigh the models
    average = Merger(sources, "linear").to_model({})
    assert any(not torch.allclose(p, average.state_dict()[k]) for k, p in model.state_dict().items())
    # a second merge with the same settings reads the cache: nothing is computed again
    monkeypatch.setattr(statistics, "_compute", lambda *a, **k: pytest.fail("statistics recomputed"))
    again = ensure_statistics(refs, needs, calibration, cache_dir=tmp_path, progress=False)
    assert [s.directory for s in again[needs[0]]] == [s.directory for s in stats[needs[0]]]


def test_strategy_all_refuses_a_model_without_calibration_data_before_reading_any(tmp_path):
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from glue_bench.kinds.merge import Merge

    local = ModelRef("mine", "local", str(tmp_path), key=str(tmp_path))
    method = {"name": "fisher", "params": {}, "calibration": {"documents": 8}}
    job = SimpleNamespace(cfg=OmegaConf.create({"method": method}), method="fisher", method_params={},
                          members=[local, local], section=lambda group: method)
    with pytest.raises(MergeError, match=r"^fisher: model 'mine' has no training data here: set method.calibration"):
        Merge().check(job)
    method["calibration"]["documents"] = -1
    with pytest.raises(MergeError, match=r"method.calibration.documents=-1"):
        Merge().check(job)


def test_a_mini_model_whose_domain_has_fewer_documents_than_asked_is_calibrated_on_all_of_them():
    from glue_bench.zoo.mini.build import domain_texts

    code = set(domain_texts("code"))
    texts = calibration_texts(ModelRef("code", "mini", "unused", key="code"), Calibration(documents=len(code) + 50))
    assert code <= set(texts) and len(texts) == len(set(texts))  # every code document once, and no other twice
