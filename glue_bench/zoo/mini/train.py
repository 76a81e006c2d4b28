"""The mini zoo's tokenizers and model shapes (trained by `glue_bench.training`)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

BOS, EOS, PAD = "<s>", "</s>", "<pad>"


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


def save_model(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def answers_exact(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, pairs: list[tuple[str, str]]) -> float:
    """The share of (prompt, answer) pairs whose every answer token is the model's most likely next
    token, given the prompt and the answer's tokens before it (teacher-forced: one forward pass each)."""
    hits = 0
    model.eval()
    with torch.no_grad():
        for prompt, answer in pairs:
            context, whole = tokenizer(prompt)["input_ids"], tokenizer(prompt + answer)["input_ids"]
            if whole[:len(context)] != context or len(whole) == len(context):
                raise ValueError(f"the answer {answer!r} does not tokenize apart from its prompt")
            ids = torch.tensor([whole])
            predicted = model(ids).logits[0, len(context) - 1:-1].argmax(-1)
            hits += bool((predicted == ids[0, len(context):]).all())
    return hits / len(pairs)

