"""Sparsification of task vectors (deltas from the base) before they are combined.

Each function takes the caller's own `delta` and returns (kept, factor): the delta with its
dropped entries zeroed (in place where that is cheapest), and the factor the kept entries are to
be multiplied by, which the caller folds into the model's weight instead of spending a pass over
the tensor on it:
- `top_magnitude`: keep the k = max(1, int(density * n)) largest |delta| (TIES). Among entries
  tied with the k-th largest magnitude, the lowest indices are kept, so exactly k survive
  (`top_magnitude_rows` does it to every model's task vector at once);
- `magnitude_band`: drop the gamma * n largest |delta| as outliers and the smallest, keeping
  int(density * n) (Model Breadcrumbs);
- `random_keep`: keep each entry with probability density (to 1/65536) (DARE;
  `random_keep_rows` does it to every model's task vector at once);
- `rank_keep`: keep each entry with a probability that grows with its magnitude rank within its
  row, from density - epsilon to density + epsilon (DELLA's MagPrune). Its rescale differs entry
  by entry, so it is applied here and the returned factor is 1, or the L1 factor.

Rescaling of what is kept (`rescale`):
- "inverse_density": divide each kept entry by its keep probability. This is the DARE and DELLA
  papers' definition; it keeps the expected task vector unchanged.
- "l1": scale the kept entries so the tensor's L1 norm is unchanged. This is what mergekit does
  for DARE and DELLA when `rescale: true`, and its results match mergekit's.
- "none": no rescaling.

On the CPU the trim of `top_magnitude_rows` and the drops of `random_keep(_rows)` run as C kernels
(kernels.py), with the same results as the numpy and torch code beside them. `top_magnitude_cuts`
finds what `top_magnitude_rows` keeps without making the task vectors, for TIES streamed from the
files (methods.py).
"""

from __future__ import annotations

import numpy as np
import torch

from glue_bench.merge import kernels

RESCALES = ("inverse_density", "l1", "none")


def top_magnitude(delta: torch.Tensor, density: float) -> tuple[torch.Tensor, float]:
    top_magnitude_rows(delta.view(1, -1), [density])
    return delta, 1.0


# rows from this long have their k-th magnitude found by the C kernel's two histogram passes
# (~0.1 s on a 7B MLP tensor's 45M entries, where numpy's selection, or its counting on bf16
# deltas, takes ~1 s); on shorter rows numpy's grouped selection costs less than clearing them
_COUNTED_IN_C = 1 << 16


def top_magnitude_rows(rows: torch.Tensor, densities: list[float]) -> None:
    """`top_magnitude` of each row of `rows` [N, n] (the task vectors of N models), in place. Rows
    that share k are selected together, a group of them per numpy call: on small tensors the
    per-call costs add up to more than the selection itself."""
    n = rows.shape[1]
    ks = [max(1, int(density * n)) for density in densities]
    todo = [r for r, density in enumerate(densities) if density < 1 and ks[r] < n]
    if not todo:
        return
    if kernels.usable(rows):  # the thresholds by numpy, or in C on long rows; the trim in one C pass per row
        if n >= _COUNTED_IN_C:
            thresholds = kernels.kth_magnitudes(rows, todo, [ks[r] for r in todo]).view(np.float32)
        else:
            thresholds, _ = _kth_largest_magnitudes(rows, ks, todo, counts=False)
        kernels.keep_top(rows, todo, thresholds.view(np.int32), [ks[r] for r in todo])
        return
    if rows.device.type == "cpu":
        thresholds, n_above = _kth_largest_magnitudes(rows, ks, todo)
    else:
        thresholds, n_above = zip(*[_kth_largest_magnitude_on_device(rows[r], ks[r]) for r in todo])
        thresholds = np.array(thresholds, dtype=np.float32)
    # hardshrink zeroes |x| <= lambda in one float pass (a boolean mask costs about four times as
    # much); lambda is the float32 just below the threshold, so exactly |x| >= threshold survive
    lambdas = np.nextafter(thresholds, np.float32(0)).tolist()
    each_row = rows.unbind()
    for r, threshold, lambda_, above in zip(todo, thresholds.tolist(), lambdas, n_above):
        if threshold == 0:
            continue  # every nonzero entry is among the k: zeroing zeros changes nothing
        row = each_row[r]
        torch.hardshrink(row, lambda_, out=row)
        if above is not None:  # more than k entries reach the threshold: keep the first tied ones
            _drop_ties_after(row, threshold, ks[r] - above)


