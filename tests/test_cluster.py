"""Families from a similarity matrix, both rules, against hand-worked cases; architecture groups."""

import math
import random

import pandas as pd
import torch
from safetensors.torch import save_file

from glue_bench.merge.engine import TensorSource
from glue_bench.merge.similarity import similarity_matrix
from glue_bench.merge.cluster import (architecture_groups, hierarchical_families, threshold_families,
                                       write_heatmap)

NAN = math.nan
# a-b-c is a chain: a~b and b~c are similar, a~c is not; d is alone; e has other shapes
NAMES = ["a", "b", "c", "d", "e"]
VALUES = [[1.00, 0.97, 0.90, 0.50, NAN],
          [0.97, 1.00, 0.97, 0.50, NAN],
          [0.90, 0.97, 1.00, 0.50, NAN],
          [0.50, 0.50, 0.50, 1.00, NAN],
          [NAN, NAN, NAN, NAN, 1.00]]


def _matrix(order):
    full = pd.DataFrame(VALUES, index=NAMES, columns=NAMES)
    return full.loc[order, order]


def test_the_studys_rule_compares_with_the_first_member_so_order_matters():
    assert threshold_families(_matrix(NAMES)) == [["a", "b"], ["c"], ["d"], ["e"]]
    # from b, both a and c are within 0.95 of the family's first member
    assert threshold_families(_matrix(["b", "a", "c", "d", "e"])) == [["b", "a", "c"], ["d"], ["e"]]


def test_average_linkage_does_not_depend_on_the_order():
    # a+b (0.97) first, then c joins at mean(0.90, 0.97) = 0.935 < 0.95: it stays out
    expected = {frozenset("ab"), frozenset("c"), frozenset("d"), frozenset("e")}
    rng = random.Random(0)
    for _ in range(10):
        order = NAMES[:]
        rng.shuffle(order)
        families = hierarchical_families(_matrix(order))
        assert {frozenset(f) for f in families} == expected
        assert [f[0] for f in families] == sorted((f[0] for f in families), key=order.index)
    assert {frozenset(f) for f in hierarchical_families(_matrix(NAMES), 0.93)} == \
        {frozenset("abc"), frozenset("d"), frozenset("e")}


def _model(path, shapes, seed):
    torch.manual_seed(seed)
    path.mkdir()
    save_file({name: torch.randn(shape) for name, shape in shapes.items()}, path / "model.safetensors")
    return TensorSource(path.name, path)


def test_architecture_groups_and_task_vector_similarity(tmp_path):
    shapes = {"model.layers.0.mlp.up_proj.weight": (8, 4)}
    base, a, other = (_model(tmp_path / n, shapes, s) for n, s in (("base", 0), ("a", 1), ("other", 2)))
    wide = _model(tmp_path / "wide", {"model.layers.0.mlp.up_proj.weight": (8, 6)}, 3)
    groups = architecture_groups([a, wide, other])
    assert [[s.name for s in g] for g in groups] == [["a", "other"], ["wide"]]
    assert math.isnan(similarity_matrix([a, wide]).loc["a", "wide"])
    # task vectors: a - base and other - base, column by column
    matrix = similarity_matrix([a, other], "mlp", base)
    w = {s.name: s.get("model.layers.0.mlp.up_proj.weight").double() for s in (base, a, other)}
    da, db = w["a"] - w["base"], w["other"] - w["base"]
    direct = sum(float(da[:, j] @ db[:, j] / (da[:, j].norm() * db[:, j].norm())) for j in range(4)) / 4
    assert math.isclose(matrix.loc["a", "other"], direct, abs_tol=1e-9)


def test_heatmap_is_an_svg_with_one_cell_per_pair(tmp_path):
    path = write_heatmap(_matrix(NAMES), tmp_path / "h.svg", "test")
    text = path.read_text()
    assert text.startswith("<svg") and text.count("<rect") == 25 and text.count(">n/a<") == 8
