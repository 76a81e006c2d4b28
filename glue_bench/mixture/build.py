"""Building a mixture candidate from a job's config (conf/mixture/, conf/router/)."""

from __future__ import annotations

from glue_bench.evaluate import EvalConfig
from glue_bench.mixture.model_level import ModelMixtureLM
from glue_bench.mixture.routers import HiddenStateEncoder, PromptRouter

LEVELS = ("model",)  # FFN and block level: not implemented yet
ROUTERS = ("prompt",)


class MixtureError(Exception):
    """A mixture cannot be built as configured; one line naming the setting at fault."""


def expert_prompts(refs, router_cfg: dict) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Positive and negative prompts per expert: from `router.prompts`, else (mini-zoo models) a
    sample of the data each was fine-tuned on."""
    given = router_cfg.get("prompts") or {}
    positive, negative = {}, {}
    for ref in refs:
        if ref.name in given:
            positive[ref.name] = list(given[ref.name].get("positive") or [])
            negative[ref.name] = list(given[ref.name].get("negative") or [])
        elif ref.source == "mini":
            from glue_bench.zoo.mini.build import expert_prompts as mini_prompts

            positive[ref.name] = mini_prompts(ref.name, router_cfg.get("n_prompts", 16))
        else:
            raise MixtureError(f"router.prompts: no prompts for expert {ref.name!r} (only mini-zoo models "
                               "get theirs from their training data)")
    return positive, negative


def model_mixture(refs, base_ref, mixture_cfg: dict, router_cfg: dict, eval_cfg: EvalConfig) -> ModelMixtureLM:
    """Each of `refs` an expert answering with its own model and tokenizer; the router reads the
    base model's hidden states of the text."""
    from lm_eval.models.huggingface import HFLM

    from glue_bench.zoo import load_model, load_tokenizer

    if mixture_cfg.get("top_k", 1) != 1:
        raise MixtureError(f"mixture.top_k={mixture_cfg['top_k']}: a model-level mixture answers with one "
                           "expert (top_k=1)")
    if router_cfg["name"] not in ROUTERS:
        raise MixtureError(f"router={router_cfg['name']}: not available for a model-level mixture "
                           f"(available: {', '.join(ROUTERS)})")
    positive, negative = expert_prompts(refs, router_cfg)
    encoder = HiddenStateEncoder(load_model(base_ref, eval_cfg.device), load_tokenizer(base_ref),
                                 layer=router_cfg.get("layer"))
    router = PromptRouter.from_prompts(encoder, positive, negative)
    experts = {r.name: HFLM(pretrained=load_model(r, eval_cfg.device), tokenizer=load_tokenizer(r),
                            device=eval_cfg.device, batch_size=eval_cfg.batch_size,
                            add_bos_token=eval_cfg.add_bos_token) for r in refs}
    return ModelMixtureLM(experts, router)
