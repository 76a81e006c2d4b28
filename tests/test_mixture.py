"""Model-level mixture and the prompt-initialised router: a mixture whose router always picks
expert i scores exactly as expert i; a document's requests all go to one expert; a router built
from each expert's prompts sends those prompts to that expert."""

import json
import warnings

import pytest
import torch

from glue_bench.evaluate import EvalConfig, evaluate_lm, evaluate_model, render_tasks
from glue_bench.mixture.model_level import ModelMixtureLM
from glue_bench.mixture.routers import HiddenStateEncoder, PromptRouter


@pytest.fixture(scope="module")
def zoo(micro_cache, tmp_path_factory):
    from glue_bench.zoo import load_model, load_tokenizer, resolve_zoo, zoo_config
    from glue_bench.zoo.mini.build import ensure_data

    refs, base = resolve_zoo(zoo_config("mini2"), "micro")
    loaded = {r.name: (load_model(r), load_tokenizer(r)) for r in [base, *refs]}
    data = ensure_data("micro")
    return loaded, data, render_tasks(data, tmp_path_factory.mktemp("tasks"))


def _hflm(model, tok, cfg):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tok, device="cpu", batch_size=cfg.batch_size,
                add_bos_token=cfg.add_bos_token)


def test_a_router_that_always_picks_expert_i_scores_exactly_as_expert_i(zoo):
    loaded, _, tasks_dir = zoo
    cfg = EvalConfig(tasks=["mini_arc", "mini_winogrande", "mini_gsm8k"], limit=6, batch_size=8)
    experts = {name: _hflm(*loaded[name], cfg) for name in ("chat_a", "chat_b")}
    alone = {name: evaluate_model(*loaded[name], tasks_dir, cfg)[0] for name in experts}
    assert alone["chat_a"] != alone["chat_b"]  # so an equality below says which expert answered
    for i, name in enumerate(experts):
        mixture = ModelMixtureLM(experts, lambda texts, i=i: [i] * len(texts))
        mixed, _ = evaluate_lm(mixture, tasks_dir, cfg)
        assert mixed == alone[name]
        assert set(mixture.usage) == {name}


class _Named:
    """An expert that answers every request with its own name."""

    def __init__(self, name):
        self.name = name

    def loglikelihood(self, requests):
        return [(self.name, r.args[0]) for r in requests]


def test_every_request_of_a_document_goes_where_its_first_request_was_routed():
    from lm_eval.api.instance import Instance

    # WinoGrande-like: the contexts differ between a document's choices
    requests = [Instance("loglikelihood", {}, (f"context {doc}-{choice}", " rest"), choice,
                         ("task", doc, 1)) for doc in range(4) for choice in range(2)]
    seen = []

    def router(texts):
        seen.extend(texts)
        return [int(t.split()[1][0]) % 2 for t in texts]  # doc parity

    out = ModelMixtureLM({"even": _Named("even"), "odd": _Named("odd")}, router).loglikelihood(requests)
    assert seen == [f"context {d}-0" for d in range(4)]  # one decision per document, on its first request
    assert [name for name, _ in out] == ["even", "even", "odd", "odd"] * 2
    assert [context for _, context in out] == [r.args[0] for r in requests]  # answers in request order


def _prompts(data, task, split, n):
    from glue_bench.zoo.mini.data import task_document

    with open(data / task / f"{split}.jsonl") as f:
        return [task_document(task, json.loads(line)) for line in f][:n]


