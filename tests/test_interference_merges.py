"""pcb and wudi (glue_bench/merge/interference.py) against direct numpy computations of their papers'
equations, in float64, on small tensors."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

import glue_bench.merge.interference  # noqa: F401  (registers pcb and wudi)
from glue_bench.merge import MergeError, get_method
from glue_bench.merge.params import resolve


def merge(name, tensors, base, **params):
    """Validate `params` as a config would be, then run the method at depth 0."""
    method = get_method(name)
    kwargs = resolve(method.validate(params, len(tensors)), method.params, 0.0)
    return method.fn(tensors, base=base, **kwargs)


def models(shape, n=3, scale=1.0, seed=0):
    generator = np.random.default_rng(seed)
    base = np.asarray(generator.normal(size=shape), dtype=np.float32)
    tensors = [np.asarray(base + scale * generator.normal(size=shape), dtype=np.float32) for _ in range(n)]
    return torch.from_numpy(base), [torch.from_numpy(t) for t in tensors]


# ---- pcb ---------------------------------------------------------------------------------------

def pcb_reference(tensors, base, ratio, lam):
    """PCB-merging's equations (arXiv 2410.02396, Sec. 3), over the tensor's entries."""
    b = base.numpy().astype(np.float64)
    deltas = [t.numpy().astype(np.float64).ravel() - b.ravel() for t in tensors]
    n, size = len(deltas), b.size

    def norm(x):  # min-max to [0, 1]; a constant vector has no order: zeros
        span = x.max() - x.min()
        return (x - x.min()) / span if span > 0 else np.zeros_like(x)

    def softmax(x):
        e = np.exp(x - x.max())
        return e / e.sum()

    betas = [softmax(n * norm(di * di)) * sum(softmax(norm(di * dj)) for dj in deltas) for di in deltas]
    k = max(1, math.ceil(Fraction(str(ratio)) * size))  # the top r*D, the paper's sorted(beta)[(1-r)D]
    kept = [beta * (beta >= np.sort(beta)[size - k]) for beta in betas]
    total = sum(kept)
    merged = np.divide(sum(w * d for w, d in zip(kept, deltas)), total, out=np.zeros(size), where=total > 0)
    return b + lam * merged.reshape(b.shape), betas, k


@pytest.mark.parametrize("ratio, lam", [(0.1, 1.0), (0.3, 1.0), (0.5, 1.7), (1.0, 0.8)])
def test_pcb_equals_the_papers_equations(ratio, lam):
    base, tensors = models((10, 6))
    expected, betas, k = pcb_reference(tensors, base, ratio, lam)
    for beta in betas:  # the selection is not decided by rounding: the k-th and next differ clearly
        ordered = np.sort(beta)[::-1]
        assert k == beta.size or ordered[k - 1] > ordered[k] * (1 + 1e-4)
    out = merge("pcb", tensors, base, ratio=ratio, **{"lambda": lam})
    assert out.dtype == torch.float32 and out.shape == base.shape
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_pcb_by_hand():
    # d_1 = [1, 0], d_2 = [0, 1]: beta_1 is larger on entry 0, beta_2 on entry 1 (intra and inter
    # agree), so ratio 0.5 keeps one entry each, and each entry is its one kept delta, whatever beta
    base = torch.tensor([0.5, -1.0])
    tensors = [base + torch.tensor([1.0, 0.0]), base + torch.tensor([0.0, 1.0])]
    assert torch.equal(merge("pcb", tensors, base, ratio=0.5), base + torch.tensor([1.0, 1.0]))
    assert torch.equal(merge("pcb", tensors, base, ratio=0.5, **{"lambda": 0.5}), base + 0.5)
    # all kept: a / (a + b) on both, a = s(2)(s(1) + 1/2), b = s(0)(s(0) + 1/2), s(x) = e^x / (e^x + 1)
    s = lambda x: math.exp(x) / (math.exp(x) + 1)  # noqa: E731  (the two-entry softmax)
    a, b = s(2) * (s(1) + 0.5), (1 - s(2)) * (1 - s(1) + 0.5)
    assert torch.allclose(merge("pcb", tensors, base, ratio=1.0), base + a / (a + b), atol=1e-6)


def test_pcb_of_identical_models_is_their_task_vector_trimmed_to_its_top_magnitudes():
    base = torch.zeros(2, 5)
    delta = torch.tensor([[0.3, -2.0, 0.1, 1.0, -0.5], [0.05, 0.7, -1.5, 0.2, 0.0]])
    kept = torch.tensor([[0.0, -2.0, 0.0, 1.0, 0.0], [0.0, 0.7, -1.5, 0.0, 0.0]])  # the 4 = 0.4 * 10 largest
    out = merge("pcb", [base + delta] * 3, base, ratio=0.4, **{"lambda": 1.5})
    assert torch.allclose(out, base + 1.5 * kept, atol=1e-7)


def test_pcb_keeps_every_entry_tied_with_the_threshold():
    # entries 0 and 1 are equal in every model, so their scores tie, and they score highest: ratio
    # 0.25 (k = 1) keeps both, where a first-among-equals rule would keep entry 0 alone
    base = torch.zeros(4)
    tensors = [torch.tensor([2.0, 2.0, 1.0, 0.5]), torch.tensor([2.0, 2.0, 0.5, 1.0])]
    assert torch.equal(merge("pcb", tensors, base, ratio=0.25), torch.tensor([2.0, 2.0, 0.0, 0.0]))
    # the rule depends on values, not positions: permuted entries give the permuted merge
    order = torch.tensor([3, 1, 2, 0])
    assert torch.equal(merge("pcb", [t[order] for t in tensors], base, ratio=0.25), torch.tensor([0.0, 2.0, 0.0, 2.0]))


def test_pcb_on_tensors_that_are_not_matrices():
    for shape in [(7,), (3, 2, 4), ()]:
        base, tensors = models(shape, n=4, seed=len(shape))
        expected, _, _ = pcb_reference(tensors, base, 0.5, 1.2)
        out = merge("pcb", tensors, base, ratio=0.5, **{"lambda": 1.2})
        assert out.shape == base.shape
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)
    # one entry: nothing to rank, uniform scores, so the mean task vector
    base, tensors = torch.tensor(1.0), [torch.tensor(2.0), torch.tensor(4.0)]
    assert torch.equal(merge("pcb", tensors, base, ratio=0.1), torch.tensor(3.0))


def test_pcb_with_a_zero_task_vector_and_entries_no_model_keeps():
    base, tensors = models((4, 5), n=2)
    tensors.append(base.clone())  # a model equal to the base: its scores are uniform
    expected, _, _ = pcb_reference(tensors, base, 0.1, 1.0)
    out = merge("pcb", tensors, base, ratio=0.1)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(out).all() and (out == base).sum() >= 20 - 2 * 2  # unkept entries stay at the base


def test_pcb_selection_on_the_cpu_equals_torchs_kthvalue():
    from glue_bench.merge.interference import _kth_largest

    generator = np.random.default_rng(4)
    for row in [generator.random(1000), np.round(generator.random(999), 2), np.zeros(5), np.array([3.0, 1e-30, 0.0])]:
        row = torch.from_numpy(row.astype(np.float32))
        for k in {1, 2, row.numel() // 3 or 1, row.numel()}:
            assert _kth_largest(row, k) == float(row.kthvalue(row.numel() - k + 1).values)  # the CUDA path


def test_pcb_search_over_lambda_reuses_the_merged_task_vector():
    base, tensors = models((10, 6))
    method, memo = get_method("pcb"), {}
    first = method.fn(tensors, base=base, ratio=0.2, memo=memo, **{"lambda": 1.0})
    assert list(memo) == [("pcb", 0.2)]
    again = method.fn(tensors, base=base, ratio=0.2, memo=memo, **{"lambda": 2.0})
    assert torch.allclose(again - base, 2 * (first - base), atol=1e-6)
    assert torch.allclose(again, merge("pcb", tensors, base, ratio=0.2, **{"lambda": 2.0}))


# ---- wudi --------------------------------------------------------------------------------------

def wudi_terms(tensors, base):
    b = base.numpy().astype(np.float64)
    taus = [t.numpy().astype(np.float64) - b for t in tensors]
    return b, taus, [1 / np.sum(t * t) for t in taus]


def wudi_loss(x, taus, weights):
    """The paper's objective: sum_i ||(x - tau_i) tau_i^T||_F^2 / ||tau_i||_F^2."""
    return sum(w * np.sum(((x - t) @ t.T) ** 2) for t, w in zip(taus, weights))


