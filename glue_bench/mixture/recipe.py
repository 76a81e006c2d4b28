"""The Model-GLUE recipe: cluster the zoo, merge within each mergeable family with a selective
strategy (the study: the heuristic), then mix the family representatives and the models that
merge with nothing at the model level.

1. Families: architecture groups first, then weight similarity within each group
   (`merge/cluster.py`: the study's threshold rule, or average linkage).
2. Each family of two or more models is searched on the proxy set by the strategy; its choice (a
   merge, or one of its models) represents it. A family of one is its model.
3. A model-level mixture (`mixture_of`) of the representatives, each routed by the prompts of the
   models it stands for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from glue_bench.evaluate import EvalConfig
from glue_bench.merge.cluster import architecture_groups, hierarchical_families, threshold_families
from glue_bench.mixture.build import mixture_of

RULES = {"threshold": threshold_families, "hierarchical": hierarchical_families}


@dataclass
class Representative:
    name: str
    members: list                     # the zoo models (ModelRefs) it stands for
    model: object
    tokenizer: object
    candidate: dict | None = None     # the chosen merge (None: a family of one)
    proxy_score: float | None = None
    details: dict = field(default_factory=dict)


def families(refs: list, sources: dict, threshold: float, rule: str) -> list[list]:
    """The zoo's families (lists of ModelRefs), in zoo order."""
    from glue_bench.merge.similarity import similarity_matrix

    if rule not in RULES:
        raise ValueError(f"recipe.rule={rule!r}: one of {', '.join(RULES)}")
    by_name = {r.name: r for r in refs}
    out = []
    for group in architecture_groups([sources[r.name] for r in refs]):
        matrix = similarity_matrix(group)
        out += [[by_name[n] for n in family] for family in RULES[rule](matrix, threshold)]
    return out


def representatives(groups: list[list], zoo_search, strategy, method: str, fixed: dict, *, cache=None,
                    out_dir: Path | None = None, log=print) -> list[Representative]:
    """One model per family: the strategy's choice among its members (searched on
    `zoo_search.proxy`), or the model itself for a family of one."""
    from glue_bench.merge.engine import TensorSource
    from glue_bench.select.report import ZooSearch
    from glue_bench.zoo import load_model, load_tokenizer, local_dir

    out = []
    for i, family in enumerate(groups):
        tokenizer = load_tokenizer(family[0])
        if len(family) == 1:
            out.append(Representative(family[0].name, family, load_model(family[0], zoo_search.eval_cfg.device),
                                      tokenizer))
            continue
        zs = ZooSearch(family, [TensorSource(r.name, local_dir(r)) for r in family], zoo_search.base, tokenizer,
                       zoo_search.tasks_dir, zoo_search.eval_cfg, zoo_search.proxy)
        problem = zs.problem(method, fixed, cache=cache, out_dir=out_dir / f"family_{i}" if out_dir else None)
        log(f"recipe: family {i} ({', '.join(problem.names)}): searching with {method}")
        choice = strategy.run(problem)
        if "model" in choice.candidate:
            model = load_model(next(r for r in family if r.name == choice.candidate["model"]), zs.eval_cfg.device)
        else:
            model = problem.merger.to_model(choice.candidate)  # its own model: the search's is reused
        name = "+".join(problem.names)
        out.append(Representative(name, family, model, tokenizer, choice.candidate, choice.proxy_score,
                                  choice.details))
    return out


def recipe_mixture(reps: list[Representative], base_ref, router_cfg: dict, eval_cfg: EvalConfig):
    """The model-level mixture of the representatives (of one: that model, routed to always)."""
    return mixture_of({r.name: (r.model, r.tokenizer) for r in reps}, {r.name: r.members for r in reps},
                      base_ref, router_cfg, eval_cfg)
