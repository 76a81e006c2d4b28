"""What a stored score was computed on: the weights (a short hash) and the machine facts that
change float results (torch version, CPU kernels, BLAS, threads, device).

Two kinds of weight fingerprint, not comparable with each other: a single model's is the hash of
its files as stored (safetensors, or the GGUF file: `zoo.weights_fingerprint`); a built
candidate's is the hash of its in-memory tensors, as its kind sees them (`kinds.Kind.fingerprint`). Either way equal fingerprints mean equal weights, and one changed weight
changes it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import re
from pathlib import Path

import torch

_HEX = 16            # characters kept of a sha256
_CHUNK = 1 << 20     # bytes read at a time when hashing files


def machine_facts(device: str = "cpu", threads: int | None = None) -> str:
    """The facts as one JSON string (what the store's `machine` column holds); `threads`: those the
    evaluation runs on (glue_bench.evaluate.eval_threads), else torch's own setting."""
    return json.dumps({**_machine(device), "threads": threads or torch.get_num_threads()}, sort_keys=True)


@functools.lru_cache(maxsize=None)  # once per process and device: torch's answers do not change
def _machine(device: str) -> dict:
    facts = {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
             "blas": _blas(torch.__config__.show()), "cpu": _cpu_model(),
             "machine": platform.machine(), "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        facts |= {"gpu": torch.cuda.get_device_name(torch.device(device)), "cuda": torch.version.cuda}
    return facts


def _blas(config: str) -> str | None:
    """BLAS_INFO and LAPACK_INFO from torch's build config, e.g. "BLAS_INFO=mkl LAPACK_INFO=mkl"."""
    found = re.findall(r"\b((?:BLAS|LAPACK)_INFO=[^,\s]+)", config)
    return " ".join(found) or None


def _cpu_model() -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: the platform's own word for it
        return platform.processor() or None
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else None


def files_fingerprint(directory: str | os.PathLike, pattern: str = "*.safetensors") -> str | None:
    """The hash of a model's weight files (None when it has none): each file's (cached) hash in
    name order, so an unchanged file is read once per process however many jobs evaluate it."""
    files = sorted(Path(directory).glob(pattern))
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.name}:{_file_sha256(str(path), stat.st_ino, stat.st_mtime_ns, stat.st_size)}".encode())
    return digest.hexdigest()[:_HEX]


@functools.lru_cache(maxsize=256)  # inode, mtime and size in the key: a replaced or rewritten file is hashed again
def _file_sha256(path: str, inode: int, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def state_fingerprint(module: torch.nn.Module) -> str:
    """The hash of a module's state dict: each tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    _update(digest, module.state_dict())
    return digest.hexdigest()[:_HEX]


def _update(digest, tensors: dict) -> None:
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # raw bytes: any dtype, bfloat16 too


def combined_fingerprint(parts: list[str | None]) -> str | None:
    """One fingerprint of several (a mixture's experts and router, an ensemble's members), None if
    any part's weights cannot be seen."""
    if None in parts:
        return None
    return hashlib.sha256(" ".join(parts).encode()).hexdigest()[:_HEX]


def router_fingerprint(router) -> str | None:
    """A model-level router's fingerprint: its encoder's model and layer, and its own tensors and
    modules (prompt gates, a trained gate). None for a router without an encoder (a plain callable)."""
    encoder = getattr(router, "encoder", None)
    if encoder is None:
        return None
    digest = hashlib.sha256(f"{state_fingerprint(encoder.model)}:{encoder.layer}".encode())
    tensors = {}
    for name, value in sorted(vars(router).items()):
        if isinstance(value, torch.Tensor):
            tensors[name] = value
        elif isinstance(value, torch.nn.Module):
            tensors |= {f"{name}.{k}": v for k, v in value.state_dict().items()}
    _update(digest, tensors)
    return digest.hexdigest()[:_HEX]
