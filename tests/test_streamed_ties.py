"""TIES streamed from the files (no stack of task vectors): the same merge, bit for bit, as the
stack's, on float32 and bfloat16 checkpoints, whichever way the k-th magnitude is found (the
sample's bracket, its heavily tied values, or the whole-vector count when the bracket misses);
and against TIES written from its equations."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from glue_bench.merge import MergeError, kernels, methods, sparsify
from glue_bench.merge.engine import Merger, TensorSource

KEY = "model.layers.0.mlp.up_proj.weight"
SHAPE = (301, 257)  # 77,357 entries: above methods._STREAMED_MIN, not a multiple of any block


@pytest.fixture(autouse=True)
def needs_kernels():
    if kernels.library() is None:
        pytest.skip("no C kernels: TIES is not streamed here")


def write_zoo(root, dtype, n_models=5, steps=None, seed=0):
    """A base and n fine-tunes (base + noise of growing scale), stored in `dtype`; with `steps`,
    the noise rounded to multiples of 1/steps, so magnitudes tie by the thousand."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(SHAPE, generator=generator)
    dirs = []
    for i in range(n_models + 1):
        noise = 0.01 * (1 + i % 3) * torch.randn(SHAPE, generator=generator)
        if steps:
            noise = torch.round(noise * steps) / steps
        directory = root / f"m{i}"
        directory.mkdir()
        save_file({KEY: (base + noise if i else base).to(dtype).contiguous()}, str(directory / "model.safetensors"))
        (directory / "config.json").write_text(json.dumps({"num_hidden_layers": 1}))
        dirs.append(directory)
    return [TensorSource(d.name, d) for d in dirs[1:]], TensorSource("base", dirs[0])


def merge_of(method, sources, base, params, monkeypatch, streamed):
    """`method`'s merge of KEY, streamed (kernels.<method>_streamed) or from the stack."""
    kernel = f"{method}_streamed"
    with monkeypatch.context() as patch:
        if not streamed:
            patch.setattr(methods, "_STREAMED_MIN", 1 << 62)
        calls = []
        original = getattr(kernels, kernel)
        patch.setattr(kernels, kernel, lambda *a, **k: calls.append(1) or original(*a, **k))
        result = dict(Merger(sources, method, base).tensors(params))[KEY]
    assert bool(calls) == streamed  # the path asked for is the path taken
    return result


def ties(sources, base, params, monkeypatch, streamed):
    return merge_of("ties", sources, base, params, monkeypatch, streamed)


def dare_ties(sources, base, params, monkeypatch, streamed):
    return merge_of("dare_ties", sources, base, params, monkeypatch, streamed)


CASES = [
    (torch.bfloat16, None, {"density": 0.2}),
    (torch.bfloat16, None, {"density": [0.5, 0.05, 1.0, 0.9, 0.3], "lambda": 0.7}),
    (torch.bfloat16, None, {"density": 0.4, "weights": [1.0, -0.5, 0.0, 2.0, 0.3], "normalize": False}),
    (torch.float32, None, {"density": [0.3, 0.01, 0.6, 1.0, 0.2]}),
    (torch.float32, 40, {"density": 0.3}),        # few distinct magnitudes: the k-th is a heavy tie
    (torch.float32, 4000, {"density": [0.1, 0.5, 0.7, 0.25, 0.9]}),
]


@pytest.mark.parametrize("dtype, steps, params", CASES)
def test_streamed_ties_is_the_stack_s_merge_bit_for_bit(tmp_path, monkeypatch, dtype, steps, params):
    sources, base = write_zoo(tmp_path, dtype, steps=steps)
    stacked = ties(sources, base, params, monkeypatch, streamed=False)
    assert torch.equal(ties(sources, base, params, monkeypatch, streamed=True), stacked)


