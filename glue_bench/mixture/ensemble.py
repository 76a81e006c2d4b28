"""The output ensemble: every member answers every request and their predictions are averaged. The
reference merges and mixtures are measured against, at N times a model's compute.

Members sharing one tokenizer are averaged token by token, p(x_t | x_<t) = (1/N) sum_i p_i(x_t | x_<t):
`EnsembleModel` returns log of that mean as its logits, so lm-eval's HFLM scores it as any causal
model, and `EnsembleHFLM` generates greedily on the averaged distribution (each member keeping its
own KV cache). Members whose tokenizers differ share no next-token distribution: `SequenceEnsembleLM`
averages whole continuations instead. Each member scores the continuation with its own tokenizer
(and BOS convention), and the ensemble's log-likelihood is log((1/N) sum_i exp(ll_i)), the mean
probability of the continuation. It is greedy only if every member's is: a token that is every
member's argmax is the argmax of any average of their distributions, so the claim is never false;
where members disagree there is no shared token-level distribution to ask, and it is not claimed.
It cannot generate, for the same reason: no shared distribution to be greedy on.

Per-document consistency (see `ModelMixtureLM`): every member answers every request, so the choices
of one multiple-choice item are always scored by the same N models, whatever their contexts.
"""

from __future__ import annotations

import copy
import inspect
import math

import torch
from lm_eval.models.huggingface import HFLM

from glue_bench.evaluate import EvalError
from glue_bench.mixture.model_level import DispatchingLM

# tokenized by every member's tokenizer to check that they cut text alike, not only share a vocabulary
_PROBE = "Question: 12 apples + 7 = ?\nAnswer: #### 19\ndef f(x):\n    return x * 2  # ünïcode"


class EnsembleError(EvalError):
    """The ensemble cannot answer a request as configured; one line naming the setting."""


def log_mean_probs(logits: list[torch.Tensor]) -> torch.Tensor:
    """log((1/N) sum_i softmax(logits_i)) over the last axis, stably: a running logaddexp of the
    members' log-softmaxes (one member's tensor in memory beside the sum), minus log N."""
    total = None
    for member in logits:
        logp = torch.log_softmax(member.float(), dim=-1)
        total = logp if total is None else torch.logaddexp(total, logp)
    return total - math.log(len(logits))


def same_tokenizer(tokenizers) -> bool:
    """True when the tokenizers share one vocabulary (token -> id), the same special tokens and cut
    a probe text alike: only then is a token id the same token for every member."""
    def signature(tok):
        return (tok.get_vocab(), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id,
                tok(_PROBE, add_special_tokens=False)["input_ids"])

    reference = signature(tokenizers[0])
    return all(signature(tok) == reference for tok in tokenizers[1:])