def wudi_reference(tensors, base, steps, lr):
    """Adam (torch's defaults) on the paper's objective from sum_i tau_i; its gradient
    2 sum_i w_i (x - tau_i) tau_i^T tau_i, model by model."""
    b, taus, weights = wudi_terms(tensors, base)
    x = sum(taus)
    first, second = np.zeros_like(x), np.zeros_like(x)
    for step in range(1, steps + 1):
        grad = sum(2 * w * ((x - t) @ t.T) @ t for t, w in zip(taus, weights))
        first = 0.9 * first + 0.1 * grad
        second = 0.999 * second + 0.001 * grad * grad
        x = x - lr * (first / (1 - 0.9 ** step)) / (np.sqrt(second / (1 - 0.999 ** step)) + 1e-8)
    return b + x


def wudi_minimiser(tensors, base):
    """The objective's minimiser in closed form: x A = B, A = sum_i w_i tau_i^T tau_i,
    B = sum_i w_i tau_i tau_i^T tau_i (least squares)."""
    b, taus, weights = wudi_terms(tensors, base)
    gram = sum(w * t.T @ t for t, w in zip(taus, weights))
    target = sum(w * t @ t.T @ t for t, w in zip(taus, weights))
    return b + np.linalg.lstsq(gram.T, target.T, rcond=None)[0].T


