"""The data-dependent merges: each takes, beside the models' tensors, a statistic of every model on
calibration data (statistics.py computes them; the engine streams them tensor by tensor like the
weights). A tensor the statistic does not cover (None) is the weighted average."""

from __future__ import annotations

import torch

from glue_bench.merge.methods import POSITIVE_WEIGHTS, _check_weights_not_all_zero, linear
from glue_bench.merge.params import MergeError, Param
from glue_bench.merge.registry import register

FLOOR = Param("floor", 1e-6, "added to every Fisher entry, so entries no model's data moves (unused "
              "embedding rows) fall back to the weighted average", low=0, low_open=True)
ALPHA = Param("alpha", 0.6, "scale of the Gram matrices' off-diagonal entries (1: the exact least-squares "
              "merge; 0: a diagonal, per-input weighting)", low=0, high=1)


@register("fisher", (POSITIVE_WEIGHTS, FLOOR), check=_check_weights_not_all_zero, needs=("fisher",))
def fisher(tensors, weights, floor, fisher):
    """Fisher merging: entry by entry, sum_i w_i (F_i + floor) theta_i / sum_i w_i (F_i + floor)."""
    if fisher is None:
        return linear(tensors, weights, True)
    numerator = denominator = None
    for tensor, importance, weight in zip(tensors, fisher, weights):  # one model at a time: streamed
        _check_shape(importance, tuple(tensor.shape), "fisher")
        weighted = importance.add(floor).mul_(weight)  # a new tensor: the statistic is a view of its file
        if numerator is None:
            numerator, denominator = weighted * tensor, weighted
        else:
            numerator.addcmul_(weighted, tensor)
            denominator.add_(weighted)
    return numerator.div_(denominator)


@register("regmean", (POSITIVE_WEIGHTS, ALPHA), check=_check_weights_not_all_zero, needs=("gram",))
def regmean(tensors, weights, alpha, gram):
    """RegMean: each linear layer's W minimising sum_i w_i ||X_i W^T - X_i W_i^T||^2; the rest averaged.

    In closed form from the inputs' Gram matrices G_i = X_i^T X_i, off-diagonals scaled by alpha:
    W^T = (sum_i w_i G~_i)^-1 sum_i w_i G~_i W_i^T, solved (not inverted) in float64."""
    if gram is None:
        return linear(tensors, weights, True)
    total = sum(weights)
    gram_sum = products = average = None
    for tensor, inputs_gram, weight in zip(tensors, gram, weights):
        _check_shape(inputs_gram, (tensor.shape[-1],) * 2, "gram")
        shrunk = shrink_off_diagonal(inputs_gram.double(), alpha).mul_(weight)
        product = shrunk @ tensor.T.double()  # [in, out]
        if gram_sum is None:
            gram_sum, products, average = shrunk, product, tensor * (weight / total)
        else:
            gram_sum.add_(shrunk)
            products.add_(product)
            average.add_(tensor, alpha=weight / total)
    return _solve(gram_sum, products, average).to(tensors[0].dtype)


def shrink_off_diagonal(gram: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha * G + (1 - alpha) * diag(G), as a new tensor."""
    shrunk = gram * alpha
    shrunk.diagonal().add_(gram.diagonal(), alpha=1 - alpha)
    return shrunk


_COLLINEAR = 1e-12  # float64 rounding leaves a singular matrix's pivot at ~1e-16, not exactly 0


def _solve(gram_sum: torch.Tensor, products: torch.Tensor, average: torch.Tensor) -> torch.Tensor:
    """W^T = gram_sum^-1 products, by a Cholesky solve. An input no calibration token ever sets (a zero on
    the diagonal, so a zero row and column: the Gram is positive semi-definite) leaves its column
    of W unconstrained: it takes the weighted average's column instead of making the system singular."""
    unused = gram_sum.diagonal() == 0
    if unused.any():
        gram_sum.diagonal()[unused] = 1.0
        products[unused] = average.T[unused].to(products.dtype)
    factor, info = torch.linalg.cholesky_ex(gram_sum)  # a sum of Gram matrices: symmetric, positive semi-definite
    # pivot j / G_jj: the share of input j's energy the earlier inputs do not explain. At alpha < 1
    # it is at least 1 - alpha; at ~0 input j is a combination of others and W is not determined
    if info or (factor.diagonal().square() / gram_sum.diagonal()).min() < _COLLINEAR:
        raise MergeError(f"regmean: the models' summed Gram matrix ({gram_sum.shape[0]} inputs) is singular: "
                         "set alpha below 1, or calibrate on more tokens (method.calibration.documents)")
    return torch.cholesky_solve(products, factor).T.contiguous()


def _check_shape(statistic: torch.Tensor, expected: tuple, kind: str) -> None:
    if tuple(statistic.shape) != expected:
        raise MergeError(f"the {kind} statistic has shape {list(statistic.shape)}, expected {list(expected)} "
                         "(statistics of other models than these?)")
