"""Data-flow candidates against models built independently: a path is the layers it names, and a
slot's scale multiplies the hidden state entering that layer."""

import pytest
import torch

from glue_bench.merge.engine import Merger, TensorSource
from glue_bench.select.dataflow import DataFlowBuilder
from glue_bench.select.problem import Problem


@pytest.fixture(scope="module")
def setup(micro_cache):
    from glue_bench.zoo import load_model, local_dir, resolve_zoo, zoo_config

    refs, _ = resolve_zoo(zoo_config("mini2"), "micro")
    merger = Merger([TensorSource(r.name, local_dir(r)) for r in refs], "linear")
    builder = DataFlowBuilder(Problem(refs, "linear", {}, merger, None, None))
    models = {r.name: load_model(r) for r in refs}
    ids = torch.tensor([[5, 17, 99, 3, 250, 41, 8, 77]])
    return builder, models, ids


def logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def test_a_models_own_path_is_that_model(setup):
    builder, models, ids = setup
    layers = builder.num_layers
    own = builder({"path": [["chat_a", i, 1.0] for i in range(layers)], "embed": "chat_a"})
    assert torch.equal(logits(own, ids), logits(models["chat_a"], ids))


def test_a_scale_on_the_first_slot_is_a_scaled_embedding(setup):
    builder, models, ids = setup
    scaled = builder({"path": [["chat_b", 0, 2.0]] + [["chat_b", i, 1.0] for i in range(1, builder.num_layers)],
                      "embed": "chat_b"})
    reference = models["chat_b"]
    original = reference.model.embed_tokens.weight.detach().clone()
    with torch.no_grad():
        reference.model.embed_tokens.weight.mul_(2.0)  # the first layer's input, doubled
    try:
        torch.testing.assert_close(logits(scaled, ids), logits(reference, ids), rtol=1e-5, atol=1e-5)
    finally:
        with torch.no_grad():
            reference.model.embed_tokens.weight.copy_(original)


def test_a_path_of_mixed_and_dropped_layers(setup):
    """chat_a's embeddings and layer 0, then chat_b's last layer: the same as chat_a with its
    middle layers removed and its last layer's weights replaced by chat_b's."""
    builder, models, ids = setup
    last = builder.num_layers - 1
    path = builder({"path": [["chat_a", 0, 1.0], ["chat_b", last, 1.0]], "embed": "chat_a"})
    from glue_bench.zoo import load_model, resolve_zoo, zoo_config

    reference = load_model(resolve_zoo(zoo_config("mini2"), "micro")[0][0])
    reference.model.layers[last].load_state_dict(models["chat_b"].model.layers[last].state_dict())
    reference.model.layers = torch.nn.ModuleList([reference.model.layers[0], reference.model.layers[last]])
    reference.model.layers[1].self_attn.layer_idx = 1
    reference.config.num_hidden_layers = 2
    torch.testing.assert_close(logits(path, ids), logits(reference, ids), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits(path, ids), logits(models["chat_a"], ids))


def test_stack_paths():
    from glue_bench.mixture.stack import stack_path

    assert stack_path(["a", "b"], 4, "stack") == [[n, i, 1.0] for n in "ab" for i in range(4)]
    # SOLAR-style: the lower model loses its last layer, the upper its first
    assert [(n, i) for n, i, _ in stack_path(["a", "b"], 4, "stack", drop=1)] == \
        [("a", 0), ("a", 1), ("a", 2), ("b", 1), ("b", 2), ("b", 3)]
    assert [(n, i) for n, i, _ in stack_path(["a", "b", "c"], 4, "stack", drop=1)] == \
        [("a", 0), ("a", 1), ("a", 2), ("b", 1), ("b", 2), ("c", 1), ("c", 2), ("c", 3)]
    assert [(n, i) for n, i, _ in stack_path(["a", "b"], 2, "interleave")] == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    with pytest.raises(ValueError, match="drop=2: must leave layers"):
        stack_path(["a", "b"], 4, "stack", drop=2)
    with pytest.raises(ValueError, match="needs two models"):
        stack_path(["a"], 4, "stack")


def test_a_stack_is_its_layers_in_order(setup):
    """chat_a's layers then chat_b's: the same as chat_a with chat_b's layers appended, built by
    hand from the two models' modules."""
    from glue_bench.mixture.stack import build_stack
    from glue_bench.zoo import load_model, resolve_zoo, zoo_config

    _, models, ids = setup
    refs = resolve_zoo(zoo_config("mini2"), "micro")[0]
    stacked = build_stack(refs, "stack")
    reference = load_model(refs[0])
    extra = load_model(refs[1]).model.layers
    for i, layer in enumerate(extra):
        layer.self_attn.layer_idx = len(reference.model.layers) + i
    reference.model.layers.extend(extra)
    reference.config.num_hidden_layers = len(reference.model.layers)
    assert len(stacked.model.layers) == 2 * len(extra)
    torch.testing.assert_close(logits(stacked, ids), logits(reference, ids), rtol=1e-5, atol=1e-5)
