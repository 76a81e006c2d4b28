"""TSV-M, Iso-C and Iso-CTS (glue_bench/merge/subspace.py) against direct numpy computations of their
papers' equations, in float64, with the closest orthonormal matrix computed another way: as
A (A^T A)^(-1/2) by an eigendecomposition, not from A's SVD."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import glue_bench.merge.subspace  # noqa: F401  (registers the methods)
from glue_bench.merge import MergeError, get_method
from glue_bench.merge.params import resolve


def merge(name, tensors, base, memo=None, **params):
    """Validate `params` as a config would be, then run the method at depth 0."""
    method = get_method(name)
    kwargs = resolve(method.validate(params, len(tensors)), method.params, 0.0)
    return method.fn(tensors, base=base, memo=memo, **kwargs)


def models(shape, n, seed=0, scale=0.1):
    """A float32 base and n models around it (generic: full-rank task vectors, distinct singular values)."""
    generator = np.random.default_rng(seed)
    base = generator.normal(size=shape).astype(np.float32)
    tensors = [(base + scale * generator.normal(size=shape)).astype(np.float32) for _ in range(n)]
    return torch.from_numpy(base), [torch.from_numpy(t) for t in tensors]


def deltas(base, tensors):
    return [t.numpy().astype(np.float64) - base.numpy().astype(np.float64) for t in tensors]


def closest_orthonormal(a):
    """A (A^T A)^(-1/2) for a tall A of full column rank (wide: by its transpose)."""
    if a.shape[0] < a.shape[1]:
        return closest_orthonormal(a.T).T
    w, q = np.linalg.eigh(a.T @ a)
    return a @ (q / np.sqrt(w)) @ q.T


def top(matrix, k):
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    return u[:, :k], s[:k], vt[:k].T


def numpy_tsv(ds, k):
    parts = [top(d, k) for d in ds]
    u, s, v = (np.concatenate(p, axis) for p, axis in zip(zip(*parts), (1, 0, 1)))
    return closest_orthonormal(u) @ np.diag(s) @ closest_orthonormal(v).T


def numpy_iso_c(ds):
    total = sum(ds)
    return np.linalg.svd(total, compute_uv=False).mean() * closest_orthonormal(total)


def numpy_iso_cts(ds, fraction):
    total, n = sum(ds), len(ds)
    r = min(total.shape)
    s = round((r - int(np.floor(fraction * r))) / n)   # the authors' rounding: k + n s = r
    k = r - n * s
    common = top(total, k)
    parts = [common] + [top(d - common[0] @ common[0].T @ d, s) for d in ds]
    u, sigma, v = (np.concatenate(p, axis) for p, axis in zip(zip(*parts), (1, 0, 1)))
    return sigma.mean() * closest_orthonormal(u) @ closest_orthonormal(v).T


def close(out, base, expected_delta, alpha=1.0, atol=1e-5):
    got = out.numpy().astype(np.float64) - base.numpy()
    assert np.abs(got - alpha * expected_delta).max() <= atol * max(1.0, np.abs(expected_delta).max())


@pytest.mark.parametrize("shape, n, rank_share, alpha", [((12, 8), 3, 1.0, 1.0), ((8, 12), 3, 1.0, 0.7),
                                                         ((12, 8), 2, 0.5, 1.3), ((10, 10), 4, 1.0, 1.0)])
def test_tsv_is_the_orthogonalised_concatenation_of_each_task_vectors_top_singular_vectors(shape, n, rank_share,
                                                                                              alpha):
    base, tensors = models(shape, n)
    k = int(rank_share * min(shape) / n)
    out = merge("tsv", tensors, base, rank_share=rank_share, alpha=alpha)
    assert out.dtype == torch.float32 and out.shape == base.shape
    close(out, base, numpy_tsv(deltas(base, tensors), k), alpha)


@pytest.mark.parametrize("shape, n, alpha", [((12, 8), 3, 1.0), ((8, 12), 2, 0.6), ((9, 9), 4, 2.0)])
def test_iso_c_flattens_the_spectrum_of_the_summed_task_vectors(shape, n, alpha):
    base, tensors = models(shape, n, seed=1)
    out = merge("iso_c", tensors, base, alpha=alpha)
    close(out, base, numpy_iso_c(deltas(base, tensors)), alpha)
    spectrum = np.linalg.svd(out.numpy().astype(np.float64) - base.numpy(), compute_uv=False)
    assert np.allclose(spectrum, spectrum.mean(), rtol=1e-5)  # isotropic


@pytest.mark.parametrize("shape, n, fraction, alpha", [((12, 8), 3, 0.8, 1.0), ((8, 12), 2, 0.5, 1.0),
                                                       ((16, 16), 4, 0.8, 0.4), ((20, 14), 3, 0.3, 1.0)])
def test_iso_cts_adds_each_tasks_own_subspace_to_the_common_one(shape, n, fraction, alpha):
    base, tensors = models(shape, n, seed=2)
    out = merge("iso_cts", tensors, base, common_fraction=fraction, alpha=alpha)
    close(out, base, numpy_iso_cts(deltas(base, tensors), fraction), alpha)
    spectrum = np.linalg.svd(out.numpy().astype(np.float64) - base.numpy(), compute_uv=False)
    assert np.allclose(spectrum, spectrum.mean(), rtol=1e-5)


@pytest.mark.parametrize("rank, n, fraction, sizes", [
    (8, 3, 0.8, (5, 1)),          # floor(6.4) = 6; s = round(2 / 3) = 1; k = 8 - 3
    (768, 8, 0.8, (616, 19)),     # 614; round(154 / 8 = 19.25) = 19; k = 768 - 152
    (4096, 4, 0.8, (3276, 205)),
    (8, 3, 1.0, (8, 0)),          # all common: Iso-C
    (8, 3, 0.0, (2, 2)),          # round(8 / 3) = 3 would need 9 > 8: s = 8 // 3
    (2, 3, 0.8, (2, 0)),
])
def test_iso_cts_splits_the_rank_as_the_authors_round(rank, n, fraction, sizes):
    from glue_bench.merge.subspace import _subspace_sizes

    assert _subspace_sizes(rank, n, fraction) == sizes


def test_iso_cts_with_an_all_common_subspace_is_iso_c():
    base, tensors = models((12, 8), 3, seed=3)
    assert torch.allclose(merge("iso_cts", tensors, base, common_fraction=1.0), merge("iso_c", tensors, base),
                          atol=1e-6)


@pytest.mark.parametrize("name", ["tsv", "iso_c", "iso_cts"])
def test_one_rank_one_task_vector_merges_to_itself_times_alpha(name):
    # model 1 is the base: the only update is sigma u v^T, which every method keeps as it is
    generator = np.random.default_rng(4)
    u, v = generator.normal(size=9), generator.normal(size=7)
    u, v = u / np.linalg.norm(u), v / np.linalg.norm(v)
    base = torch.from_numpy(generator.normal(size=(9, 7)).astype(np.float32))
    tensors = [base + torch.from_numpy((2.5 * np.outer(u, v)).astype(np.float32)), base.clone()]
    out = merge(name, tensors, base, alpha=0.8)
    close(out, base, 2.5 * np.outer(u, v), alpha=0.8)


def test_iso_c_spreads_the_mean_singular_value_over_the_rank_of_low_rank_task_vectors():
    # three rank-2 (LoRA-like) updates: the sum has rank 6 of 10; sigma_bar is the mean of its 6
    # nonzero singular values (the authors' code averages all 10, 4 of them zero, and gives the
    # mean to 4 null directions LAPACK picks)
    generator = np.random.default_rng(5)
    base = np.zeros((12, 10), np.float32)
    updates = [generator.normal(size=(12, 2)) @ generator.normal(size=(2, 10)) for _ in range(3)]
    tensors = [torch.from_numpy((base + d).astype(np.float32)) for d in updates]
    out = merge("iso_c", tensors, torch.from_numpy(base))
    u, s, vt = np.linalg.svd(sum(updates))
    close(out, torch.from_numpy(base), s[:6].mean() * u[:, :6] @ vt[:6])
    spectrum = np.linalg.svd(out.numpy().astype(np.float64), compute_uv=False)
    assert np.allclose(spectrum[:6], s[:6].mean(), rtol=1e-5) and np.all(spectrum[6:] < 1e-5)


def test_tsv_of_orthogonal_task_vectors_is_task_arithmetic_of_their_truncations():
    # disjoint row and column supports: the gathered singular vectors are orthonormal already
    generator = np.random.default_rng(6)
    base = generator.normal(size=(12, 8)).astype(np.float32)
    blocks = [(slice(0, 4), slice(0, 3)), (slice(4, 8), slice(3, 6)), (slice(8, 12), slice(6, 8))]
    updates, truncated = [], []
    for rows, cols in blocks:  # ranks 3, 3 and 2; each keeps k = floor(8 / 3) = 2
        d = np.zeros((12, 8))
        d[rows, cols] = generator.normal(size=(rows.stop - rows.start, cols.stop - cols.start))
        updates.append(d)
        u, s, vt = np.linalg.svd(d)
        truncated.append(u[:, :2] * s[:2] @ vt[:2])
    tensors = [torch.from_numpy((base + d).astype(np.float32)) for d in updates]
    out = merge("tsv", tensors, torch.from_numpy(base), alpha=0.5)
    close(out, torch.from_numpy(base), sum(truncated), alpha=0.5)


def test_tsv_of_identical_models_is_their_truncated_task_vector():
    # the gathered vectors repeat: the orthogonalisation keeps the directions they span, where
    # P Q^T would complete them with arbitrary ones
    base, (model,) = models((10, 6), 1, seed=7)
    u, s, vt = np.linalg.svd(deltas(base, [model])[0])
    out = merge("tsv", [model, model.clone()], base)
    close(out, base, u[:, :3] * s[:3] @ vt[:3])


@pytest.mark.parametrize("name", ["tsv", "iso_c", "iso_cts"])
@pytest.mark.parametrize("shape", [(7,), (2, 3, 4)])
def test_tensors_that_are_not_matrices_get_the_mean_task_vector(name, shape):
    base, tensors = models(shape, 3, seed=8)
    out = merge(name, tensors, base, alpha=0.6)
    close(out, base, np.mean(deltas(base, tensors), axis=0), alpha=0.6)


@pytest.mark.parametrize("name", ["tsv", "iso_c", "iso_cts"])
@pytest.mark.parametrize("shape", [(12, 8), (5,)])
def test_inputs_are_untouched_and_merges_deterministic(name, shape):
    base, tensors = models(shape, 3, seed=9)
    copies = [t.clone() for t in (base, *tensors)]
    first = merge(name, tensors, base)
    assert all(torch.equal(a, b) for a, b in zip((base, *tensors), copies))
    assert torch.equal(first, merge(name, tensors, base))


@pytest.mark.parametrize("name, params", [("tsv", {}), ("iso_c", {}), ("iso_cts", {"common_fraction": 0.5})])
def test_a_search_over_alpha_reuses_the_merged_update_from_the_cache(name, params, monkeypatch):
    base, tensors = models((12, 8), 3, seed=10)
    memo = {}
    first = merge(name, tensors, base, memo, alpha=1.0, **params)
    calls = []
    svd = torch.linalg.svd
    monkeypatch.setattr(torch.linalg, "svd", lambda *a, **k: calls.append(1) or svd(*a, **k))
    second = merge(name, tensors, base, memo, alpha=0.5, **params)
    assert not calls and len(memo) == 1
    assert torch.allclose(second, base + 0.5 * (first - base), atol=1e-6)
    assert torch.equal(second, merge(name, tensors, base, alpha=0.5, **params))


@pytest.mark.parametrize("name, params, n, message", [
    ("tsv", {"rank_share": 0}, 3, r"tsv.rank_share = 0: must be > 0"),
    ("tsv", {"rank_share": 1.5}, 3, r"tsv.rank_share = 1.5: must be <= 1"),
    ("tsv", {"alpha": -0.5}, 3, r"tsv.alpha = -0.5: must be >= 0"),
    ("iso_c", {"alpha": float("nan")}, 2, r"iso_c.alpha = nan: must be a finite number"),
    ("iso_c", {"common_fraction": 0.5}, 2, r"iso_c: unknown parameter\(s\) common_fraction \(known: alpha\)"),
    ("iso_cts", {"common_fraction": 1.2}, 2, r"iso_cts.common_fraction = 1.2: must be <= 1"),
    ("iso_cts", {"common_fraction": -0.1}, 2, r"iso_cts.common_fraction = -0.1: must be >= 0"),
    ("iso_cts", {}, 1, r"iso_cts: needs at least 2 model\(s\), got 1"),
])
def test_bad_parameters_are_refused_with_one_line(name, params, n, message):
    with pytest.raises(MergeError, match=message) as err:
        get_method(name).validate(params, n)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["tsv", "iso_c", "iso_cts"])
def test_each_has_a_config_listing_its_parameters_and_defaults(name):
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "conf" / "method" / f"{name}.yaml").read_text())
    method = get_method(name)
    assert config["name"] == name
    assert config["params"] == {p.name: p.default for p in method.params}
    method.validate(config["params"], 2)
