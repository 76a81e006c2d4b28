"""A mixture of the zoo's models (or `strategy.models`) behind a router: at the FFN or block level
(one model whose layers route between the experts' MLPs or blocks), or at the model level (each
input answered by one expert, models of any architecture)."""

from __future__ import annotations

import time

from glue_bench.console import log
from glue_bench.errors import JobError
from glue_bench.job import Job
from glue_bench.kinds import Candidate, Kind, register
from glue_bench.mixture.settings import MixtureSettings
from glue_bench.provenance import combined_fingerprint, router_fingerprint
from glue_bench.zoo import declared_depth, load_tokenizer


@register
class Mixture(Kind):
    name = "mixture"
    priority = 50  # after ensemble (see there); the other kinds claim disjoint strategies

    @staticmethod
    def claims(cfg) -> bool:
        return cfg.strategy.name == "all" and cfg.mixture.name != "none"

    def refusal(self, cfg) -> str | None:
        from glue_bench.mixture.settings import LEVELS

        if cfg.mixture.get("level") not in LEVELS:
            return (f"mixture={cfg.mixture.name}: level {cfg.mixture.get('level')!r} is not implemented "
                    f"(available: {', '.join(LEVELS)})")
        if cfg.router.name == "none":
            return f"mixture={cfg.mixture.name}: needs a router (router=prompt)"
        return None

    def unused(self, cfg) -> tuple[str, ...]:
        return ("method",) if cfg.mixture.level == "model" else ()  # model level: experts are not merged

    def check(self, job: Job) -> None:
        """Every mixture setting, before any model is read or merged (`mixture.settings.check_mixture`)."""
        from glue_bench.mixture import MixtureError
        from glue_bench.mixture.settings import check_mixture

        try:
            check_mixture(job.section("mixture"), job.cfg.router.name, job.method, len(job.members),
                          declared_depth(job.members[0], job.cfg.mini_size))
        except MixtureError as err:
            raise JobError(str(err)) from None
        if job.cfg.mixture.level == "model":
            check_router_layer(job)

    def fingerprint(self, lm) -> str | None:
        """A model-level mixture: its experts' and its router's (gates and encoder); one routed per
        document: its HF model's; routed per token: an HF model whose state holds its routers."""
        from glue_bench.mixture.layered import SampleRoutedLM
        from glue_bench.mixture.model_level import ModelMixtureLM

        if isinstance(lm, ModelMixtureLM):
            return combined_fingerprint([Kind.fingerprint(self, e) for e in lm.experts] + [router_fingerprint(lm.router)])
        return Kind.fingerprint(self, lm.hflm if isinstance(lm, SampleRoutedLM) else lm)

    def build(self, job: Job) -> Candidate:
        from glue_bench.mixture.build import MixtureError, layered_mixture_lm, model_mixture

        names = [m.name for m in job.members]
        mixture_cfg, router_cfg = job.section("mixture"), job.section("router")
        level = mixture_cfg["level"]
        log(f"mixing {', '.join(names)} at {level} level, router {job.cfg.router.name}")
        start = time.perf_counter()
        try:
            if level == "model":
                lm, model = model_mixture(job.members, job.base, mixture_cfg, router_cfg, job.eval_cfg), None
            else:
                lm, model = layered_mixture_lm(job.members, job.base, job.method, job.method_params, mixture_cfg,
                                               router_cfg, eval_cfg=job.eval_cfg)
        except MixtureError as err:
            raise JobError(str(err)) from None
        build_s = time.perf_counter() - start
        settings = MixtureSettings.of(mixture_cfg)
        details = "" if level == "model" else f", {settings.routing}" + (
            f", dense {settings.dense_layers}" if settings.dense_layers else "")
        label = f"mixture({job.cfg.mixture.name}, {job.cfg.router.name}{details})"

        def routed() -> dict:
            if level == "model":
                counts = {name: lm.usage.get(name, 0) for name in names}
                log(f"documents routed to each expert: {counts}")
            else:
                from glue_bench.mixture.layered import routed_layers

                per_expert = sum(layer.tokens_routed for layer in routed_layers(model))
                counts = dict(zip(names, per_expert.tolist()))
                log(f"(token, layer) pairs routed to each expert: {counts}")
            return {"routed": counts}

        return Candidate(label, lambda: lm, "none" if level == "model" else job.method, names, build_s,
                         save=lambda out: _save_mixture(model, job, mixture_cfg, out), after_eval=routed)


def _save_mixture(model, job: Job, mixture_cfg: dict, out) -> None:
    """An FFN-level mixture with linear gates and token routing as a Mixtral checkpoint; the others
    have no standard format (their config and glue_bench rebuild them)."""
    from glue_bench.mixture.layered import save_mixtral

    why = None
    if mixture_cfg["level"] != "ffn":
        why = f"a {mixture_cfg['level']}-level mixture has no standard format"
    elif MixtureSettings.of(mixture_cfg).routing != "token":
        why = "Mixtral routes each token: a sample-routed mixture has no standard format"
    if why is None:
        try:
            save_mixtral(model, load_tokenizer(job.members[0]), out)
            log(f"saved the mixture as a Mixtral checkpoint to {out}")
            return
        except ValueError as err:
            why = str(err)
    log(f"save=true: not saved ({why}); the job's config rebuilds it")


def check_router_layer(job: Job) -> None:
    """A model-level router reads one hidden state of the base (router.layer): one it has."""
    layer = job.cfg.router.get("layer")
    depth = declared_depth(job.base, job.cfg.mini_size) if layer is not None else None
    if depth is not None and layer > depth:
        raise JobError(f"router.layer={layer}: the base {job.base.name} has hidden states 0..{depth} "
                       "(0: the embeddings)")