# streamed TIES: a sample of runs of _SAMPLE_RUN entries, at most _SAMPLE_RUNS of them, brackets
# each k-th magnitude within _BRACKET_SIGMAS standard deviations of the sample's rank error
_SAMPLE_RUN, _SAMPLE_RUNS, _BRACKET_SIGMAS = 256, 512, 6.0


def top_magnitude_cuts(stored, base: torch.Tensor, densities: list[float]) -> tuple[np.ndarray, np.ndarray, bool]:
    """What `top_magnitude_rows` keeps of each task vector stored[i] - base, without the task
    vectors: per model, the k-th largest magnitude's bits `kth` and the index `cut` from which
    entries tied at it are dropped (entry j survives where |d_j| > kth, or |d_j| == kth and
    j < cut); also whether an input holds NaN or inf. A sample brackets each k-th magnitude; one
    pass counts the entries above the bracket, counts those at its few heavily tied values, and
    lists the others in it; the k-th is found among those. Where the bracket misses (a rare
    sample) that model's task vector is made and counted whole: the result is exact either way.
    Inputs as `kernels.can_stream_task_vectors` takes them."""
    n_models, n = len(stored), base.numel()
    ks = [max(1, int(density * n)) for density in densities]
    kth, cut = np.zeros(n_models, dtype=np.uint32), np.full(n_models, n, dtype=np.int64)  # keep all
    todo = [i for i, density in enumerate(densities) if density < 1 and ks[i] < n]
    if not todo:
        return kth, cut, False
    runs = max(1, min(_SAMPLE_RUNS, n // _SAMPLE_RUN))
    run = min(_SAMPLE_RUN, n)
    sample = kernels.task_vector_sample(stored, base, run, n // runs, runs * run).view(np.int32)
    lo, hi, heavy, listed_fraction = _brackets(sample, runs, [ks[i] / n for i in todo], todo)
    bracketed, special = kernels.ties_bracket(stored, base, lo, hi, heavy, 2 * listed_fraction + 1e-3)
    if special:
        return kth, cut, True
    for i in todo:
        def magnitude_bits(start: int, stop: int, model: int = i) -> np.ndarray:
            return _magnitude_bits(stored[model], base, start, stop)
        found = _kth_in_bracket(bracketed[i], ks[i], n, magnitude_bits) if bracketed[i] is not None else None
        if found is None:  # the sample's bracket missed the k-th (or listed too much): count it all
            found = _kth_counted(magnitude_bits(0, n), ks[i], n)
        kth[i], cut[i] = found
    return kth, cut, False


def _magnitude_bits(stored: torch.Tensor, base: torch.Tensor, start: int, stop: int) -> np.ndarray:
    """|stored - base| on entries [start, stop) as int32 bits, computed as the kernels compute it."""
    delta = stored.view(-1)[start:stop].to(torch.float32) - base.view(-1)[start:stop].to(torch.float32)
    return delta.numpy().view(np.int32) & np.int32(0x7FFFFFFF)


def _kth_counted(bits: np.ndarray, k: int, n: int) -> tuple[int, int]:
    """(kth, cut) of a whole task vector's magnitudes' bits."""
    value = int(kernels.kth_magnitudes(torch.from_numpy(bits.view(np.float32)).view(1, -1), [0], [k])[0])
    return value, _first_dropped_tie(np.flatnonzero(bits == value), k - int(np.count_nonzero(bits > value)), n)


def _kth_in_bracket(seen, k: int, n: int, magnitude_bits) -> tuple[int, int] | None:
    """(kth, cut) from a model's `kernels.Bracketed` view; None when the k-th is not in its bracket.
    magnitude_bits(start, stop): the task vector's bits there (to find a heavy value's tie)."""
    rank = k - seen.above  # of the k-th among the bracket's entries, from the top
    real = seen.heavy != kernels.NO_VALUE
    heavy, totals = seen.heavy[real].astype(np.int64), seen.heavy_counts[real].sum(axis=1, dtype=np.int64)
    order = np.argsort(-heavy)
    heavy, totals = heavy[order], totals[order]
    if rank < 1 or rank > len(seen.bits) + int(totals.sum()):
        return None
    listed_above = [int(np.count_nonzero(seen.bits > value)) for value in heavy.tolist()]
    heavy_above = np.concatenate([[0], np.cumsum(totals)])
    for q, value in enumerate(heavy.tolist()):  # is the k-th one of the heavy values?
        above = listed_above[q] + int(heavy_above[q])
        if above < rank <= above + totals[q]:
            block_counts = seen.heavy_counts[real][order[q]]
            return value, _heavy_tie_index(block_counts, rank - above, value, n, magnitude_bits)
    # else it is listed, between two heavy values: its rank among the listed entries
    q = sum(1 for j in range(len(heavy)) if listed_above[j] + heavy_above[j + 1] < rank)
    listed_rank = rank - int(heavy_above[q])
    if not 1 <= listed_rank <= len(seen.bits):
        return None
    value = int(kernels.kth_magnitudes(torch.from_numpy(seen.bits.view(np.float32)).view(1, -1), [0],
                                       [listed_rank])[0])
    keep = k - seen.above - int(np.count_nonzero(seen.bits > value)) - int(totals[heavy > value].sum())
    return value, _first_dropped_tie(seen.index[seen.bits == value], keep, n)


def _heavy_tie_index(block_counts: np.ndarray, kept: int, value: int, n: int, magnitude_bits) -> int:
    """The index of the first dropped entry among those equal to a heavy `value`, the first `kept`
    of them kept: found by the per-block counts, then within its block."""
    reached = np.cumsum(block_counts, dtype=np.int64)
    if kept >= reached[-1]:
        return n
    block = int(np.searchsorted(reached, kept + 1))  # the first block holding more than `kept` of them
    before = int(reached[block - 1]) if block else 0
    start = block * kernels.TIE_BLOCK
    bits = magnitude_bits(start, min(n, start + kernels.TIE_BLOCK))
    return start + int(np.flatnonzero(bits == value)[kept - before])


def _first_dropped_tie(tie_indices: np.ndarray, keep: int, n: int) -> int:
    """The index of the first tie dropped when the first `keep` of them (in index order) are kept."""
    return int(tie_indices[keep]) if keep < len(tie_indices) else n


def _brackets(sample: np.ndarray, runs: int, fractions_kept: list[float], todo: list[int]):
    """From a sample of each model's magnitudes' bits [N, runs * run] (runs of entries side by
    side), per model r in `todo`: bits lo[r] <= hi[r] that hold, but for a 6-sigma miss, the
    magnitude of rank fractions_kept * n from the top; the values in between that the sample
    holds often (a bf16 checkpoint's deltas tie by the million), at most kernels.HEAVY of them
    (padded with kernels.NO_VALUE); and the largest fraction of a sample in between that is not
    one of those. The rank's error is the sum of the runs' counts: its variance is `runs` times the
    runs' (at least the binomial's, as if the entries were drawn one by one). Each row is sorted
    once (numpy's vectorised sort: a sample's values tie by the thousand, which slows a histogram's
    counting ~10x), and every rank is then read off it."""
    n_models, m = sample.shape
    lo, hi = np.zeros(n_models, dtype=np.uint32), np.full(n_models, 0x7FFFFFFF, dtype=np.uint32)
    heavy = np.full((n_models, kernels.HEAVY), kernels.NO_VALUE, dtype=np.uint32)
    ordered = sample[todo]  # a copy, sorted in place: the rank-th largest of row t is ordered[t, m - rank]
    ordered.sort(axis=1)
    listed_fraction = 0.0
    for row, r, fraction in zip(ordered, todo, fractions_kept):
        rank = min(m, max(1, round(fraction * m)))  # from the top
        estimate = row[m - rank]
        per_run = np.count_nonzero(sample[r].reshape(runs, -1) > estimate, axis=1)
        sigma = max(np.sqrt(runs * per_run.var()), np.sqrt(m * fraction * (1 - fraction)))
        margin = int(_BRACKET_SIGMAS * sigma) + 16
        lo[r] = row[m - (rank + margin)] if rank + margin < m else 0
        hi[r] = row[m - (rank - margin)] if rank - margin >= 1 else 0x7FFFFFFF
        between = row[np.searchsorted(row, lo[r], side="left"):np.searchsorted(row, hi[r], side="right")]
        starts = np.flatnonzero(np.diff(between, prepend=between[:1] - 1))  # each distinct value's first
        values, counts = between[starts], np.diff(np.append(starts, between.size))
        often = counts >= max(8, m // 1000)
        chosen = np.argsort(-counts[often], kind="stable")[:kernels.HEAVY]
        heavy[r, :chosen.size] = values[often][chosen]
        listed_fraction = max(listed_fraction, (between.size - int(counts[often][chosen].sum())) / m)
    return lo, hi, heavy, listed_fraction


def _drop_ties_after(flat: torch.Tensor, threshold: float, keep: int) -> None:
    """Zero the entries of magnitude `threshold` after the first `keep` of them (index order).
    Ties are the rule, not the exception, for deltas of bf16 checkpoints (7B models have ~20k
    distinct |delta| values per tensor): on CPU numpy finds them at a fraction of torch's cost."""
    if flat.device.type == "cpu":
        values = flat.numpy()
        values[np.flatnonzero(np.abs(values) == np.float32(threshold))[keep:]] = 0
    else:
        flat[(flat.abs() == threshold).nonzero().view(-1)[keep:]] = 0


def _kth_largest_magnitude_on_device(flat: torch.Tensor, k: int) -> tuple[float, int | None]:
    """The k-th largest |x|, and, when a magnitude equal to it lies outside the top k, how many
    magnitudes exceed it (else None)."""
    magnitude = flat.abs()
    threshold = magnitude.kthvalue(flat.numel() - k + 1).values
    tied_outside = int((magnitude >= threshold).sum()) > k
    return float(threshold), int((magnitude > threshold).sum()) if tied_outside else None


# magnitudes copied for selection at once: 512 KiB, unless a row is longer. Several rows of a small
# tensor share a numpy call; a row of mini8's largest tensor (131072 entries) goes alone, since the
# copy is memory held beyond the stack (two rows at once put mini8's TIES merge 0.5 MB higher)
_SELECTED_AT_ONCE = 1 << 17


def _kth_largest_magnitudes(rows: torch.Tensor, ks: list[int], todo: list[int],
                            counts: bool = True) -> tuple[np.ndarray, list]:
    """`_kth_largest_magnitude_on_device` for rows `todo` of `rows` on the CPU, as float32
    thresholds and counts (all None unless `counts`, which costs a pass). The magnitudes are
    selected as int32 bit patterns (being >= 0, they sort like the floats; numpy's selection on
    them is 10-20x faster than torch's topk or kthvalue on this CPU), copied a few rows at a time:
    at most `_SELECTED_AT_ONCE` entries, or one row."""
    n = rows.shape[1]
    per_group = max(1, _SELECTED_AT_ONCE // n)
    values = rows.numpy()
    buffer = np.empty((min(per_group, len(todo)), n), dtype=np.float32)
    found = []
    for start in range(0, len(todo), per_group):
        group = todo[start:start + per_group]
        if group[-1] - group[0] == len(group) - 1:  # consecutive rows (the rule): a slice, not np.take's copy
            magnitudes = np.abs(values[group[0]:group[-1] + 1], out=buffer[:len(group)])
        else:
            magnitudes = np.abs(np.take(values, group, axis=0, out=buffer[:len(group)], mode="clip"),
                                out=buffer[:len(group)])
        bits = magnitudes.view(np.int32)
        heavy = _repeats_a_lot(bits)
        group_ks = [ks[r] for r in group]
        if len(set(group_ks)) == 1 and not heavy.any():
            found += _kth_largest_by_partition(bits, group_ks[0], counts)  # the group's rows at once
        else:
            found += [_kth_largest_by_counting(bits[j:j + 1], k)[0] if heavy[j]
                      else _kth_largest_by_partition(bits[j:j + 1], k, counts)[0] for j, k in enumerate(group_ks)]
    kth, n_above = zip(*found)
    return np.array(kth, dtype=np.int32).view(np.float32), n_above


def _repeats_a_lot(bits: np.ndarray) -> np.ndarray:
    """Per row: do values repeat a lot, as in the deltas of fp16 / bf16 checkpoints (some 20k
    distinct values in a 45M-entry tensor)? numpy's introselect slows down ~10x on those.
    Judged on a 4096-entry sample."""
    rows, n = bits.shape
    if n < 1 << 16:
        return np.zeros(rows, dtype=bool)
    sample = np.sort(bits[:, :: n // 4096], axis=1)
    distinct = 1 + np.count_nonzero(np.diff(sample, axis=1), axis=1)
    return distinct <= 0.95 * sample.shape[1]


def _kth_largest_by_partition(bits: np.ndarray, k: int, counts: bool = True) -> list[tuple[int, int | None]]:
    """Per row of non-negative int32s (reordered in place): its k-th largest v, and, when a value
    equal to v lies outside the top k, how many values exceed v (else None; always None unless
    `counts`). numpy's introselect."""
    n = bits.shape[1]
    bits.partition(n - k, axis=1)  # [:, n-k] is the k-th largest, smaller ones before, larger after
    kth = bits[:, n - k]
    if not counts:
        return [(value, None) for value in kth.tolist()]
    tied_below = bits[:, :n - k].max(axis=1) == kth if n > k else np.zeros(len(bits), dtype=bool)
    return [(value, int(np.count_nonzero(row[n - k:] > value)) if tied else None)
            for row, value, tied in zip(bits, kth.tolist(), tied_below.tolist())]


def _kth_largest_by_counting(bits: np.ndarray, k: int) -> list[tuple[int, int | None]]:
    """The same for one row whose values repeat a lot: two 16-bit histograms, the high half's
    picks the bucket, the low half's the value within it. Exact, no sort."""
    bits = bits[0]
    high = bits >> 16
    bucket, n_higher, _ = _kth_largest_count(_histogram(high, 1 << 15), k)
    low_counts = _histogram(bits[high == bucket] & 0xFFFF, 1 << 16)
    low, n_above, n_equal = _kth_largest_count(low_counts, k - n_higher)
    n_above += n_higher
    return [(bucket << 16 | low, n_above if n_above + n_equal > k else None)]


def _histogram(values: np.ndarray, size: int) -> np.ndarray:
    """np.bincount of int32s, by torch's: numpy's first copies them to int64 (2.6x slower on 45M)."""
    return torch.bincount(torch.from_numpy(values), minlength=size).numpy()


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
    cut = levels - 32768  # kept where bits < cut: probability levels / 65536
    if kernels.usable(delta) and isinstance(rng.bit_generator, np.random.PCG64):
        kernels.dare_keep(delta, rng.bit_generator, cut)  # the same draws, made and applied in one pass
        kept = delta
    elif delta.device.type == "cpu":  # two numpy calls: a third of the time of torch's float mask
        bits = rng.bit_generator.random_raw((n + 3) // 4).view(np.int16)[:n]
        values = delta.view(-1).numpy()
        np.multiply(values, bits < cut, out=values)
        kept = delta
    else:  # a 0/1 float mask: (bits - cut) clamped to [-1, 0], negated
        bits = rng.bit_generator.random_raw((n + 3) // 4).view(np.int16)[:n]
        keep = torch.from_numpy(bits).to(delta.device, torch.float32).sub_(cut).clamp_(-1, 0).neg_()
        kept = delta.mul_(keep.view_as(delta))
        del keep
    if rescale == "inverse_density":
        return kept, 65536 / levels
    return kept, _l1_factor(l1_before, kept.abs().sum()) if rescale == "l1" else 1.0


def random_keep_rows(rows: torch.Tensor, densities: list[float], rescale: str, generator) -> list[float]:
    """`random_keep` of each row of `rows` [N, n] (row i with generator(i)), in place; returns the
    factors. On the CPU one kernel call does every row from the PCG64 states read first (so a
    generator may be valid only until the next is asked for, as the engine's are); it leaves them
    unadvanced."""
    todo = [i for i, density in enumerate(densities) if density < 1]
    states = [generator(i).bit_generator.state for i in todo] if kernels.usable(rows) else None
    if states is None or any(state["bit_generator"] != "PCG64" for state in states):
        return [random_keep(row, density, rescale, generator(i))[1]
                for i, (row, density) in enumerate(zip(rows.unbind(), densities))]
    states = [state["state"] for state in states]
    levels = [max(1, round(densities[i] * 65536)) for i in todo]
    l1_before = torch.linalg.vector_norm(rows, 1, dim=1).tolist() if rescale == "l1" else None  # no |rows| copy
    kernels.dare_keep_rows(rows, todo, [state["state"] for state in states], [state["inc"] for state in states],
                           [level - 32768 for level in levels])
    factors = [1.0] * len(densities)
    if rescale == "inverse_density":
        for i, level in zip(todo, levels):
            factors[i] = 65536 / level
    elif rescale == "l1":
        l1_after = torch.linalg.vector_norm(rows, 1, dim=1).tolist()
        for i in todo:
            factors[i] = _l1_factor(l1_before[i], l1_after[i])
    return factors


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
    return delta, _l1_factor(l1_before, delta.abs().sum()) if rescale == "l1" else 1.0


def _l1_factor(l1_before: torch.Tensor | float, l1_after: torch.Tensor | float, eps: float = 1e-7) -> float:
    before, after = float(l1_before), float(l1_after)
    return 1.0 if before < eps or after < eps else before / after
