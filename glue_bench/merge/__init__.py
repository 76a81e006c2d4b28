"""Merge methods: one small function each, registered by name with its parameters declared once.

A method receives, for one tensor name, the list of that tensor from every input model (and the
base model's, for task-vector methods) plus its validated parameters, and returns the merged
tensor. `engine.merge_models` streams every tensor of the models through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


class MergeError(Exception):
    """A merge cannot be done as asked; one line naming the model, tensor or parameter at fault."""


@dataclass(frozen=True)
class MergeMethod:
    name: str
    fn: Callable[..., torch.Tensor]
    validate: Callable[[dict, int], dict]   # (params, number of models) -> checked params
    needs_base: bool = False


METHODS: dict[str, MergeMethod] = {}


def register(name: str, validate: Callable[[dict, int], dict], needs_base: bool = False):
    def wrap(fn):
        METHODS[name] = MergeMethod(name, fn, validate, needs_base)
        return fn
    return wrap


def get_method(name: str) -> MergeMethod:
    from glue_bench.merge import methods  # noqa: F401  (registers the methods)

    if name not in METHODS:
        raise MergeError(f"unknown merge method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]
