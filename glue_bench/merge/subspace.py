"""Data-free merges in the task vectors' singular subspaces: TSV-M, Iso-C and Iso-CTS.

Each merges one 2-D weight matrix (m x n, r = min(m, n)) at a time from the task vectors
Delta_i = theta_i - base of its T models, and returns base + alpha Delta. A tensor that is not 2-D
(norms, biases, conv kernels) gets the mean task vector, Delta = (1/T) sum_i Delta_i, as the
authors' code does for all three (their alpha scales every tensor, as here).

- `tsv`, TSV-M (Gargiulo et al., CVPR 2025, arXiv 2412.00081): each Delta_i = U_i S_i V_i^T keeps
  its top k = floor(rank_share r / T) singular triplets (rank_share = 1: the paper's 1/T of the
  rank each); U = [U_1,k ... U_T,k], V likewise, sigma = [s_1,k ... s_T,k];
  Delta = U_perp diag(sigma) V_perp^T, U_perp = P Q^T the closest matrix with orthonormal columns
  to U = P S Q^T (V_perp likewise).
- `iso_c`, Iso-C (Marczak et al., ICML 2025, arXiv 2502.04959): Delta_TA = sum_i Delta_i
  = U S V^T; Delta = sigma_bar U V^T, sigma_bar the mean of Delta_TA's r' nonzero singular values
  (r' its rank): the task-arithmetic update with a flat spectrum.
- `iso_cts`, Iso-CTS (same paper): the common subspace is Delta_TA's top k singular triplets; each
  task adds the top s of its task vector with the common subspace projected out,
  Delta_i - U_k U_k^T Delta_i; s = round((r - floor(common_fraction r)) / T), k = r - T s (the
  authors' rounding: k + T s = r). U = [U_k, U_1,s ... U_T,s], V likewise, both orthogonalised
  as in TSV-M; Delta = sigma_bar U_perp V_perp^T, sigma_bar the mean of the k + T s singular
  values gathered (Delta_TA's top k and each projected task vector's top s).

alpha defaults to 1 for all three, FusionBench's default; the authors' code picks alpha per merge
on validation data (0.1, 0.2, ..., 3.0), which a data-free default cannot: `search` lets CMA-ES
tune it over [0, 3]. The merged update does not depend on alpha, so with the engine's cache each
tensor's SVDs are done once per search, not once per candidate (`memo`).

Departures from the authors' code (TSVM_utils.py of AntoAndGar/task_singular_vectors; iso.py of
danielm1405/iso-merging), none of which changes a merge of full-rank task vectors:
- Numerically zero singular triplets (sigma <= sigma_1 max(m, n) eps_float32, numpy's rank
  tolerance, sigma_1 the largest of the merge's task vectors or of their sum) are dropped. The
  authors keep them: their singular vectors are an arbitrary basis of a null space (LAPACK's
  pick), which Iso's flat spectrum would give the weight sigma_bar, Iso-C's mean would count as
  zeros, and TSV-M's orthogonalisation would let bend the other tasks' vectors. So Iso-C averages
  over the rank, as the paper's sigma_bar = (1/r) sum_i sigma_i does, and a merge of low-rank
  (LoRA-like) task vectors stays in their span.
- The orthogonalisation keeps only the directions the gathered vectors span (U_perp = P_r Q_r^T
  over U's nonzero singular values): where two tasks share a direction (identical models) the
  authors' P Q^T completes it with arbitrary vectors; here TSV-M of identical models is their
  truncated task vector.
- Every 2-D tensor is merged by SVD: the authors' code (for CLIP) exempts `text_projection` by
  name, which a method here does not see; embeddings and lm_head are 2-D and merged as such.
- TSV-M's rank is set by `rank_share`, a fraction of the equal share r / T, where the authors fix
  k = int(r / T): a per-task fraction above 1/T would gather more than r vectors, which cannot be
  orthonormal, and a default of 1/T cannot be declared without knowing T. Below r / T < 1 a tensor
  keeps nothing, as in the authors' code: its merged update is 0.
SVDs are torch's, in float32 on the merge device.
"""

from __future__ import annotations

import math

import torch

from glue_bench.merge.params import Param
from glue_bench.merge.registry import register

ALPHA = Param("alpha", 1.0, "scale of the merged task vector (the authors tune it on validation data, 0.1..3)",
              low=0, search=(0.0, 3.0))
_EPS = torch.finfo(torch.float32).eps


def _deltas(tensors, base):
    """The task vectors, one at a time, each a new tensor (the inputs stay untouched)."""
    return (torch.sub(tensor, base) for tensor in tensors)


def _sum(tensors, base):
    total = None
    for delta in _deltas(tensors, base):
        total = delta if total is None else total.add_(delta)
    return total


def _count(x: float) -> int:
    """floor(x), forgiving the float error of products like 0.29 * 100 = 28.999999999999996."""
    return math.floor(x + 1e-9)


def _svd(matrix):
    return torch.linalg.svd(matrix, full_matrices=False)


def _tolerance(sigma_1, shape) -> float:
    """Singular values at or below this are zero to float32 precision (numpy's matrix_rank)."""
    return float(sigma_1) * max(shape) * _EPS


