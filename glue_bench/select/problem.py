"""What every selective strategy works on, and what it hands back.

A `Problem` is a zoo's candidate models (one architecture), a merge method with its configured
parameters, and the proxy fitness. A strategy (`Heuristic`, `Evolutionary`, `DataFlow`, ...) has
one method, `run(problem) -> Choice`; the Hydra job (glue_bench/run.py) and the search CLIs build
the problem, run the strategy, then judge the choice on the final items (report.py).

A candidate is described by a JSON-able dict, which is also its cache key:
- {"model": name}: a single model, as it is;
- {"weights": [...], ...}: the method's parameters, a merge of the candidates;
- {"path": [[source, layer, scale], ...]}: a data-flow model (dataflow.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from glue_bench.merge.engine import Merger
from glue_bench.select.proxy import ProxyFitness


@dataclass
class Choice:
    candidate: dict                # the chosen candidate's description (see above)
    proxy_score: float
    details: dict = field(default_factory=dict)  # trace, trials...: saved as the job's choice.json


class CandidateBuilder:
    """Builds a described candidate in memory. Merges reuse one model's storage between calls, so
    a model it returned is valid until the next merge."""

    def __init__(self, refs: list, merger: Merger, device: str = "cpu"):
        self.by_name = {r.name: r for r in refs}
        self.merger, self.device = merger, device
        self._merged = None
        self.extra_builders: dict = {}   # description key -> builder, e.g. "path" (dataflow.py)

    def __call__(self, candidate: dict):
        from glue_bench.zoo import load_model

        if "model" in candidate:
            return load_model(self.by_name[candidate["model"]], self.device)
        for key, build in self.extra_builders.items():
            if key in candidate:
                return build(candidate)
        self._merged = self.merger.to_model(candidate, self._merged)
        return self._merged


@dataclass
class Problem:
    refs: list                     # the candidate models' ModelRefs, in zoo order
    method: str
    fixed: dict                    # the method's configured parameters (density, seed...)
    merger: Merger                 # over `refs`, with cache=True
    builder: CandidateBuilder
    fitness: ProxyFitness
    out_dir: Path | None = None    # where a strategy may write plots

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.refs]

    def merge_of(self, weights: dict[str, float]) -> dict:
        """The description of the merge with these weights per name (a single model: itself)."""
        used = [n for n, w in weights.items() if w != 0]
        if len(used) == 1:
            return {"model": used[0]}
        return {**self.fixed, "weights": [float(weights.get(n, 0.0)) for n in self.names]}

    def similarity(self, weights: dict[str, float], name: str) -> float:
        """Column-wise cosine similarity ("all" groups) of model `name` to the merge `weights`."""
        from glue_bench.merge.similarity import StateDictSource, weight_similarity

        running = StateDictSource(self.builder(self.merge_of(weights)).state_dict())
        return weight_similarity(running, self.merger.sources[self.names.index(name)])["all"]

    def write(self, name: str, text: str) -> Path | None:
        if self.out_dir is None:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / name).write_text(text)
        return self.out_dir / name


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)
