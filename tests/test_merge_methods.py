"""Each merge method against an independent direct computation on small tensors."""

import math
import os
import shutil

import numpy as np
import pytest
import torch

from glue_bench.merge import MergeError, get_method
from glue_bench.merge.params import at_depth, resolve


@pytest.fixture(params=["kernels", "torch"])
def backend(request, monkeypatch):
    """The CPU's C kernels (kernels.c), or the torch path that CUDA and compiler-less machines use."""
    from glue_bench.merge import kernels

    if request.param == "torch":
        monkeypatch.setattr(kernels, "_library", None)
        monkeypatch.setattr(kernels, "_tried", True)
    elif kernels.library() is None:
        if shutil.which(os.environ.get("CC", "cc")):
            pytest.fail("a C compiler is on PATH but glue_bench's kernels did not build")
        pytest.skip("no C compiler: the kernels cannot be built here")
    return request.param


def merge(name, tensors, base=None, generator=None, **params):
    """Validate `params` as a config would be, then run the method at depth 0."""
    method = get_method(name)
    checked = method.validate(params, len(tensors))
    kwargs = resolve(checked, method.params, 0.0)
    if method.uses_base(checked):
        kwargs["base"] = base
    if method.randomized:
        kwargs["generator"] = generator
    return method.fn(tensors, **kwargs)


def test_task_arithmetic_is_base_plus_scaled_sum_of_deltas():
    torch.manual_seed(0)
    base, a, b = torch.randn(3, 4, 5)
    out = merge("task_arithmetic", [a, b], base, weights=[0.5, 2.0], **{"lambda": 0.7})
    assert torch.allclose(out, base + 0.7 * (0.5 * (a - base) + 2.0 * (b - base)), atol=1e-6)


def test_ties_trims_elects_signs_and_averages_agreeing_entries(backend):
    base = torch.zeros(6)
    a = torch.tensor([3.0, -1.0, 0.5, 2.0, -4.0, 0.1])
    b = torch.tensor([-1.0, -2.0, 0.2, 3.0, 1.0, -5.0])
    out = merge("ties", [a, b], base, weights=[1.0, 1.0], density=0.5)
    # top 3 magnitudes: a keeps 3, 2, -4 (idx 0, 3, 4); b keeps -2, 3, -5 (idx 1, 3, 5)
    trimmed = [[3.0, 0, 0, 2.0, -4.0, 0], [0, -2.0, 0, 3.0, 0, -5.0]]
    expected = []
    for i in range(6):
        total = sum(t[i] for t in trimmed)
        sign = 1.0 if total >= 0 else -1.0
        agree = [t[i] for t in trimmed if t[i] != 0 and math.copysign(1, t[i]) == sign]
        expected.append(sum(agree) / len(agree) if agree else 0.0)
    assert expected == [3.0, -2.0, 0.0, 2.5, -4.0, -5.0]
    assert torch.allclose(out, torch.tensor(expected))


@pytest.mark.parametrize("weights", [[0.7, 0.2, 1.3], [0.7, -0.4, 1.3], [0.0, 0.5, 2.0]])
def test_ties_with_any_weights_follows_the_entrywise_definition(weights, backend):
    torch.manual_seed(3)
    base, *models = torch.randn(4, 7, 6)
    out = merge("ties", models, base, weights=weights, density=0.4, **{"lambda": 0.9})
    k = int(0.4 * 42)
    expected = torch.empty(42)
    trimmed = []
    for model, weight in zip(models, weights):
        delta = (model - base).flatten()
        keep = set(delta.abs().argsort(descending=True)[:k].tolist())
        trimmed.append([weight * float(delta[j]) if j in keep else 0.0 for j in range(42)])
    for j in range(42):  # terms w_i delta_ij; those with the sign of their sum; their weights
        terms = [t[j] for t in trimmed]
        sign = 1.0 if sum(terms) >= 0 else -1.0
        agreeing = [(term, w) for term, w in zip(terms, weights) if term != 0 and math.copysign(1, term) == sign]
        divisor = sum(w for _, w in agreeing) or 1.0
        expected[j] = float(base.flatten()[j]) + 0.9 * sum(term for term, _ in agreeing) / divisor
    assert torch.allclose(out.flatten(), expected, atol=1e-5)


def test_ties_keeps_exactly_k_entries_the_first_of_tied_magnitudes(backend):
    from glue_bench.merge.sparsify import top_magnitude

    kept, factor = top_magnitude(torch.tensor([1.0, -1.0, 1.0, 1.0, 0.5, 2.0]), 0.5)
    assert factor == 1.0  # k = 3: the 2.0, then the first two of the tied 1s
    assert kept.tolist() == [1.0, -1.0, 0.0, 0.0, 0.0, 2.0]
    no_ties, _ = top_magnitude(torch.tensor([0.1, -3.0, 0.2, 2.0, -0.4, 0.0, 1.0, 5.0]), 0.4)  # k = 3
    assert no_ties.tolist() == [0.0, -3.0, 0.0, 2.0, 0.0, 0.0, 0.0, 5.0]


@pytest.mark.parametrize("distinct", [40, None])  # few distinct magnitudes (fp16/bf16 deltas) or all distinct
def test_top_magnitude_on_large_tensors_matches_a_stable_sort(distinct, backend):
    """Above 65536 entries, tie-heavy magnitudes are selected by counting, others by introselect:
    both against the first k of a stable sort by descending magnitude."""
    from glue_bench.merge.sparsify import top_magnitude

    rng = np.random.default_rng(1)
    values = rng.standard_normal(200_003).astype(np.float32)
    if distinct is not None:
        values = np.round(values * distinct / 4) / (distinct / 4)   # about `distinct` magnitudes
    for density in (0.01, 0.37, 0.5, 0.99):
        k = max(1, int(density * values.size))
        expected = np.zeros_like(values)
        first_k = np.argsort(-np.abs(values), kind="stable")[:k]
        expected[first_k] = values[first_k]
        kept, _ = top_magnitude(torch.from_numpy(values.copy()), density)
        assert np.array_equal(kept.numpy(), expected), density


