"""Two data-free merges that weigh or solve away the interference between task vectors.

`pcb`: PCB-merging, Parameter Competition Balancing (Du et al., NeurIPS 2024, arXiv 2410.02396).
Per tensor, with task vectors d_i = theta_i - base flattened to D entries and N models:

    intra_i = Softmax(N * Norm(d_i * d_i))                  self-awareness: d_i's own large entries
    inter_i = sum_j Softmax(Norm(d_i * d_j))               cross-awareness: agreement with the others
    beta_i  = intra_i * inter_i
    kept_i  = beta_i where beta_i >= its k-th largest value, else 0     (k = ceil(ratio * D))
    theta   = base + lambda * sum_i kept_i * d_i / sum_i kept_i

(all products entry by entry). Norm is min-max scaling to [0, 1] and Softmax runs over the D
entries, both per task vector (per pair for inter), as in the authors' `normalize(x, dim=1)`.
Defaults: ratio = 0.1, the authors' `PCB_merge(..., pcb_ratio=0.1)` and the r the paper holds
fixed in its lambda sweep (Fig. 6); lambda = 1, where each entry is a weighted mean of the kept
task-vector entries and where the authors' evolutionary search of lambda starts (pcb_ES.py).
The paper tunes both on validation data (the authors' T5 grids: lambda 0.8..2.2, r 0.05..0.2).
Ties: every entry equal to the k-th largest beta is kept (the paper's `beta >= sorted(beta)[(1 -
r) D]`), so more than k may stay; the rule depends on values only, not on positions. Where no
model keeps an entry the division is 0 / 0 and the entry stays at the base (the authors' code
also gives 0 there). A constant Norm input (a zero task vector, disjoint supports, a 1-entry
tensor) has no order: it scales to zeros, so its softmax is uniform (the authors' code gives NaN).

Departures from the authors' code (duguodong7/pcb-merging, pcb-merging.py and pcb_ES.py), which
itself departs from the paper's equations; this follows the equations:
- per tensor, where the authors normalise, softmax and select over the whole model's flattened
  task vector (the engine streams tensors, as TIES here does);
- no clipping: the authors first clamp |d| to its 0.01% / 99.99% quantiles (1% in pcb_ES.py)
  and merge the clipped task vectors;
- intra: the authors use exp(N Norm(|d|)^2) without the softmax's division; inter: tanh(d_i *
  sum_j d_j) on raw values (pcb-merging.py) or sum_j tanh of signed normalised products
  (pcb_ES.py), where the paper has sum_j Softmax(Norm(d_i * d_j));
- drop and rescale: the authors clamp beta from below at the threshold and min-max it again, so
  a kept entry weighs (beta - threshold) / (max - threshold) and the threshold entry itself 0; the
  paper (and this) keep beta as is;
- one lambda for all models; the authors search one per model (nevergrad) on validation data.
Each softmax here is scaled by D (mean 1, not 1/D): a factor common to every beta_i, so the
ratio and each model's selection are unchanged, and beta stays far from float32's underflow in
large tensors. (For the same reason the authors' 1e-12 floor on the divisor is not used: an
unscaled beta is ~N / D^2.)

`wudi`: WUDI-merging, "Whoever Started the Interference Should End It" (Cheng et al., ICML
2025, arXiv 2503.08099). For each 2-D weight (torch layout [out, in]) the merged task vector
minimises the interference each task's own inputs would see, the rows of tau_i standing in for
those inputs (they span them approximately, the paper's argument):

    L(tau_m) = sum_i ||(tau_m - tau_i) tau_i^T||_F^2 / ||tau_i||_F^2,       theta = base + tau_m

started at tau_m = sum_i tau_i and run by Adam (betas 0.9, 0.999, eps 1e-8: torch's defaults,
which the authors use) for `steps` iterations at `lr`. Defaults 300 and 1e-5: the authors' ViT
code (vit/interference.py, ft_linear.py; `--iter` 300) and FusionBench's `wudi_merging`
(its config file sets 400 steps); their RoBERTa code uses lr 2e-5. No coefficient (the paper's
point: theta = base + tau_m). With w_i = 1 / ||tau_i||^2, A = sum_i w_i tau_i^T tau_i ([in, in])
and B = sum_i w_i tau_i tau_i^T tau_i ([out, in]), L's gradient is 2 (tau_m A - B): formed once,
each step is one [out, in] x [in, in] product (the authors differentiate the N products through
autograd each step; the iterates are the same up to rounding). L is quadratic: its minimisers
solve tau_m A = B (least squares where A is singular), which Adam approaches with enough steps;
at the authors' lr and 300 steps each entry moves at most ~300 lr = 3e-3 from the sum, so on task
vectors with larger entries WUDI stops well short of the minimiser: the paper's WUDI is that
early-stopped iterate, and this computes it. A zero task vector adds no term (its weight is
undefined; the authors' code gives NaN). Other tensors (norms, biases, anything not 2-D): the
mean task vector, base + sum_i tau_i / N, as FusionBench does; the authors' ViT script leaves
every tensor but the attention and MLP weights at the base. The merge sees no tensor names, so
embeddings and the LM head, 2-D, are WUDI-merged like linear layers (FusionBench's default too,
`exclude_keys` empty): the embedding's "inputs" are one-hot rows, for which the paper's argument
does not hold. Deterministic: no randomness; on the CPU the same thread count gives the same bits.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from glue_bench.merge.params import Param
from glue_bench.merge.registry import register


def _keep_count(ratio: float, n: int) -> int:
    """ceil(ratio * n), at least 1; rounded first so that 0.1 * 60 keeps 6, not 7."""
    return min(n, max(1, math.ceil(round(ratio * n, 6))))


def _unit_range_(x: torch.Tensor) -> torch.Tensor:
    """Norm: min-max scaling to [0, 1], in place; a constant x scales to zeros."""
    low, high = torch.aminmax(x)
    span = float(high - low)
    return x.sub_(low).div_(span) if span > 0 else x.zero_()


def _softmax_(x: torch.Tensor) -> torch.Tensor:
    """Softmax over all of x times its length (so mean 1), in place."""
    x.sub_(x.max()).exp_()
    return x.mul_(x.numel() / float(x.sum()))


def _kth_largest(row: torch.Tensor, k: int):
    """The k-th largest entry of a row of scores (all >= 0). On the CPU by numpy's selection on the
    float32 bit patterns (as int32 they order like the scores): 3-6x faster than torch's kthvalue."""
    rank = row.numel() - k
    if row.device.type != "cpu":
        return row.kthvalue(rank + 1).values
    return float(np.partition(row.numpy().view(np.int32), rank)[rank:rank + 1].view(np.float32)[0])


