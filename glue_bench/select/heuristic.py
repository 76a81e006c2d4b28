"""The study's greedy selective merges, on the proxy set.

The zoo's models are scored alone on the proxy set; the running merge starts as the best one, and
each next model is tried:
- `average`: in order of their own scores, merged in with weight 1/(k+1), the running merge keeping
  k/(k+1), k being the number of models the running merge holds;
- `coefficient`: in the same order, the running merge's share searched over a grid
  ({0.1, ..., 0.9} by default), the best share being the one tried;
- `similarity`: next, the model most (or, with `most_similar: false`, least) similar to the
  running merge (column-wise cosine of the weights, recomputed after every step), with the
  coefficient search.
A model is kept only if the proxy score of the merge does not drop; what is kept is the merge with
the best share (the study's release kept the last one of the grid: not repeated here). Every step
is recorded: candidate, each share tried and its score, kept or not.

The merge of the running weights is any weighted method of the engine (`linear` as in the study;
TIES, DARE, ... with their other parameters fixed).

    python -m glue_bench.select.heuristic --zoo mini8 --kind average --allow-code-execution
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from typing import Callable

GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
KINDS = ("average", "coefficient", "similarity")


@dataclass
class Step:
    candidate: str
    tried: dict[float, float]      # share of the running merge -> proxy score of the merge
    score: float                   # the best of `tried` (for the first model: its own score)
    kept: bool
    similarity: float | None = None  # to the running merge, when that chose the candidate


@dataclass
class HeuristicResult:
    weights: dict[str, float]      # the kept models and their weights (summing to 1)
    score: float
    trace: list[Step] = field(default_factory=list)


def greedy_merge(names: list[str], fitness: Callable[[dict[str, float]], float], kind: str,
                 grid: tuple[float, ...] = GRID,
                 similarity: Callable[[dict[str, float], str], float] | None = None,
                 most_similar: bool = True) -> HeuristicResult:
    """`fitness(weights)` scores the merge of the named models with those weights (a single model
    is {name: 1.0}); `similarity(weights, name)` (kind `similarity` only) is the similarity of
    model `name` to that merge."""
    if kind not in KINDS:
        raise ValueError(f"heuristic kind {kind!r} is not implemented; available: {', '.join(KINDS)}")
    if kind == "similarity" and similarity is None:
        raise ValueError("heuristic kind 'similarity' needs a similarity function")
    if not names:
        raise ValueError("no models to choose from")
    own = {name: fitness({name: 1.0}) for name in names}
    order = sorted(names, key=lambda n: -own[n])  # stable: the zoo's order among equal scores
    weights, score = {order[0]: 1.0}, own[order[0]]
    trace = [Step(order[0], {}, score, True)]
    remaining = order[1:]
    while remaining:
        closeness = None
        if kind == "similarity":
            to_running = {n: similarity(weights, n) for n in remaining}
            pick = (max if most_similar else min)(remaining, key=to_running.get)  # the first of equals
            remaining.remove(pick)
            candidate, closeness = pick, to_running[pick]
        else:
            candidate = remaining.pop(0)
        k = len(weights)
        shares = (k / (k + 1),) if kind == "average" else grid
        tried = {share: fitness(_mixed(weights, candidate, share)) for share in shares}
        best = max(shares, key=lambda share: tried[share])  # the first of equal bests
        kept = tried[best] >= score
        if kept:
            weights, score = _mixed(weights, candidate, best), tried[best]
        trace.append(Step(candidate, tried, tried[best], kept, closeness))
    return HeuristicResult(weights, score, trace)


def _mixed(weights: dict[str, float], candidate: str, share: float) -> dict[str, float]:
    # rounded, so that e.g. 1 - 0.9 is 0.1 in traces and cache keys
    return {**{name: round(share * w, 12) for name, w in weights.items()}, candidate: round(1 - share, 12)}


@dataclass
class Heuristic:
    """The strategy (conf/strategy/heuristic_*.yaml): a greedy merge over the problem's models."""
    kind: str = "coefficient"               # average | coefficient | similarity
    grid: tuple[float, ...] = GRID          # shares of the running merge tried (coefficient, similarity)
    most_similar: bool = True               # similarity: the most similar model next (else the least)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r}: expected one of {', '.join(KINDS)}")
        grid = list(self.grid) if isinstance(self.grid, (list, tuple)) else None
        if not grid or not all(isinstance(g, (int, float)) and not isinstance(g, bool) and 0 < g < 1 for g in grid):
            raise ValueError(f"grid={self.grid!r}: expected a non-empty list of shares strictly between 0 and 1")

    def search(self, problem) -> HeuristicResult:
        return greedy_merge(problem.names, lambda w: problem.fitness(problem.merge_of(w)), self.kind,
                            tuple(self.grid), problem.similarity, self.most_similar)

    def run(self, problem):
        from glue_bench.select.problem import Choice

        result = self.search(problem)
        return Choice(problem.merge_of(result.weights), result.score,
                      {"kept_weights": result.weights, "trace": [asdict(s) for s in result.trace]})


def main(argv: list[str] | None = None) -> None:
    from glue_bench.select.report import ZooSearch, print_final_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ZooSearch.add_arguments(parser, proxy_size=20)
    parser.add_argument("--kind", default="coefficient", choices=KINDS)
    parser.add_argument("--least-similar", action="store_true", help="similarity: least similar next")
    args = parser.parse_args(argv)
    zs = ZooSearch.from_args(args)
    choice = Heuristic(args.kind, most_similar=not args.least_similar).run(zs.problem(args.method, {}))
    print(json.dumps(choice.details, indent=2))
    label = f"heuristic_{args.kind}({args.method})"
    print_final_table(zs.compare(args.method, {label: choice.candidate}), f"{args.zoo}, {label}")


if __name__ == "__main__":
    from glue_bench.errors import entry_point

    entry_point(main)()