def _first_k_by_stable_sort(values, density):
    expected = np.zeros_like(values)
    first_k = np.argsort(-np.abs(values), kind="stable")[:max(1, int(density * values.size))]
    expected[first_k] = values[first_k]
    return expected


@pytest.mark.parametrize("densities", [[0.3] * 8, [0.3, 0.3, 0.6, 0.3, 1.0, 0.05, 0.3, 0.3]])
@pytest.mark.parametrize("n, per_group", [(20_000, 3), (100_000, 2)])
def test_top_magnitude_rows_selects_each_row_as_a_stable_sort_would(monkeypatch, densities, n, per_group, backend):
    """Every model's top-k at once: rows selected in groups, with one k for all or one per row, a
    third of the rows full of tied magnitudes (above 65536 entries these are selected by counting,
    beside rows selected by introselect), one kept whole (density 1)."""
    from glue_bench.merge import sparsify
    from glue_bench.merge.sparsify import top_magnitude_rows

    monkeypatch.setattr(sparsify, "_SELECTED_AT_ONCE", per_group * n)
    rng = np.random.default_rng(2)
    rows = rng.standard_normal((8, n)).astype(np.float32)
    rows[1::3] = np.round(rows[1::3] * 4) / 4            # few distinct magnitudes: many ties at the k-th
    expected = np.stack([_first_k_by_stable_sort(row, d) if d < 1 else row for row, d in zip(rows, densities)])
    kept = torch.from_numpy(rows.copy())
    top_magnitude_rows(kept, densities)
    assert np.array_equal(kept.numpy(), expected)


def test_a_merge_s_stacking_buffer_serves_tensors_of_any_size_in_turn(backend):
    """The engine hands a merge's tensors one after another the same workspace: a smaller tensor
    uses part of the buffer, a larger one grows it; each merged as if alone, and no result lives in
    the buffer (the next tensor would overwrite it)."""
    method = get_method("ties")
    workspace, largest, results = {}, 0, []
    torch.manual_seed(4)
    for numel in (60, 20, 200, 60):
        largest = max(largest, numel)
        base, *models = torch.randn(4, numel)
        alone = method.fn(models, base=base, weights=[1.0, 0.5, 2.0], density=[0.4] * 3, normalize=True,
                          **{"lambda": 1.0})
        shared = method.fn(models, base=base, weights=[1.0, 0.5, 2.0], density=[0.4] * 3, normalize=True,
                           workspace=workspace, **{"lambda": 1.0})
        results.append((shared, alone))
        assert workspace["stack"].numel() == (3 + 1) * largest  # 3 task vectors and the election's row
    for shared, alone in results:
        assert torch.equal(shared, alone)


def _fixed_generators(seeds):
    return lambda i: np.random.Generator(np.random.PCG64(seeds[i]))


@pytest.mark.parametrize("rescale", ["inverse_density", "l1", "none"])
def test_dare_linear_drops_with_the_seeded_mask_and_rescales(rescale, backend):
    torch.manual_seed(1)
    base, a, b = torch.randn(3, 50, 40)
    out = merge("dare_linear", [a, b], base, _fixed_generators([11, 12]), weights=[0.6, 0.4], density=0.3,
                rescale=rescale)
    expected = base.clone()
    levels = round(0.3 * 65536)  # the keep probability is density to 1/65536: 16 random bits a draw
    for delta, w, seed in ((a - base, 0.6, 11), (b - base, 0.4, 12)):
        words = np.random.Generator(np.random.PCG64(seed)).bit_generator.random_raw(500)  # 64-bit
        uniform16 = torch.from_numpy(words.view(np.int16).astype(np.int64) + 32768).view(50, 40)  # [0, 65536)
        kept = delta * (uniform16 < levels)
        scale = {"inverse_density": 65536 / levels, "l1": delta.abs().sum() / kept.abs().sum(),
                 "none": 1.0}[rescale]
        expected += w * kept * scale
    assert torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("n", [1, 3, 4, 5, 255, 256, 257, 1021, 50_000])
