"""Building a mixture candidate from a job's config (conf/mixture/, conf/router/)."""

from __future__ import annotations

import sys
import warnings

import torch

from glue_bench.evaluate import EvalConfig, hf_lm
from glue_bench.mixture import MixtureError
from glue_bench.mixture.settings import ROUTERS, check_dense_layers, check_mixture
from glue_bench.mixture.model_level import ModelMixtureLM
from glue_bench.mixture.routers import (HiddenStateEncoder, LinearGate, MLPGate, PromptRouter, TrainedRouter,
                                        gate_vectors, parallel_gates)
from glue_bench.zoo import own_documents


def expert_prompts(refs, router_cfg: dict) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Positive and negative prompts per expert: from `router.prompts`, else (mini-zoo models) a
    sample of the data each was fine-tuned on."""
    given = router_cfg.get("prompts") or {}
    positive, negative = {}, {}
    for ref in refs:
        if ref.name in given:
            positive[ref.name] = list(given[ref.name].get("positive") or [])
            negative[ref.name] = list(given[ref.name].get("negative") or [])
        elif (own := own_documents(ref, router_cfg.get("n_prompts", 16))) is not None:
            positive[ref.name] = own
        else:
            raise MixtureError(f"router.prompts: no prompts for expert {ref.name!r} (only mini-zoo models "
                               "get theirs from their training data)")
        if not positive[ref.name]:
            raise MixtureError(f"router.prompts: expert {ref.name!r} has no positive prompts")
    return positive, negative


def router_corpus(router_cfg: dict, replicate: int = 0) -> list[str]:
    """The trained router's corpus (`router.corpus`, read by `zoo.corpus.read_corpus`): its first
    `router.documents` documents."""
    from glue_bench.zoo.corpus import CorpusError, read_corpus

    try:
        texts = read_corpus(router_cfg.get("corpus"), "router.corpus", replicate)
    except CorpusError as err:
        raise MixtureError(str(err)) from None
    return texts[:router_cfg.get("documents", len(texts))]


@torch.no_grad()
def _mean_token_loss(model, tokenizer, texts: list[str], max_length: int = 256) -> torch.Tensor:
    losses = []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)["input_ids"]
        ids = ids.to(next(model.parameters()).device)
        losses.append(model(input_ids=ids, labels=ids).loss.float().cpu() if ids.shape[1] > 1 else torch.tensor(0.0))
    return torch.stack(losses)


def model_mixture(refs, base_ref, mixture_cfg: dict, router_cfg: dict, eval_cfg: EvalConfig) -> ModelMixtureLM:
    """Each of `refs` an expert answering with its own model and tokenizer; the router reads the
    base model's hidden states of the text."""
    from glue_bench.zoo import load_model, load_tokenizer

    check_mixture({**mixture_cfg, "level": "model"}, router_cfg["name"], "none", len(refs), None)
    models = {r.name: (load_model(r, eval_cfg.device), load_tokenizer(r)) for r in refs}
    return mixture_of(models, {r.name: [r] for r in refs}, base_ref, router_cfg, eval_cfg)


def mixture_of(models: dict[str, tuple], members: dict[str, list], base_ref, router_cfg: dict,
               eval_cfg: EvalConfig) -> ModelMixtureLM:
    """A model-level mixture of in-memory experts {name: (model, tokenizer)}; expert `name` stands
    for the zoo models `members[name]` (a family merged into one), whose prompts it is routed by."""
    from glue_bench.zoo import load_model, load_tokenizer

    if router_cfg["name"] not in ROUTERS:
        raise MixtureError(f"router={router_cfg['name']}: not available for a model-level mixture "
                           f"(available: {', '.join(ROUTERS)})")
    encoder = HiddenStateEncoder(load_model(base_ref, eval_cfg.device), load_tokenizer(base_ref),
                                 layer=router_cfg.get("layer"))
    if router_cfg["name"] == "prompt":
        positive, negative = {}, {}
        for name, refs in members.items():
            pos, neg = expert_prompts(refs, router_cfg)
            positive[name] = [p for r in refs for p in pos[r.name]]
            negative[name] = [p for r in refs for p in neg.get(r.name, [])]
        router = PromptRouter.from_prompts(encoder, positive, negative)
    else:
        texts = router_corpus(router_cfg, base_ref.replicate)
        losses = torch.stack([_mean_token_loss(model, tok, texts) for model, tok in models.values()], dim=1)
        router = TrainedRouter.train(encoder, losses, texts, width=router_cfg["width"], steps=router_cfg["steps"],
                                     lr=router_cfg["lr"], seed=router_cfg["seed"])
    experts = {name: hf_lm(model, tok, eval_cfg, family_bos(members[name], eval_cfg.add_bos_token))
               for name, (model, tok) in models.items()}
    return ModelMixtureLM(experts, router)


