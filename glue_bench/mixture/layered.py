"""FFN- and block-level mixtures: experts routed inside one model, layer by layer.

- FFN level (Mixtral-style): in each mixed layer the experts' MLPs sit behind a router; attention,
  norms, embeddings and head come from one shared model (the merge of the experts, or the zoo's
  base).
- Block level: in each mixed layer the experts' whole decoder blocks (attention and MLP) sit behind
  a router; embeddings, final norm and head are the shared model's. Each expert block keeps its own
  KV-cache slot (layer l, expert e: slot l * E + e), and under token routing every block computes
  every token (weighted 0 where not chosen) so that its cache has no gaps: a block-level layer costs
  E blocks per token. Under sample routing only the chosen blocks run.
- Hybrid: the first `dense_layers` layers stay dense (the shared model's).

Routing: each token goes to its top-k experts, mixed by the softmax of their router logits (as
Mixtral). `routing: token` routes every token by its own hidden state. `routing: sample` routes a
whole document once, per layer, on the mean hidden state of its *context* (the prompt, never the
scored continuation, which would leak the answer into the route); `SampleRoutedLM` does that pass,
then scores or generates the document with the route fixed.
"""

from __future__ import annotations

import torch
from torch import nn

from glue_bench.mixture.model_level import DispatchingLM, by_document


class _Routed(nn.Module):
    """Experts behind a router (`router(x)` -> [..., E] logits), with the sample-routing state."""

    def __init__(self, experts: list[nn.Module], router: nn.Module, top_k: int = 1):
        super().__init__()
        if not 1 <= top_k <= len(experts):
            raise ValueError(f"top_k={top_k}: must be between 1 and the number of experts ({len(experts)})")
        self.experts, self.router, self.top_k = nn.ModuleList(experts), router, top_k
        self.fixed: torch.Tensor | None = None  # [E] weights every token gets (a sample's fixed route)
        self.pool = False                       # route on this input's mean hidden state, and fix it
        self.soft = False                       # training a router: every expert, by its softmax weight
        self.tokens_routed = torch.zeros(len(experts), dtype=torch.long)

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """[..., E] weights: the top-k experts' softmax over their logits, zero elsewhere."""
        logits = self.router(x)
        top, chosen = logits.topk(self.top_k, dim=-1)
        return torch.zeros_like(logits).scatter_(-1, chosen, top.softmax(-1))

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        if self.soft:  # differentiable in every logit (top-1 weights are constant 1: no gradient)
            return self.router(x).softmax(-1)
        if self.pool:
            if x.shape[0] != 1:
                raise ValueError("sample routing pools one document at a time")
            self.fixed = self.route(x.mean(dim=1))[0]
        weights = self.fixed.expand(*x.shape[:-1], -1) if self.fixed is not None else self.route(x)
        self.tokens_routed += (weights != 0).flatten(0, -2).sum(0).cpu()
        return weights


class RoutedMLP(_Routed):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.weights(x)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            selected = weights[..., e] != 0
            count = int(selected.sum())
            if count == selected.numel():  # every token: the expert's own computation, unsplit
                out += weights[..., e:e + 1] * expert(x)
            elif count:
                out[selected] += weights[selected][:, e:e + 1] * expert(x[selected])
        return out