def test_dare_s_kernel_draws_numpy_s_pcg64_stream(n):
    """The C kernel makes numpy's PCG64 draws itself (two interleaved chains): the same mask as
    random_raw's, for any length (partial words and blocks), and the generator left where
    random_raw leaves it."""
    from glue_bench.merge import kernels

    if kernels.library() is None:
        pytest.skip("no C kernels here")
    values = torch.from_numpy(np.random.default_rng(n).standard_normal(n).astype(np.float32))
    for seed, cut in ((5, -20000), (6, 0), (7, 30000)):
        ours, theirs = np.random.PCG64(seed), np.random.PCG64(seed)
        kept = values.clone()
        kernels.dare_keep(kept, ours, cut)
        expected = values.numpy() * (theirs.random_raw((n + 3) // 4).view(np.int16)[:n] < cut)
        assert np.array_equal(kept.numpy(), expected)
        assert ours.state == theirs.state


def test_dare_rescaled_by_inverse_density_is_unbiased():
    torch.manual_seed(2)
    base, a = torch.zeros(2000), torch.randn(2000)
    outs = torch.stack([merge("dare_linear", [a, a], base, _fixed_generators([s, s + 1000]), density=0.2)
                        for s in range(200)])
    slope = float((outs.mean(0) * a).sum() / (a * a).sum())  # E[mask / p] = 1, so E[out] = 2a
    assert abs(slope - 2.0) < 0.05, slope                   # without the rescale it would be 0.4
    assert 0.15 < float((outs[0] != 0).float().mean()) < 0.45  # two independent 20% masks


@pytest.mark.parametrize("rescale", ["inverse_density", "l1", "none"])
@pytest.mark.parametrize("normalize", [False, True])
def test_dare_ties_drops_with_the_seeded_masks_then_elects_signs(backend, rescale, normalize):
    torch.manual_seed(5)
    base, *models = torch.randn(4, 30, 20)
    weights, densities, seeds = [0.6, 1.1, 0.8], [0.3, 0.65, 1.0], [21, 22, 23]
    out = merge("dare_ties", models, base, _fixed_generators(seeds), weights=weights, density=densities,
                rescale=rescale, normalize=normalize)
    terms = []
    for model, weight, density, seed in zip(models, weights, densities, seeds):
        delta = (model - base).flatten().double()
        if density < 1:
            levels = round(density * 65536)
            words = np.random.Generator(np.random.PCG64(seed)).bit_generator.random_raw(150)
            kept = delta * torch.from_numpy(words.view(np.int16).astype(np.int64) + 32768 < levels)
            scale = {"inverse_density": 65536 / levels, "l1": float(delta.abs().sum() / kept.abs().sum()),
                     "none": 1.0}[rescale]
        else:
            kept, scale = delta, 1.0
        terms.append(weight * scale * kept)
    expected = []
    for j in range(600):  # the terms with the sign of their sum; divided by their weights if normalize
        column = [float(t[j]) for t in terms]
        sign = 1.0 if sum(column) >= 0 else -1.0
        agreeing = [(term, w) for term, w in zip(column, weights) if term != 0 and math.copysign(1, term) == sign]
        divisor = (sum(w for _, w in agreeing) or 1.0) if normalize else 1.0
        expected.append(float(base.flatten()[j]) + sum(term for term, _ in agreeing) / divisor)
    assert torch.allclose(out.flatten(), torch.tensor(expected, dtype=torch.float32), atol=1e-5)


def test_dare_ties_elects_signs_on_dropped_deltas(backend):
    base = torch.zeros(4)
    a, b = torch.tensor([1.0, -2.0, 3.0, -4.0]), torch.tensor([-1.0, 1.0, 1.0, 1.0])
    out = merge("dare_ties", [a, b], base, _fixed_generators([0, 0]), density=1.0)  # nothing dropped
    # entry 0 sums to 0, which elects +: only a's +1 is kept (no normalising: dare_ties' default)
    assert torch.allclose(out, torch.tensor([1.0, -2.0, 4.0, -4.0]))


def test_breadcrumbs_drops_outliers_and_smallest():
    base = torch.zeros(10)
    a = torch.arange(1.0, 11.0)  # magnitudes 1..10
    out = merge("breadcrumbs", [a, base], base, density=0.6, gamma=0.2)
    # keep 6, drop the 2 largest (10, 9) and so the 2 smallest (1, 2); b contributes nothing
    assert torch.equal(out, torch.tensor([0, 0, 3, 4, 5, 6, 7, 8, 0, 0.0]))


def test_della_keep_probability_grows_with_magnitude_rank():
    from glue_bench.merge.sparsify import rank_keep

    row = torch.tensor([[0.1, -0.4, 0.3, 0.2, -0.5]])
    kept, factor = rank_keep(row.clone(), 0.5, 0.2, "inverse_density", np.random.Generator(np.random.PCG64(7)))
    assert factor == 1.0
    ranks = [0, 3, 2, 1, 4]  # by |value|
    probability = torch.tensor([[0.3 + r / 4 * 0.4 for r in ranks]])
    keep = torch.from_numpy(np.random.Generator(np.random.PCG64(7)).random((1, 5), dtype=np.float32)) < probability
    assert torch.allclose(kept, row * keep / probability)


def test_slerp_follows_the_great_circle():
    v0, v1 = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 2.0])
    out = merge("slerp", [v0, v1], t=1 / 3)  # 30 degrees along a quarter circle of radius 2
    assert torch.allclose(out, 2 * torch.tensor([math.cos(math.pi / 6), math.sin(math.pi / 6)]), atol=1e-6)
    nearly_parallel = torch.tensor([1.0, 1e-3])
    lerp = merge("slerp", [torch.tensor([1.0, 0.0]), nearly_parallel], t=0.25)
    assert torch.allclose(lerp, 0.75 * torch.tensor([1.0, 0.0]) + 0.25 * nearly_parallel)


def test_nuslerp_uses_t_from_the_weights():
    v0, v1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    out = merge("nuslerp", [v0, v1], weights=[2.0, 1.0])  # t = 1/3
    assert torch.allclose(out, torch.tensor([math.cos(math.pi / 6), math.sin(math.pi / 6)]), atol=1e-6)


@pytest.mark.parametrize("name", ["multislerp", "karcher"])
def test_spherical_means_of_orthogonal_directions(name):
    e = torch.eye(3) * torch.tensor([[1.0], [2.0], [3.0]])  # orthogonal, norms 1, 2, 3
    out = merge(name, list(e))
    # by symmetry the mean direction is (1,1,1)/sqrt(3); the norm is the mean norm, 2
    assert torch.allclose(out, 2 * torch.ones(3) / math.sqrt(3), atol=1e-4)


