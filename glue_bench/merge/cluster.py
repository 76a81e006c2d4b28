"""A zoo's mergeable families: architecture first, then weight similarity.

1. `architecture_groups`: models merge only with models of the same architecture and tensor
   shapes (what `engine.check_compatible` accepts, vocabulary extensions included).
2. Within a group, families by the similarity matrix of `merge.similarity`:
   - `threshold_families`, the Model-GLUE study's rule: go through the models in zoo order; each
     joins the first family whose *first* member it is at least `threshold` similar to, or starts
     a new family. The result depends on the order.
   - `hierarchical_families`: average-linkage agglomerative clustering on the whole matrix, joining
     the two most similar clusters while their mean pairwise similarity is at least `threshold`.
     The result does not depend on the order (ties are broken by the members' names).
A NaN similarity (shapes differ) never reaches a threshold.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from glue_bench.merge import MergeError
from glue_bench.merge.engine import TensorSource, check_compatible

THRESHOLD = 0.95  # the study's


def _first_fit(items: list, joins) -> list[list]:
    """Each item, in order, joins the first group whose first member `joins(leader, item)` accepts,
    or starts a new group."""
    groups: list[list] = []
    for item in items:
        group = next((g for g in groups if joins(g[0], item)), None)
        if group is None:
            groups.append([item])
        else:
            group.append(item)
    return groups


def architecture_groups(sources: list[TensorSource]) -> list[list[TensorSource]]:
    """Models that can be merged with each other, in zoo order (each group led by its first)."""
    def compatible(leader: TensorSource, source: TensorSource) -> bool:
        try:
            check_compatible([leader, source])
        except MergeError:
            return False
        return True

    return _first_fit(sources, compatible)


def threshold_families(matrix: pd.DataFrame, threshold: float = THRESHOLD) -> list[list[str]]:
    # a NaN similarity (other shapes) compares False: never the same family
    return _first_fit(list(matrix.index), lambda leader, name: matrix.loc[leader, name] >= threshold)


def hierarchical_families(matrix: pd.DataFrame, threshold: float = THRESHOLD) -> list[list[str]]:
    """Families in the matrix's order of first members, members in the matrix's order."""
    position = {name: i for i, name in enumerate(matrix.index)}
    clusters = [[name] for name in sorted(matrix.index)]

    def linkage(a: list[str], b: list[str]) -> float:
        values = [matrix.loc[x, y] for x in a for y in b]
        return -math.inf if any(math.isnan(v) for v in values) else sum(values) / len(values)

    while len(clusters) > 1:
        score, a, b = max(((linkage(clusters[i], clusters[j]), i, j) for i in range(len(clusters))
                           for j in range(i + 1, len(clusters))),
                          key=lambda t: (t[0], [-k for k in (t[1], t[2])]))
        if score < threshold:
            break
        clusters[a] = sorted(clusters[a] + clusters[b])
        del clusters[b]
    families = [sorted(c, key=position.get) for c in clusters]
    return sorted(families, key=lambda f: position[f[0]])


def write_heatmap(matrix: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """The matrix as an SVG heatmap (no plotting library needed): darker is more similar, the
    colour scale spans the matrix's lowest value to 1; n/a cells are grey."""
    names = list(matrix.index)
    cell, left, top = 44, 150, 40 + 8 * max(len(n) for n in names)
    finite = [v for v in matrix.to_numpy().ravel() if not math.isnan(v)]
    low = min(finite) if finite else 0.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + cell * len(names) + 10}" '
             f'height="{top + cell * len(names) + 10}" font-family="sans-serif" font-size="11">',
             f'<text x="4" y="14" font-size="13">{title}</text>']
    for j, name in enumerate(names):
        x = left + cell * j + cell // 2
        parts.append(f'<text transform="translate({x},{top - 6}) rotate(-60)">{name}</text>')
    for i, row in enumerate(names):
        y = top + cell * i
        parts.append(f'<text x="{left - 6}" y="{y + cell // 2 + 4}" text-anchor="end">{row}</text>')
        for j, col in enumerate(names):
            value = matrix.loc[row, col]
            if math.isnan(value):
                fill, label, ink = "#cccccc", "n/a", "black"
            else:
                shade = (value - low) / (1 - low) if low < 1 else 1.0
                level = int(255 - 200 * shade)
                fill, label, ink = f"rgb({level},{level},255)", f"{value:.2f}", "white" if shade > 0.6 else "black"
            parts.append(f'<rect x="{left + cell * j}" y="{y}" width="{cell}" height="{cell}" fill="{fill}" '
                         f'stroke="white"/><text x="{left + cell * j + cell // 2}" y="{y + cell // 2 + 4}" '
                         f'text-anchor="middle" fill="{ink}">{label}</text>')
    parts.append("</svg>")
    path = Path(path)
    path.write_text("\n".join(parts) + "\n")
    return path