def test_a_missed_bracket_or_an_overflowing_list_is_counted_whole(tmp_path, monkeypatch):
    sources, base = write_zoo(tmp_path, torch.float32, steps=400)
    params = {"density": [0.2, 0.5, 0.05, 0.3, 0.7]}
    stacked = ties(sources, base, params, monkeypatch, streamed=False)
    counted = []
    original = sparsify._kth_counted
    monkeypatch.setattr(sparsify, "_kth_counted", lambda *a: counted.append(1) or original(*a))
    brackets = sparsify._brackets

    def missing(sample, runs, fractions, todo):  # a bracket well above every k-th magnitude
        lo, hi, heavy, listed = brackets(sample, runs, fractions, todo)
        return hi + 1, hi + 2, np.full_like(heavy, kernels.NO_VALUE), listed
    with monkeypatch.context() as patch:
        patch.setattr(sparsify, "_brackets", missing)
        assert torch.equal(ties(sources, base, params, monkeypatch, streamed=True), stacked)
    assert len(counted) == 5
    counted.clear()
    everything = (np.zeros(5, dtype=np.uint32), np.full(5, 0x7FFFFFFF, dtype=np.uint32),
                  np.full((5, kernels.HEAVY), kernels.NO_VALUE, dtype=np.uint32), 0.0)
    monkeypatch.setattr(sparsify, "_brackets", lambda *a: everything)  # every entry listed: room for 4096 only
    assert torch.equal(ties(sources, base, params, monkeypatch, streamed=True), stacked)
    assert len(counted) == 5  # every model's list overflowed


def test_streamed_ties_follows_the_equations(tmp_path, monkeypatch):
    """TIES (Yadav et al. 2023) in numpy: trim each task vector to its k largest magnitudes (the
    first of tied ones), elect each entry's sign by the weighted sum, average the agreeing terms."""
    sources, base = write_zoo(tmp_path, torch.bfloat16, n_models=4)
    weights, density, lambda_ = np.array([0.55, 1.0, 0.35, 0.9]), 0.25, 0.9  # no exact cancellations
    merged = ties(sources, base, {"weights": weights.tolist(), "density": density, "lambda": lambda_},
                  monkeypatch, streamed=True).numpy().ravel()
    theta0 = base.get(KEY).float().numpy().ravel().astype(np.float64)
    deltas = []
    for source in sources:
        delta = source.get(KEY).float().numpy().ravel().astype(np.float64) - theta0
        kept = np.zeros_like(delta)
        first_k = np.argsort(-np.abs(delta), kind="stable")[:int(density * delta.size)]
        kept[first_k] = delta[first_k]
        deltas.append(kept)
    deltas = np.stack(deltas)
    election = (weights[:, None] * deltas).sum(0)
    elected = np.where(election >= 0, 1.0, -1.0)
    agrees = np.sign(deltas) == elected
    total = (weights[:, None] * deltas * agrees).sum(0)
    divisor = (weights[:, None] * agrees).sum(0)
    expected = theta0 + lambda_ * total / np.where(divisor == 0, 1.0, divisor)
    # where terms cancel to 0 (bf16 deltas are multiples of powers of 2), float32 rounding tosses a coin
    decided = (deltas == 0).all(0) | (np.abs(election) > 1e-6)
    assert decided.mean() > 0.999
    np.testing.assert_allclose(merged[decided], expected[decided], rtol=0, atol=1e-6)


def test_a_nan_in_a_streamed_input_is_named(tmp_path):
    sources, base = write_zoo(tmp_path, torch.bfloat16, n_models=3)
    bad = sources[1].get(KEY).clone()
    bad[7, 11] = float("nan")
    save_file({KEY: bad}, str(sources[1].directory / "model.safetensors"))
    with pytest.raises(MergeError, match="model 'm2'.*holds NaN or inf"):
        dict(Merger([TensorSource(s.name, s.directory) for s in sources], "ties", base).tensors({}))


@pytest.mark.parametrize("dtype, params", [
    (torch.bfloat16, {"density": 0.3, "seed": 4}),
    (torch.bfloat16, {"density": [0.5, 0.05, 1.0, 0.9, 0.3], "seed": 1, "lambda": 0.7, "rescale": "none"}),
    (torch.float32, {"density": 0.4, "weights": [1.0, -0.5, 0.0, 2.0, 0.3]}),
    (torch.float32, {"density": [0.2, 0.6, 0.4, 0.8, 0.3], "weights": [0.5, 1.0, 0.7, 0.2, 0.9], "normalize": True}),
])
def test_streamed_dare_ties_is_the_stack_s_merge_bit_for_bit(tmp_path, monkeypatch, dtype, params):
    """One pass, each model's random stream advanced to each thread's first entry: the same masks."""
    sources, base = write_zoo(tmp_path, dtype)
    stacked = dare_ties(sources, base, params, monkeypatch, streamed=False)
    with monkeypatch.context() as patch:  # two threads, so the second share's streams start advanced
        patch.setattr(kernels, "_SHARE_MIN", 1 << 12)
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(2)
        try:
            assert torch.equal(dare_ties(sources, base, params, monkeypatch, streamed=True), stacked)
        finally:
            torch.set_num_threads(torch_threads)