class RoutedBlock(_Routed):
    """Decoder blocks as experts; called as a decoder layer is (hidden_states first, then kwargs)."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        weights = self.weights(hidden_states)
        out = torch.zeros_like(hidden_states)
        for e, expert in enumerate(self.experts):
            # a sample's fixed route runs only its chosen blocks; token routing runs them all (caches)
            if self.fixed is not None and self.fixed[e] == 0:
                continue
            out += weights[..., e:e + 1] * expert(hidden_states, *args, **kwargs)
        return out


def ffn_mixture(shared, experts: list, routers: list[nn.Module | None], top_k: int = 1):
    """`shared` (a causal LM, modified in place) with each layer l's MLP replaced by the experts'
    layer-l MLPs behind `routers[l]`; a layer whose router is None stays dense (hybrid)."""
    layers = _check_layers(shared, routers)
    for l, router in enumerate(routers):
        if router is not None:
            layers[l].mlp = RoutedMLP([e.model.layers[l].mlp for e in experts], router, top_k)
    return shared


def block_mixture(shared, experts: list, routers: list[nn.Module | None], top_k: int = 1):
    """`shared` (modified in place) with each layer l replaced by the experts' layer-l decoder
    blocks behind `routers[l]` (None: the shared model's block, dense). Each expert block gets its
    own KV-cache slot, so the config counts L * E cache layers (the model still has L layers)."""
    layers = _check_layers(shared, routers)
    n = len(experts)
    for l, router in enumerate(routers):
        if router is not None:
            blocks = [e.model.layers[l] for e in experts]
            for e, block in enumerate(blocks):
                block.self_attn.layer_idx = l * n + e
            layers[l] = RoutedBlock(blocks, router, top_k)
        else:
            layers[l].self_attn.layer_idx = l * n
    shared.config.num_hidden_layers = len(layers) * n  # the cache's slot count; forward stops at len(layers)
    return shared


def _check_layers(shared, routers) -> nn.ModuleList:
    layers = shared.model.layers
    if len(routers) != len(layers):
        raise ValueError(f"{len(routers)} routers for {len(layers)} layers")
    return layers


def routed_layers(model) -> list[_Routed]:
    return [m for m in model.modules() if isinstance(m, _Routed)]


def train_routers(model, stream, steps: int, lr: float, batch_size: int, seed: int) -> list[float]:
    """Train only the routers of a layered mixture on a token stream (next-token loss), with soft
    routing: every expert weighted by the router's softmax, so every logit gets a gradient. At
    inference the top-k are taken again. Returns the loss curve."""
    from glue_bench.training import train

    layers = routed_layers(model)
    trainable = {id(p) for layer in layers for p in layer.router.parameters()}
    frozen = [p for p in model.parameters() if id(p) not in trainable and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    for layer in layers:
        layer.router.requires_grad_(True)
        layer.soft = True
    try:
        return train(model, stream, steps, lr, batch_size, seed, desc="training the routers")
    finally:
        for layer in layers:
            layer.soft = False
            layer.tokens_routed.zero_()
        for p in frozen:
            p.requires_grad_(True)


@torch.no_grad()
def layer_inputs(model, tokenizer, texts: list[str], at: str = "mlp", batch_size: int = 16) -> list[torch.Tensor]:
    """Per layer, the mean over `texts`' tokens (padding excluded) of the hidden state entering
    the layer's MLP (`at="mlp"`) or the whole block (`at="block"`): what a router there reads."""
    layers = model.model.layers
    sums = [torch.zeros(model.config.hidden_size, dtype=torch.float64) for _ in layers]
    count, mask = 0, None

    def capture(l):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            sums[l] += (hidden.double() * mask).sum(dim=(0, 1)).cpu()
        return hook

    handles = [(layer.mlp if at == "mlp" else layer).register_forward_pre_hook(capture(l), with_kwargs=True)
               for l, layer in enumerate(layers)]
    try:
        device = next(model.parameters()).device
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True).to(device)
            mask = batch["attention_mask"].unsqueeze(-1).double()
            count += int(batch["attention_mask"].sum())
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return [(s / count).float() for s in sums]


