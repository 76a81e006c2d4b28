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

PAIR = ("chat_a", "chat_b")
THREE = ("chat_a", "code", "math")  # three different fine-tunes: what the N-model methods are for

# (models, glue_bench method, glue_bench params, mergekit method, mergekit parameters: per model, shared,
#  base: the zoo's, "first" (mergekit's base_model is the first model) or none)
CASES = [
    (PAIR, "linear", {"weights": [0.7, 0.3]}, "linear", [{"weight": 0.7}, {"weight": 0.3}], {}, False),
    (PAIR, "linear", {"weights": [[1.0, 0.2], 1.0]}, "linear", [{"weight": [1.0, 0.2]}, {"weight": 1.0}], {}, False),
    (PAIR, "slerp", {"t": 0.3}, "slerp", [{}, {}], {"t": 0.3}, "first"),
    (PAIR, "slerp", {"t": [0.0, 0.5, 1.0]}, "slerp", [{}, {}], {"t": [0.0, 0.5, 1.0]}, "first"),
    (PAIR, "multislerp", {"weights": [0.6, 0.4]}, "multislerp", [{"weight": 0.6}, {"weight": 0.4}], {}, False),
    (PAIR, "multislerp", {"weights": [0.6, 0.4], "use_base": True}, "multislerp",
     [{"weight": 0.6}, {"weight": 0.4}], {}, True),
    (PAIR, "nuslerp", {"weights": [0.6, 0.4]}, "nuslerp", [{"weight": 0.6}, {"weight": 0.4}], {}, False),
    (PAIR, "nuslerp", {"weights": [0.5, 0.5], "flatten": False, "row_wise": True, "use_base": True}, "nuslerp",
     [{"weight": 0.5}, {"weight": 0.5}], {"nuslerp_flatten": False, "nuslerp_row_wise": True}, True),
    (PAIR, "karcher", {}, "karcher", [{}, {}], {}, False),
    (PAIR, "model_stock", {}, "model_stock", [{}, {}], {}, True),
    (PAIR, "model_stock", {"filter_wise": True}, "model_stock", [{}, {}], {"filter_wise": True}, True),
    (PAIR, "task_arithmetic", {"weights": [0.8, 0.5], "lambda": 0.9}, "task_arithmetic",
     [{"weight": 0.8}, {"weight": 0.5}], {"lambda": 0.9}, True),
    (PAIR, "ties", {"weights": [1.0, 0.6], "density": [0.4, 0.7]}, "ties",
     [{"weight": 1.0, "density": 0.4}, {"weight": 0.6, "density": 0.7}], {}, True),
    (PAIR, "ties", {"weights": 1.0, "density": [[0.2, 0.9], 0.5], "normalize": False}, "ties",
     [{"weight": 1.0, "density": [0.2, 0.9]}, {"weight": 1.0, "density": 0.5}], {"normalize": False}, True),
    (PAIR, "breadcrumbs", {"weights": [0.5, 0.5], "density": 0.8, "gamma": 0.05}, "breadcrumbs",
     [{"weight": 0.5, "density": 0.8, "gamma": 0.05}] * 2, {}, True),
    (PAIR, "breadcrumbs_ties", {"weights": [0.5, 0.5], "density": 0.7, "gamma": 0.02}, "breadcrumbs_ties",
     [{"weight": 0.5, "density": 0.7, "gamma": 0.02}] * 2, {}, True),
    # DARE and DELLA are deterministic only at density 1, where both reduce to task arithmetic
    (PAIR, "dare_ties", {"weights": [0.5, 0.5], "density": 1.0}, "dare_ties",
     [{"weight": 0.5, "density": 1.0}] * 2, {}, True),
    # mergekit 0.1.5's newer methods; nearswap and arcee_fusion take the first model as mergekit's base
    (THREE, "sce", {}, "sce", [{}] * 3, {}, True),
    (THREE, "sce", {"select_topk": 0.3}, "sce", [{}] * 3, {"select_topk": 0.3}, True),
    (PAIR, "sce", {"select_topk": 0.6}, "sce", [{}] * 2, {"select_topk": 0.6}, True),
    (PAIR, "nearswap", {"t": 0.003}, "nearswap", [{}] * 2, {"t": 0.003}, "first"),
    (("math", "code"), "nearswap", {"t": [0.001, 0.01]}, "nearswap", [{}] * 2, {"t": [0.001, 0.01]}, "first"),
    (PAIR, "arcee_fusion", {}, "arcee_fusion", [{}] * 2, {}, "first"),
    (("chat_a", "math"), "arcee_fusion", {}, "arcee_fusion", [{}] * 2, {}, "first"),
    # epsilon near the deltas' median magnitude: entries changed by one model, by several, by none
    (THREE, "ram", {"epsilon": 0.003}, "ram", [{}] * 3, {"epsilon": 0.003}, True),
    (PAIR, "ram", {}, "ram", [{}] * 2, {}, True),
    (THREE, "ramplus_tl", {"r": 0.5, "alpha": 5.0, "epsilon": 0.003}, "ramplus_tl", [{}] * 3,
     {"r": 0.5, "alpha": 5.0, "epsilon": 0.003}, True),
    (THREE, "ramplus_tl", {"epsilon": 0.005}, "ramplus_tl", [{}] * 3, {"epsilon": 0.005}, True),
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


@pytest.fixture(scope="session")
def parity_cache(micro_cache):
    """The micro cache with every model the cases merge."""
    from glue_bench.zoo.mini.build import ensure_models

    ensure_models(sorted({name for case in CASES for name in case[0]}), "micro", progress=False)
    return micro_cache


@pytest.mark.parametrize("models, method, params, mk_method, mk_models, mk_shared, base_mode", CASES,
                         ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_same_merge_as_mergekit(parity_cache, tmp_path, models, method, params, mk_method, mk_models, mk_shared,
                                base_mode):
    from glue_bench.zoo.mini.build import model_dir

    dirs = [model_dir(n, "micro") for n in models]
    base_dir = model_dir("base", "micro")
    expected = _mergekit_merge(dirs, base_dir, mk_method, mk_models, mk_shared, base_mode, tmp_path / "mk")
    merger = Merger([TensorSource(n, d) for n, d in zip(models, dirs)], method, TensorSource("base", base_dir))
    ours = dict(merger.tensors(params))
    assert set(ours) == set(expected)
    worst = max(((ours[k].cpu() - expected[k]).abs().max().item(), k) for k in expected)
    assert worst[0] <= 1e-5, f"max abs difference {worst[0]:.2e} at {worst[1]}"
    # and the merge is not trivially one of its inputs
    first = TensorSource("a", dirs[0]).get("model.layers.0.mlp.up_proj.weight")
    assert not torch.equal(ours["model.layers.0.mlp.up_proj.weight"].cpu(), first)