def _pcb_task_vector(tensors, base, ratio):
    n = len(tensors)
    deltas = torch.stack([t.reshape(-1) for t in tensors]).sub_(base.reshape(-1))  # [N, D]
    size = deltas.shape[1]
    beta = torch.zeros_like(deltas)  # sums inter_i, then times intra_i once row i is complete
    product, intra = torch.empty_like(deltas[0]), torch.empty_like(deltas[0])
    for i in range(n):
        for j in range(i, n):  # Norm(d_i * d_j) is symmetric: each pair once, added to both rows
            _unit_range_(torch.mul(deltas[i], deltas[j], out=product))
            if j == i:
                _softmax_(torch.mul(product, n, out=intra))
            beta[i] += _softmax_(product)
            if j != i:
                beta[j] += product
        beta[i] *= intra  # row i has all its pairs: (j, i) for j < i came in earlier rounds
    keep = _keep_count(ratio, size)
    for row in beta:
        row.masked_fill_(row < _kth_largest(row, keep), 0)
    total = beta.sum(0)
    merged = torch.mul(beta, deltas, out=deltas).sum(0)
    return torch.where(total > 0, merged / total, 0.0).view_as(base)


@register("pcb", (Param("ratio", 0.1, "fraction of each task vector's entries kept, those of highest "
                        "balanced score (the paper's r)", low=0, high=1, low_open=True),
                  Param("lambda", 1.0, "scale of the merged task vector", search=(0.8, 2.2))),
          base="required", memoizes=True)
def pcb(tensors, base, ratio, memo=None, **params):
    """PCB-merging (arXiv 2410.02396): weigh entries by intra- and inter-task balance, drop, rescale.

    base + lambda * sum_i b_i d_i / sum_i b_i, b_i model i's balanced scores, top ratio kept."""
    key = ("pcb", ratio)  # lambda only scales the result: a search over it reuses the merge
    merged = memo.get(key) if memo is not None else None
    if merged is None:
        merged = _pcb_task_vector(tensors, base, ratio)
        if memo is not None:
            memo[key] = merged
    return torch.add(base, merged, alpha=params["lambda"])


def _adam_(x, gram, target, steps, lr, betas=(0.9, 0.999), eps=1e-8):
    """`steps` of torch.optim.Adam (its defaults) on sum_i w_i ||(x - tau_i) tau_i^T||^2, whose
    gradient is 2 (x gram - target); x in place."""
    first, second = torch.zeros_like(x), torch.zeros_like(x)
    grad, denom = torch.empty_like(x), torch.empty_like(x)
    for step in range(1, steps + 1):
        torch.mm(x, gram, out=grad).sub_(target).mul_(2)
        first.lerp_(grad, 1 - betas[0])
        second.mul_(betas[1]).addcmul_(grad, grad, value=1 - betas[1])
        torch.sqrt(second, out=denom).div_(math.sqrt(1 - betas[1] ** step)).add_(eps)
        x.addcdiv_(first, denom, value=-lr / (1 - betas[0] ** step))
    return x


@register("wudi", (Param("steps", 300, "Adam iterations on each 2-D weight (0: the sum of the task vectors)",
                         kind=int, low=0),
                   Param("lr", 1e-5, "Adam's learning rate", low=0, low_open=True)),
          base="required")
def wudi(tensors, base, steps, lr):
    """WUDI (arXiv 2503.08099): each 2-D weight's task vector minimising the interference on the tasks' inputs.

    tau_m minimises sum_i ||(tau_m - tau_i) tau_i^T||^2 / ||tau_i||^2 by Adam from sum_i tau_i;
    base + tau_m. Other tensors: base + the mean task vector."""
    merged = torch.zeros_like(base)
    delta = torch.empty_like(base)
    if base.dim() != 2:
        for tensor in tensors:
            merged.add_(torch.sub(tensor, base, out=delta))
        return merged.div_(len(tensors)).add_(base)
    gram = base.new_zeros(base.shape[1], base.shape[1])
    target = torch.zeros_like(base)
    for tensor in tensors:  # one task vector at a time: A, B and the sum accumulate
        torch.sub(tensor, base, out=delta)
        merged.add_(delta)
        square_norm = float(torch.linalg.vector_norm(delta, dtype=torch.float64)) ** 2
        if square_norm == 0:
            continue
        own = delta.T @ delta
        gram.add_(own, alpha=1 / square_norm)
        target.addmm_(delta, own, alpha=1 / square_norm)
    return _adam_(merged, gram, target, steps, lr).add_(base)
