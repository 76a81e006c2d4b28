"""Causal-LM training on a packed token stream: the mini zoo's models, and the routers of a layered
mixture (only their parameters left trainable), train with the same loop."""

from __future__ import annotations

import math
import random

import torch
from tqdm.auto import tqdm

DOC_SEPARATOR = "\n\n"  # lm-eval joins few-shot examples with "\n\n": packed training text does too


class PackedStream:
    """Endless stream of fixed-length token chunks, documents drawn by domain weight and packed.

    Each chunk starts with BOS and holds whole documents joined by DOC_SEPARATOR, the last one cut
    at the chunk's end, which is how the model sees multi-example (few-shot) contexts in training.
    """

    def __init__(self, corpora: dict[str, list[str]], weights: dict[str, float],
                 tokenizer, seq_len: int, seed: int):
        self.domains = [d for d, w in weights.items() if w > 0]
        self.weights = [weights[d] for d in self.domains]
        self.docs = {d: [tokenizer(t, add_special_tokens=False)["input_ids"] for t in corpora[d]]
                     for d in self.domains}
        self.sep = tokenizer(DOC_SEPARATOR, add_special_tokens=False)["input_ids"]
        self.bos = tokenizer.bos_token_id
        self.seq_len = seq_len
        self.rng = random.Random(seed)

    def chunk(self) -> list[int]:
        ids = [self.bos]
        while len(ids) < self.seq_len:
            domain = self.rng.choices(self.domains, self.weights)[0]
            ids += self.rng.choice(self.docs[domain]) + self.sep
        return ids[: self.seq_len]

    def batch(self, size: int) -> torch.Tensor:
        return torch.tensor([self.chunk() for _ in range(size)])


def train(model: torch.nn.Module, stream: PackedStream, steps: int, lr: float, batch_size: int,
          seed: int, *, desc: str, warmup_frac: float = 0.1) -> list[float]:
    """AdamW with linear warm-up then cosine decay to 10% of `lr`; returns the loss curve."""
    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = max(1, int(steps * warmup_frac))

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    losses = []
    bar = tqdm(range(steps), desc=desc, leave=False, mininterval=1.0)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        ids = stream.batch(batch_size)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return losses
