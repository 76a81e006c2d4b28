"""Data-flow-space evolutionary merging (Sakana AI's evolutionary model merge, "DFS").

The weights stay as they are; what is searched is the path a token's hidden state takes through
decoder layers drawn from several models of one architecture. The slots are `repeats` passes over
the sources' layers in order (source 0's layers 0..L-1, then source 1's, ..., then again). Per
slot, CMA-ES searches an inclusion value (the layer is on the path when it is above 0.5) and a
scale for the hidden state entering it. Sakana scales by a matrix W over (previous layer, layer)
pairs; one scale per slot is the simplification used here. Embeddings, final norm and head come
from the first source. The search starts at the first source's own path (its layers, scale 1).

Sources: the `top` best single models on the proxy set, or, with `after_merge` (Sakana's
"PS + DFS"), the heuristic's parameter-space merge first and then the `top` best single models.

A candidate is {"path": [[source, layer, scale], ...], "merges": {source: merge parameters},
"embed": the source of the embeddings, final norm and head};
`CandidateBuilder` builds it in memory (the scales are forward hooks, so it is not saved as a
standard checkpoint).

    python -m glue_bench.select.dataflow --zoo mini8 --trials 50 --allow-code-execution
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field

import torch

from glue_bench.merge import MergeError
from glue_bench.select.evolutionary import Evolutionary, search
from glue_bench.select.heuristic import Heuristic
from glue_bench.select.problem import Choice, Problem

_MERGE = "merge"  # the source name of the parameter-space merge


@dataclass
class DataFlow:
    """The strategy (conf/strategy/dataflow.yaml)."""
    top: int = 2                           # sources: the best `top` single models on the proxy set
    repeats: int = 2                       # passes over the sources' layers (Sakana's r)
    scale: tuple[float, float] = (0.5, 1.5)  # range of each slot's input scale
    after_merge: bool = False              # the heuristic's merge becomes the first source
    heuristic: Heuristic = field(default_factory=Heuristic)
    evolutionary: Evolutionary = field(default_factory=lambda: Evolutionary(n_trials=200))

    def run(self, problem: Problem) -> Choice:
        builder = DataFlowBuilder(problem)
        problem.builder.extra_builders["path"] = builder
        own = {name: problem.fitness({"model": name}) for name in problem.names}
        sources = sorted(problem.names, key=lambda n: -own[n])[:self.top]
        merges, details = {}, {"own_scores": own}
        if self.after_merge:
            warm = self.heuristic.search(problem)
            chosen = problem.merge_of(warm.weights)
            if "model" in chosen:  # the heuristic kept one model: it leads, as itself
                sources = [chosen["model"]] + [s for s in sources if s != chosen["model"]]
            else:
                merges = {_MERGE: chosen}
                sources = [_MERGE] + sources
            details["merge"] = {"weights": warm.weights, "score": warm.score}
        layers = builder.num_layers
        slots = [(s, layer) for _ in range(self.repeats) for s in sources for layer in range(layers)]
        low, high = self.scale
        space = {f"in.{k}": (0.0, 1.0) for k in range(len(slots))}
        space.update({f"scale.{k}": (low, high) for k in range(len(slots))})
        x0 = {f"in.{k}": 1.0 if k < layers else 0.0 for k in range(len(slots))}
        x0.update({f"scale.{k}": min(max(1.0, low), high) for k in range(len(slots))})

        def to_candidate(values: dict) -> dict:
            path = [[s, layer, round(values[f"scale.{k}"], 6)] for k, (s, layer) in enumerate(slots)
                    if values[f"in.{k}"] > 0.5]
            return {"path": path, "merges": merges, "embed": sources[0]}

        cfg = Evolutionary(**{**asdict(self.evolutionary), "x0": x0})
        result = search(problem, cfg, space=space, to_candidate=to_candidate)
        details.update({"sources": sources, "slots": len(slots), **asdict(result)})
        return Choice(result.best_params, result.best_value, details)


class DataFlowBuilder:
    """Builds a path candidate: a model of the sources' architecture with one decoder layer per
    path entry, copied from its source, and the entry's scale applied to the layer's input."""

    def __init__(self, problem: Problem):
        self.problem = problem
        self.template = problem.merger.sources[0]
        self.num_layers = int(self.template.config["num_hidden_layers"])
        self._merged: dict[str, dict] = {}  # merge parameters (JSON) -> its tensors

    def _tensors(self, source: str, merges: dict):
        if source in merges:
            spec = json.dumps(merges[source], sort_keys=True)
            if spec not in self._merged:  # its own model: the builder's merged model is reused
                self._merged = {spec: self.problem.merger.to_model(merges[source]).state_dict()}
            return self._merged[spec].__getitem__
        return self.problem.merger.sources[self.problem.names.index(source)].get

    def __call__(self, candidate: dict):
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.initialization import no_init_weights

        path, merges = candidate["path"], candidate.get("merges", {})
        if not path:
            raise MergeError("data-flow candidate: the path has no layer")
        config = AutoConfig.from_pretrained(self.template.directory)
        config.num_hidden_layers = len(path)
        if getattr(config, "layer_types", None):
            config.layer_types = [config.layer_types[layer] for _, layer, _ in path]
        with no_init_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        first = self._tensors(candidate["embed"], merges)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, target in params.items():
                if ".layers." not in name:
                    target.copy_(first(name))
            for slot, (source, layer, scale) in enumerate(path):
                get = self._tensors(source, merges)
                prefix = f"model.layers.{slot}."
                for name, target in params.items():
                    if name.startswith(prefix):
                        target.copy_(get(f"model.layers.{layer}." + name[len(prefix):]))
                if scale != 1.0:
                    model.model.layers[slot].register_forward_pre_hook(_scaled_input(scale), with_kwargs=True)
        return model.to(self.problem.merger.device).eval()


def _scaled_input(scale: float):
    def hook(module, args, kwargs):
        if args:
            return (args[0] * scale, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] * scale}
    return hook


def main(argv: list[str] | None = None) -> None:
    from glue_bench.select.report import ZooSearch, print_final_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ZooSearch.add_arguments(parser, proxy_size=20)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--top", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--after-merge", action="store_true", help="the heuristic's merge is the first source")
    parser.add_argument("--storage", default=Evolutionary.storage)
    args = parser.parse_args(argv)
    zs = ZooSearch.from_args(args)
    strategy = DataFlow(args.top, args.repeats, after_merge=args.after_merge,
                        evolutionary=Evolutionary(n_trials=args.trials, seed=args.seed, storage=args.storage))
    problem = zs.problem(args.method, {})
    choice = strategy.run(problem)
    print(json.dumps(choice.details, indent=2, default=str))
    label = f"dataflow({'merge + ' if args.after_merge else ''}top {args.top})"
    print_final_table(zs.compare(args.method, {label: choice.candidate}, problem), f"{args.zoo}, {label}")


if __name__ == "__main__":
    from glue_bench.errors import entry_point

    entry_point(main)()
