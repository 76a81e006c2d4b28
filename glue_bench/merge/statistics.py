"""Per-model statistics on calibration data, for the data-dependent merges (fisher, regmean).

    fisher   the diagonal empirical Fisher: per parameter, the mean over calibration sequences of
             the squared gradient of the sequence's log-likelihood sum_t log p(x_t | x_<t) of the
             text itself (the model's own next-token likelihood of the data, not of its samples)
    gram     per linear layer (y = W x), the mean over calibration tokens of x x^T of its input:
             RegMean's Gram matrix divided by the token count (as FusionBench does, so a model's
             pull on the merge does not depend on how long its documents are). Every nn.Linear,
             lm_head included unless it is tied to the embeddings

Calibration data: a mini-zoo model's own fine-tuning data (the training documents of its
recipe's domains, in the proportions of its fine-tuning share, as `expert_prompts` draws them;
train splits only), or, for any model when `corpus` is set, documents drawn from that corpus
(`zoo.corpus.read_corpus`: `chat` or a .jsonl/.txt file).

Memory: one model at a time is loaded, its statistics accumulated in float32 (the Fisher beside
the parameters and their gradients; the Gram matrices, one [in, in] per linear layer), written to
a cache, and freed before the next model: the peak is one model's, not the zoo's (measured on
mini8, float32: ~7x one model's weights for the Fisher, counting its file's pages, one
sequence's activations and the write's copy; ~3.3x for the Gram matrices;
benchmarks/data_merge_bench.py). The merge then reads them tensor by tensor from the cache as it
reads the weights (`TensorSource`).

Cache: <GLUE_BENCH_CACHE>/statistics/<kind>/<model>-<digest>/model.safetensors (+ info.json),
the digest over the model's key and files, the calibration settings and texts, and this module's
`VERSION`; a second merge of the same models with the same settings reuses them.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import random
import re
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import torch
from torch.nn import functional as F

from glue_bench.cache import cache_root
from glue_bench.merge import MergeError

VERSION = 1  # bump when what a statistic means or how it is computed changes: the cache is keyed by it


@dataclass(frozen=True)
class Calibration:
    documents: int = 256        # documents per model
    max_tokens: int = 256       # each document truncated to this many tokens
    seed: int = 0               # which documents are drawn
    corpus: str | None = None   # None: each mini-zoo model's own data; else `chat` or a .jsonl/.txt file

    @classmethod
    def from_settings(cls, settings: dict | None, where: str = "method.calibration") -> "Calibration":
        """Checked settings (defaults for those left out), or one line naming the one at fault."""
        settings = dict(settings or {})
        known = [f.name for f in fields(cls)]
        if unknown := sorted(set(settings) - set(known)):
            raise MergeError(f"{where}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(known)})")
        values = {**asdict(cls()), **{k: v for k, v in settings.items() if v is not None}}
        for name, low in (("documents", 1), ("max_tokens", 2), ("seed", 0)):
            if isinstance(values[name], bool) or not isinstance(values[name], int) or values[name] < low:
                raise MergeError(f"{where}.{name}={values[name]!r}: must be a whole number >= {low}")
        if values["corpus"] is not None and (not isinstance(values["corpus"], str) or not values["corpus"]):
            raise MergeError(f"{where}.corpus={values['corpus']!r}: `chat` or the path of a .jsonl/.txt file")
        return cls(**values)


def check_calibration(refs, calibration: Calibration, method: str, where: str = "method.calibration") -> None:
    """Before any model is read: every model has calibration data (its own training data where its
    source knows it, as the mini zoo's does; else the corpus, which must be readable)."""
    if calibration.corpus is not None:
        _corpus(calibration, where, refs[0].replicate if refs else 0)
        return
    from glue_bench.zoo import own_documents

    for ref in refs:
        if own_documents(ref, calibration.documents, calibration.seed) is None:
            raise MergeError(f"{method}: {_no_training_data(ref, where)}")


def _no_training_data(ref, where: str) -> str:
    return (f"model {ref.name!r} has no training data here: set {where}.corpus (a .jsonl/.txt file of "
            f"documents, or chat) to compute its statistics on")


def calibration_texts(ref, calibration: Calibration, where: str = "method.calibration") -> list[str]:
    """The documents `ref`'s statistics are computed on (see the module's docstring)."""
    if calibration.corpus is None:
        from glue_bench.zoo import own_documents

        if (texts := own_documents(ref, calibration.documents, calibration.seed)) is None:
            raise MergeError(_no_training_data(ref, where))
        return texts
    texts = _corpus(calibration, where, ref.replicate)
    if len(texts) <= calibration.documents:
        return texts
    return random.Random(calibration.seed).sample(texts, calibration.documents)


def _corpus(calibration: Calibration, where: str, replicate: int) -> list[str]:
    from glue_bench.zoo.corpus import CorpusError, read_corpus

    try:
        return read_corpus(calibration.corpus, f"{where}.corpus", replicate)
    except CorpusError as err:
        raise MergeError(str(err)) from None


def token_sequences(tokenizer, texts: list[str], max_tokens: int) -> list[torch.Tensor]:
    """Each text's token ids, truncated to max_tokens; texts of fewer than two tokens predict
    nothing and are left out."""
    sequences = []
    for text in texts:
        ids = tokenizer(text, truncation=True, max_length=max_tokens, return_tensors="pt")["input_ids"][0]
        if ids.numel() >= 2:
            sequences.append(ids)
    return sequences


# ---- the statistics ----------------------------------------------------------------------------

def sequence_log_likelihood(model, ids: torch.Tensor) -> torch.Tensor:
    """sum_t log p(x_t | x_<t) of one token sequence under the model."""
    ids = ids.to(model.device)
    logits = model(input_ids=ids[None]).logits[0, :-1].float()
    return -F.cross_entropy(logits, ids[1:], reduction="sum")


def fisher_diagonal(model, sequences: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The diagonal empirical Fisher of every parameter: mean over sequences of the squared
    gradient of each sequence's log-likelihood (one backward pass per sequence: the square of a
    batch's summed gradient would not be the per-sequence mean). Float32, keyed by parameter name."""
    parameters = dict(model.named_parameters())
    squares = {name: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for name, p in parameters.items()}
    for ids in sequences:
        model.zero_grad(set_to_none=True)
        sequence_log_likelihood(model, ids).backward()
        for name, p in parameters.items():
            if p.grad is not None:  # None: a parameter the text never reaches
                grad = p.grad.float()
                squares[name].addcmul_(grad, grad)
    model.zero_grad(set_to_none=True)
    for square in squares.values():
        square.div_(len(sequences))
    return squares


@torch.no_grad()
def input_grams(model, sequences: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per nn.Linear (keyed by its weight's name, as the checkpoint names it), the mean over
    every calibration token of x x^T for its input x: [in, in], float32. A lm_head tied to the
    embeddings is left out (the embeddings are one tensor, averaged)."""
    embeddings = model.get_input_embeddings()
    tied = embeddings.weight if embeddings is not None else None
    layers = {f"{name}.weight": module for name, module in model.named_modules()
              if isinstance(module, torch.nn.Linear) and module.weight is not tied}
    grams = {key: torch.zeros(m.in_features, m.in_features, device=m.weight.device) for key, m in layers.items()}

    def accumulate(key):
        def hook(module, args, output):
            x = args[0].reshape(-1, args[0].shape[-1]).float()
            grams[key].addmm_(x.T, x)
        return hook

    handles = [module.register_forward_hook(accumulate(key)) for key, module in layers.items()]
    tokens = 0
    try:
        for ids in sequences:
            model(input_ids=ids[None].to(model.device))
            tokens += ids.numel()
    finally:
        for handle in handles:
            handle.remove()
    for gram in grams.values():
        gram.div_(tokens)
    return grams


STATISTICS: dict[str, Callable[[object, list[torch.Tensor]], dict[str, torch.Tensor]]] = {
    "fisher": fisher_diagonal,
    "gram": input_grams,
}


# ---- the cache ---------------------------------------------------------------------------------

def ensure_statistics(refs, kinds, calibration: Calibration, *, device: str = "cpu",
                      cache_dir: str | os.PathLike | None = None, progress: bool = True) -> dict[str, list]:
    """{kind: one TensorSource per model of `refs`} over the cached statistics, computing those
    missing one model at a time."""
    from tqdm import tqdm

    from glue_bench.merge.engine import TensorSource

    unknown = sorted(set(kinds) - set(STATISTICS))
    if unknown:
        raise MergeError(f"unknown statistic(s) {', '.join(unknown)}; known: {', '.join(STATISTICS)}")
    root = Path(cache_dir) if cache_dir is not None else _default_cache()
    found: dict[str, list] = {kind: [] for kind in kinds}
    for ref in tqdm(refs, desc=f"statistics ({', '.join(kinds)})", unit="model", disable=not progress):
        texts = calibration_texts(ref, calibration)
        dirs = {kind: statistic_dir(root, ref, kind, calibration, texts) for kind in kinds}
        missing = [kind for kind, path in dirs.items() if not (path / "model.safetensors").is_file()]
        if missing:
            _compute(ref, texts, calibration, {kind: dirs[kind] for kind in missing}, device)
        for kind, path in dirs.items():
            found[kind].append(TensorSource(ref.name, path))
    return found


def _default_cache() -> Path:
    return cache_root() / "statistics"


def statistic_dir(root: Path, ref, kind: str, calibration: Calibration, texts: list[str]) -> Path:
    """Where `ref`'s statistic `kind` on `texts` is cached: named by everything it depends on."""
    payload = {"version": VERSION, "kind": kind, "model": ref.key or ref.location, "files": _files_signature(ref),
               "max_tokens": calibration.max_tokens,
               "texts": hashlib.sha256(json.dumps(texts).encode()).hexdigest()}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    return root / kind / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', ref.name)}-{digest}"


def _files_signature(ref) -> list:
    """The model directory's files by name, size and modification time: new weights or tokenizer
    at the same path are another model."""
    from glue_bench.zoo import local_dir

    directory = local_dir(ref)
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in directory.iterdir() if p.is_file())


def _compute(ref, texts: list[str], calibration: Calibration, dirs: dict[str, Path], device: str) -> None:
    from glue_bench.zoo import load_model, load_tokenizer

    model = load_model(ref, device)
    sequences = token_sequences(load_tokenizer(ref), texts, calibration.max_tokens)
    if not sequences:
        raise MergeError(f"model {ref.name!r}: no calibration document has two tokens to predict")
    for kind, path in dirs.items():
        start = time.perf_counter()
        statistic = STATISTICS[kind](model, sequences)
        info = {"model": ref.name, "key": ref.key, "kind": kind, "version": VERSION,
                "calibration": asdict(calibration), "sequences": len(sequences),
                "tokens": sum(s.numel() for s in sequences), "seconds": round(time.perf_counter() - start, 3)}
        _write(path, statistic, info)
        del statistic
    del model
    gc.collect()


def _write(final: Path, statistic: dict[str, torch.Tensor], info: dict) -> None:
    """Written whole or not at all: a killed job never leaves half a file, and two jobs computing
    the same statistic at once both end with a whole one."""
    from safetensors.torch import save_file

    from glue_bench.zoo.files import atomic_dir

    with atomic_dir(final, another_may_finish_first=True) as staging:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in statistic.items()},
                  staging / "model.safetensors", metadata={"format": "pt"})
        (staging / "info.json").write_text(json.dumps(info, indent=2))
