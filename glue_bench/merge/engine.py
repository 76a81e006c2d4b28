"""The streaming merge engine: tensor by tensor, never all input models in memory.

`TensorSource` memory-maps a model's safetensors files and hands out tensors as zero-copy views;
once a tensor has been read its pages are dropped from the process (madvise), so reading N models
costs no more resident memory than the tensors being merged at that moment.

`Merger` merges one set of models with one method, as often as asked: for each tensor name it
hands the method that tensor of every input (`_Inputs`: read, in float32 on the merge device, when
the method asks; dropped once the method's loop moves past it) and the base's, and passes the
result to the output: an in-memory model (`to_model`) or a sharded HF checkpoint (`save`). With
`cache=True` the inputs stay on the device between calls, within a memory budget (and methods may
keep per-tensor work in `memo`), so a search loop pays arithmetic, not a reload, per candidate.
A method that needs statistics of the models (fisher, regmean: `MergeMethod.needs`) is given them
as one `TensorSource` per model and statistic (`statistics=`, files statistics.py writes), read
tensor by tensor beside the weights and dropped the same way.

Peak memory of one in-memory merge: the output model, plus the tensors the method holds at once:
one input and an accumulator for linear and task arithmetic; every model's task vector of the
current tensor for the sign-electing methods (TIES and its kin stack them, with one row more for
the election, in a `workspace` buffer reused from tensor to tensor and kept by the Merger for its
next merge) and for SCE and RAM (the same
buffer); the two inputs and two tensor-sized buffers for Arcee Fusion; all inputs for e.g. multislerp.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import math
import mmap
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from glue_bench.merge import MergeError, MergeMethod, NonFiniteResult, get_method, kernels
from glue_bench.merge.params import resolve
from glue_bench.zoo.files import atomic_dir, is_finite, read_header, weight_files

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
           "U8": torch.uint8, "BOOL": torch.bool}
_LAYER = re.compile(r"\.layers\.(\d+)\.")
_PAGE = mmap.PAGESIZE
_RELEASED_APART = 1 << 26  # bytes of pages from which a tensor's inputs are released over threads


def _libc_madvise():
    """libc's madvise through ctypes, which releases the GIL (mmap.madvise holds it); None where
    there is no such libc."""
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes, madvise.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return madvise


_MADVISE = _libc_madvise()


class TensorSource:
    """One model's tensors, memory-mapped from `model.safetensors` or a sharded index."""

    def __init__(self, name: str, directory: str | os.PathLike):
        self.name, self.directory = name, Path(directory)
        try:
            files = weight_files(self.directory)
            self.config = _read_json(self.directory / "config.json")
        except (OSError, ValueError) as err:
            raise MergeError(f"model {name!r}: {err}") from None
        if not files:
            raise MergeError(f"model {name!r}: no safetensors weights in {self.directory}")
        self._maps: list[mmap.mmap] = []
        self._addresses: list[int] = []
        self.entries: dict[str, tuple[int, torch.dtype, tuple[int, ...], int, int]] = {}
        for path in files:
            self._open(path)
        self.shapes = {key: entry[2] for key, entry in self.entries.items()}

    def _open(self, path: Path) -> None:
        try:
            header, data_start = read_header(path)  # every tensor inside the file: no short read later
        except (OSError, ValueError) as err:
            raise MergeError(f"model {self.name!r}: {err}") from None
        with open(path, "rb") as handle:
            # a private (copy-on-write) map: writable views without a warning, and nothing a view
            # does can ever change the file
            self._maps.append(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY))
        # the map's address, for madvise by ctypes (the ctypes view is dropped at once: it would pin the map)
        self._addresses.append(ctypes.addressof(ctypes.c_char.from_buffer(self._maps[-1])))
        for key, info in header.items():
            if key == "__metadata__":
                continue
            if info["dtype"] not in _DTYPES:
                raise MergeError(f"model {self.name!r}: tensor {key!r} has unsupported dtype {info['dtype']}")
            begin, end = info["data_offsets"]
            self.entries[key] = (len(self._maps) - 1, _DTYPES[info["dtype"]], tuple(info["shape"]),
                                 data_start + begin, data_start + end)

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return self.shapes[key]

    def nbytes(self, key: str) -> int:
        _, _, _, begin, end = self.entries[key]
        return end - begin

    def get(self, key: str) -> torch.Tensor:
        """A zero-copy view of the tensor (valid while this source lives; copy it to keep it)."""
        index, dtype, shape, begin, end = self.entries[key]
        if end == begin:
            return torch.empty(shape, dtype=dtype)
        count = (end - begin) // dtype.itemsize
        return torch.frombuffer(self._maps[index], dtype=dtype, count=count, offset=begin).view(shape)

    def release(self, key: str) -> None:
        """Drop the tensor's pages from this process (they stay in the OS page cache)."""
        index, _, _, begin, end = self.entries[key]
        start = begin - begin % _PAGE
        if end <= start:
            return
        if _MADVISE is None or _MADVISE(self._addresses[index] + start, end - start, mmap.MADV_DONTNEED) != 0:
            self._maps[index].madvise(mmap.MADV_DONTNEED, start, end - start)

    @property
    def vocab_size(self) -> int | None:
        return self.config.get("vocab_size")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as err:
        raise ValueError(f"{path} is not JSON ({err})") from None


