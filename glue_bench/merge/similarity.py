"""Weight similarity between models, as the Model-GLUE study clusters them.

For each weight matrix present in both models with the same shape, the cosine similarity of
corresponding columns is averaged over columns; matrices are then averaged per group (attention:
q/k/v/o projections, MLP: gate/up/down projections). Models whose shapes differ get NaN.

    python -m glue_bench.merge.similarity --zoo mini16 [--task-vectors] [--out DIR]

prints the matrix, the zoo's architecture groups and its families (glue_bench/merge/cluster.py),
and with --out saves the matrix as CSV and as an SVG heatmap.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd
import torch

from glue_bench.merge.engine import TensorSource

GROUPS = {"attention": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}


class StateDictSource:
    """An in-memory model's tensors with the reading interface of `TensorSource` (to compare a
    merge being built with the models on disk)."""

    def __init__(self, state_dict: dict[str, torch.Tensor]):
        self.entries = state_dict

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.entries[key].shape)

    def get(self, key: str) -> torch.Tensor:
        return self.entries[key]


def column_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over columns of cos(a[:, j], b[:, j])."""
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0).mean().item()


def weight_similarity(a: TensorSource | StateDictSource, b: TensorSource | StateDictSource,
                      base: TensorSource | None = None) -> dict[str, float]:
    """{"attention", "mlp", "all"}: mean column-wise cosine per group; NaN if shapes differ. With
    `base`, of the task vectors (a - base, b - base) instead of the weights."""
    per_group: dict[str, list[float]] = {g: [] for g in GROUPS}
    for key in sorted(set(a.entries) & set(b.entries)):
        group = next((g for g, names in GROUPS.items() if any(f".{n}." in key for n in names)), None)
        if group is None or not key.endswith(".weight"):
            continue
        if a.shape(key) != b.shape(key) or (base is not None and (key not in base.entries or
                                                                base.shape(key) != a.shape(key))):
            return {g: math.nan for g in [*GROUPS, "all"]}
        if base is None:
            per_group[group].append(column_cosine(a.get(key), b.get(key)))
        else:
            reference = base.get(key).double()
            per_group[group].append(column_cosine(a.get(key).double() - reference,
                                                  b.get(key).double() - reference))
    if not any(per_group.values()):
        return {g: math.nan for g in [*GROUPS, "all"]}
    out = {g: sum(v) / len(v) for g, v in per_group.items() if v}
    out["all"] = sum(out[g] for g in GROUPS if g in out) / len([g for g in GROUPS if g in out])
    return out


def similarity_matrix(sources: list[TensorSource], group: str = "all",
                      base: TensorSource | None = None) -> pd.DataFrame:
    """Symmetric matrix of `weight_similarity` (task vectors when `base` is given), 1 on the
    diagonal."""
    names = [s.name for s in sources]
    matrix = pd.DataFrame(1.0, index=names, columns=names)
    for i, a in enumerate(sources):
        for b in sources[i + 1:]:
            value = weight_similarity(a, b, base)[group]
            matrix.loc[a.name, b.name] = matrix.loc[b.name, a.name] = value
    return matrix


def main(argv: list[str] | None = None) -> None:
    from glue_bench.merge.cluster import (THRESHOLD, architecture_groups, hierarchical_families,
                                           threshold_families, write_heatmap)
    from glue_bench.zoo import ensure_available, local_dir, resolve_zoo, zoo_config

    parser = argparse.ArgumentParser(description="Column-wise cosine similarity of a zoo's weights, "
                                                 "and its mergeable families.")
    parser.add_argument("--zoo", default="mini16")
    parser.add_argument("--size", default="mini", help="mini-zoo size (mini or micro)")
    parser.add_argument("--group", default="all", choices=[*GROUPS, "all"])
    parser.add_argument("--task-vectors", action="store_true", help="compare task vectors (minus the base)")
    parser.add_argument("--threshold", type=float, default=THRESHOLD, help="family threshold")
    parser.add_argument("--out", help="directory for similarity.csv and similarity.svg (a heatmap)")
    args = parser.parse_args(argv)
    refs, base_ref = resolve_zoo(zoo_config(args.zoo), args.size)
    if not args.task_vectors:
        refs = [base_ref] + refs
    ensure_available(refs + [base_ref], args.size)
    sources = [TensorSource(r.name, local_dir(r)) for r in refs]
    base = TensorSource(base_ref.name, local_dir(base_ref)) if args.task_vectors else None
    matrix = similarity_matrix(sources, args.group, base)
    what = f"{'task vectors' if base else 'weights'}, {args.group}"
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(f"column-wise cosine similarity of {what}, zoo {args.zoo}; n/a = other shapes")
        print(matrix.round(3).to_string(na_rep="n/a"))
    groups = architecture_groups([s for s in sources if s.name != base_ref.name])  # the zoo's members
    print(f"\narchitecture groups: {' | '.join(', '.join(s.name for s in g) for g in groups)}")
    for rule, families in (("study's rule (first member, zoo order)", threshold_families),
                           ("average linkage (order-independent)", hierarchical_families)):
        found = [f for g in groups for f in families(matrix.loc[[s.name for s in g], [s.name for s in g]],
                                                       args.threshold)]
        print(f"families at {args.threshold}, {rule}: {' | '.join(', '.join(f) for f in found)}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        matrix.to_csv(out / "similarity.csv")
        write_heatmap(matrix, out / "similarity.svg", f"{args.zoo}: cosine similarity of {what}")
        print(f"wrote {out / 'similarity.csv'} and {out / 'similarity.svg'}")


if __name__ == "__main__":
    from glue_bench.errors import entry_point

    entry_point(main)()
