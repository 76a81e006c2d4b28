"""Column-wise cosine similarity against a direct computation."""

import math

import torch
from safetensors.torch import save_file

from glue_bench.merge.engine import TensorSource
from glue_bench.merge.similarity import weight_similarity


def _direct(a, b):
    a, b = a.double(), b.double()
    cols = [float(a[:, j] @ b[:, j] / (a[:, j].norm() * b[:, j].norm())) for j in range(a.shape[1])]
    return sum(cols) / len(cols)


def test_matches_direct_column_cosine(tmp_path):
    torch.manual_seed(0)
    tensors = {name: {"model.layers.0.self_attn.q_proj.weight": torch.randn(6, 4),
                      "model.layers.0.mlp.up_proj.weight": torch.randn(8, 4),
                      "model.layers.0.mlp.down_proj.weight": torch.randn(4, 8)} for name in ("a", "b")}
    for name, t in tensors.items():
        (tmp_path / name).mkdir()
        save_file(t, tmp_path / name / "model.safetensors")
    sim = weight_similarity(TensorSource("a", tmp_path / "a"), TensorSource("b", tmp_path / "b"))
    a, b = tensors["a"], tensors["b"]
    attn = _direct(a["model.layers.0.self_attn.q_proj.weight"], b["model.layers.0.self_attn.q_proj.weight"])
    mlp = (_direct(a["model.layers.0.mlp.up_proj.weight"], b["model.layers.0.mlp.up_proj.weight"])
           + _direct(a["model.layers.0.mlp.down_proj.weight"], b["model.layers.0.mlp.down_proj.weight"])) / 2
    assert math.isclose(sim["attention"], attn, abs_tol=1e-9)
    assert math.isclose(sim["mlp"], mlp, abs_tol=1e-9)
    assert math.isclose(sim["all"], (attn + mlp) / 2, abs_tol=1e-9)
    same = weight_similarity(TensorSource("a", tmp_path / "a"), TensorSource("a2", tmp_path / "a"))
    assert math.isclose(same["all"], 1.0, abs_tol=1e-9)