def family_bos(refs, default: bool) -> bool:
    """The BOS convention of an expert standing for `refs` (one model, or a family merged into one):
    theirs where they agree (`zoo.add_bos_token`), else `default`."""
    from glue_bench.zoo import add_bos_token

    conventions = {add_bos_token(ref, default) for ref in refs}
    return conventions.pop() if len(conventions) == 1 else default


def layered_mixture_lm(refs, base_ref, method: str, method_params: dict, mixture_cfg: dict, router_cfg: dict, *,
                       eval_cfg: EvalConfig):
    """An FFN- or block-level mixture of `refs` (one architecture), as an lm-eval LM: shared parts
    from the merge of the experts (`method`) or from the base; per-layer prompt-initialised gates
    read the shared model's hidden states where the router sits (MLP or block input), or MLP
    routers trained on `router.corpus` with everything else frozen; the first `dense_layers` layers
    stay dense. Returns (lm, model)."""
    from glue_bench.merge import MergeError
    from glue_bench.merge.engine import Merger, TensorSource
    from glue_bench.mixture.layered import block_mixture, ffn_mixture, layer_inputs, train_routers
    from glue_bench.zoo import load_model, load_tokenizer, local_dir

    settings = check_mixture(mixture_cfg, router_cfg["name"], method, len(refs), None)  # the kind checked the depth
    level, routing, top_k, dense = settings.level, settings.routing, settings.top_k, settings.dense_layers
    tokenizer = load_tokenizer(refs[0])
    if settings.shared == "merge":
        try:
            merger = Merger([TensorSource(r.name, local_dir(r)) for r in refs], method,
                            TensorSource(base_ref.name, local_dir(base_ref)), device=eval_cfg.device)
            shared = merger.to_model(method_params)
        except MergeError as err:
            raise MixtureError(f"{level}-level mixture: the experts cannot be merged for the shared parts "
                               f"({err})") from None
    else:
        shared = load_model(base_ref, eval_cfg.device)
    layers = len(shared.model.layers)
    check_dense_layers(dense, layers)  # checked already where the depth was known before loading
    names = [r.name for r in refs]
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    experts = [load_model(r, eval_cfg.device) for r in refs]
    build = ffn_mixture if level == "ffn" else block_mixture
    if router_cfg["name"] == "mlp":
        from glue_bench.training import PackedStream

        torch.manual_seed(router_cfg["seed"])
        size = shared.config.hidden_size
        routers = [None if l < dense else MLPGate(size, router_cfg["width"], len(refs)) for l in range(layers)]
        model = build(shared, experts, routers, top_k)
        stream = PackedStream({"corpus": router_corpus(router_cfg, base_ref.replicate)}, {"corpus": 1.0}, tokenizer,
                              router_cfg["seq_len"], router_cfg["seed"])
        losses = train_routers(model, stream, router_cfg["steps"], router_cfg["lr"], router_cfg["batch_size"],
                               router_cfg["seed"])
        print(f"[glue_bench] router training loss {losses[0]:.3f} -> {sum(losses[-10:]) / len(losses[-10:]):.3f}",
              file=sys.stderr)
        return _as_lm(model, tokenizer, routing, eval_cfg), model
    positive, negative = expert_prompts(refs, router_cfg)
    at = "mlp" if level == "ffn" else "block"
    means = [layer_inputs(shared, tokenizer, positive[n], at) for n in names]
    negatives = [layer_inputs(shared, tokenizer, negative[n], at) if negative.get(n) else None for n in names]
    gates = [gate_vectors([m[l] for m in means], [n[l] if n else None for n in negatives], names) for l in range(layers)]
    parallel = [pair for l in range(dense, layers) for pair in parallel_gates(gates[l], names)]
    if parallel:
        pairs = sorted({(a, b) for a, b, _ in parallel})
        warnings.warn(f"router: nearly parallel gates in {len(parallel)} (layer, pair) cases, for "
                      f"{', '.join(f'{a}/{b}' for a, b in pairs)}: their prompts do not tell them apart")
    routers = [None if l < dense else LinearGate(gates[l]) for l in range(layers)]
    model = build(shared, experts, routers, top_k)
    return _as_lm(model, tokenizer, routing, eval_cfg), model


def _as_lm(model, tokenizer, routing: str, eval_cfg: EvalConfig):
    from glue_bench.mixture.layered import SampleRoutedLM

    hflm = hf_lm(model, tokenizer, eval_cfg)
    return SampleRoutedLM(hflm, model) if routing == "sample" else hflm
