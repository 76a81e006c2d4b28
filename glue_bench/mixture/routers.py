"""Routers: which expert(s) an input goes to.

`PromptRouter` is the training-free linear router of the study (mergekit-moe's "hidden" gates,
Beyonder): each expert has positive (and optionally negative) prompts; its gate vector is the mean
pooled hidden state of its positive prompts minus that of its negatives, L2-normalised; an input
goes to the expert whose gate has the largest dot product with the input's pooled hidden state.

A warning is issued when gates are degenerate: two of them nearly parallel (their prompts do not
tell the experts apart), or an expert that none of its own prompts is routed to.
"""

from __future__ import annotations

import warnings

import torch

from glue_bench.mixture import MixtureError

DEGENERATE_COSINE = 0.99


class HiddenStateEncoder:
    """Mean-pooled hidden state of a causal LM over the non-padding tokens: of layer `layer`
    (0 = the embeddings), or by default (`layer=None`) the mean over all of them, embeddings to
    last layer, as mergekit-moe reads every layer's hidden states for its gates."""

    def __init__(self, model, tokenizer, layer: int | None = None, max_length: int = 512, batch_size: int = 16):
        self.model, self.tokenizer, self.layer = model.eval(), tokenizer, layer
        self.max_length, self.batch_size = max_length, batch_size
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        pooled = []
        device = next(self.model.parameters()).device
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                                   truncation=True, max_length=self.max_length).to(device)
            states = self.model(**batch, output_hidden_states=True).hidden_states
            if self.layer is not None and self.layer >= len(states):
                raise MixtureError(f"router.layer={self.layer}: the base has hidden states 0..{len(states) - 1} "
                                 "(0: the embeddings)")
            hidden = (torch.stack(states).mean(0) if self.layer is None else states[self.layer]).float()
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1))
        return torch.cat(pooled).cpu()


class PromptRouter:
    def __init__(self, encoder, gates: torch.Tensor, names=None):
        self.encoder, self.gates = encoder, gates
        self.names = list(names) if names is not None else [str(i) for i in range(len(gates))]

    @classmethod
    def from_prompts(cls, encoder, positive: dict[str, list[str]],
                     negative: dict[str, list[str]] | None = None) -> "PromptRouter":
        """`positive`/`negative`: expert name -> prompts (every expert needs positive prompts)."""
        names = list(positive)
        if missing := [n for n in names if not positive[n]]:
            raise ValueError(f"router: expert {missing[0]!r} has no positive prompts")
        negative = negative or {}
        gates = gate_vectors([encoder(positive[n]).mean(0) for n in names],
                             [encoder(negative[n]).mean(0) if negative.get(n) else None for n in names], names)
        router = cls(encoder, gates, names)
        router._warn_if_degenerate(positive)
        return router

    def logits(self, texts: list[str]) -> torch.Tensor:
        return self.encoder(texts) @ self.gates.T

    def __call__(self, texts: list[str]) -> list[int]:
        """The top-1 expert of each text."""
        return self.logits(texts).argmax(-1).tolist()

    def _warn_if_degenerate(self, positive: dict[str, list[str]]) -> None:
        for a, b, cosine in parallel_gates(self.gates, self.names):
            warnings.warn(f"router: the gates of {a!r} and {b!r} are nearly parallel (cosine {cosine:.3f}): "
                          "their prompts do not tell them apart", stacklevel=3)
        for i, name in enumerate(self.names):
            if i not in self(positive[name]):
                warnings.warn(f"router: none of {name!r}'s own prompts is routed to it", stacklevel=3)


def gate_vectors(means: list[torch.Tensor], negative_means: list[torch.Tensor | None], names: list[str]) -> torch.Tensor:
    """[E, H]: each expert's positive mean minus its negative mean (if any), L2-normalised. A gate
    that is not finite (no prompts, or hidden states that overflowed) would send every token to one
    expert: refused, naming the expert."""
    gates = [m - n if n is not None else m for m, n in zip(means, negative_means)]
    if bad := [name for name, g in zip(names, gates) if not torch.isfinite(g).all()]:
        raise MixtureError(f"router: the gate of expert {bad[0]!r} is not finite (its prompts' hidden states are "
                           "empty or not finite)")
    return torch.stack([g / g.norm().clamp(min=1e-8) for g in gates])


def parallel_gates(gates: torch.Tensor, names: list[str]) -> list[tuple[str, str, float]]:
    """The pairs of experts whose gates are nearly parallel (cosine above DEGENERATE_COSINE)."""
    unit = gates / gates.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    cosine = unit @ unit.T
    return [(names[i], names[j], float(cosine[i, j])) for i in range(len(names)) for j in range(i + 1, len(names))
            if cosine[i, j] > DEGENERATE_COSINE]


class LinearGate(torch.nn.Module):
    """A router layer: logits = x @ gates.T (one gate vector per expert)."""

    def __init__(self, gates: torch.Tensor):
        super().__init__()
        self.weight = torch.nn.Parameter(gates.clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.to(x.dtype).T


class MLPGate(torch.nn.Module):
    """The study's trained router: two linear layers with a ReLU between, hidden state -> logits."""

    def __init__(self, hidden_size: int, width: int, n_experts: int):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(hidden_size, width), torch.nn.ReLU(),
                                       torch.nn.Linear(width, n_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.to(self.net[0].weight.dtype)).to(x.dtype)


class TrainedRouter:
    """Model level: an `MLPGate` over an encoder's features, trained to send each corpus document
    to the expert that predicts it best (the lowest mean token loss)."""

    def __init__(self, encoder, gate: MLPGate):
        self.encoder, self.gate = encoder, gate

    def __call__(self, texts: list[str]) -> list[int]:
        with torch.no_grad():
            return self.gate(self.encoder(texts)).argmax(-1).tolist()

    @classmethod
    def train(cls, encoder, expert_losses: torch.Tensor, texts: list[str], *, width: int, steps: int, lr: float,
              seed: int) -> "TrainedRouter":
        """`expert_losses`: [documents, experts] mean token loss of each expert on each text."""
        torch.manual_seed(seed)
        features = encoder(texts)
        labels = expert_losses.argmin(-1)
        gate = MLPGate(features.shape[-1], width, expert_losses.shape[-1])
        optimizer = torch.optim.AdamW(gate.parameters(), lr=lr)
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(gate(features), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return cls(encoder, gate.eval())
