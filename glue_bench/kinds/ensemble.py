"""The output ensemble of the zoo's models (or `strategy.models`): every member answers every
request, their predictions averaged (`glue_bench/mixture/ensemble.py`). Nothing is merged or
routed: `method` is left out of the job key, and a router is refused."""

from __future__ import annotations

import time

from glue_bench.console import log
from glue_bench.errors import JobError
from glue_bench.job import Job
from glue_bench.kinds import Candidate, Kind, register
from glue_bench.provenance import combined_fingerprint


@register
class Ensemble(Kind):
    name = "ensemble"
    priority = 40  # before mixture, which would claim its config too (mixture=ensemble is a mixture config)

    @staticmethod
    def claims(cfg) -> bool:
        return cfg.strategy.name == "all" and cfg.mixture.get("level") == "output"

    def refusal(self, cfg) -> str | None:
        if cfg.router.name != "none":
            return (f"router={cfg.router.name}: mixture={cfg.mixture.name} routes nothing, every member answers "
                    "every request (router=none)")
        return None

    def unused(self, cfg) -> tuple[str, ...]:
        return ("method",)  # the members are not merged

    def check(self, job: Job) -> None:
        """Generation needs one tokenizer and BOS convention for all: refused now, before any model
        is built or evaluated, if the tasks generate and the members' tokenizers differ."""
        from glue_bench.evaluate import generation_tasks
        from glue_bench.mixture.ensemble import generation_refusal

        generating = generation_tasks(job.eval_cfg)
        if generating and len({_convention(r, job.eval_cfg.add_bos_token) for r in job.members}) > 1:
            raise JobError(generation_refusal([r.name for r in job.members], generating))

    def fingerprint(self, lm) -> str | None:
        """A sequence-level ensemble: its members' (each an HF model with its own tokenizer); a
        token-level one is one HF model holding every member."""
        from glue_bench.mixture.ensemble import SequenceEnsembleLM

        if isinstance(lm, SequenceEnsembleLM):
            return combined_fingerprint([super().fingerprint(m) for m in lm.members.values()])
        return super().fingerprint(lm)

    def build(self, job: Job) -> Candidate:
        from glue_bench.mixture.ensemble import compute_cost, ensemble_of

        names = [m.name for m in job.members]
        start = time.perf_counter()
        lm, averaging, models = ensemble_of(job.members, job.eval_cfg)
        build_s = time.perf_counter() - start
        cost = {"ensemble_averaging": averaging, **compute_cost(models)}
        log(f"ensemble of {', '.join(names)}, averaged per {averaging}: {cost['forward_passes_per_token']} "
            "forward passes per token")
        label = f"ensemble({'+'.join(names)})" if job.cfg.strategy.get("models") else f"ensemble({job.cfg.zoo.name})"
        return Candidate(label, lambda: lm, "none", names, build_s,
                         tokenizer=lm.tokenizer if averaging == "token" else None, details=cost, summary=cost)


def _convention(ref, default: bool) -> tuple:
    """Which tokenizer and BOS convention a member evaluates with, known before its model is
    built: a mini-zoo model's tokenizer by its recipe (the zoo's own, or the foreign one), any
    other's from its files (vocabulary and special tokens)."""
    from glue_bench.zoo import add_bos_token, tokenizer_identity

    return tokenizer_identity(ref), add_bos_token(ref, default)