def test_karcher_mean_of_two_is_the_geodesic_midpoint():
    out = merge("karcher", [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])], weights=[3.0, 1.0])
    angle = math.pi / 2 * 0.25  # weights 3:1 put the mean a quarter of the way along
    assert torch.allclose(out, torch.tensor([math.cos(angle), math.sin(angle)]), atol=1e-4)


def test_model_stock_ratio_from_the_angle_between_task_vectors():
    base = torch.tensor([1.0, 1.0, 0.0])
    a, b = base + torch.tensor([1.0, 0.0, 0.0]), base + torch.tensor([0.5, 0.5 * math.sqrt(3), 0.0])
    cos = 0.5  # 60 degrees apart
    t = 2 * cos / (1 + cos)
    expected = t * (a + b) / 2 + (1 - t) * base
    assert torch.allclose(merge("model_stock", [a, b], base), expected, atol=1e-6)


def test_passthrough_scales_one_model():
    a = torch.tensor([1.0, -2.0])
    assert torch.equal(merge("passthrough", [a], scale=0.5), torch.tensor([0.5, -1.0]))
    with pytest.raises(MergeError, match="at most 1 model"):
        get_method("passthrough").validate({}, 2)


def _sce_by_entries(base, models, select_topk):
    """SCE written out entry by entry: select by variance, weights from mean squares, elect, average."""
    n = base.numel()
    deltas = [[float(m.flatten()[j] - base.flatten()[j]) for j in range(n)] for m in models]
    if select_topk < 1:
        variances = []
        for j in range(n):
            column = [d[j] for d in deltas]
            mean = sum(column) / len(column)
            variances.append(sum((x - mean) ** 2 for x in column) / len(column))
        k = int(sum(v != 0 for v in variances) * select_topk)
        kept = set(sorted(range(n), key=lambda j: (-variances[j], j))[:k])  # ties: lowest index first
        deltas = [[x if j in kept else 0.0 for j, x in enumerate(d)] for d in deltas]
    squares = [sum(x * x for x in d) / n for d in deltas]
    weights = [q / sum(squares) for q in squares] if sum(squares) >= 1e-6 else [1 / len(deltas)] * len(deltas)
    merged = []
    for j in range(n):
        sign = 1.0 if sum(d[j] for d in deltas) >= 0 else -1.0
        agreeing = [(w, d[j]) for w, d in zip(weights, deltas) if d[j] * sign > 0]
        merged.append(float(base.flatten()[j]) + sum(w * x for w, x in agreeing)
                      / max(sum(w for w, _ in agreeing), 1e-6))
    return torch.tensor(merged).view_as(base)


@pytest.mark.parametrize("select_topk", [1.0, 0.5, 0.2])
@pytest.mark.parametrize("scale", [1.0, 1e-4])  # RMS 1e-4 task vectors: mergekit's equal-weights floor
def test_sce_selects_by_variance_weights_by_mean_square_and_averages_agreeing_entries(select_topk, scale):
    torch.manual_seed(6)
    base = torch.randn(4, 5)
    models = [base + scale * torch.randn(4, 5) * s for s in (0.5, 1.0, 2.0)]
    out = merge("sce", models, base, select_topk=select_topk)
    assert torch.allclose(out, _sce_by_entries(base, models, select_topk), atol=1e-6, rtol=1e-5)


def test_sce_keeps_the_lowest_indices_among_tied_variances():
    base = torch.zeros(4)
    a, b = torch.tensor([1.0, -1.0, 1.0, -1.0]), torch.tensor([-1.0, 1.0, -1.0, 1.0])  # every variance 1
    out = merge("sce", [a, b], base, select_topk=0.5)
    # entries 0 and 1 kept; both sum to 0, which elects +: a's +1 and b's +1 survive
    assert out.tolist() == [1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 1)])
def test_sce_on_norms_single_entries_and_all_zero_task_vectors(shape):
    torch.manual_seed(7)
    base = torch.randn(shape)
    models = [base + 0.1 * torch.randn(shape) for _ in range(3)]
    for select_topk in (1.0, 0.5):
        expected = _sce_by_entries(base, models, select_topk)
        assert torch.allclose(merge("sce", models, base, select_topk=select_topk), expected, atol=1e-6)
    unchanged = merge("sce", [base.clone(), base.clone()], base, select_topk=0.5)  # nothing varies: k = 0
    assert torch.equal(unchanged, base)


def test_nearswap_moves_towards_the_second_by_t_over_the_difference():
    t = 0.01
    first = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, -2.0])
    second = first + torch.tensor([0.0, 0.005, 0.01, 0.02, -0.1, 4.0])
    out = merge("nearswap", [first, second], t=t)
    expected = []
    for a, b in zip(first.tolist(), second.tolist()):
        weight = min(1.0, t / max(abs(a - b), 1e-6))  # within t: the second's value
        expected.append(weight * b + (1 - weight) * a)
    assert expected[3] == pytest.approx(1.01) and expected[4] == pytest.approx(0.99)
    assert torch.allclose(out, torch.tensor(expected), atol=1e-6)
    assert torch.equal(merge("nearswap", [first, second], t=0.0), first)
    assert torch.equal(merge("nearswap", [first, first.clone()], t=t), first)


