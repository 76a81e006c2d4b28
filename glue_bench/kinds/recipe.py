"""The Model-GLUE recipe: families (architecture, then weight similarity), a selective merge in
each, a model-level mixture of their representatives. Judged on the final items beside every single
model, each family's merge and the model-level mixture of all the models."""

from __future__ import annotations

import time

from glue_bench.console import log
from glue_bench.errors import JobError
from glue_bench.evaluate import hf_lm
from glue_bench.job import Job
from glue_bench.kinds import AlsoJudged, Candidate, Kind, register
from glue_bench.kinds.mixture import Mixture
from glue_bench.kinds.search import instantiate_search, proxy_and_final_items, proxy_cache, searching_refusal
from glue_bench.zoo import load_tokenizer, local_dir


@register
class Recipe(Kind):
    name = "recipe"
    priority = 20

    @staticmethod
    def claims(cfg) -> bool:
        return cfg.strategy.name == "glue_recipe"

    def refusal(self, cfg) -> str | None:
        if cfg.mixture.get("level") != "model":
            return "strategy glue_recipe: mixes its families at the model level (add mixture=model router=prompt)"
        if cfg.router.name == "none":
            return f"mixture={cfg.mixture.name}: needs a router (router=prompt)"
        return searching_refusal(cfg)

    def unused(self, cfg) -> tuple[str, ...]:
        # as the job keys were first made (the mixture is at the model level); two recipe jobs that
        # differ only in method share a key
        return ("method",)

    def check(self, job: Job) -> None:
        from glue_bench.kinds.mixture import check_router_layer

        check_router_layer(job)
        self.search = instantiate_search(job.cfg)

    fingerprint = Mixture.fingerprint  # its candidate is a model-level mixture of the families' merges

    def build(self, job: Job) -> Candidate:
        from glue_bench.merge.engine import TensorSource
        from glue_bench.mixture.build import MixtureError, model_mixture
        from glue_bench.mixture.recipe import families, recipe_mixture, representatives
        from glue_bench.select.problem import dumps
        from glue_bench.select.report import ZooSearch

        method, recipe_cfg, router_cfg = job.method, job.cfg.strategy.recipe, job.section("router")
        members, base = job.members, job.base
        proxy, described, final = proxy_and_final_items(job)
        sources = {m.name: TensorSource(m.name, local_dir(m)) for m in members}
        start = time.perf_counter()
        groups = families(members, sources, recipe_cfg.threshold, recipe_cfg.rule)
        log(f"recipe: families {' | '.join(', '.join(r.name for r in g) for g in groups)}")
        zs = ZooSearch(members, list(sources.values()), TensorSource(base.name, local_dir(base)),
                       load_tokenizer(members[0]), job.tasks_dir, job.eval_cfg, proxy)
        reps = representatives(groups, zs, self.search, method, job.method_params, cache=proxy_cache(job, described),
                               out_dir=job.output_dir, log=log)
        try:
            lm = recipe_mixture(reps, base, router_cfg, job.eval_cfg)
        except MixtureError as err:
            raise JobError(str(err)) from None
        build_s = time.perf_counter() - start
        summary = [{"family": [r.name for r in rep.members], "expert": rep.name, "chosen": rep.candidate,
                    "proxy_score": rep.proxy_score} for rep in reps]
        if (out_dir := job.output_dir) is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "choice.json").write_text(dumps({"representatives": summary,
                                                        "details": {rep.name: rep.details for rep in reps}}))

        also = [AlsoJudged(job.sub_key({"mixture_all": [m.key for m in members], "router": router_cfg}, final),
                           f"mixture(model, {job.cfg.router.name}) of all {len(members)}",
                           lambda: model_mixture(members, base, {"top_k": 1}, router_cfg, job.eval_cfg),
                           {"method": method})]
        also += [AlsoJudged(job.sub_key({"family": [r.key for r in rep.members], "chosen": rep.candidate,
                                         "method": method}, final),
                            f"family merge ({method}) of {rep.name}",
                            lambda rep=rep: hf_lm(rep.model, rep.tokenizer, job.eval_cfg), {"method": method})
                 for rep in reps if rep.candidate is not None]

        def routed() -> dict:
            counts = {name: lm.usage.get(name, 0) for name in lm.names}
            log(f"recipe: documents routed to each expert: {counts}")
            return {"routed": counts}

        return Candidate(f"glue_recipe({method}, {job.cfg.router.name})", lambda: lm, method,
                         [m.name for m in members], build_s, items=final, also_judged=also,
                         details={"representatives": summary}, after_eval=routed, summary={})
