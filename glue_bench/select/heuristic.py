"""The study's greedy selective merges, on the proxy set.

The zoo's models are sorted by their own proxy score; the running merge starts as the best one,
and each next model is tried in that order:
- `average`: merged in with weight 1/(k+1), the running merge keeping k/(k+1), k being the number
  of models the running merge holds;
- `coefficient`: the running merge's share is searched over a grid ({0.1, ..., 0.9} by default)
  and the best share is the one tried.
A model is kept only if the proxy score of the merge does not drop; what is kept is the merge with
the best share (the study's release kept the last one of the grid: not repeated here). Every step
is recorded: candidate, each share tried and its score, kept or not.

The merge of the running weights is any weighted method of the engine (`linear` as in the study;
TIES, DARE, ... with their other parameters fixed). `heuristic_similarity` (candidates ordered by
their similarity to the running merge) is not implemented yet and says so.

    python -m glue_bench.select.heuristic --zoo mini8 --kind average --allow-code-execution
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from typing import Callable

GRID = tuple(round(0.1 * i, 1) for i in range(1, 10))
KINDS = ("average", "coefficient")


@dataclass
class Step:
    candidate: str
    tried: dict[float, float]      # share of the running merge -> proxy score of the merge
    score: float                   # the best of `tried` (for the first model: its own score)
    kept: bool


@dataclass
class HeuristicResult:
    weights: dict[str, float]      # the kept models and their weights (summing to 1)
    score: float
    trace: list[Step] = field(default_factory=list)


def greedy_merge(names: list[str], fitness: Callable[[dict[str, float]], float], kind: str,
                 grid: tuple[float, ...] = GRID) -> HeuristicResult:
    """`fitness(weights)` scores the merge of the named models with those weights (a single model
    is {name: 1.0})."""
    if kind not in KINDS:
        raise ValueError(f"heuristic kind {kind!r} is not implemented; available: {', '.join(KINDS)}")
    if not names:
        raise ValueError("no models to choose from")
    own = {name: fitness({name: 1.0}) for name in names}
    order = sorted(names, key=lambda n: -own[n])  # stable: the zoo's order among equal scores
    weights, score = {order[0]: 1.0}, own[order[0]]
    trace = [Step(order[0], {}, score, True)]
    for candidate in order[1:]:
        k = len(weights)
        shares = (k / (k + 1),) if kind == "average" else grid
        tried = {share: fitness(_mixed(weights, candidate, share)) for share in shares}
        best = max(shares, key=lambda share: tried[share])  # the first of equal bests
        kept = tried[best] >= score
        if kept:
            weights, score = _mixed(weights, candidate, best), tried[best]
        trace.append(Step(candidate, tried, tried[best], kept))
    return HeuristicResult(weights, score, trace)


def _mixed(weights: dict[str, float], candidate: str, share: float) -> dict[str, float]:
    return {**{name: share * w for name, w in weights.items()}, candidate: 1 - share}


def main(argv: list[str] | None = None) -> None:
    from glue_bench.merge.engine import Merger
    from glue_bench.select.report import ZooSearch, print_final_table
    from glue_bench.zoo import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ZooSearch.add_arguments(parser, proxy_size=20)
    parser.add_argument("--kind", default="coefficient", choices=KINDS)
    args = parser.parse_args(argv)
    zs = ZooSearch.from_args(args)
    names = [r.name for r in zs.refs]
    merger = Merger(zs.members, args.method, zs.base, cache=True)
    model, scores = None, {}

    def fitness(weights: dict[str, float]) -> float:
        nonlocal model
        key = json.dumps({n: round(w, 6) for n, w in sorted(weights.items())})
        if key not in scores:  # an identical candidate is evaluated once
            if len(weights) == 1:  # a single model as it is (a one-model TIES would be sparsified)
                candidate = load_model(zs.refs[names.index(next(iter(weights)))], zs.eval_cfg.device)
            else:
                candidate = model = merger.to_model({"weights": [weights.get(n, 0.0) for n in names]}, model)
            scores[key] = zs.proxy.score(candidate, zs.tokenizer, zs.tasks_dir, zs.eval_cfg)[0]
        return scores[key]

    result = greedy_merge(names, fitness, args.kind)
    print(json.dumps(asdict(result), indent=2))
    label = f"heuristic_{args.kind}({args.method})"
    table = zs.compare(args.method, {label: {"weights": [result.weights.get(n, 0.0) for n in names]}})
    print_final_table(table, f"{args.zoo}, {label}")


if __name__ == "__main__":
    main()