def test_a_prompt_initialised_router_sends_each_experts_prompts_to_that_expert(zoo):
    loaded, data, _ = zoo
    encoder = HiddenStateEncoder(*loaded["base"])
    domains = {"math": "mini_gsm8k", "code": "mini_mbpp", "knowledge": "mini_mmlu", "reason": "mini_arc"}
    positive = {expert: _prompts(data, task, "train", 12) for expert, task in domains.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # well-separated prompts: no degenerate-gate warning
        router = PromptRouter.from_prompts(encoder, positive)
    for i, expert in enumerate(domains):
        assert router(positive[expert]) == [i] * 12, expert
    # held-out prompts of the same domains (their test splits) go to the same experts
    held_out = {expert: _prompts(data, task, "test", 50) for expert, task in domains.items()}
    hits = sum(route == i for i, expert in enumerate(domains) for route in router(held_out[expert]))
    assert hits >= 0.9 * 50 * len(domains)  # 190 of 200 measured


def test_degenerate_gates_are_warned_about(zoo):
    loaded, data, _ = zoo
    encoder = HiddenStateEncoder(*loaded["base"])
    same = _prompts(data, "mini_gsm8k", "train", 6)
    with pytest.warns(UserWarning, match="nearly parallel"):
        PromptRouter.from_prompts(encoder, {"a": same, "b": list(same), "c": _prompts(data, "mini_mbpp", "train", 6)})
    with pytest.raises(ValueError, match="expert 'b' has no positive prompts"):
        PromptRouter.from_prompts(encoder, {"a": same, "b": []})


class _Always(torch.nn.Module):
    """A router that sends every token to expert i (of n)."""

    def __init__(self, i, n):
        super().__init__()
        self.i, self.n = i, n

    def forward(self, x):
        logits = torch.zeros(*x.shape[:-1], self.n, dtype=x.dtype)
        logits[..., self.i] = 1.0
        return logits


def _always(loaded, i, level, names=("chat_a", "chat_b")):
    """An FFN- or block-level mixture of `names` whose shared parts are expert i's own and whose
    routers always pick expert i."""
    from glue_bench.mixture.layered import block_mixture, ffn_mixture
    from glue_bench.zoo import load_model, resolve_zoo, zoo_config

    refs = {r.name: r for r in resolve_zoo(zoo_config("mini2"), "micro")[0]}
    shared = load_model(refs[names[i]])
    experts = [load_model(refs[n]) for n in names]  # their own copies: a block mixture renumbers layers
    routers = [_Always(i, len(names)) for _ in shared.model.layers]
    return (ffn_mixture if level == "ffn" else block_mixture)(shared, experts, routers, top_k=1)


@pytest.mark.parametrize("level", ["ffn", "block"])
def test_a_layered_mixture_routed_to_expert_i_gives_expert_is_logits(zoo, level):
    loaded, _, _ = zoo
    ids = torch.tensor([[5, 17, 99, 3, 250, 41, 8, 77], [9, 9, 1, 40, 300, 12, 6, 2]])
    for i, name in enumerate(("chat_a", "chat_b")):
        with torch.no_grad():
            assert torch.equal(_always(loaded, i, level)(ids).logits, loaded[name][0](ids).logits)


@pytest.mark.slow
@pytest.mark.parametrize("level", ["ffn", "block"])
def test_a_layered_mixture_routed_to_expert_i_scores_and_generates_as_expert_i(zoo, level):
    """Through lm-eval, token and sample routing; gsm8k generates with the KV cache, which a block
    mixture would corrupt if two experts' blocks shared a cache slot."""
    from glue_bench.mixture.layered import SampleRoutedLM, routed_layers

    loaded, _, tasks_dir = zoo
    cfg = EvalConfig(tasks=["mini_arc", "mini_gsm8k"], limit=3, batch_size=8)
    for i, name in enumerate(("chat_a", "chat_b")):
        alone, _ = evaluate_model(*loaded[name], tasks_dir, cfg)
        tok = loaded[name][1]
        token = _always(loaded, i, level)
        assert evaluate_lm(_hflm(token, tok, cfg), tasks_dir, cfg)[0] == alone
        sample = _always(loaded, i, level)
        assert evaluate_lm(SampleRoutedLM(_hflm(sample, tok, cfg), sample), tasks_dir, cfg)[0] == alone
        used = sum(layer.tokens_routed for layer in routed_layers(sample))
        assert used[i] > 0 and used[1 - i] == 0


def test_sample_routing_reads_the_context_only():
    from lm_eval.api.instance import Instance

    from glue_bench.mixture.layered import SampleRoutedLM, routed_layers

    class _Recorder:
        """Stands in for HFLM: encodes a text as one token per word; records what it is asked."""
        device = "cpu"

        def __init__(self, model):
            self.model, self.asked = model, []

        def tok_encode(self, text):
            return [len(w) for w in text.split()]

        def loglikelihood(self, requests, disable_tqdm=False):
            self.asked.append([r.args for r in requests])
            return [(0.0, True)] * len(requests)

    class _Tiny(torch.nn.Module):
        def __init__(self, mlp):
            super().__init__()
            self.mlp = mlp

        def forward(self, ids):
            return self.mlp(torch.nn.functional.one_hot(ids, 16).float())

    pooled = []
    experts = [torch.nn.Linear(16, 16), torch.nn.Linear(16, 16)]
    from glue_bench.mixture.layered import RoutedMLP

    mlp = RoutedMLP(experts, _Always(1, 2))
    mlp.register_forward_pre_hook(lambda m, args: pooled.append(args[0].shape[1]) if m.pool else None)
    model = _Tiny(mlp)
    requests = [Instance("loglikelihood", {}, ("two words", " and a long answer"), c, ("t", 0, 1)) for c in range(2)]
    lm = SampleRoutedLM(_Recorder(model), model)
    assert routed_layers(model) == [mlp]
    lm.loglikelihood(requests)
    assert pooled == [2]  # the context's two tokens, not the continuation's
    assert lm.hflm.asked == [[r.args for r in requests]]  # both choices at once, route fixed
    assert mlp.fixed is None and not mlp.pool  # nothing left behind for the next document


def test_training_the_routers_changes_nothing_else_and_learns_to_avoid_a_broken_expert(zoo):
    from glue_bench.mixture.layered import ffn_mixture, routed_layers, train_routers
    from glue_bench.mixture.routers import MLPGate
    from glue_bench.zoo import load_model, resolve_zoo, zoo_config
    from glue_bench.zoo.mini.build import domain_texts
    from glue_bench.training import PackedStream

    loaded, _, _ = zoo
    ref = resolve_zoo(zoo_config("mini2"), "micro")[0][0]
    good, broken = load_model(ref), load_model(ref)
    torch.manual_seed(0)
    for layer in broken.model.layers:  # an expert whose MLP is noise
        for p in layer.mlp.parameters():
            torch.nn.init.normal_(p, std=0.5)
    shared = load_model(ref)
    size = shared.config.hidden_size
    model = ffn_mixture(shared, [good, broken], [MLPGate(size, 32, 2) for _ in shared.model.layers])
    routers = {id(p) for layer in routed_layers(model) for p in layer.router.parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters() if id(p) not in routers}
    stream = PackedStream({"chat": domain_texts("chat")}, {"chat": 1.0}, loaded["chat_a"][1], 64, seed=0)
    probe = stream.batch(4)

    def share_to_good() -> float:
        for layer in routed_layers(model):
            layer.tokens_routed.zero_()
        with torch.no_grad():
            model(probe)
        routed = sum(layer.tokens_routed for layer in routed_layers(model))
        return float(routed[0] / routed.sum())

    untrained = share_to_good()
    losses = train_routers(model, stream, steps=80, lr=1e-2, batch_size=4, seed=0)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5  # 6.4 -> 2.2 measured
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if id(p) not in routers)
    assert all(p.requires_grad for p in model.parameters())  # unfrozen again
    trained = share_to_good()
    assert trained > 0.95 and trained > untrained, (untrained, trained)  # 0.73 -> 1.0 measured


