"""Tokenizer training and causal-LM training for the mini zoo (CPU, deterministic)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
DOC_SEPARATOR = "\n\n"  # lm-eval joins few-shot examples with "\n\n": packed training text does too


def train_tokenizer(texts: list[str], vocab_size: int, split_digits: bool) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `texts`; adds BOS like Llama's tokenizer does."""
    tok = Tokenizer(models.BPE())
    # a newline is always its own token: a prompt ending in "\n" (HumanEval's do) then tokenizes
    # as it does inside a training document, instead of splitting a learnt "\n    " merge
    steps = [pre_tokenizers.Split("\n", behavior="isolated")]
    if split_digits:
        steps.append(pre_tokenizers.Digits(individual_digits=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps + [pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, tok.token_to_id(BOS))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   clean_up_tokenization_spaces=False)


def new_model(arch: dict, tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=arch["hidden"], intermediate_size=arch["intermediate"],
        num_hidden_layers=arch["layers"], num_attention_heads=arch["heads"],
        num_key_value_heads=arch["heads"], max_position_embeddings=1024, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, rope_theta=10000.0,
    )
    return LlamaForCausalLM(config)


class PackedStream:
    """Endless stream of fixed-length token chunks, documents drawn by domain weight and packed.

    Each chunk starts with BOS and holds whole documents joined by DOC_SEPARATOR, the last one cut
    at the chunk's end, which is how the model sees multi-example (few-shot) contexts in training.
    """

    def __init__(self, corpora: dict[str, list[str]], weights: dict[str, float],
                 tokenizer: PreTrainedTokenizerFast, seq_len: int, seed: int):
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


def train(model: LlamaForCausalLM, stream: PackedStream, steps: int, lr: float, batch_size: int,
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


def save_model(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
