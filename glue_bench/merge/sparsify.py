"""Sparsification of task vectors (deltas from the base) before they are combined.

Each function returns the kept entries of `delta`, rescaled as asked, as a new tensor:
- `top_magnitude`: the k = max(1, int(density * n)) largest |delta| (TIES);
- `magnitude_band`: drop the gamma * n largest |delta| as outliers and the smallest, keeping
  int(density * n) (Model Breadcrumbs);
- `random_keep`: keep each entry with probability density (to 1/65536) (DARE);
- `rank_keep`: keep each entry with a probability that grows with its magnitude rank within its
  row, from density - epsilon to density + epsilon (DELLA's MagPrune).

Rescaling of what is kept (`rescale`):
- "inverse_density": divide each kept entry by its keep probability. This is the DARE and DELLA
  papers' definition; it keeps the expected task vector unchanged.
- "l1": scale the kept entries so the tensor's L1 norm is unchanged. This is what mergekit does
  for DARE and DELLA when `rescale: true`, and its results match mergekit's.
- "none": no rescaling.
"""

from __future__ import annotations

import torch

RESCALES = ("inverse_density", "l1", "none")


def top_magnitude(delta: torch.Tensor, density: float) -> torch.Tensor:
    if density >= 1:
        return delta
    flat = delta.flatten()
    k = max(1, int(density * flat.numel()))
    top = flat.abs().topk(k, sorted=False).indices  # exactly k, even among tied magnitudes
    kept = torch.zeros_like(flat)
    kept[top] = flat[top]
    return kept.view_as(delta)


def magnitude_band(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    if density >= 1:
        return delta
    n = delta.numel()
    n_keep = int(density * n)
    n_outliers = int(gamma * n)
    n_small = max(0, n - n_keep - n_outliers)  # fewer outliers dropped when density needs them
    order = delta.abs().flatten().argsort()
    keep = torch.zeros(n, dtype=torch.bool, device=delta.device)
    keep[order[n_small:n_small + n_keep]] = True
    return delta * keep.view_as(delta)


def random_keep(delta: torch.Tensor, density: float, rescale: str,
                generator: torch.Generator) -> torch.Tensor:
    if density >= 1:
        return delta
    # 16 random bits per entry (a quarter of the draws of torch.rand): the keep probability is
    # density rounded to a multiple of 1/65536, and "inverse_density" divides by that exact value
    levels = max(1, round(density * 65536))
    n = delta.numel()
    bits = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, generator=generator,
                         device=delta.device).view(torch.int16)[:n]
    kept = delta * (bits < levels - 32768).view_as(delta)
    if rescale == "inverse_density":
        return kept.mul_(65536 / levels)
    return _rescale(delta, kept, rescale)


def rank_keep(delta: torch.Tensor, density: float, epsilon: float, rescale: str,
              generator: torch.Generator) -> torch.Tensor:
    if density >= 1:
        return delta
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(delta.shape[0], -1)
    ranks = rows.abs().argsort(dim=1).argsort(dim=1).to(rows.dtype)  # 0 = smallest in its row
    width = rows.shape[1]
    rank_fraction = ranks / (width - 1) if width > 1 else torch.full_like(ranks, 0.5)
    keep_probability = (density - epsilon) + rank_fraction * (2 * epsilon)
    keep = torch.rand(rows.shape, generator=generator, device=delta.device) < keep_probability
    kept = rows * keep
    if rescale == "inverse_density":
        return (kept / keep_probability).view_as(delta)
    return _rescale(delta, kept.view_as(delta), rescale)


def _rescale(delta: torch.Tensor, kept: torch.Tensor, rescale: str, eps: float = 1e-7) -> torch.Tensor:
    if rescale == "none":
        return kept
    before, after = delta.abs().sum(), kept.abs().sum()
    if before < eps or after < eps:
        return kept
    return kept * (before / after)
