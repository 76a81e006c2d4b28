"""The linear merge against the direct formula, on raw tensors and through the streaming engine."""

import pytest
import torch
from safetensors.torch import save_file

from glue_bench.merge import MergeError, get_method
from glue_bench.merge.engine import TensorSource, check_compatible


def test_linear_equals_weighted_average_formula():
    torch.manual_seed(0)
    a, b, c = (torch.randn(5, 7) for _ in range(3))
    method = get_method("linear")
    params = method.validate({"weights": [1.0, 2.0, 5.0]}, 3)
    merged = method.fn([a, b, c], **params)
    direct = (1.0 * a + 2.0 * b + 5.0 * c) / 8.0
    assert torch.allclose(merged, direct, atol=1e-6)
    unnormalised = method.fn([a, b], **method.validate({"weights": [0.5, 0.25], "normalize": False}, 2))
    assert torch.allclose(unnormalised, 0.5 * a + 0.25 * b, atol=1e-6)


def test_linear_does_not_modify_its_inputs():
    a, b = torch.ones(3), torch.zeros(3)
    method = get_method("linear")
    method.fn([a, b], **method.validate({}, 2))
    assert torch.equal(a, torch.ones(3)) and torch.equal(b, torch.zeros(3))


@pytest.mark.parametrize("weights, message", [
    ([-1.0, 1.0], "weights[0] = -1.0"), ([0.0, 0.0], "all zero"), ([1.0], "1 given for 2 models"),
    ([float("nan"), 1.0], "weights[0] = nan"),
])
def test_bad_weights_are_refused_with_one_line(weights, message):
    with pytest.raises(MergeError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        get_method("linear").validate({"weights": weights}, 2)
    assert "\n" not in str(err.value)


def test_unknown_method_names_the_known_ones():
    with pytest.raises(MergeError, match="unknown merge method 'nope'; known: .*linear"):
        get_method("nope")


def test_engine_merges_saved_models_tensor_by_tensor(micro_cache):
    from glue_bench.merge.engine import merge_models
    from glue_bench.zoo.mini.build import model_dir
    from safetensors.torch import load_file

    dirs = [model_dir(n, "micro") for n in ("chat_a", "chat_b")]
    model, timings = merge_models([TensorSource(n, d) for n, d in zip(("a", "b"), dirs)], "linear",
                                  {"weights": [3.0, 1.0]})
    a, b = (load_file(d / "model.safetensors") for d in dirs)
    state = model.state_dict()
    for key in a:
        assert torch.allclose(state[key], 0.75 * a[key] + 0.25 * b[key], atol=1e-6), key
    assert set(timings) == {"load_s", "read_s", "merge_s"}


def test_models_of_different_shapes_are_refused(tmp_path):
    for name, shape in (("m1", (4, 4)), ("m2", (4, 5))):
        (tmp_path / name).mkdir()
        save_file({"w": torch.zeros(shape)}, tmp_path / name / "model.safetensors")
    sources = [TensorSource(n, tmp_path / n) for n in ("m1", "m2")]
    with pytest.raises(MergeError, match=r"'m1' and 'm2' cannot be merged: tensor 'w' has shape \[4, 4\] vs \[4, 5\]"):
        check_compatible(sources)