def check_compatible(sources: list[TensorSource]) -> list[str]:
    """Same tensor names and shapes in every model (embeddings may differ in vocab rows, see
    `check_shared_vocab` and `Merger._merge_rows`), or one line naming the first difference.
    Returns the tensor names."""
    first = sources[0]
    if all(other.shapes == first.shapes for other in sources[1:]):  # the rule, in one comparison per model
        check_shared_vocab(sources, sizes_differ=False)
        return list(first.entries)
    for other in sources[1:]:
        missing = sorted(set(first.entries) ^ set(other.entries))
        if missing:
            owner = first if missing[0] in first.entries else other
            raise MergeError(f"models {first.name!r} and {other.name!r} differ in tensors: "
                             f"{missing[0]!r} only in {owner.name!r} ({len(missing)} differences)")
        for key in first.entries:
            a, b = first.shape(key), other.shape(key)
            if a != b and not (_is_vocab_tensor(first, key) and _is_vocab_tensor(other, key)
                               and a[1:] == b[1:]):
                raise MergeError(f"models {first.name!r} and {other.name!r} cannot be merged: tensor "
                                 f"{key!r} has shape {list(a)} vs {list(b)}")
    check_shared_vocab(sources, sizes_differ=len({s.shape(k)[0] for s in sources for k in s.entries
                                                  if _is_vocab_tensor(s, k)}) > 1)
    return list(first.entries)


def _is_vocab_tensor(source: TensorSource, key: str) -> bool:
    shape = source.shape(key)
    return len(shape) == 2 and source.vocab_size is not None and shape[0] == source.vocab_size


def check_shared_vocab(sources: list[TensorSource], sizes_differ: bool = True) -> None:
    """Every token id the models share means the same token in each (a model may have appended
    tokens, e.g. a pad token, to the base's vocabulary): two tokenizers of one size with other ids
    would merge embeddings of different tokens. Models without a tokenizer are compared only where
    the vocabulary sizes differ, and then they are refused."""
    tables = {}
    for source in sources:
        try:
            tables[source.name] = _token_table(str(source.directory), _tokenizer_stamp(source.directory))
        except (OSError, ValueError) as err:
            if sizes_differ:
                raise MergeError(f"model {source.name!r} has vocab size {source.vocab_size}, unlike the "
                                 f"others, and no tokenizer to check their shared ids against ({err})") from None
    named = [s for s in sources if s.name in tables]
    if len(named) < 2:
        return
    first = max(named, key=lambda s: len(tables[s.name]))  # so every model's ids are compared
    for other in (s for s in named if s is not first):
        a, b = tables[first.name], tables[other.name]
        if a[:len(b)] != b[:len(a)]:
            i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
            raise MergeError(f"models {first.name!r} and {other.name!r} have different tokenizers "
                             f"(token id {i} is {a[i]!r} vs {b[i]!r}): their embeddings cannot be merged")