def _arcee_fusion_by_entries(first, second):
    """Importance |b - a| x KL(softmax(b row) || softmax(a row)), threshold median + 1.5 IQR."""
    rows_a, rows_b = first.reshape(-1, first.shape[-1]).tolist(), second.reshape(-1, second.shape[-1]).tolist()
    importance = []
    for row_a, row_b in zip(rows_a, rows_b):
        p = [math.exp(x) / sum(math.exp(y) for y in row_b) + 1e-8 for x in row_b]
        q = [math.exp(x) / sum(math.exp(y) for y in row_a) + 1e-8 for x in row_a]
        kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
        importance += [abs(b - a) * kl for a, b in zip(row_a, row_b)]
    ranked = sorted(importance)
    n = len(ranked)
    q1, median, q3 = (ranked[int(f * (n - 1))] for f in (0.25, 0.5, 0.75))
    threshold = median + 1.5 * (q3 - q1)
    picked = [b if i >= threshold else a
              for i, a, b in zip(importance, first.flatten().tolist(), second.flatten().tolist())]
    return torch.tensor(picked).view_as(first), sum(i >= threshold for i in importance)


@pytest.mark.parametrize("shape", [(6, 9), (40,), (1,)])
def test_arcee_fusion_takes_the_second_s_outlier_importance_entries(shape):
    torch.manual_seed(8)
    first = torch.randn(shape)
    second = first + 0.01 * torch.randn(shape) + torch.randn(shape) * (torch.rand(shape) < 0.15)  # a few large
    expected, taken = _arcee_fusion_by_entries(first, second)
    assert torch.allclose(merge("arcee_fusion", [first, second]), expected, atol=1e-7)
    if shape != (1,):
        assert 0 < taken < first.numel()
    assert torch.equal(merge("arcee_fusion", [first, first.clone()]), first)  # no change, nothing taken