def _polar(a):
    """P Q^T from a = P S Q^T: the closest matrix to `a` with orthonormal columns (rows, if wide),
    over the directions `a` spans. LAPACK fills the others arbitrarily: they are left out."""
    p, s, qh = _svd(a)
    keep = s > _tolerance(s[0], a.shape)
    return p[:, keep] @ qh[keep]


def _merged(tensors, base, alpha, memo, key, delta_2d):
    """base + alpha Delta, Delta = delta_2d() for a matrix, else the mean task vector; Delta kept in
    `memo` (the engine's cache for this tensor) under `key`, since only alpha changes in a search."""
    delta = memo.get(key) if memo is not None else None
    if delta is None:
        delta = delta_2d() if base.dim() == 2 else _sum(tensors, base).div_(len(tensors))
        if memo is not None:
            memo[key] = delta
    return torch.add(base, delta, alpha=alpha)


# ---- TSV-M ------------------------------------------------------------------------------------

def _tsv_delta(tensors, base, rank_share):
    k = _count(rank_share * min(base.shape) / len(tensors))
    if k == 0:
        return torch.zeros_like(base)
    kept = []
    for delta in _deltas(tensors, base):
        u, s, vh = _svd(delta)
        kept.append((u[:, :k].clone(), s[:k].clone(), vh[:k].clone()))  # clones free the full factors
    u, s, vh = (torch.cat(parts, dim) for parts, dim in zip(zip(*kept), (1, 0, 0)))
    nonzero = s > _tolerance(s.max(), base.shape)
    if not nonzero.any():
        return torch.zeros_like(base)
    u, s, vh = u[:, nonzero], s[nonzero], vh[nonzero]
    return (_polar(u) * s) @ _polar(vh)


@register("tsv", (Param("rank_share", 1.0, "each model keeps its top rank_share x min(m, n) / T singular vectors "
                        "(1: the paper's equal split of the rank)", low=0, high=1, low_open=True), ALPHA),
          base="required", memoizes=True)
def tsv(tensors, base, rank_share, alpha, memo=None):
    """TSV-M (arXiv 2412.00081): each task vector's top singular vectors, orthogonalised across tasks."""
    return _merged(tensors, base, alpha, memo, ("tsv", rank_share), lambda: _tsv_delta(tensors, base, rank_share))


# ---- Iso-C and Iso-CTS ------------------------------------------------------------------------

def _iso_c_delta(tensors, base):
    u, s, vh = _svd(_sum(tensors, base))
    rank = int((s > _tolerance(s[0], base.shape)).sum())
    if rank == 0:
        return torch.zeros_like(base)
    return (u[:, :rank] * s[:rank].mean()) @ vh[:rank]


@register("iso_c", (ALPHA,), base="required", memoizes=True)
def iso_c(tensors, base, alpha, memo=None):
    """Iso-C (arXiv 2502.04959): the summed task vectors with all their singular values set to the mean."""
    return _merged(tensors, base, alpha, memo, ("iso_c",), lambda: _iso_c_delta(tensors, base))


def _subspace_sizes(rank: int, n_tasks: int, common_fraction: float) -> tuple[int, int]:
    """(k, s): the common subspace's size and each task's, k + T s = rank, s = round((rank -
    floor(common_fraction rank)) / T) as the authors round (s at most rank // T)."""
    per_task = min(round((rank - _count(common_fraction * rank)) / n_tasks), rank // n_tasks)
    return rank - n_tasks * per_task, per_task


def _iso_cts_delta(tensors, base, common_fraction):
    common, per_task = _subspace_sizes(min(base.shape), len(tensors), common_fraction)
    u, s, vh = _svd(_sum(tensors, base))
    tolerance = _tolerance(s[0], base.shape)
    nonzero = s[:common] > tolerance
    us, sigmas, vhs = [u[:, :common][:, nonzero]], [s[:common][nonzero]], [vh[:common][nonzero]]
    if per_task:
        basis = us[0]
        for delta in _deltas(tensors, base):
            delta -= basis @ (basis.T @ delta)  # out of the common subspace
            u, s, vh = _svd(delta)
            nonzero = s[:per_task] > tolerance
            us.append(u[:, :per_task][:, nonzero])
            sigmas.append(s[:per_task][nonzero])
            vhs.append(vh[:per_task][nonzero])
    s = torch.cat(sigmas)
    if s.numel() == 0:
        return torch.zeros_like(base)
    return (_polar(torch.cat(us, 1)) * s.mean()) @ _polar(torch.cat(vhs))


@register("iso_cts", (Param("common_fraction", 0.8, "fraction of the rank given to the summed task vectors' "
                            "top singular vectors (the rest split among the models)", low=0, high=1), ALPHA),
          base="required", memoizes=True)
def iso_cts(tensors, base, common_fraction, alpha, memo=None):
    """Iso-CTS (arXiv 2502.04959): Iso-C's common subspace plus each task's own, with a flat spectrum."""
    return _merged(tensors, base, alpha, memo, ("iso_cts", common_fraction),
                   lambda: _iso_cts_delta(tensors, base, common_fraction))