def _tokenizer_stamp(directory) -> tuple:
    """What identifies a directory's tokenizer files as they are now (a rewritten one is read again)."""
    from glue_bench.zoo.files import TOKENIZER_FILES

    paths = [Path(directory) / name for name in (*TOKENIZER_FILES, "tokenizer_config.json", "added_tokens.json")]
    return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in paths if p.is_file())


@functools.lru_cache(maxsize=64)
def _token_table(directory: str, stamp: tuple) -> tuple[str | None, ...]:
    """The tokenizer's tokens by id (None for an id without one); OSError or ValueError without one."""
    from transformers import AutoTokenizer

    if not stamp:
        raise OSError(f"no tokenizer files in {directory}")
    vocab = AutoTokenizer.from_pretrained(directory).get_vocab()
    table = [None] * (max(vocab.values(), default=-1) + 1)
    for token, i in vocab.items():
        table[i] = token
    return tuple(table)


class _Inputs:
    """The input models' tensors for one name, each read (and moved to the merge device) when
    asked for. Iterating drops each tensor's pages once the loop moves past it, so a method that
    goes model by model holds one input at a time; a tensor asked for again is simply read again."""

    def __init__(self, sources: list[TensorSource], key: str, load, device: torch.device):
        self.sources, self.key, self.load, self.device = sources, key, load, device
        self.touched = [False] * len(sources)  # read since last released

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> torch.Tensor:
        self.touched[i] = True
        return self.load(self.sources[i], self.key)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for i in range(len(self.sources)):
            yield self[i]
            self._release(i)

    def stored(self) -> list[torch.Tensor] | None:
        """Every input as the file holds it (its dtype; zero-copy views), for a method that reads
        them once into its own result; None when merging off the CPU. Not checked for NaN or inf:
        a method's result is, and `check` then names the input at fault."""
        if self.device.type != "cpu":
            return None
        self.touched = [True] * len(self.sources)
        return [source.get(self.key) for source in self.sources]

    def each_stored(self) -> Iterator[torch.Tensor] | None:
        """`stored`'s views one at a time, each input's pages dropped once the loop moves past it."""
        if self.device.type != "cpu":
            return None
        return self._each_stored()

    def _each_stored(self) -> Iterator[torch.Tensor]:
        for i, source in enumerate(self.sources):
            self.touched[i] = True
            yield source.get(self.key)
            self._release(i)

    def check(self) -> None:
        """Each input read as `load` reads it: a MergeError names the first that holds NaN or inf."""
        for _ in self:
            pass

    def take_touched(self) -> list[TensorSource]:
        """The sources read since last released, each then counted as released (the caller
        releases their pages: `release_pages`)."""
        touched = [source for source, read in zip(self.sources, self.touched) if read]
        self.touched = [False] * len(self.sources)
        return touched

    def _release(self, i: int) -> None:
        if self.touched[i]:
            self.sources[i].release(self.key)
            self.touched[i] = False


class _Base:
    """The base's tensor for one name, for a method registered with `stored_base`, which reads it
    as the file holds it (`stored`: a zero-copy view, not checked: its result then is) in the kernels
    that stream the inputs, or asks for it widened to float32 and checked (`widened`, read once):
    the engine spends no pass widening a base such a method does not ask for."""

    def __init__(self, merger: "Merger", key: str):
        self._merger, self.key, self._widened = merger, key, None
        self.shape = torch.Size(merger.base.shape(key))

    def numel(self) -> int:
        return self.shape.numel()

    def stored(self) -> torch.Tensor:
        return self._merger.base.get(self.key)

    def widened(self) -> torch.Tensor:
        if self._widened is None:
            self._widened = self._merger._load(self._merger.base, self.key, self._merger._base_buffer(self.key))
        return self._widened

    def __getitem__(self, index) -> torch.Tensor:  # rows of it (Merger._merge_rows): widened
        return self.widened()[index]


def release_pages(sources: list[TensorSource], key: str) -> None:
    """Each source's tensor `key` released (`TensorSource.release`), over torch's threads when the
    pages are many: unmapping them is the kernel's work, ~22 ms for a 7B MLP tensor of 8 models and
    the base on one thread here, ~12 ms on two."""
    threads = min(torch.get_num_threads(), len(sources))
    if _MADVISE is None or threads < 2 or sum(source.nbytes(key) for source in sources) < _RELEASED_APART:
        for source in sources:
            source.release(key)
        return
    list(_release_pool(threads).map(lambda source: source.release(key), sources))


