"""One job: resolve the zoo, evaluate its single models once, build the candidate, evaluate it,
append its rows to the results store (skipping work already in the store)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from glue_bench.errors import JobError
from glue_bench.evaluate import EvalConfig, evaluate_model, render_tasks
from glue_bench.results import ResultStore
from glue_bench.zoo import ModelRef, ensure_available, load_model, load_tokenizer, local_dir, resolve_zoo

# config keys that do not change a job's scores, so they stay out of its key
_NOT_IN_KEY = ("results_path", "force", "save", "print_table")
_NOT_IN_EVAL_KEY = ("batch_size",)


def job_key(payload: dict) -> str:
    """Stable hash of a resolved config: sorted JSON, so key order never matters."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _eval_payload(cfg: DictConfig) -> dict:
    ev = OmegaConf.to_container(cfg.eval, resolve=True)
    return {k: v for k, v in ev.items() if k not in _NOT_IN_EVAL_KEY}


def candidate_payload(cfg: DictConfig) -> dict:
    full = OmegaConf.to_container(cfg, resolve=True)
    payload = {k: v for k, v in full.items() if k not in _NOT_IN_KEY}
    payload["eval"] = _eval_payload(cfg)
    payload["models"] = [r.key for r in zoo_refs(cfg)[0]]
    return payload


def _provenance() -> dict:
    versions = {p: _version(p) for p in ("glue_bench", "torch", "transformers", "lm_eval")}
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"versions": json.dumps(versions), "git_commit": commit}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _log(message: str) -> None:
    print(f"[glue_bench] {message}", file=sys.stderr, flush=True)


def zoo_refs(cfg: DictConfig) -> tuple[list[ModelRef], ModelRef]:
    return resolve_zoo(OmegaConf.to_container(cfg.zoo, resolve=True), cfg.mini_size)


def selected_members(cfg: DictConfig, refs: list[ModelRef]) -> list[ModelRef]:
    wanted = cfg.strategy.get("models")
    if wanted is None:
        return refs
    by_name = {r.name: r for r in refs}
    unknown = [m for m in wanted if m not in by_name]
    if unknown:
        raise JobError(f"strategy.models: {', '.join(unknown)} not in zoo {cfg.zoo.name} "
                       f"(members: {', '.join(by_name)})")
    return [by_name[m] for m in wanted]


def run_job(cfg: DictConfig) -> dict:
    """Run one job; returns a summary {"job_key", "status", ...}."""
    store = ResultStore(cfg.results_path)  # a corrupt store fails here, before any work
    if cfg.strategy.name != "all":
        raise JobError(f"strategy {cfg.strategy.name!r} is not implemented yet (available: all)")
    if cfg.mixture.name != "none" or cfg.router.name != "none":
        raise JobError("mixtures and routers are not implemented yet (use mixture=none router=none)")

    eval_cfg = EvalConfig(**OmegaConf.to_container(cfg.eval, resolve=True))
    refs, base = zoo_refs(cfg)
    members = selected_members(cfg, refs)
    if cfg.method.name != "none":
        from glue_bench.merge import get_method

        get_method(cfg.method.name).validate(_method_params(cfg), len(members))  # bad input fails early
    ensure_available(refs + [base], cfg.mini_size)
    tasks_dir = _tasks_dir(cfg)
    provenance = _provenance()
    common = {"zoo": cfg.zoo.name, "strategy": cfg.strategy.name, "mixture": cfg.mixture.name,
              "router": cfg.router.name, **provenance}

    # single models (and the base, for reference): one job each, keyed by model + eval settings,
    # so every zoo and sweep shares them
    for ref in [base] + [r for r in refs if r.key != base.key]:
        key = job_key({"single": ref.key, "eval": _eval_payload(cfg)})
        if store.has_job(key):
            continue
        _log(f"evaluating single model {ref.name}")
        start = time.perf_counter()
        model, tok = load_model(ref, eval_cfg.device), load_tokenizer(ref)
        load_s = time.perf_counter() - start
        rows, stats = evaluate_model(model, tok, tasks_dir, eval_cfg)
        store.append_job(key, [{**common, **r, "candidate": ref.name, "method": "none",
                                "strategy": "none", "models": ref.name, "load_s": load_s,
                                "build_s": 0.0, "eval_s": stats["eval_s"],
                                "config": json.dumps({"model": ref.location})} for r in rows])
        del model

    if cfg.method.name == "none":
        return {"status": "singles", "job_key": None}

    payload = candidate_payload(cfg)
    key = job_key(payload)
    if store.has_job(key):
        if not cfg.force:
            _log(f"job {key} already in the store; skipping (force=true re-runs it)")
            return {"status": "skipped", "job_key": key}
        store.delete_job(key)

    from glue_bench.merge.engine import Merger, TensorSource

    names = [m.name for m in members]
    _log(f"merging {', '.join(names)} with {cfg.method.name}")
    sources = [TensorSource(m.name, local_dir(m)) for m in members]
    base_source = TensorSource(base.name, local_dir(base))
    start = time.perf_counter()
    merger = Merger(sources, cfg.method.name, base_source, device=eval_cfg.device)
    model = merger.to_model(_method_params(cfg))
    timings = merger.timings
    load_s = timings["load_s"]  # the output model's allocation; reading the inputs is part of the merge
    build_s = time.perf_counter() - start - load_s
    # the tokenizer goes with the model whose architecture the merge took (the largest vocabulary)
    tok = load_tokenizer(members[sources.index(merger.template)])
    rows, stats = evaluate_model(model, tok, tasks_dir, eval_cfg)
    candidate = f"{cfg.method.name}({'+'.join(names)})" if cfg.strategy.get("models") else \
        f"{cfg.method.name}({cfg.zoo.name})"
    store.append_job(key, [{**common, **r, "candidate": candidate, "method": cfg.method.name,
                            "models": names, "load_s": load_s, "build_s": build_s,
                            "eval_s": stats["eval_s"], "config": json.dumps(payload, sort_keys=True)}
                           for r in rows])
    if cfg.save:
        _save_candidate(model, tok, cfg, payload)
    return {"status": "done", "job_key": key, "load_s": load_s, "build_s": build_s, **stats}


def _method_params(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg.method.params, resolve=True) or {}


def _tasks_dir(cfg: DictConfig) -> Path:
    from glue_bench.zoo.mini.build import ensure_data, size_dir

    return render_tasks(ensure_data(cfg.mini_size), size_dir(cfg.mini_size) / "lm_eval_tasks")


def _save_candidate(model, tok, cfg: DictConfig, payload: dict) -> Path:
    from hydra.core.hydra_config import HydraConfig

    out = Path(HydraConfig.get().runtime.output_dir) / "candidate"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    card = (f"---\ntags: [merge, glue_bench]\n---\n# {cfg.method.name} merge of zoo {cfg.zoo.name}\n\n"
            f"Made by glue_bench (job key `{job_key(payload)}`) from this resolved config:\n\n"
            f"```yaml\n{OmegaConf.to_yaml(OmegaConf.create(payload))}```\n")
    (out / "README.md").write_text(card)
    _log(f"saved the candidate to {out}")
    return out
