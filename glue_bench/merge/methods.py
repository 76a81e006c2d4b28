"""The merge methods. Each validates its parameters where they enter, then does tensor math."""

from __future__ import annotations

import math

import torch

from glue_bench.merge import MergeError, register


def _weights(params: dict, n_models: int) -> list[float]:
    """Per-model weights: default uniform; finite, non-negative, not all zero, one per model."""
    weights = params.get("weights")
    if weights is None:
        return [1.0] * n_models
    weights = list(weights)
    if len(weights) != n_models:
        raise MergeError(f"weights: {len(weights)} given for {n_models} models")
    for i, w in enumerate(weights):
        if not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise MergeError(f"weights[{i}] = {w!r}: weights must be finite and non-negative")
    if sum(weights) == 0:
        raise MergeError("weights are all zero: nothing to average")
    return [float(w) for w in weights]


def _validate_linear(params: dict, n_models: int) -> dict:
    unknown = set(params) - {"weights", "normalize"}
    if unknown:
        raise MergeError(f"linear: unknown parameter(s) {', '.join(sorted(unknown))}")
    weights = _weights(params, n_models)
    if params.get("normalize", True):
        total = sum(weights)
        weights = [w / total for w in weights]
    return {"weights": weights}


@register("linear", _validate_linear)
def linear(tensors: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """Weighted average (model soup): sum_i w_i * theta_i, weights normalised to sum to 1."""
    out = tensors[0].to(torch.float32) * weights[0]
    for tensor, weight in zip(tensors[1:], weights[1:]):
        out.add_(tensor.to(torch.float32), alpha=weight)
    return out