@pytest.mark.parametrize("scale, steps, lr", [(1e-3, 300, 1e-5), (1e-3, 40, 3e-5), (0.02, 300, 1e-5),
                                               (0.05, 500, 1e-4)])
def test_wudi_equals_adam_on_the_papers_objective(scale, steps, lr):
    base, tensors = models((10, 6), scale=scale)
    out = merge("wudi", tensors, base, steps=steps, lr=lr)
    assert out.dtype == torch.float32 and out.shape == base.shape
    # (float32 rounds each step, ~lr, onto the task vector: at scale ~1, 300 steps drift ~1e-5 from float64)
    np.testing.assert_allclose(out.numpy(), wudi_reference(tensors, base, steps, lr), rtol=0, atol=1e-6)


def test_wudi_decreases_the_objective_towards_its_closed_form_minimiser():
    base, tensors = models((10, 6), scale=1e-3)  # fine-tuning-sized task vectors
    b, taus, weights = wudi_terms(tensors, base)
    exact = wudi_minimiser(tensors, base)
    losses = [wudi_loss(merge("wudi", tensors, base, steps=steps).numpy() - b, taus, weights)
              for steps in (0, 10, 30, 100, 300, 2000)]
    assert losses[0] == pytest.approx(wudi_loss(sum(taus), taus, weights), rel=1e-6)  # 0 steps: the sum
    assert all(before > after for before, after in zip(losses, losses[1:]))
    assert losses[0] > 2 * losses[4]
    assert losses[-1] == pytest.approx(wudi_loss(exact - b, taus, weights), rel=1e-6)
    converged = merge("wudi", tensors, base, steps=2000).numpy()
    np.testing.assert_allclose(converged, exact, rtol=0, atol=1e-6)  # entries ~1e-3: 0.1%
    assert np.abs(merge("wudi", tensors, base).numpy() - exact).max() > 1e-4  # 300 steps: not yet there