@functools.lru_cache(maxsize=None)
def _release_pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="glue_bench-release")


def _memo_bytes(memo: dict) -> int:
    return sum(value.nbytes for value in memo.values())


def _pcg64_state(seed: int, key: str, model_index: int) -> dict:
    """A PCG64 state (128-bit state, odd 128-bit increment) hashed from (seed, tensor, model)."""
    digest = hashlib.blake2b(f"{seed}\0{key}\0{model_index}".encode(), digest_size=32).digest()
    return {"bit_generator": "PCG64", "has_uint32": 0, "uinteger": 0,
            "state": {"state": int.from_bytes(digest[:16], "little"),
                      "inc": int.from_bytes(digest[16:], "little") | 1}}


class Merger:
    """Merge `sources` (and `base`, for methods that use it) with one registered method."""

    def __init__(self, sources: list[TensorSource], method: str | MergeMethod, base: TensorSource | None = None,
                 *, device: str | torch.device = "cpu", cache: bool = False,
                 cache_budget_bytes: int | None = None, progress: bool = False,
                 statistics: dict[str, list[TensorSource]] | None = None):
        if not sources:
            raise MergeError("no models to merge")
        self.method = method if isinstance(method, MergeMethod) else get_method(method)
        self.sources, self.base = sources, base
        self.statistics = _needed_statistics(self.method, sources, statistics or {})
        self.device = torch.device(device)
        self.keys = check_compatible(sources)
        # the output's architecture: the model with the largest vocabulary (the first, usually)
        self.template = max(sources, key=lambda s: s.vocab_size or 0)
        self.num_layers = self.template.config.get("num_hidden_layers") or 1 + max(
            [int(m.group(1)) for k in self.keys if (m := _LAYER.search(k))], default=0)
        self.cache = cache
        self.cache_budget = cache_budget_bytes if cache_budget_bytes is not None else _free_bytes(self.device) // 2
        self._cached: dict[str, tuple[list[torch.Tensor], torch.Tensor | None]] = {}
        self._cached_bytes = 0
        self._memo: dict[str, dict] = {}
        # buffers reused from tensor to tensor, and from merge to merge (a search's candidates), where
        # a fresh buffer per merge costs its page faults again (~0.1 s per 180 MB here): a stacking
        # method's (N + 1 copies of the largest tensor) and the base's float32 copy ("base"), held
        # while the Merger lives
        self._workspace: dict[str, torch.Tensor] = {}
        self._base_checked = False
        self.progress = progress
        self.timings: dict[str, float] = {}

    # ---- parameters ------------------------------------------------------------------------
    def _depth(self, key: str) -> float:
        match = _LAYER.search(key)
        if not match:
            return 0.0  # embeddings, final norm, lm_head: the first value, as mergekit does
        return int(match.group(1)) / (self.num_layers - 1) if self.num_layers > 1 else 1.0

    def _prepare(self, params: dict) -> tuple[dict, bool]:
        checked = self.method.validate(params, len(self.sources))
        uses_base = self.method.uses_base(checked)
        if uses_base:
            if self.base is None:
                raise MergeError(f"{self.method.name}: needs the zoo's base model")
            if not self._base_checked:  # the sources agree among themselves already
                check_compatible([self.template, self.base])
                self._base_checked = True
        # cross-parameter checks at the depths of this model's tensors, before any tensor is read
        self.method.check_at(checked, {self._depth(k) for k in self.keys})
        return checked, uses_base

    # ---- the merge ---------------------------------------------------------------------------
    def tensors(self, params: dict, outputs: dict[str, torch.Tensor] | None = None
                ) -> Iterator[tuple[str, torch.Tensor]]:
        """Merged tensors one by one (float32, on the merge device), in checkpoint order; written
        into `outputs[key]` (float32, contiguous, the tensor's shape, on the merge device) by the
        methods that can, which then yield that very tensor."""
        checked, uses_base = self._prepare(params)
        by_depth: dict[float, dict] = {}
        workspace = self._workspace
        merge_s = 0.0  # reading included: pages are faulted in as the method reads its inputs
        keys = self.keys
        if self.progress:
            from tqdm import tqdm
            keys = tqdm(keys, desc=f"merging ({self.method.name})", unit="tensor")
        for key in keys:
            start = time.perf_counter()
            inputs, base = self._inputs(key, uses_base)
            depth = self._depth(key)
            if depth not in by_depth:
                by_depth[depth] = resolve(checked, self.method.params, depth)
            kwargs = dict(by_depth[depth])
            if uses_base:
                kwargs["base"] = base
            if self.method.randomized:
                kwargs["generator"] = self._generators(checked["seed"], key)
            if self.method.stacks:
                kwargs["workspace"] = workspace
            if self.method.writes_out:
                kwargs["out"] = outputs.get(key) if outputs else None
            for kind, stat_sources in self.statistics.items():
                kwargs[kind] = _Inputs(stat_sources, key, self._load, self.device) if all(key in s.entries for s in stat_sources) \
                    else None
            memo = self._memo_for(key) if self.method.memoizes else None
            if memo is not None:
                kwargs["memo"] = memo
                memo_before = _memo_bytes(memo)
            try:
                merged = self._merge_rows(key, inputs, kwargs)
            except NonFiniteResult:
                merged = None
            except MergeError as err:
                raise MergeError(f"{err} (tensor {key!r})") from None
            if merged is not None and "base" in workspace and \
                    merged.untyped_storage().data_ptr() == workspace["base"].data_ptr():
                merged = merged.clone()  # the base itself: its buffer holds the next tensor's base
            # a method that checks its result did so in the pass that wrote it (into `out`, rows
            # and all: a result _merge_rows put together is checked here)
            result_checked = self.method.checks_result and merged is not None and merged is kwargs.get("out")
            if merged is None or not (result_checked or is_finite(merged)):
                if isinstance(inputs, _Inputs):
                    inputs.check()  # inputs a method read as stored were not checked: name the one at fault
                if isinstance(base, _Base):
                    base.widened()  # nor was a base read so
                raise MergeError(f"{self.method.name} of {', '.join(s.name for s in self.sources)}: the merged tensor "
                                 f"{key!r} holds NaN or inf (its inputs are finite: check the method's parameters)")
            if memo is not None:
                self._cached_bytes += _memo_bytes(memo) - memo_before
            merge_s += time.perf_counter() - start
            yield key, merged
            read = [source for value in [inputs] + [kwargs[kind] for kind in self.statistics]
                    if isinstance(value, _Inputs) for source in value.take_touched()]
            release_pages(read + ([self.base] if uses_base else []), key)
        self.timings = {"merge_s": merge_s}

    def _inputs(self, key: str, uses_base: bool) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        inputs, base = self._cached.get(key, (None, None))
        new_inputs, new_base = inputs is None, uses_base and base is None
        if new_inputs:
            inputs = _Inputs(self.sources, key, self._load, self.device)
        if new_base and self.method.stored_base and self.device.type == "cpu" and not self.cache:
            return inputs, _Base(self, key)  # widened if the method asks: its kernels may read it as stored
        if new_base:
            base = self._load(self.base, key, self._base_buffer(key) if self.device.type == "cpu" else None)
        size = (sum(math.prod(s.shape(key)) for s in self.sources) if new_inputs else 0) + \
            (base.numel() if new_base else 0)
        if self.cache and size and self._cached_bytes + 4 * size <= self.cache_budget:
            # own copies: views of the files' pages are dropped once merged
            if new_inputs:
                inputs = [t.clone() if t.device.type == "cpu" else t for t in inputs]
            if new_base and base.device.type == "cpu":
                base = base.clone()
            self._cached[key] = (inputs, base)
            self._cached_bytes += 4 * size
        return inputs, base if uses_base else None

    def _memo_for(self, key: str) -> dict | None:
        """Where a method may keep per-tensor work that does not depend on the weights (sparsified
        task vectors): only for cached tensors, and only while the cache budget allows."""
        if key not in self._cached or self._cached_bytes >= self.cache_budget:
            return None
        return self._memo.setdefault(key, {})

    def _base_buffer(self, key: str) -> torch.Tensor:
        """Where the base's tensor `key` is widened to float32: the workspace's "base" buffer, grown
        to the largest tensor yet."""
        shape = self.base.shape(key)
        numel = math.prod(shape)
        if "base" not in self._workspace or self._workspace["base"].numel() < numel:
            self._workspace["base"] = torch.empty(numel, dtype=torch.float32)
        return self._workspace["base"][:numel].view(shape)

    def _load(self, source: TensorSource, key: str, into: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor as float32 on the merge device (a bf16 one widened into `into` when given),
        refused if it holds NaN or inf."""
        tensor = source.get(key)
        if self.device.type == "cpu" and kernels.can_widen(tensor):
            tensor, finite = kernels.widen(tensor, into)  # widened exactly and checked in one pass: 5x torch's .to here
        else:
            tensor = tensor.to(self.device, torch.float32)
            finite = is_finite(tensor)  # checked as read: a pass over memory the merge touches anyway
        if not finite:
            raise MergeError(f"model {source.name!r}: tensor {key!r} holds NaN or inf")
        return tensor

    @staticmethod
    def _generators(seed: int, key: str):
        """generator(i): model i's numpy Generator for this tensor. numpy's PCG64, on the CPU
        whatever the merge device, so the same seed gives the same masks on CPU and CUDA (torch's
        CPU and CUDA generators differ). One bit generator per tensor, set to model i's hashed
        state on each call (a tenth of the cost of seeding a new one): a model's generator is
        valid until the next model's is asked for, which is how the methods use them."""
        bits = np.random.PCG64(0)

        def generator(model_index: int) -> np.random.Generator:
            bits.state = _pcg64_state(seed, key, model_index)
            return np.random.Generator(bits)
        return generator

    def _merge_rows(self, key: str, inputs: list[torch.Tensor], kwargs: dict) -> torch.Tensor:
        """The method over the rows every input has; rows only some models have (an extended
        vocabulary) are the mean of the models that have them."""
        input_rows = {source.shape(key)[0] for source in self.sources}
        rows = set(input_rows)
        if kwargs.get("base") is not None:
            rows.add(kwargs["base"].shape[0])
        if len(rows) == 1:
            return self.method.fn(inputs, **kwargs)
        shared = min(rows)
        trimmed = dict(kwargs)
        if "out" in trimmed:
            trimmed["out"] = None  # the method's result has the shared rows only
        if trimmed.get("base") is not None:
            trimmed["base"] = trimmed["base"][:shared]
        inputs = list(inputs)
        for kind in self.statistics:  # entrywise statistics (a Fisher diagonal) lose the same rows
            if trimmed[kind] is not None:
                trimmed[kind] = [s[:shared] if s.shape == t.shape else s for s, t in zip(trimmed[kind], inputs)]
        merged = self.method.fn([t[:shared] for t in inputs], **trimmed)
        sizes = sorted(input_rows | {shared})
        out = torch.empty((sizes[-1], *merged.shape[1:]), dtype=merged.dtype, device=merged.device)
        out[:shared] = merged
        for low, high in zip(sizes, sizes[1:]):
            out[low:high] = torch.stack([t[low:high] for t in inputs if t.shape[0] >= high]).mean(0)
        return out

    # ---- outputs -----------------------------------------------------------------------------
    def empty_model(self, dtype: torch.dtype | None = None):
        """The template's architecture, allocated on the merge device but not initialised."""
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.initialization import no_init_weights

        config = AutoConfig.from_pretrained(self.template.directory)
        with no_init_weights(), torch.device(self.device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype or config.dtype)
        return model.eval()

    def to_model(self, params: dict, model=None):
        """Merge into `model` (reused between calls, e.g. in a search) or a new in-memory model."""
        start = time.perf_counter()
        if model is None:
            model = self.empty_model()
        load_s = time.perf_counter() - start
        targets = dict(model.named_parameters())
        keys = set(self.keys)
        writable = {key: t for key, t in targets.items() if key in keys and t.dtype == torch.float32
                    and t.device == self.device and t.is_contiguous() and t.shape == self.template.shape(key)}
        filled = set()
        with torch.no_grad():
            for key, merged in self.tensors(params, writable):
                target = targets.get(key)
                if target is None:
                    continue  # e.g. a buffer saved by an older transformers
                if merged is not target:
                    target.copy_(merged)
                filled.add(key)
        unfilled = sorted(set(targets) - filled)
        if unfilled:
            raise MergeError(f"the merged checkpoint has no tensor for {unfilled[0]!r} "
                             f"({len(unfilled)} parameters missing)")
        self.timings["load_s"] = load_s
        return model

    def save(self, params: dict, out_dir: str | os.PathLike, *, max_shard_bytes: int = 5 * 2**30,
             dtype: torch.dtype | None = None) -> Path:
        """Write the merge as a HF checkpoint (sharded above max_shard_bytes) with the template's
        config and tokenizer. Written beside `out_dir` and renamed into place, so a failed merge
        leaves nothing half-written."""
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        if out_dir.exists() and any(out_dir.iterdir()):
            raise MergeError(f"output directory {out_dir} exists and is not empty")
        config = dict(self.template.config)
        out_dtype = dtype or _DTYPES_BY_NAME.get(config.get("dtype") or config.get("torch_dtype"),
                                                 torch.float32)
        shards = _plan_shards(self.template, self.keys, out_dtype, max_shard_bytes)
        with atomic_dir(out_dir) as staging:  # an empty out_dir is replaced
            pending: dict[str, torch.Tensor] = {}
            shard_of = {key: i for i, keys in enumerate(shards) for key in keys}
            names = (["model.safetensors"] if len(shards) == 1 else
                     [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
            for key, merged in self.tensors(params):
                pending[key] = merged.to("cpu", out_dtype).contiguous()
                if len(pending) == len(shards[shard_of[key]]):
                    save_file(pending, staging / names[shard_of[key]], metadata={"format": "pt"})
                    pending = {}
            if len(shards) > 1:
                index = {"metadata": {"total_size": sum(_nbytes(self.template, k, out_dtype) for k in self.keys)},
                         "weight_map": {k: names[shard_of[k]] for k in self.keys}}
                (staging / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
            config["dtype"] = str(out_dtype).removeprefix("torch.")
            (staging / "config.json").write_text(json.dumps(config, indent=2))
            for extra in self.template.directory.iterdir():
                if extra.is_file() and extra.name not in ("config.json", "model.safetensors.index.json") \
                        and not extra.name.endswith(".safetensors"):
                    shutil.copy2(extra, staging / extra.name)
        return out_dir


_DTYPES_BY_NAME = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                   "float64": torch.float64}


def _nbytes(source: TensorSource, key: str, dtype: torch.dtype) -> int:
    return math.prod(source.shape(key)) * dtype.itemsize


def _plan_shards(source: TensorSource, keys: list[str], dtype: torch.dtype, limit: int) -> list[list[str]]:
    """Consecutive tensors in shards of at most `limit` bytes (one tensor may exceed it alone)."""
    shards, size = [[]], 0
    for key in keys:
        n = _nbytes(source, key, dtype)
        if shards[-1] and size + n > limit:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += n
    return shards


def _needed_statistics(method, sources: list[TensorSource], statistics: dict[str, list[TensorSource]]
                       ) -> dict[str, list[TensorSource]]:
    """The statistics `method` takes, one source per model in `sources`' order, or one line saying
    which is missing (only the methods that need them are given any)."""
    for kind in method.needs:
        if len(statistics.get(kind) or ()) != len(sources):
            raise MergeError(f"{method.name}: needs the {kind} statistics of each of the {len(sources)} models "
                             f"(glue_bench.merge.statistics computes them; strategy=all does so itself)")
    return {kind: statistics[kind] for kind in method.needs}


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2**30


def merge_models(sources: list[TensorSource], method_name: str, params: dict,
                 base: TensorSource | None = None, device: str = "cpu", progress: bool = False):
    """One merge into a new in-memory model. Returns (model, timings: load_s, merge_s)."""
    merger = Merger(sources, method_name, base, device=device, progress=progress)
    model = merger.to_model(params)
    return model, merger.timings