class SampleRoutedLM(DispatchingLM):
    """Scores and generates with an FFN-level mixture routed per document: one pass over the
    document's context fixes each layer's route, then its requests run with the route fixed."""

    def __init__(self, hflm, model):
        super().__init__()
        self.hflm, self.layers = hflm, routed_layers(model)

    def _dispatch(self, requests, method: str) -> list:
        out: list = [None] * len(requests)
        for first, positions in by_document(requests):
            context = first.args[0]
            ids = torch.tensor([self.hflm.tok_encode(context)], device=self.hflm.device)
            for layer in self.layers:
                layer.pool, layer.fixed = True, None
            try:
                with torch.no_grad():
                    self.hflm.model(ids)  # each layer fixes its route as the pass goes through it
            finally:
                for layer in self.layers:
                    layer.pool = False
            try:
                for i, result in zip(positions, getattr(self.hflm, method)([requests[i] for i in positions],
                                                                          disable_tqdm=True)):
                    out[i] = result
            finally:
                for layer in self.layers:
                    layer.fixed = None
        return out


def save_mixtral(model, tokenizer, out_dir) -> None:
    """Save an FFN-level mixture with linear gates (token routing) as a Mixtral checkpoint that
    transformers loads (`AutoModelForCausalLM.from_pretrained(out_dir)`). Mixtral's routing
    (softmax over all experts, top-k, renormalised) equals the softmax over the top-k logits used
    here. A dense (hybrid) layer becomes E copies of its MLP, which routes to the same output."""
    from transformers import MixtralConfig, MixtralForCausalLM

    from glue_bench.mixture.routers import LinearGate

    src = model.config
    if getattr(src, "attention_bias", False) or getattr(src, "mlp_bias", False):
        raise ValueError("Mixtral has no attention or MLP biases: this mixture cannot be saved as one")
    layers = model.model.layers
    routed = [layer.mlp for layer in layers if isinstance(layer.mlp, RoutedMLP)]
    if not routed or any(not isinstance(layer.mlp, (RoutedMLP, type(routed[0].experts[0]))) for layer in layers):
        raise ValueError("not an FFN-level mixture")
    if any(not isinstance(mlp.router, LinearGate) for mlp in routed):
        raise ValueError("Mixtral's router is one linear layer: an MLP router cannot be saved as one")
    n, top_k = len(routed[0].experts), routed[0].top_k
    rope = (getattr(src, "rope_parameters", None) or {}).get("rope_theta", getattr(src, "rope_theta", 10000.0))
    config = MixtralConfig(
        vocab_size=src.vocab_size, hidden_size=src.hidden_size, intermediate_size=src.intermediate_size,
        num_hidden_layers=len(layers), num_attention_heads=src.num_attention_heads,
        num_key_value_heads=src.num_key_value_heads, head_dim=getattr(src, "head_dim", None),
        hidden_act=src.hidden_act, max_position_embeddings=src.max_position_embeddings,
        rms_norm_eps=src.rms_norm_eps, rope_theta=rope, tie_word_embeddings=src.tie_word_embeddings,
        bos_token_id=src.bos_token_id, eos_token_id=src.eos_token_id, pad_token_id=src.pad_token_id,
        num_local_experts=n, num_experts_per_tok=top_k, sliding_window=None)
    out = MixtralForCausalLM(config).to(next(model.parameters()).dtype)
    state = {}
    for name, tensor in model.state_dict().items():
        if ".mlp." not in name:
            state[name] = tensor
    for l, layer in enumerate(layers):
        experts = layer.mlp.experts if isinstance(layer.mlp, RoutedMLP) else [layer.mlp] * n
        gate = layer.mlp.router.weight if isinstance(layer.mlp, RoutedMLP) else torch.zeros(n, src.hidden_size)
        prefix = f"model.layers.{l}.mlp."
        state[prefix + "gate.weight"] = gate.detach()
        state[prefix + "experts.gate_up_proj"] = torch.stack(
            [torch.cat([e.gate_proj.weight, e.up_proj.weight]) for e in experts]).detach()
        state[prefix + "experts.down_proj"] = torch.stack([e.down_proj.weight for e in experts]).detach()
    missing, unexpected = out.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"Mixtral conversion: missing {missing[:3]}, unexpected {unexpected[:3]}")
    out.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
