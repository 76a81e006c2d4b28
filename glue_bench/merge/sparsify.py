"""Sparsification of task vectors (deltas from the base) before they are combined.

Each function takes the caller's own `delta` and returns (kept, factor): the delta with its
dropped entries zeroed (in place where that is cheapest), and the factor the kept entries are to
be multiplied by, which the caller folds into the model's weight instead of spending a pass over
the tensor on it:
- `top_magnitude`: keep the k = max(1, int(density * n)) largest |delta| (TIES). Among entries
  tied with the k-th largest magnitude, the lowest indices are kept, so exactly k survive;
- `magnitude_band`: drop the gamma * n largest |delta| as outliers and the smallest, keeping
  int(density * n) (Model Breadcrumbs);
- `random_keep`: keep each entry with probability density (to 1/65536) (DARE);
- `rank_keep`: keep each entry with a probability that grows with its magnitude rank within its
  row, from density - epsilon to density + epsilon (DELLA's MagPrune). Its rescale differs entry
  by entry, so it is applied here and the returned factor is 1, or the L1 factor.

Rescaling of what is kept (`rescale`):
- "inverse_density": divide each kept entry by its keep probability. This is the DARE and DELLA
  papers' definition; it keeps the expected task vector unchanged.
- "l1": scale the kept entries so the tensor's L1 norm is unchanged. This is what mergekit does
  for DARE and DELLA when `rescale: true`, and its results match mergekit's.
- "none": no rescaling.
"""

from __future__ import annotations

import numpy as np
import torch

RESCALES = ("inverse_density", "l1", "none")


def top_magnitude(delta: torch.Tensor, density: float) -> tuple[torch.Tensor, float]:
    if density >= 1:
        return delta, 1.0
    flat = delta.view(-1)
    k = max(1, int(density * flat.numel()))
    threshold, n_above = _kth_largest_magnitude(flat, k)
    if threshold == 0:
        return delta, 1.0  # every nonzero entry is among the k: zeroing zeros changes nothing
    # hardshrink zeroes |x| <= lambda in one float pass (a boolean mask costs about four times as
    # much); lambda is the float32 just below the threshold, so exactly |x| >= threshold survive
    torch.hardshrink(flat, float(np.nextafter(np.float32(threshold), np.float32(0))), out=flat)
    if n_above is not None:  # more than k entries reach the threshold: keep the first tied ones
        _drop_ties_after(flat, threshold, k - n_above)
    return delta, 1.0


def _drop_ties_after(flat: torch.Tensor, threshold: float, keep: int) -> None:
    """Zero the entries of magnitude `threshold` after the first `keep` of them (index order).
    Ties are the rule, not the exception, for deltas of bf16 checkpoints (7B models have ~20k
    distinct |delta| values per tensor): on CPU numpy finds them at a fraction of torch's cost."""
    if flat.device.type == "cpu":
        values = flat.numpy()
        values[np.flatnonzero(np.abs(values) == np.float32(threshold))[keep:]] = 0
    else:
        flat[(flat.abs() == threshold).nonzero().view(-1)[keep:]] = 0


def _kth_largest_magnitude(flat: torch.Tensor, k: int) -> tuple[float, int | None]:
    """The k-th largest |x| of a 1-D float32 tensor, and, when a magnitude equal to it lies outside
    the top k, how many magnitudes exceed it (else None). On CPU the magnitudes' bit patterns are
    selected as int32 (being >= 0, they sort like the floats): 10-20x faster than torch's topk or
    kthvalue on this CPU."""
    n = flat.numel()
    if flat.device.type != "cpu":
        magnitude = flat.abs()
        threshold = magnitude.kthvalue(n - k + 1).values
        tied_outside = int((magnitude >= threshold).sum()) > k
        return float(threshold), int((magnitude > threshold).sum()) if tied_outside else None
    bits = flat.abs().numpy().view(np.int32)
    kth, n_above, n_equal = _kth_largest_bits(bits, k)
    threshold = float(np.array([kth], dtype=np.int32).view(np.float32)[0])
    return threshold, n_above if n_above + n_equal > k else None