class EnsembleModel(torch.nn.Module):
    """N causal LMs over one vocabulary as one: its logits are the log of the members' mean
    next-token probabilities (already normalised, so a log-softmax leaves them as they are)."""

    def __init__(self, members: list[torch.nn.Module]):
        super().__init__()
        widths = {m.get_output_embeddings().weight.shape[0] for m in members}
        if len(widths) != 1:
            raise ValueError(f"members' output vocabularies differ in size ({sorted(widths)})")
        self.members = torch.nn.ModuleList(members)
        self.config = copy.deepcopy(members[0].config)  # what HFLM reads: architecture kind, max length
        lengths = [getattr(m.config, "max_position_embeddings", None) for m in members]
        if None not in lengths:
            self.config.max_position_embeddings = min(lengths)  # the shortest member bounds the context

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def tie_weights(self, *args, **kwargs) -> None:
        """HFLM ties a model's weights: the members' are tied already."""

    def forward(self, input_ids, attention_mask=None, **kwargs):
        from transformers.modeling_outputs import CausalLMOutput

        logits = [m(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits for m in self.members]
        return CausalLMOutput(logits=log_mean_probs(logits))


class EnsembleHFLM(HFLM):
    """HFLM for an `EnsembleModel`: generation is greedy decoding on the averaged distribution."""

    def _model_generate(self, context, max_length: int, stop: list[str], **generation_kwargs) -> torch.Tensor:
        from lm_eval.models.huggingface import stop_sequences_criteria  # where HFLM takes it, whatever its home

        if generation_kwargs.get("do_sample"):
            raise EnsembleError("mixture=ensemble: generates greedily on the averaged distribution; the task "
                                "asks for sampling (do_sample=true)")
        stopping = stop_sequences_criteria(self.tokenizer, stop, context.shape[1], context.shape[0])
        eos = {self.tokenizer.eos_token_id} | {i for m in self.model.members for i in _eos_ids(m)}
        with torch.no_grad():
            return greedy_generate(list(self.model.members), context, generation_kwargs.get("attention_mask"),
                                   max_length, stopping, self.tokenizer.pad_token_id, eos - {None})


def _eos_ids(model) -> list[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def greedy_generate(members, context: torch.Tensor, attention_mask: torch.Tensor | None, max_length: int,
                    stopping, pad_id: int, eos_ids: set[int]) -> torch.Tensor:
    """Greedy decoding on the members' mean next-token distribution, as transformers' `generate`
    decodes one model: left-padded contexts masked and positioned from their first real token, a
    sequence padded once it emits EOS, stopped at `max_length` tokens or when `stopping` says all
    are done. Each member keeps its own KV cache."""
    mask = torch.ones_like(context) if attention_mask is None else attention_mask.to(context.dtype)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    ids, step, caches = context, context, [None] * len(members)
    finished = torch.zeros(context.shape[0], dtype=torch.bool, device=context.device)
    eos = torch.tensor(sorted(eos_ids), device=context.device)
    cache_names = [_cache_name(member) for member in members]
    while ids.shape[1] < max_length:
        logits = []
        for i, member in enumerate(members):
            out = member(input_ids=step, attention_mask=mask, position_ids=positions, use_cache=True,
                         **{cache_names[i]: caches[i]})
            caches[i] = out.cache if hasattr(out, "cache") else out.past_key_values
            logits.append(out.logits[:, -1, :])
        token = log_mean_probs(logits).argmax(-1)
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        finished |= torch.isin(token, eos)
        ids, step = torch.cat([ids, token[:, None]], dim=1), token[:, None]
        mask = torch.cat([mask, torch.ones_like(step)], dim=1)
        positions = positions[:, -1:] + 1
        if finished.all() or bool(torch.as_tensor(stopping(ids, None)).all()):
            break
    return ids


def _cache_name(member) -> str:
    """The name the member's forward takes its KV cache by (`cache` from transformers 5,
    `past_key_values` before)."""
    return "cache" if "cache" in inspect.signature(member.forward).parameters else "past_key_values"


class SequenceEnsembleLM(DispatchingLM):
    """Members with their own tokenizers (lm-eval LMs, one each), averaged per continuation."""

    def __init__(self, members: dict[str, object]):
        super().__init__()
        self.members = members

    def _dispatch(self, requests, method: str) -> list:
        if method == "generate_until":
            raise EnsembleError(generation_refusal(list(self.members)))
        answers = [getattr(member, method)(requests) for member in self.members.values()]
        if method == "loglikelihood_rolling":
            return [log_mean_exp(lls) for lls in zip(*answers)]
        return [(log_mean_exp([ll for ll, _ in per_member]), all(greedy for _, greedy in per_member))
                for per_member in zip(*answers)]


def log_mean_exp(values) -> float:
    """log((1/N) sum_i exp(v_i)), stably."""
    return float(torch.logsumexp(torch.tensor(values, dtype=torch.float64), dim=0)) - math.log(len(values))


def generation_refusal(names: list[str], tasks: list[str] | None = None) -> str:
    which = f" ({', '.join(tasks)})" if tasks else ""
    return (f"mixture=ensemble: members {', '.join(names)} do not share one tokenizer and BOS convention, so there "
            f"is no common next-token distribution to generate from; generation tasks{which} need members "
            "that do (or leave those tasks out of eval.tasks)")


def ensemble_of(refs, eval_cfg) -> tuple[object, str, list]:
    """The ensemble of zoo models `refs`, as (lm-eval LM, averaging, models). Token-level ("token")
    where every member has the same tokenizer, BOS convention and output width, all reading the
    first member's tokenizer; else per sequence ("sequence"), each member an HFLM of its own."""
    from glue_bench.evaluate import hf_lm
    from glue_bench.zoo import add_bos_token, load_model, load_tokenizer

    tokenizers = [load_tokenizer(r) for r in refs]
    conventions = [add_bos_token(r, eval_cfg.add_bos_token) for r in refs]
    models = [load_model(r, eval_cfg.device) for r in refs]
    widths = {m.get_output_embeddings().weight.shape[0] for m in models}
    if same_tokenizer(tokenizers) and len(set(conventions)) == 1 and len(widths) == 1:
        lm = hf_lm(EnsembleModel(models), tokenizers[0], eval_cfg, conventions[0], lm_class=EnsembleHFLM)
        return lm, "token", models
    members = {r.name: hf_lm(m, tok, eval_cfg, bos) for r, m, tok, bos in zip(refs, models, tokenizers, conventions)}
    return SequenceEnsembleLM(members), "sequence", models


def compute_cost(models) -> dict:
    """What the ensemble costs per token beside one model: every member runs a forward pass, so N
    passes, and the parameters evaluated are all the members' (as a multiple of the largest one's)."""
    sizes = [sum(p.numel() for p in m.parameters()) for m in models]
    return {"forward_passes_per_token": len(models), "params_per_token": sum(sizes),
            "params_per_token_vs_one_model": round(sum(sizes) / max(sizes), 3)}