def test_wudi_by_hand():
    # task vectors on disjoint input coordinates (tau_1 tau_2^T = 0): the sum already minimises the
    # objective, its gradient is 0, so Adam leaves it and WUDI is task arithmetic, exactly
    base = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.0, 0.5]])
    tau_1 = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    tau_2 = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, -1.0]])
    assert torch.equal(merge("wudi", [base + tau_1, base + tau_2], base), base + tau_1 + tau_2)
    # one model's task vector twice: the minimiser is that task vector, not the sum (2 tau)
    base, tensors = models((5, 3), n=1, scale=1e-3)
    out = merge("wudi", tensors * 2, base, steps=3000)
    assert torch.allclose(out, tensors[0], rtol=0, atol=1e-6)


def test_wudi_averages_tensors_that_are_not_matrices():
    for shape in [(7,), (3, 2, 4), ()]:
        base, tensors = models(shape, n=3, seed=len(shape))
        expected = base.numpy() + np.mean([t.numpy() - base.numpy() for t in tensors], axis=0)
        np.testing.assert_allclose(merge("wudi", tensors, base).numpy(), expected, rtol=1e-6, atol=1e-6)


def test_wudi_skips_a_zero_task_vector_and_is_deterministic():
    base, tensors = models((8, 4), n=2, scale=1e-3)
    out = merge("wudi", tensors + [base.clone()], base)
    assert torch.isfinite(out).all()
    np.testing.assert_allclose(out.numpy(), wudi_reference(tensors, base, 300, 1e-5), rtol=0, atol=1e-6)
    assert torch.equal(out, merge("wudi", tensors + [base.clone()], base))
    assert torch.equal(merge("wudi", [base.clone()] * 2, base), base)  # nothing to merge


# ---- both --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, params", [("pcb", {"ratio": 0.3, "lambda": 1.3}), ("wudi", {"steps": 20})])
def test_inputs_are_left_untouched(name, params):
    for shape in [(10, 6), (6,)]:
        base, tensors = models(shape, scale=1e-2)
        copies = [m.clone() for m in (base, *tensors)]
        merge(name, tensors, base, **params)
        assert all(torch.equal(a, b) for a, b in zip((base, *tensors), copies))


@pytest.mark.parametrize("name, params, n, message", [
    ("pcb", {"ratio": 0}, 3, r"pcb.ratio = 0: must be > 0"),
    ("pcb", {"ratio": 1.5}, 3, r"pcb.ratio = 1.5: must be <= 1"),
    ("pcb", {"lambda": float("inf")}, 3, r"pcb.lambda = inf: must be a finite number"),
    ("pcb", {"density": 0.2}, 3, r"pcb: unknown parameter\(s\) density \(known: ratio, lambda\)"),
    ("pcb", {}, 1, r"pcb: needs at least 2 model\(s\), got 1"),
    ("wudi", {"steps": -1}, 3, r"wudi.steps = -1: must be >= 0"),
    ("wudi", {"steps": 2.5}, 3, r"wudi.steps = 2.5: must be a whole number"),
    ("wudi", {"lr": 0}, 3, r"wudi.lr = 0: must be > 0"),
    ("wudi", {"lr": "fast"}, 3, r"wudi.lr = 'fast': must be a finite number"),
    ("wudi", {"lambda": 1.0}, 3, r"wudi: unknown parameter\(s\) lambda \(known: steps, lr\)"),
])
def test_bad_parameters_are_refused_with_one_line(name, params, n, message):
    with pytest.raises(MergeError, match=message) as err:
        get_method(name).validate(params, n)
    assert "\n" not in str(err.value)


def test_configs_list_every_parameter_with_its_default():
    from pathlib import Path

    import yaml

    for name in ("pcb", "wudi"):
        config = yaml.safe_load((Path(__file__).resolve().parents[1] / "conf" / "method" / f"{name}.yaml").read_text())
        method = get_method(name)
        assert config["name"] == name
        assert config["params"] == {p.name: p.default for p in method.params}
        method.validate(config["params"], 2)
