"""Stacking models in depth: the decoder layers of several same-shape models one after another
(`stack`, optionally dropping `drop` layers at each junction: the last ones of the lower model and
the first ones of the upper, as in SOLAR's depth up-scaling) or alternating (`interleave`).
Embeddings, final norm and head come from the first model. A stack is a data-flow path with every
scale 1 (select/dataflow.py), so it is a standard model of more layers: it saves and loads as one.
"""

from __future__ import annotations

MODES = ("stack", "interleave")


def stack_path(names: list[str], num_layers: int, mode: str, drop: int = 0) -> list[list]:
    if mode not in MODES:
        raise ValueError(f"stack mode {mode!r}: one of {', '.join(MODES)}")
    if len(names) < 2:
        raise ValueError(f"stacking needs two models or more, got {len(names)}")
    if mode == "interleave":
        if drop:
            raise ValueError("drop: only for mode=stack")
        return [[name, layer, 1.0] for layer in range(num_layers) for name in names]
    if not 0 <= 2 * drop < num_layers:
        raise ValueError(f"drop={drop}: must leave layers of every model (0 <= 2 * drop < {num_layers})")
    path = []
    for i, name in enumerate(names):
        first = drop if i > 0 else 0
        last = num_layers - drop if i < len(names) - 1 else num_layers
        path += [[name, layer, 1.0] for layer in range(first, last)]
    return path


def build_stack(refs: list, mode: str, drop: int = 0, device: str = "cpu"):
    """The stacked model of `refs` (ModelRefs of one architecture), in memory."""
    from glue_bench.merge.engine import Merger, TensorSource
    from glue_bench.select.dataflow import DataFlowBuilder
    from glue_bench.select.problem import Problem
    from glue_bench.zoo import local_dir

    merger = Merger([TensorSource(r.name, local_dir(r)) for r in refs], "linear", device=device)  # checks shapes
    builder = DataFlowBuilder(Problem(refs, "linear", {}, merger, None, None))
    names = [r.name for r in refs]
    return builder({"path": stack_path(names, builder.num_layers, mode, drop), "embed": names[0]})
