"""Weight similarity between models, as the Model-GLUE study clusters them.

For each weight matrix present in both models with the same shape, the cosine similarity of
corresponding columns is averaged over columns; matrices are then averaged per group (attention:
q/k/v/o projections, MLP: gate/up/down projections). Models whose shapes differ get NaN.

    python -m glue_bench.merge.similarity --zoo mini16
"""

from __future__ import annotations

import argparse
import math

import pandas as pd
import torch

from glue_bench.merge.engine import TensorSource

GROUPS = {"attention": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}


def column_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over columns of cos(a[:, j], b[:, j])."""
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0).mean().item()


def weight_similarity(a: TensorSource, b: TensorSource) -> dict[str, float]:
    """{"attention", "mlp", "all"}: mean column-wise cosine per group; NaN if shapes differ."""
    per_group: dict[str, list[float]] = {g: [] for g in GROUPS}
    for key in sorted(set(a.entries) & set(b.entries)):
        group = next((g for g, names in GROUPS.items() if any(f".{n}." in key for n in names)), None)
        if group is None or not key.endswith(".weight"):
            continue
        if a.shape(key) != b.shape(key):
            return {g: math.nan for g in [*GROUPS, "all"]}
        per_group[group].append(column_cosine(a.get(key), b.get(key)))
    if not any(per_group.values()):
        return {g: math.nan for g in [*GROUPS, "all"]}
    out = {g: sum(v) / len(v) for g, v in per_group.items() if v}
    out["all"] = sum(out[g] for g in GROUPS if g in out) / len([g for g in GROUPS if g in out])
    return out


def similarity_matrix(sources: list[TensorSource], group: str = "all") -> pd.DataFrame:
    names = [s.name for s in sources]
    matrix = pd.DataFrame(1.0, index=names, columns=names)
    for i, a in enumerate(sources):
        for b in sources[i + 1:]:
            value = weight_similarity(a, b)[group]
            matrix.loc[a.name, b.name] = matrix.loc[b.name, a.name] = value
    return matrix


def main(argv: list[str] | None = None) -> None:
    from glue_bench.zoo import ensure_available, local_dir, model_ref, zoo_config

    parser = argparse.ArgumentParser(description="Column-wise cosine similarity of a zoo's weights.")
    parser.add_argument("--zoo", default="mini16")
    parser.add_argument("--size", default="mini", help="mini-zoo size (mini or micro)")
    parser.add_argument("--group", default="all", choices=[*GROUPS, "all"])
    args = parser.parse_args(argv)
    cfg = zoo_config(args.zoo)
    refs = [model_ref(m, cfg["source"], args.size) for m in [cfg["base"], *cfg["models"]]]
    ensure_available(refs, args.size)
    matrix = similarity_matrix([TensorSource(r.name, local_dir(r)) for r in refs], args.group)
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(f"column-wise weight cosine similarity ({args.group}), zoo {args.zoo}; nan = other shapes")
        print(matrix.round(3).to_string(na_rep="n/a"))


if __name__ == "__main__":
    main()
