"""glue_bench's merges equal mergekit's on the same micro-zoo models (max abs difference <= 1e-5).

Every deterministic method both implement is compared; DARE and DELLA draw their masks
differently (and rescale differently by default), so they are checked against direct formulas in
test_merge_methods.py instead. mergekit is a test extra: these tests are skipped without it.
"""

import pytest
import torch
import yaml

mergekit = pytest.importorskip("mergekit")

from glue_bench.merge.engine import Merger, TensorSource  # noqa: E402

MODELS = ("chat_a", "chat_b")

# (glue_bench method, glue_bench params, mergekit method, mergekit parameters: per model, shared)
CASES = [
    ("linear", {"weights": [0.7, 0.3]}, "linear", [{"weight": 0.7}, {"weight": 0.3}], {}, False),
    ("linear", {"weights": [[1.0, 0.2], 1.0]}, "linear", [{"weight": [1.0, 0.2]}, {"weight": 1.0}], {}, False),
    ("slerp", {"t": 0.3}, "slerp", [{}, {}], {"t": 0.3}, "first"),
    ("slerp", {"t": [0.0, 0.5, 1.0]}, "slerp", [{}, {}], {"t": [0.0, 0.5, 1.0]}, "first"),
    ("multislerp", {"weights": [0.6, 0.4]}, "multislerp", [{"weight": 0.6}, {"weight": 0.4}], {}, False),
    ("multislerp", {"weights": [0.6, 0.4], "use_base": True}, "multislerp",
     [{"weight": 0.6}, {"weight": 0.4}], {}, True),
    ("nuslerp", {"weights": [0.6, 0.4]}, "nuslerp", [{"weight": 0.6}, {"weight": 0.4}], {}, False),
    ("nuslerp", {"weights": [0.5, 0.5], "flatten": False, "row_wise": True, "use_base": True}, "nuslerp",
     [{"weight": 0.5}, {"weight": 0.5}], {"nuslerp_flatten": False, "nuslerp_row_wise": True}, True),
    ("karcher", {}, "karcher", [{}, {}], {}, False),
    ("model_stock", {}, "model_stock", [{}, {}], {}, True),
    ("model_stock", {"filter_wise": True}, "model_stock", [{}, {}], {"filter_wise": True}, True),
    ("task_arithmetic", {"weights": [0.8, 0.5], "lambda": 0.9}, "task_arithmetic",
     [{"weight": 0.8}, {"weight": 0.5}], {"lambda": 0.9}, True),
    ("ties", {"weights": [1.0, 0.6], "density": [0.4, 0.7]}, "ties",
     [{"weight": 1.0, "density": 0.4}, {"weight": 0.6, "density": 0.7}], {}, True),
    ("ties", {"weights": 1.0, "density": [[0.2, 0.9], 0.5], "normalize": False}, "ties",
     [{"weight": 1.0, "density": [0.2, 0.9]}, {"weight": 1.0, "density": 0.5}], {"normalize": False}, True),
    ("breadcrumbs", {"weights": [0.5, 0.5], "density": 0.8, "gamma": 0.05}, "breadcrumbs",
     [{"weight": 0.5, "density": 0.8, "gamma": 0.05}] * 2, {}, True),
    ("breadcrumbs_ties", {"weights": [0.5, 0.5], "density": 0.7, "gamma": 0.02}, "breadcrumbs_ties",
     [{"weight": 0.5, "density": 0.7, "gamma": 0.02}] * 2, {}, True),
    # DARE and DELLA are deterministic only at density 1, where both reduce to task arithmetic
    ("dare_ties", {"weights": [0.5, 0.5], "density": 1.0}, "dare_ties",
     [{"weight": 0.5, "density": 1.0}] * 2, {}, True),
]


def _mergekit_merge(dirs, base_dir, method, per_model, shared, base_mode, out):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    config = {"merge_method": method, "dtype": "float32",
              "models": [{"model": str(d), "parameters": p} for d, p in zip(dirs, per_model)]}
    if shared:
        config["parameters"] = shared
    if base_mode == "first":
        config["base_model"] = str(dirs[0])
    elif base_mode:
        config["base_model"] = str(base_dir)
    run_merge(MergeConfiguration.model_validate(yaml.safe_load(yaml.safe_dump(config))), str(out),
              MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True))
    from safetensors.torch import load_file

    return {k: v for f in sorted(out.glob("*.safetensors")) for k, v in load_file(f).items()}


@pytest.mark.parametrize("method, params, mk_method, mk_models, mk_shared, base_mode", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_same_merge_as_mergekit(micro_cache, tmp_path, method, params, mk_method, mk_models, mk_shared,
                                base_mode):
    from glue_bench.zoo.mini.build import model_dir

    dirs = [model_dir(n, "micro") for n in MODELS]
    base_dir = model_dir("base", "micro")
    expected = _mergekit_merge(dirs, base_dir, mk_method, mk_models, mk_shared, base_mode, tmp_path / "mk")
    merger = Merger([TensorSource(n, d) for n, d in zip(MODELS, dirs)], method, TensorSource("base", base_dir))
    ours = dict(merger.tensors(params))
    assert set(ours) == set(expected)
    worst = max(((ours[k].cpu() - expected[k]).abs().max().item(), k) for k in expected)
    assert worst[0] <= 1e-5, f"max abs difference {worst[0]:.2e} at {worst[1]}"
    # and the merge is not trivially one of its inputs
    first = TensorSource("a", dirs[0]).get("model.layers.0.mlp.up_proj.weight")
    assert not torch.equal(ours["model.layers.0.mlp.up_proj.weight"].cpu(), first)
