"""The streaming merge engine: tensor by tensor, never all input models in memory.

Input models are read lazily from their safetensors files (memory-mapped); for each tensor name
the engine reads that tensor from every input, applies the method, and writes the result into an
in-memory output model. Peak memory is about one model plus one tensor per input model.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from safetensors import safe_open

from glue_bench.merge import MergeError, get_method


class TensorSource:
    """One model's tensors, read lazily from `model.safetensors` or a sharded index."""

    def __init__(self, name: str, directory: str | os.PathLike):
        self.name, self.directory = name, Path(directory)
        index = self.directory / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.file_of = {k: self.directory / f for k, f in weight_map.items()}
        elif (self.directory / "model.safetensors").exists():
            single = self.directory / "model.safetensors"
            with safe_open(single, framework="pt") as handle:
                self.file_of = {k: single for k in handle.keys()}
        else:
            raise MergeError(f"model {name!r}: no safetensors weights in {self.directory}")
        self._handles: dict[Path, object] = {}

    def _handle(self, key: str):
        path = self.file_of[key]
        if path not in self._handles:
            self._handles[path] = safe_open(path, framework="pt", device="cpu")
        return self._handles[path]

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._handle(key).get_slice(key).get_shape())

    def get(self, key: str) -> torch.Tensor:
        return self._handle(key).get_tensor(key)


def check_compatible(sources: list[TensorSource]) -> list[str]:
    """Same tensor names and shapes in every model, or one line naming the first difference."""
    first = sources[0]
    for other in sources[1:]:
        missing = sorted(set(first.file_of) ^ set(other.file_of))
        if missing:
            owner = first if missing[0] in first.file_of else other
            raise MergeError(f"models {first.name!r} and {other.name!r} differ in tensors: "
                             f"{missing[0]!r} only in {owner.name!r} ({len(missing)} differences)")
        for key in first.file_of:
            if first.shape(key) != other.shape(key):
                raise MergeError(f"models {first.name!r} and {other.name!r} cannot be merged: tensor "
                                 f"{key!r} has shape {list(first.shape(key))} vs {list(other.shape(key))}")
    return sorted(first.file_of)


def merge_models(sources: list[TensorSource], method_name: str, params: dict,
                 base: TensorSource | None = None, device: str = "cpu"):
    """Merge `sources` with a registered method into an in-memory model (first model's config).

    Returns (model, timings) where timings = {"read_s", "merge_s", "load_s"}.
    """
    from transformers import AutoModelForCausalLM

    method = get_method(method_name)
    if not sources:
        raise MergeError("no models to merge")
    if method.needs_base and base is None:
        raise MergeError(f"{method_name}: needs the zoo's base model")
    checked = method.validate(dict(params), len(sources))
    keys = check_compatible(sources + ([base] if base is not None else []))

    start = time.perf_counter()
    # the first model gives the architecture and its non-weight buffers; its weights are overwritten
    model = AutoModelForCausalLM.from_pretrained(sources[0].directory, dtype="auto")
    model.to(device)
    load_s = time.perf_counter() - start
    params_by_name = dict(model.named_parameters())
    read_s = merge_s = 0.0
    with torch.no_grad():
        for key in keys:
            target = params_by_name.get(key)
            if target is None:  # e.g. a buffer saved by an older transformers
                continue
            t0 = time.perf_counter()
            tensors = [s.get(key).to(device) for s in sources]
            base_tensor = base.get(key).to(device) if method.needs_base else None
            t1 = time.perf_counter()
            merged = (method.fn(tensors, base=base_tensor, **checked) if method.needs_base
                      else method.fn(tensors, **checked))
            target.copy_(merged.to(target.dtype))
            read_s += t1 - t0
            merge_s += time.perf_counter() - t1
    model.eval()
    return model, {"load_s": load_s, "read_s": read_s, "merge_s": merge_s}