def test_arcee_fusion_quartiles_are_exact_above_a_million_entries():
    """mergekit samples the quartiles of larger tensors at random; these are exact and repeatable."""
    generator = torch.Generator().manual_seed(9)
    first = torch.randn(1100, 1000, generator=generator)
    second = first + 0.01 * torch.randn(1100, 1000, generator=generator)
    out = merge("arcee_fusion", [first, second])
    assert torch.equal(out, merge("arcee_fusion", [first, second]))
    p = torch.softmax(second, -1) + 1e-8
    q = torch.softmax(first, -1) + 1e-8
    importance = (second - first).abs() * (p * (p / q).log()).sum(-1, keepdim=True)
    ranked = importance.flatten().sort().values  # the whole sort, not a sample
    n = ranked.numel()
    q1, median, q3 = (ranked[(n - 1) * i // 4] for i in (1, 2, 3))
    expected = torch.where(importance >= median + 1.5 * (q3 - q1), second, first)
    assert torch.equal(out, expected) and 0 < int((out == second).sum()) < n


def _ram_by_entries(base, models, epsilon, r=None, alpha=None):
    """RAM (and RAM+ when r is given), written out entry by entry and model by model."""
    n = base.numel()
    deltas = [[float(m.flatten()[j] - base.flatten()[j]) for j in range(n)] for m in models]
    changed = [[abs(x) > epsilon for x in d] for d in deltas]
    counts = [sum(c[j] for c in changed) for j in range(n)]
    scales = [1.0] * len(models)
    if r is not None:
        for i, c in enumerate(changed):
            unique = sum(c[j] and counts[j] == 1 for j in range(n))
            shared = sum(c[j] and counts[j] > 1 for j in range(n))
            rho = shared / max(unique, epsilon) if max(unique, epsilon) > 0 else 0.0
            scales[i] = 1 + r * min(rho, alpha)
    merged = []
    for j in range(n):
        terms = [(scale, d[j]) for scale, d, c in zip(scales, deltas, changed) if c[j]]
        if len(terms) == 1:
            merged.append(terms[0][0] * terms[0][1])
        else:
            merged.append(sum(x for _, x in terms) / max(len(terms), 1))
        merged[-1] += float(base.flatten()[j])
    return torch.tensor(merged).view_as(base)


RAM_BASE = torch.tensor([0.5, -1.0, 2.0, 0.0, 1.0, 3.0, -0.5, 0.25, 1.5])
RAM_DELTAS = [torch.tensor([0.2, 0.0, 0.3, -0.1, 1e-6, 0.4, 0.0, 0.0, 0.05]),  # entry 4: below epsilon
              torch.tensor([0.0, 0.5, -0.3, 0.0, 0.0, 0.2, 0.0, 0.7, 0.0]),
              torch.tensor([0.0, 0.0, 0.1, 0.0, 0.0, -0.6, 0.0, 0.0, 0.0])]  # changed no entry alone
# entry 6 changed by none; entries 2 and 5 by all three; the rest by one model each


def test_ram_averages_each_entry_over_the_models_that_changed_it():
    models = [RAM_BASE + d for d in RAM_DELTAS]
    out = merge("ram", models, RAM_BASE, epsilon=1e-5)
    expected = RAM_BASE + torch.tensor([0.2, 0.5, 0.1 / 3, -0.1, 0.0, 0.0, 0.0, 0.7, 0.05])
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(out, _ram_by_entries(RAM_BASE, models, 1e-5), atol=1e-6)


@pytest.mark.parametrize("r, alpha, epsilon", [(0.1, 0.2, 1e-5), (0.5, 5.0, 1e-5), (1.0, 3.0, 0.0), (0.3, 1.0, 0.25)])
def test_ramplus_tl_boosts_unique_updates_by_each_model_s_overlap(r, alpha, epsilon):
    models = [RAM_BASE + d for d in RAM_DELTAS]
    out = merge("ramplus_tl", models, RAM_BASE, r=r, alpha=alpha, epsilon=epsilon)
    assert torch.allclose(out, _ram_by_entries(RAM_BASE, models, epsilon, r, alpha), atol=1e-6)
    if (r, alpha, epsilon) == (0.5, 5.0, 1e-5):  # model 0: 2 shared, 3 unique (rho 2/3); model 1: 2 and 2
        assert out[0] == pytest.approx(0.5 + 0.2 * (1 + 0.5 * 2 / 3)) and out[7] == pytest.approx(0.25 + 0.7 * 1.5)
        assert out[2] == pytest.approx(2.0 + 0.1 / 3)  # shared entries: the plain mean


@pytest.mark.parametrize("name", ["ram", "ramplus_tl"])
def test_ram_methods_on_single_entries_norms_and_unchanged_models(name):
    torch.manual_seed(10)
    for shape in [(1,), (9,)]:
        base = torch.randn(shape)
        models = [base + torch.randn(shape) * (torch.rand(shape) < 0.5) for _ in range(3)]
        params = {"r": 0.4, "alpha": 2.0} if name == "ramplus_tl" else {}
        expected = _ram_by_entries(base, models, 1e-5, *params.values())
        assert torch.allclose(merge(name, models, base, **params), expected, atol=1e-6)
        assert torch.equal(merge(name, [base.clone(), base.clone()], base), base)


@pytest.mark.parametrize("name, params", [("sce", {"select_topk": 0.5}), ("nearswap", {"t": 0.1}),
                                          ("arcee_fusion", {}), ("ram", {}), ("ramplus_tl", {}),
                                          ("magmax", {}), ("expo", {"alpha": 0.5})])
def test_new_methods_leave_their_inputs_untouched(name, params):
    torch.manual_seed(11)
    base, *models = torch.randn(4, 6, 5)
    models = models if get_method(name).max_models is None else models[:2]
    copies = [m.clone() for m in (base, *models)]
    merge(name, models, base, **params)
    assert all(torch.equal(a, b) for a, b in zip((base, *models), copies))


def test_depth_lists_interpolate_like_mergekit_gradients():
    assert at_depth([0.0, 1.0], 0.25) == 0.25
    assert at_depth([0.0, 1.0, 0.0], 0.75) == 0.5
    assert at_depth([0.2, 0.4], 1.0) == 0.4 and at_depth(0.3, 0.6) == 0.3


@pytest.mark.parametrize("name, params, n, message", [
    ("ties", {"density": 0}, 2, r"ties.density = 0: must be > 0"),
    ("ties", {"density": 1.5}, 2, r"ties.density = 1.5: must be <= 1"),
    ("ties", {"density": [0.5, [0.2, 2.0]]}, 2, r"ties.density\[1\]\[1\] = 2.0: must be <= 1"),
    ("ties", {"weights": [1, 1, 1]}, 2, r"ties.weights: 3 values given for 2 models"),
    ("ties", {"densty": 0.5}, 2, r"ties: unknown parameter\(s\) densty"),
    ("dare_ties", {"seed": -1}, 2, r"dare_ties.seed = -1: must be >= 0"),
    ("dare_ties", {"rescale": "l2"}, 2, r"dare_ties.rescale = 'l2': must be one of inverse_density, l1, none"),
    ("slerp", {"t": 0.5}, 3, r"slerp: takes at most 2 model\(s\), got 3"),
    ("slerp", {"t": 1.2}, 2, r"slerp.t = 1.2: must be <= 1"),
    ("linear", {"weights": [-1.0, 1.0]}, 2, r"linear.weights\[0\] = -1.0: must be >= 0"),
    ("linear", {"weights": [float("nan"), 1.0]}, 2, r"linear.weights\[0\] = nan: must be a finite number"),
    ("linear", {"normalize": "yes"}, 2, r"linear.normalize = 'yes': must be true or false"),
    ("model_stock", {}, 1, r"model_stock: needs at least 2 model\(s\), got 1"),
    ("sce", {"select_topk": 0}, 3, r"sce.select_topk = 0: must be > 0"),
    ("sce", {"select_topk": 1.2}, 3, r"sce.select_topk = 1.2: must be <= 1"),
    ("nearswap", {"t": -0.1}, 2, r"nearswap.t = -0.1: must be >= 0"),
    ("nearswap", {}, 3, r"nearswap: takes at most 2 model\(s\), got 3"),
    ("arcee_fusion", {}, 3, r"arcee_fusion: takes at most 2 model\(s\), got 3"),
    ("arcee_fusion", {"t": 0.5}, 2, r"arcee_fusion: unknown parameter\(s\) t \(known: none\)"),
    ("ram", {"epsilon": -1e-5}, 2, r"ram.epsilon = -1e-05: must be >= 0"),
    ("ramplus_tl", {"r": -0.1}, 2, r"ramplus_tl.r = -0.1: must be >= 0"),
    ("ramplus_tl", {"alpha": -0.2}, 2, r"ramplus_tl.alpha = -0.2: must be >= 0"),
])
def test_bad_parameters_are_refused_with_one_line(name, params, n, message):
    with pytest.raises(MergeError, match=message) as err:
        get_method(name).validate(params, n)
    assert "\n" not in str(err.value)


def test_all_zero_weights_are_refused_before_any_tensor_is_read():
    method = get_method("linear")
    with pytest.raises(MergeError, match=r"weights are all zero"):
        method.check(resolve(method.validate({"weights": [0.0, 0.0]}, 2), method.params, 0.0))
    method.check(resolve(method.validate({"weights": [0.0, 0.0], "normalize": False}, 2), method.params, 0.0))


def test_della_density_and_epsilon_must_stay_inside_the_unit_interval():
    method = get_method("della")
    resolved = resolve(method.validate({"density": 0.9, "epsilon": 0.15}, 2), method.params, 0.0)
    with pytest.raises(MergeError, match=r"density \+- epsilon = 0.9 \+- 0.15"):
        method.check(resolved)


# the method configs may differ from the registered defaults only where they say why
DELIBERATE = {("task_arithmetic", "normalize"), ("dare_linear", "normalize"), ("dare_ties", "normalize"),
              ("breadcrumbs", "normalize"), ("breadcrumbs_ties", "normalize"), ("della_linear", "normalize")}


def test_every_method_has_a_config_listing_its_parameters_and_defaults():
    from pathlib import Path

    import yaml

    from glue_bench.merge import METHODS

    conf = Path(__file__).resolve().parents[1] / "conf" / "method"
    configs = {p.stem: yaml.safe_load(p.read_text()) for p in conf.glob("*.yaml") if p.stem != "none"}
    get_method("linear")
    assert set(configs) == set(METHODS)
    for name, config in configs.items():
        method = METHODS[name]
        assert config["name"] == name
        assert set(config["params"]) == {p.name for p in method.params}, name
        method.validate(config["params"], method.max_models or 2)
        for p in method.params:
            if (name, p.name) not in DELIBERATE:
                assert config["params"][p.name] == p.default, (name, p.name)


def test_magmax_takes_each_entry_from_the_task_vector_of_largest_magnitude():
    base = torch.tensor([[0.0, 1.0, 2.0], [3.0, -1.0, 0.5]])
    tensors = [base + torch.tensor([[0.5, -2.0, 0.0], [1.0, 0.25, -0.5]]),
               base + torch.tensor([[-0.7, 1.0, 0.0], [-1.0, 0.5, 0.1]])]
    # by hand: |.5| < |-.7| -> -.7; |-2| > 1 -> -2; both 0 -> 0; |1| = |-1| -> the first, 1; .5; -.5
    picked = np.array([[-0.7, -2.0, 0.0], [1.0, 0.5, -0.5]], dtype=np.float32)
    for lam in (1.0, 0.5):
        out = merge("magmax", tensors, base, **{"lambda": lam})
        assert np.allclose(out.numpy(), base.numpy() + lam * picked, atol=1e-7)
    generator = np.random.default_rng(3)
    base = torch.from_numpy(generator.normal(size=(17, 9)).astype(np.float32))
    tensors = [torch.from_numpy(generator.normal(size=(17, 9)).astype(np.float32)) for _ in range(4)]
    deltas = np.stack([(t - base).numpy() for t in tensors])
    rows, cols = np.indices(base.shape)
    expected = base.numpy() + deltas[np.abs(deltas).argmax(0), rows, cols]  # numpy: the first of the largest
    assert np.allclose(merge("magmax", tensors, base).numpy(), expected, atol=1e-6)


def test_expo_extrapolates_the_model_away_from_the_base():
    generator = np.random.default_rng(5)
    base, sft = (torch.from_numpy(generator.normal(size=(6, 5)).astype(np.float32)) for _ in range(2))
    for alpha in (0.0, 0.3, 1.0):
        out = merge("expo", [sft], base, alpha=alpha)
        assert np.allclose(out.numpy(), (1 + alpha) * sft.numpy() - alpha * base.numpy(), atol=1e-6)
    other = torch.from_numpy(generator.normal(size=(6, 5)).astype(np.float32))
    mean = (3 * sft.numpy() + other.numpy()) / 4  # several models: their weighted mean is extrapolated
    out = merge("expo", [sft, other], base, weights=[3.0, 1.0], alpha=0.5)
    assert np.allclose(out.numpy(), mean + 0.5 * (mean - base.numpy()), atol=1e-6)
    with pytest.raises(MergeError, match="alpha"):
        get_method("expo").validate({"alpha": -0.1}, 1)


def _needs_the_sum_kernel():
    from glue_bench.merge import kernels

    if torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        pytest.skip("ATen's portable kernels round add_'s multiply-add twice: linear keeps the torch path")
    if kernels.library() is None:
        pytest.skip("no C kernels here")
    return kernels


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("numel,threads", [(0, 1), (1, 1), (17, 1), (4099, 1), (3 * 2 ** 20 + 5, 2)])
def test_linear_s_sum_kernel_gives_torch_s_sums_bit_for_bit(dtype, numel, threads, monkeypatch):
    """The kernel reads bf16 as stored; torch widens it first, multiplies the first model, then
    add_s each other one with alpha: the same float32 result, for every size (a vector loop's
    remainder included) and split over threads."""
    kernels = _needs_the_sum_kernel()
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    generator = torch.Generator().manual_seed(numel)
    tensors = [(torch.randn(numel, generator=generator) * 10 ** i).to(dtype) for i in range(-2, 2)]
    coefficients = [0.3, -1.7, 2.0 / 3.0, 1e-3]
    assert kernels.can_sum(tensors)
    summed, finite = kernels.weighted_sum(tensors, coefficients)
    assert finite
    expected = torch.mul(tensors[0].float(), coefficients[0])
    for tensor, c in zip(tensors[1:], coefficients[1:]):
        expected.add_(tensor.float(), alpha=c)
    assert torch.equal(summed, expected)
    direct = sum(c * t.double() for c, t in zip(coefficients, tensors))  # and it is the weighted sum
    assert torch.allclose(summed.double(), direct, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method,params,fused", [
    ("linear", {"weights": [0.2, 0.5, 0.3]}, "weighted_sum"),
    ("ties", {"weights": [0.2, 0.5, 0.3], "density": 0.4}, "subtract"),
    ("dare_ties", {"weights": [0.2, 0.5, 0.3], "density": 0.4, "seed": 3}, "subtract")])
def test_a_bf16_checkpoint_read_as_stored_merges_as_the_torch_path_does(tmp_path, monkeypatch, method, params, fused):
    """Merged through the engine from bf16 files: the kernels that read each input once as the
    file holds it (linear's weighted sum, the stacking methods' task vectors) give the merge of
    the inputs widened to float32 by torch first, bit for bit; an input holding NaN is still named."""
    from safetensors.torch import save_file

    from glue_bench.merge import kernels
    from glue_bench.merge.engine import Merger, TensorSource

    _needs_the_sum_kernel()
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(300, 70, generator=generator)

    def write(name, weights):
        (tmp_path / name).mkdir(exist_ok=True)
        save_file({"w": weights.to(torch.bfloat16)}, str(tmp_path / name / "model.safetensors"))
        (tmp_path / name / "config.json").write_text("{}")
    for name in ("a", "b", "c"):
        write(name, base + 0.05 * torch.randn(300, 70, generator=generator))
    write("base", base)

    def merged():
        sources = [TensorSource(n, tmp_path / n) for n in "abc"]
        return dict(Merger(sources, method, TensorSource("base", tmp_path / "base")).tensors(params))["w"]
    calls = []
    monkeypatch.setattr(kernels, fused, lambda *a, _fn=getattr(kernels, fused): calls.append(1) or _fn(*a))
    read_as_stored = merged()
    assert calls  # the kernel did read the inputs
    # the same merge with the inputs widened by torch first (the other kernels as they were)
    monkeypatch.setattr(kernels, "can_sum" if fused == "weighted_sum" else "can_subtract", lambda *a: False)
    assert torch.equal(read_as_stored, merged())

    monkeypatch.undo()
    bad = base.clone()
    bad[7, 3] = float("nan")
    write("b", bad)
    with pytest.raises(MergeError, match="model 'b': tensor 'w' holds NaN or inf"):
        merged()


def test_the_kernel_s_kth_largest_magnitude_is_the_sorted_magnitudes_kth():
    """Two histogram passes (high then low 16 bits) against a sort, on rows of every kind: tied
    (bf16-like), all distinct, zeros of both signs, subnormals, one huge value; k from 1 to n."""
    from glue_bench.merge import kernels

    if kernels.library() is None:
        pytest.skip("no C kernels here")
    rng = np.random.default_rng(3)
    n = 70_001
    rows = np.stack([
        torch.from_numpy(rng.standard_normal(n).astype(np.float32)).to(torch.bfloat16).float().numpy() * 1e-3,
        rng.standard_normal(n).astype(np.float32),
        np.where(rng.random(n) < 0.5, np.float32(0.0), np.float32(-0.0)),
        (rng.standard_normal(n) * 1e-42).astype(np.float32),  # subnormal
        np.concatenate([[np.float32(3e38)], rng.standard_normal(n - 1).astype(np.float32)]),
    ])
    todo, ks = [], []
    for r in range(len(rows)):
        for k in (1, 2, n // 3, n - 1, n):
            todo.append(r)
            ks.append(k)
    kth = kernels.kth_magnitudes(torch.from_numpy(rows), todo, ks)
    expected = [np.sort(np.abs(rows[r]))[::-1][k - 1] for r, k in zip(todo, ks)]
    assert np.array_equal(kth.view(np.float32), np.array(expected, dtype=np.float32))


@pytest.mark.parametrize("name,params", [("ties", {"density": 0.3}), ("dare_ties", {"density": 0.3, "seed": 1})])
def test_kernels_split_over_threads_give_the_one_thread_merge(name, params, monkeypatch):
    """Rows of 2^20 entries or more go to the kernels in shares, one per torch thread (the k-th
    magnitudes, the trim and the drop by rows, the election by entries): the same merge, bit for
    bit, as in one call."""
    from glue_bench.merge import kernels

    if kernels.library() is None:
        pytest.skip("no C kernels here")
    generator = torch.Generator().manual_seed(5)
    base = torch.randn(2 ** 21 + 77, generator=generator)  # two shares of the election's entries
    tensors = [base + 0.1 * torch.randn(base.shape, generator=generator) for _ in range(3)]

    def merged(threads):
        monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
        method = get_method(name)
        kwargs = resolve(method.validate({"weights": [0.5, 0.3, 0.2], **params}, 3), method.params, 0.0)
        if method.randomized:
            from glue_bench.merge.engine import Merger
            kwargs["generator"] = Merger._generators(1, "w")
        return method.fn(tensors, base=base, **kwargs)
    assert torch.equal(merged(1), merged(3))


@pytest.mark.parametrize("numel", [1, 7, 8, 4099, 1 << 21])
@pytest.mark.parametrize("special", [None, "nan", "inf", "-inf"])
def test_widen_is_torch_s_widening_and_finds_nan_and_inf(numel, special):
    """The engine's bf16 -> float32 widening (kernels.widen, checked in the same pass): every bit
    as torch's .float(), on sizes with and without a vector loop's remainder, split over threads;
    and not finite exactly when a NaN or inf is there, wherever it is."""
    from glue_bench.merge import kernels

    if not kernels.can_widen(torch.zeros(1, dtype=torch.bfloat16)):
        pytest.skip("no C kernels here")
    generator = torch.Generator().manual_seed(numel)
    stored = (torch.randn(numel, generator=generator) * 1e3).to(torch.bfloat16)
    if special:
        stored[int(torch.randint(numel, (1,), generator=generator))] = float(special)
    widened, finite = kernels.widen(stored)
    assert torch.equal(widened.view(torch.int32), stored.float().view(torch.int32))
    assert finite == (special is None)
