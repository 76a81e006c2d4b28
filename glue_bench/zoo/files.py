"""A model directory's files, checked before any work: a config that parses, a tokenizer, weight
files whose safetensors headers parse and whose tensors lie inside the file (a truncated copy is
found here, not halfway through a merge), and weights that are all finite numbers.

Every check raises ValueError with the reason; callers add which model it is. And the other side:
`atomic_dir`, how a model directory (or anything shaped like one) is written whole or not at all.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
from pathlib import Path

import torch


@contextlib.contextmanager
def atomic_dir(final: Path, *, another_may_finish_first: bool = False):
    """Yield a scratch directory beside `final`, renamed to `final` only if the block completes
    (replacing an empty `final`): a killed writer never leaves half a directory. With
    `another_may_finish_first` (writers not under one lock), a whole `final` another writer put in
    place first is kept, and this copy dropped."""
    final = Path(final)
    scratch = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        yield scratch
        try:
            os.replace(scratch, final)
        except OSError:
            if not (another_may_finish_first and final.is_dir()):  # only renames ever make `final`
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
            "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
_MAX_HEADER = 100 * 2**20  # safetensors' own limit on a header


def read_header(path: Path) -> tuple[dict, int]:
    """A safetensors file's header (tensor name -> dtype, shape, data_offsets) and where its data
    starts, every tensor checked to lie inside the file."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{path.name} is not a safetensors file ({size} bytes, shorter than a header)")
        length = int.from_bytes(prefix, "little")
        if length > min(size - 8, _MAX_HEADER):
            raise ValueError(f"{path.name} is not a safetensors file, or is truncated "
                             f"(header of {length} bytes in a file of {size})")
        try:
            header = json.loads(handle.read(length))
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"{path.name} is not a safetensors file (header: {err})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path.name} is not a safetensors file (header is not a JSON object)")
    for key, info in header.items():
        if key != "__metadata__":
            _check_tensor(path, key, info, size - 8 - length)
    return header, 8 + length


def _check_tensor(path: Path, key: str, info, data_bytes: int) -> None:
    try:
        dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        expected = math.prod(shape) * ITEMSIZE[dtype]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{path.name}: tensor {key!r} has a malformed header entry {info!r}") from None
    if end - begin != expected or begin < 0:
        raise ValueError(f"{path.name}: tensor {key!r} spans {end - begin} bytes, its shape {shape} needs {expected}")
    if end > data_bytes:
        raise ValueError(f"{path.name} is truncated: tensor {key!r} ends at byte {end} of the data, "
                         f"which holds {data_bytes}")


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a model directory (sharded or not); [] when its weights are in
    PyTorch's pickle format instead; ValueError when it has no weights."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{index.name} is not a safetensors index ({type(err).__name__}: {err})") from None
        if missing := [n for n in names if not (directory / n).is_file()]:
            raise ValueError(f"{index.name} names {missing[0]}, which is not in {directory}")
        return [directory / n for n in names]
    if (directory / "model.safetensors").is_file():
        return [directory / "model.safetensors"]
    if (directory / "pytorch_model.bin").is_file() or (directory / "pytorch_model.bin.index.json").is_file():
        return []
    raise ValueError(f"{directory} has no weights (model.safetensors, a safetensors index or pytorch_model.bin)")


def check_directory(directory: Path) -> list[Path]:
    """config.json, a tokenizer and readable weight headers; returns the safetensors files."""
    config = directory / "config.json"
    try:
        parsed = json.loads(config.read_text())
    except FileNotFoundError:
        raise ValueError(f"{directory} has no config.json (not a Hugging Face model directory)") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{config} is not JSON ({err})") from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("model_type"), str):
        raise ValueError(f"{config} is not a model config (a JSON object with a model_type)")
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(f"{directory} has no tokenizer ({', '.join(TOKENIZER_FILES)})")
    for name in ("tokenizer.json", "tokenizer_config.json"):  # a truncated copy fails here, not in a job
        if (directory / name).is_file():
            try:
                json.loads((directory / name).read_text())
            except (ValueError, UnicodeDecodeError) as err:
                raise ValueError(f"{directory / name} is not JSON ({err})") from None
    files = weight_files(directory)
    headers = {}
    for path in files:
        header, _ = read_header(path)
        headers.update({k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"})
    if files:
        _check_weights_match_config(directory, headers)
    return files


def _check_weights_match_config(directory: Path, stored: dict[str, tuple]) -> None:
    """The weights' names and shapes are those of the model config.json describes (built on the meta
    device, nothing allocated): transformers would otherwise load a missing tensor at random, drop
    an unexpected one, and the job would score that model. A tied tensor may be stored once."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(directory)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception as err:  # an unknown model_type, values transformers refuses, ...
        raise ValueError(f"{directory / 'config.json'} describes no causal LM transformers can build "
                         f"({type(err).__name__}: {' '.join(str(err).split())[:300]})") from None
    expected = model.state_dict(keep_vars=True)
    stored_ids = {id(expected[k]) for k in expected if k in stored}
    missing = [k for k, t in expected.items() if k not in stored and id(t) not in stored_ids]
    unexpected = [k for k in stored if k not in expected]
    mismatched = [k for k in expected if k in stored and stored[k] != tuple(expected[k].shape)]
    if missing or unexpected:
        what = (f"tensor {missing[0]!r} is missing" if missing else f"tensor {unexpected[0]!r} is not in the model")
        raise ValueError(f"{directory}: its weights do not match config.json ({what}; {len(missing)} missing, "
                         f"{len(unexpected)} unexpected: check num_hidden_layers and the files)")
    if mismatched:
        k = mismatched[0]
        raise ValueError(f"{directory}: tensor {k!r} has shape {list(stored[k])}, config.json says "
                         f"{list(expected[k].shape)} ({len(mismatched)} such tensors: check vocab_size and the sizes)")


def is_finite(tensor: torch.Tensor) -> bool:
    """No NaN or inf in the tensor. A sum is NaN or inf when any element is, and is one vectorised
    pass with nothing allocated (isfinite(...).all() writes a mask first: 17x slower on a 7B MLP
    tensor, benchmarks/finite_check_bench.py); only a sum that overflows from finite elements needs the elementwise check."""
    if not tensor.is_floating_point():
        return True
    return math.isfinite(tensor.sum(dtype=torch.float32 if tensor.dtype != torch.float64 else None).item()) \
        or bool(torch.isfinite(tensor).all())


def first_non_finite(tensors) -> str | None:
    """The name of the first (name, tensor) pair holding NaN or inf, else None."""
    return next((name for name, tensor in tensors if not is_finite(tensor)), None)


def check_finite_files(files: list[Path]) -> None:
    """Every floating tensor of the files finite; ValueError naming the first that is not."""
    for path in files:
        stat = path.stat()
        if bad := _non_finite_tensor(str(path), stat.st_ino, stat.st_mtime_ns, stat.st_size):
            raise ValueError(f"tensor {bad!r} in {path.name} holds NaN or inf")


@functools.lru_cache(maxsize=512)  # inode, mtime and size in the key: a rewritten file is read again
def _non_finite_tensor(path: str, inode: int, mtime_ns: int, size: int) -> str | None:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as handle:
        return first_non_finite((key, handle.get_tensor(key)) for key in handle.keys())
