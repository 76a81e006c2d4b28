"""One merge method over the zoo's models (or `strategy.models`), streamed tensor by tensor."""

from __future__ import annotations

import time

from glue_bench.console import log
from glue_bench.evaluate import hf_lm
from glue_bench.job import Job
from glue_bench.kinds import Candidate, Kind, register
from glue_bench.kinds.saving import save_checkpoint
from glue_bench.zoo import load_tokenizer, local_dir


@register
class Merge(Kind):
    name = "merge"
    priority = 60

    @staticmethod
    def claims(cfg) -> bool:
        return cfg.strategy.name == "all" and cfg.mixture.name == "none"

    def nothing_to_build(self, cfg) -> bool:
        return cfg.method.name == "none"  # method=none: the zoo's single models only

    def check(self, job: Job) -> None:
        """The method looked up and its parameters checked once, before any model is read: `build`
        merges with them as checked."""
        from glue_bench.merge import get_method

        if not self.nothing_to_build(job.cfg):
            self.method = get_method(job.method)
            self.params = self.method.validate_early(job.method_params, len(job.members))
            if self.method.needs:
                from glue_bench.merge.statistics import check_calibration

                check_calibration(job.members, _calibration(job), job.method)

    def check_members(self, job: Job) -> None:
        from glue_bench.merge.engine import TensorSource, check_compatible

        if not self.nothing_to_build(job.cfg):  # tensors and tokenizers that cannot merge fail before the singles
            check_compatible([TensorSource(m.name, local_dir(m)) for m in job.members])

    def build(self, job: Job) -> Candidate:
        from glue_bench.merge.engine import Merger, TensorSource

        names = [m.name for m in job.members]
        log(f"merging {', '.join(names)} with {job.method}")
        sources = [TensorSource(m.name, local_dir(m)) for m in job.members]
        start = time.perf_counter()
        statistics = _statistics(job, self.method.needs)
        statistics_s = time.perf_counter() - start  # part of the build: a data-dependent merge's own cost
        merger = Merger(sources, self.method, TensorSource(job.base.name, local_dir(job.base)),
                        device=job.eval_cfg.device, statistics=statistics)
        model = merger.to_model(self.params)
        load_s = merger.timings["load_s"]  # the output model's allocation; reading the inputs is part of the merge
        build_s = time.perf_counter() - start - load_s
        # the tokenizer goes with the model whose architecture the merge took (the largest vocabulary)
        tok = load_tokenizer(job.members[sources.index(merger.template)])
        label = f"{job.method}({'+'.join(names)})" if job.cfg.strategy.get("models") else f"{job.method}({job.cfg.zoo.name})"
        return Candidate(label, lambda: hf_lm(model, tok, job.eval_cfg), job.method, names, build_s, load_s=load_s,
                         tokenizer=tok, save=lambda out: save_checkpoint(model, tok, out, job, label),
                         summary={"load_s": load_s, **({"statistics_s": statistics_s} if statistics else {})})


def _calibration(job: Job):
    from glue_bench.merge.statistics import Calibration

    return Calibration.from_settings(job.section("method").get("calibration"))


def _statistics(job: Job, needs: tuple[str, ...]) -> dict:
    """The statistics a data-dependent method takes (`needs`: fisher, regmean), from the cache or
    computed model by model; none for the others."""
    from glue_bench.merge.statistics import ensure_statistics

    if not needs:
        return {}
    log(f"statistics ({', '.join(needs)}) of {len(job.members)} models on their calibration data")
    return ensure_statistics(job.members, needs, _calibration(job), device=job.eval_cfg.device)