def _kth_largest_bits(bits: np.ndarray, k: int) -> tuple[int, int, int]:
    """(v, #entries > v, #entries == v) for v the k-th largest of non-negative int32s; `bits` may
    be reordered. numpy's introselect, except when values repeat a lot, as in the deltas of fp16 /
    bf16 checkpoints (some 20k distinct values in a 45M-entry tensor), where it slows down ~10x:
    then it is found by counting instead."""
    n = bits.size
    sample = bits[:: max(1, n // 4096)]
    if n < 1 << 16 or len(np.unique(sample)) > 0.95 * len(sample):
        bits.partition(n - k)  # in place: [n-k] is the k-th largest, smaller ones before, larger after
        kth = int(bits[n - k])
        n_above = int(np.count_nonzero(bits[n - k:] > kth))
        tied_below = n > k and bits[:n - k].max() == kth
        n_equal = k - n_above + (int(np.count_nonzero(bits[:n - k] == kth)) if tied_below else 0)
        return kth, n_above, n_equal
    # two 16-bit histograms: the high half's picks the bucket, the low half's the value within it
    high = bits >> 16
    bucket, n_higher, _ = _kth_largest_count(np.bincount(high, minlength=1 << 15), k)
    low_counts = np.bincount(bits[high == bucket] & 0xFFFF, minlength=1 << 16)
    low, n_above, n_equal = _kth_largest_count(low_counts, k - n_higher)
    return bucket << 16 | low, n_higher + n_above, n_equal


def _kth_largest_count(counts: np.ndarray, k: int) -> tuple[int, int, int]:
    """For a histogram (counts[v] = how many entries equal v), the k-th largest v, the entries above
    it and the entries equal to it."""
    from_top = np.cumsum(counts[::-1])                  # entries >= len - 1 - j
    j = int(np.searchsorted(from_top, k))
    value = counts.size - 1 - j
    return value, int(from_top[j - 1]) if j else 0, int(counts[value])


def magnitude_band(delta: torch.Tensor, density: float, gamma: float) -> tuple[torch.Tensor, float]:
    if density >= 1:
        return delta, 1.0
    n = delta.numel()
    n_keep = int(density * n)
    n_outliers = int(gamma * n)
    n_small = max(0, n - n_keep - n_outliers)  # fewer outliers dropped when density needs them
    order = delta.abs().flatten().argsort()
    keep = torch.zeros(n, dtype=torch.bool, device=delta.device)
    keep[order[n_small:n_small + n_keep]] = True
    return delta.mul_(keep.view_as(delta)), 1.0


def random_keep(delta: torch.Tensor, density: float, rescale: str,
                rng: np.random.Generator) -> tuple[torch.Tensor, float]:
    if density >= 1:
        return delta, 1.0
    # 16 random bits per entry: a quarter of the draws of uniform floats, and the keep probability
    # is density rounded to a multiple of 1/65536 ("inverse_density" divides by that exact value)
    levels = max(1, round(density * 65536))
    n = delta.numel()
    l1_before = delta.abs().sum() if rescale == "l1" else None
    # keep where bits < levels - 32768, as a 0/1 float mask: (bits - cut) clamped to [-1, 0], negated
    keep = torch.from_numpy(rng.bit_generator.random_raw((n + 3) // 4).view(np.int16)[:n]).to(
        delta.device, torch.float32).sub_(levels - 32768).clamp_(-1, 0).neg_()
    kept = delta.mul_(keep.view_as(delta))
    del keep
    if rescale == "inverse_density":
        return kept, 65536 / levels
    return kept, _l1_factor(l1_before, kept) if rescale == "l1" else 1.0


def rank_keep(delta: torch.Tensor, density: float, epsilon: float, rescale: str,
              rng: np.random.Generator) -> tuple[torch.Tensor, float]:
    if density >= 1:
        return delta, 1.0
    rows = delta.view(1, -1) if delta.dim() < 2 else delta.view(delta.shape[0], -1)
    l1_before = delta.abs().sum() if rescale == "l1" else None
    ranks = rows.abs().argsort(dim=1).argsort(dim=1).to(rows.dtype)  # 0 = smallest in its row
    width = rows.shape[1]
    rank_fraction = ranks / (width - 1) if width > 1 else torch.full_like(ranks, 0.5)
    keep_probability = (density - epsilon) + rank_fraction * (2 * epsilon)
    uniform = torch.from_numpy(rng.random(rows.shape, dtype=np.float32)).to(delta.device)
    rows.mul_(uniform < keep_probability)
    if rescale == "inverse_density":
        rows.div_(keep_probability)
        return delta, 1.0
    return delta, _l1_factor(l1_before, delta) if rescale == "l1" else 1.0


def _l1_factor(l1_before: torch.Tensor, kept: torch.Tensor, eps: float = 1e-7) -> float:
    before, after = float(l1_before), float(kept.abs().sum())
    return 1.0 if before < eps or after < eps else before / after