def test_a_trained_model_level_router_sends_documents_to_the_expert_that_predicts_them_best():
    from glue_bench.mixture.routers import TrainedRouter

    texts = [f"doc {i}" for i in range(40)]
    features = torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    best = (features[:, 0] > 0).long()  # expert 1 predicts the documents whose first feature is positive
    losses = torch.stack([best.float(), 1 - best.float()], dim=1)  # the best expert has the lower loss
    router = TrainedRouter.train(lambda t: features[[texts.index(x) for x in t]], losses, texts, width=16,
                                 steps=300, lr=1e-2, seed=0)
    assert router(texts) == best.tolist()


def test_an_ffn_mixture_saved_as_mixtral_loads_with_transformers_and_gives_the_same_logits(zoo, tmp_path):
    from transformers import AutoModelForCausalLM

    from glue_bench.mixture.layered import ffn_mixture, save_mixtral
    from glue_bench.mixture.routers import LinearGate
    from glue_bench.zoo import load_model, resolve_zoo, zoo_config

    loaded, _, _ = zoo
    refs = resolve_zoo(zoo_config("mini2"), "micro")[0]
    shared = load_model(refs[0])
    size, layers = shared.config.hidden_size, len(shared.model.layers)
    gates = [None] + [LinearGate(torch.randn(2, size, generator=torch.Generator().manual_seed(l)))
                      for l in range(1, layers)]  # layer 0 dense: a hybrid
    mixture = ffn_mixture(shared, [load_model(r) for r in refs], gates, top_k=1)
    save_mixtral(mixture, loaded["chat_a"][1], tmp_path / "mixtral")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "mixtral")
    assert type(reloaded).__name__ == "MixtralForCausalLM"
    ids = torch.tensor([[5, 17, 99, 3, 250, 41, 8, 77], [9, 9, 1, 40, 300, 12, 6, 2]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, mixture(ids).logits, rtol=1e-5, atol=1e-5)
