"""A selective strategy (heuristics, CMA-ES, data-flow search): a search on the proxy set, its
choice judged on the test items outside it, beside every single model and the merge of all the
candidates."""

from __future__ import annotations

import json
import time

from omegaconf import OmegaConf

from glue_bench.console import log
from glue_bench.errors import JobError
from glue_bench.evaluate import hf_lm
from glue_bench.job import Job
from glue_bench.kinds import AlsoJudged, Candidate, Kind, register
from glue_bench.kinds.saving import save_checkpoint
from glue_bench.kinds.search import instantiate_search, proxy_and_final_items, proxy_cache, searching_refusal
from glue_bench.zoo import load_tokenizer, local_dir


@register
class Selective(Kind):
    name = "selective"
    priority = 30

    @staticmethod
    def claims(cfg) -> bool:
        return cfg.strategy.name not in ("all", "stack", "glue_recipe")

    def refusal(self, cfg) -> str | None:
        if cfg.mixture.name != "none":
            return (f"strategy {cfg.strategy.name} with mixture={cfg.mixture.name}: not implemented "
                    "(a mixture takes strategy=all, optionally strategy.models=[...]; or strategy=glue_recipe)")
        return super().refusal(cfg) or searching_refusal(cfg)

    def check(self, job: Job) -> None:
        from glue_bench.select.evolutionary import SearchConfig, open_storage, search_space

        self.search = instantiate_search(job.cfg)
        # a CMA-ES search's study storage (its own, or its CMA-ES stage's) opened now: a bad or
        # unreachable database URL fails in one line before any model is evaluated
        cma = getattr(self.search, "evolutionary", self.search)
        if isinstance(cma, SearchConfig):
            try:
                search_space(job.method, len(job.members), cma)
            except ValueError as err:  # e.g. SLERP's t or Arcee Fusion: nothing CMA-ES could tune
                raise JobError(f"strategy {job.cfg.strategy.name}: {err}") from None
            open_storage(cma.storage)

    def build(self, job: Job) -> Candidate:
        from glue_bench.merge.engine import TensorSource
        from glue_bench.merge.cluster import architecture_groups
        from glue_bench.select.problem import dumps
        from glue_bench.select.report import ZooSearch

        method, strategy = job.method, job.cfg.strategy.name
        proxy, described, final = proxy_and_final_items(job)
        sources = {m.name: TensorSource(m.name, local_dir(m)) for m in job.members}
        # the candidates: the largest group of mutually mergeable models (the zoo's order among ties)
        pool_names = {s.name for s in max(architecture_groups(list(sources.values())), key=len)}
        pool = [m for m in job.members if m.name in pool_names]
        if excluded := [m.name for m in job.members if m.name not in pool_names]:
            log(f"{strategy}: left out, not mergeable with the others: {', '.join(excluded)}")
        zs = ZooSearch(pool, [sources[m.name] for m in pool], TensorSource(job.base.name, local_dir(job.base)),
                       load_tokenizer(pool[0]), job.tasks_dir, job.eval_cfg, proxy)
        problem = zs.problem(method, job.method_params, cache=proxy_cache(job, described), out_dir=job.output_dir)
        log(f"{strategy}: searching over {', '.join(problem.names)} with {method}")
        start = time.perf_counter()
        choice = self.search.run(problem)
        search_s = time.perf_counter() - start
        problem.write("choice.json", dumps({"candidate": choice.candidate, "proxy_score": choice.proxy_score,
                                            "left_out": excluded, **choice.details}))
        log(f"{strategy}: chose {json.dumps(choice.candidate)} (proxy score {choice.proxy_score:.3f}, "
            f"{problem.fitness.builds} candidates evaluated, {search_s:.0f} s)")

        merge_all = AlsoJudged(
            job.sub_key({"all": [m.key for m in pool], "method": OmegaConf.to_container(job.cfg.method, resolve=True)},
                        final),
            f"{method}(all {len(pool)})", lambda: hf_lm(problem.builder(problem.fixed), zs.tokenizer, job.eval_cfg),
            {"strategy": "all", "method": method, "models": problem.names})
        built = {}  # the search's builder reuses one model: the choice is built after the merge of all

        def make_lm():
            built["model"] = problem.builder(choice.candidate)
            return hf_lm(built["model"], zs.tokenizer, job.eval_cfg)

        def save(out) -> None:
            if "path" in choice.candidate:  # its input scales are forward hooks: no standard format holds them
                log("save=true: a data-flow candidate is not saved (choice.json describes it)")
            else:
                save_checkpoint(built["model"], zs.tokenizer, out, job, f"{strategy}({method})", items=final,
                                details={"chosen": choice.candidate, "proxy_score": choice.proxy_score})

        return Candidate(f"{strategy}({method})", make_lm, method, _chosen_models(choice.candidate, problem.names),
                         search_s, tokenizer=zs.tokenizer, items=final, also_judged=[merge_all], save=save,
                         details={"chosen": choice.candidate, "proxy_score": choice.proxy_score},
                         summary={"search_s": search_s, "proxy_score": choice.proxy_score})


def _chosen_models(candidate: dict, names: list[str]) -> list[str]:
    """The models a chosen candidate is built from (a weight list may be anchors over depth)."""
    if "model" in candidate:
        return [candidate["model"]]
    if "path" in candidate:
        return sorted({source for source, _, _ in candidate["path"]})
    weights = candidate.get("weights") or [1.0] * len(names)
    return [n for n, w in zip(names, weights) if any(v != 0 for v in (w if isinstance(w, list) else [w]))]
