"""One job, top-down as the data flow: compose (Hydra) -> Job -> candidate kind -> build ->
evaluate -> store. Work already in the results store is skipped.

Every kind (glue_bench/kinds/) ends in the same tail: the single models on the candidate's items,
the candidates judged beside it, the candidate itself, its rows appended in one transaction, and
its checkpoint when save=true.
"""

from __future__ import annotations

import json

from omegaconf import DictConfig

from glue_bench.console import log
from glue_bench.costs import cost_kind, cost_size, measuring
from glue_bench.evaluate import evaluate_lm
from glue_bench.job import Job
from glue_bench.kinds import AlsoJudged, Candidate, Kind, kind_for
from glue_bench.validate import check_config


def run_job(cfg: DictConfig, preset: str | None = None) -> dict:
    """Run one job; returns a summary {"job_key", "status", ...}. `preset`: the experiment preset
    running it (conf/experiment/), linked to every job it stores or finds stored."""
    eval_cfg = check_config(cfg)               # the settings of the config itself, each in one line
    kind = kind_for(cfg)                       # an unsupported combination fails here, in one line
    job = Job.from_config(cfg, unused=kind.unused(cfg), eval_cfg=eval_cfg)
    job.preset = preset
    job.store.check_writable()                 # a read-only store fails now, not after the work
    kind.check(job)                            # bad parameters fail before any model is read
    job.prepare()
    kind.check_members(job)                    # the members' files agree (tensors, tokenizers) before any evaluation
    with measuring(size=cost_size(cfg), kind=cost_kind(cfg, kind.name)):  # what evaluations cost here, kept (glue_bench.costs)
        return _run(cfg, kind, job)


def _run(cfg: DictConfig, kind, job: Job) -> dict:
    # the single models (and the base, for reference) on the whole test split: one job each,
    # shared by every zoo and sweep
    job.evaluate_singles()
    if kind.nothing_to_build(cfg):
        return {"status": "singles", "job_key": None}
    if not cfg.force and job.stored(job.key):  # force=true: the stored job stays until its replacement lands
        log(f"job {job.key} already in the store; skipping (force=true re-runs it)")
        return {"status": "skipped", "job_key": job.key}
    return evaluate_and_store(job, kind, kind.build(job))


def evaluate_and_store(job: Job, kind: Kind, candidate: Candidate) -> dict:
    """The tail every kind shares."""
    items = candidate.items
    if items is not None:  # judged on final items: the single models on the same ones
        job.evaluate_singles(items)
    for other in candidate.also_judged:
        _judge(job, kind, other, items)
    lm = candidate.make_lm()
    weights = kind.fingerprint(lm)  # before the evaluation: what was evaluated, whatever it does to the model
    rows, stats = evaluate_lm(lm, job.tasks_dir, job.eval_cfg, samples=items.samples if items else None,
                              tokenizer=candidate.tokenizer)
    details = candidate.after_eval() if candidate.after_eval else {}
    config = json.dumps({**job.payload, **candidate.details, **details}, sort_keys=True, default=str)
    job.store_evaluation(job.key, rows, stats, items, replace=job.cfg.force, candidate=candidate.label,
                         method=candidate.method, models=candidate.models, load_s=candidate.load_s,
                         build_s=candidate.build_s, weights=weights, config=config)
    if job.cfg.save:
        _save(job, candidate)
    return {"status": "done", "job_key": job.key, "build_s": candidate.build_s, **candidate.summary, **details,
            "eval_s": stats["eval_s"], "tokens": stats["tokens"]}


def _judge(job: Job, kind: Kind, other: AlsoJudged, items) -> None:
    if job.stored(other.key):
        return
    log(f"evaluating {other.label}" + (f" on the {items.label}" if items else ""))
    lm = other.make_lm()
    weights = kind.fingerprint(lm)
    rows, stats = evaluate_lm(lm, job.tasks_dir, job.eval_cfg, samples=items.samples if items else None)
    job.store_evaluation(other.key, rows, stats, items, **{**other.row, "candidate": other.label, "weights": weights})


def _save(job: Job, candidate: Candidate) -> None:
    if candidate.save is None:
        log(f"save=true: {candidate.label} has no checkpoint format; the job's config rebuilds it")
        return
    if job.output_dir is None:
        log("save=true: not under Hydra, so there is no job folder to save into")
        return
    candidate.save(job.output_dir / "candidate")
