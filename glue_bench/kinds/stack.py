"""Stacking in depth: each model's layers after the previous one's, or interleaved (SOLAR's depth
up-scaling drops layers at each junction). Not a merge: `method` is not used."""

from __future__ import annotations

import time

from glue_bench.console import log
from glue_bench.errors import JobError
from glue_bench.evaluate import hf_lm
from glue_bench.job import Job
from glue_bench.kinds import Candidate, Kind, register
from glue_bench.kinds.saving import save_checkpoint
from glue_bench.zoo import load_tokenizer


@register
class Stack(Kind):
    name = "stack"
    priority = 10

    def unused(self, cfg) -> tuple[str, ...]:
        return ("method",)

    @staticmethod
    def claims(cfg) -> bool:
        return cfg.strategy.name == "stack"

    def refusal(self, cfg) -> str | None:
        if cfg.mixture.name != "none":
            return f"strategy stack with mixture={cfg.mixture.name}: not implemented"
        return super().refusal(cfg)

    def build(self, job: Job) -> Candidate:
        from glue_bench.merge import MergeError
        from glue_bench.mixture.stack import build_stack

        names = [m.name for m in job.members]
        mode, drop = job.cfg.strategy.mode, int(job.cfg.strategy.drop)
        log(f"stacking {', '.join(names)} ({mode}, drop {drop})")
        start = time.perf_counter()
        try:
            model = build_stack(job.members, mode, drop, job.eval_cfg.device)
        except (ValueError, MergeError) as err:
            raise JobError(f"strategy stack: {err}") from None
        build_s = time.perf_counter() - start
        tok = load_tokenizer(job.members[0])
        label = f"{mode}({'+'.join(names)}{f', drop {drop}' if drop else ''})"
        return Candidate(label, lambda: hf_lm(model, tok, job.eval_cfg), "stack", names, build_s, tokenizer=tok,
                         save=lambda out: save_checkpoint(model, tok, out, job, label),
                         summary={"layers": len(model.model.layers)})