def test_dare_ties_with_the_l1_rescale_keeps_the_stack(tmp_path, monkeypatch):
    sources, base = write_zoo(tmp_path, torch.bfloat16, n_models=3)
    dare_ties(sources, base, {"density": 0.3, "rescale": "l1"}, monkeypatch, streamed=False)
    monkeypatch.setattr(kernels, "dare_ties_streamed", lambda *a, **k: pytest.fail("streamed with rescale l1"))
    dict(Merger(sources, "dare_ties", base).tensors({"density": 0.3, "rescale": "l1"}))


@pytest.mark.parametrize("method", ["ties", "dare_ties", "linear"])
@pytest.mark.parametrize("streamed", [True, False])
def test_a_result_that_overflows_is_refused_in_the_pass_that_writes_it(tmp_path, monkeypatch, method, streamed):
    """Finite inputs whose merge overflows (task vectors near the float32 maximum, summed): the
    kernel that writes the result finds the inf (checks_result), the engine does not check again,
    and the error is the engine's, into the model's own tensor or a new one."""
    from glue_bench.merge import engine

    generator = torch.Generator().manual_seed(3)
    dirs = []
    for i in range(4):
        values = torch.zeros(SHAPE) if i == 0 else 3e38 * (0.9 + 0.1 * torch.rand(SHAPE, generator=generator))
        directory = tmp_path / f"m{i}"
        directory.mkdir()
        save_file({KEY: values.contiguous()}, str(directory / "model.safetensors"))
        (directory / "config.json").write_text(json.dumps({"num_hidden_layers": 1}))
        dirs.append(directory)
    sources, base = [TensorSource(d.name, d) for d in dirs[1:]], TensorSource("base", dirs[0])
    if not streamed:
        monkeypatch.setattr(methods, "_STREAMED_MIN", 1 << 62)
        monkeypatch.setattr(kernels, "can_sum", lambda tensors: False)
    checked = []  # the tensors the engine checks itself: the inputs it loads, and results unchecked
    monkeypatch.setattr(engine, "is_finite", lambda t: checked.append(t.data_ptr()) or bool(torch.isfinite(t).all()))
    params = {"normalize": False} if method == "linear" else {"density": 0.9}
    merger, out = Merger(sources, method, base), torch.empty(SHAPE)
    with pytest.raises(MergeError, match="the merged tensor .* holds NaN or inf \\(its inputs are finite"):
        dict(merger.tensors(params, {KEY: out}))
    # found as written, not by a pass of the engine's
    assert out.data_ptr() not in checked and not torch.isfinite(out).all()
    with pytest.raises(MergeError, match="the merged tensor .* holds NaN or inf"):
        dict(merger.tensors(params))  # no output given: a new tensor, checked the same way


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_a_nan_in_a_base_read_as_stored_is_named(tmp_path, method):
    """The streamed merges read a bf16 base as the file holds it, unwidened and unchecked; a NaN in
    it reaches the result, and the error names the base."""
    sources, base = write_zoo(tmp_path, torch.bfloat16, n_models=3)
    bad = base.get(KEY).clone()
    bad[3, 5] = float("nan")
    save_file({KEY: bad}, str(base.directory / "model.safetensors"))
    with pytest.raises(MergeError, match="model 'base'.*holds NaN or inf"):
        dict(Merger(sources, method, TensorSource("base", base.directory)).tensors({"density": 0.5}))


def test_the_base_is_widened_only_where_a_method_asks(tmp_path, monkeypatch):
    """TIES streamed from bf16 files reads the base as stored: the engine widens no base for it;
    the stack's path (a small tensor, or off the streamed path) widens it once."""
    from glue_bench.merge import engine

    sources, base = write_zoo(tmp_path, torch.bfloat16, n_models=3)
    widened, load = [], engine.Merger._load

    def counted(self, source, key, into=None):
        widened.append(source.name)
        return load(self, source, key, into)
    monkeypatch.setattr(engine.Merger, "_load", counted)
    streamed = dict(Merger(sources, "ties", base).tensors({"density": 0.5}))[KEY]
    assert "base" not in widened
    monkeypatch.setattr(methods, "_STREAMED_MIN", 1 << 62)
    stacked = dict(Merger(sources, "ties", base).tensors({"density": 0.5}))[KEY]
    assert widened.count("base") == 1
    assert torch.equal(streamed, stacked)
