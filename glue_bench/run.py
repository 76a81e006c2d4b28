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
from glue_bench.evaluate import EvalConfig, evaluate_lm, evaluate_model, hf_lm, render_tasks
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
    if cfg.mixture.get("level") == "model" or cfg.strategy.name == "stack":
        payload.pop("method")  # not used: the same candidate whatever method is configured
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
    mixture = cfg.mixture.name != "none"
    if mixture:
        from glue_bench.mixture.build import LEVELS

        if cfg.mixture.get("level") not in LEVELS:
            raise JobError(f"mixture={cfg.mixture.name}: level {cfg.mixture.get('level')!r} is not implemented "
                           f"(available: {', '.join(LEVELS)})")
        if cfg.router.name == "none":
            raise JobError(f"mixture={cfg.mixture.name}: needs a router (router=prompt)")
    elif cfg.router.name != "none":
        raise JobError(f"router={cfg.router.name}: only mixtures route (add mixture=model)")
    stack = cfg.strategy.name == "stack"
    selective = cfg.strategy.name not in ("all", "stack")
    recipe = cfg.strategy.name == "glue_recipe"
    if recipe and cfg.mixture.get("level") != "model":
        raise JobError("strategy glue_recipe: mixes its families at the model level (add mixture=model router=prompt)")
    if stack and mixture:
        raise JobError(f"strategy stack with mixture={cfg.mixture.name}: not implemented")
    if selective and mixture and not recipe:
        raise JobError(f"strategy {cfg.strategy.name} with mixture={cfg.mixture.name}: not implemented "
                       "(a mixture takes strategy=all, optionally strategy.models=[...]; or strategy=glue_recipe)")
    if selective and cfg.method.name == "none":
        raise JobError(f"strategy {cfg.strategy.name}: needs a merge method (method=linear, ties, ...)")

    eval_cfg = EvalConfig(**OmegaConf.to_container(cfg.eval, resolve=True))
    refs, base = zoo_refs(cfg)
    members = selected_members(cfg, refs)
    if cfg.method.name != "none" and not mixture and not stack:
        from glue_bench.merge import get_method

        get_method(cfg.method.name).validate(_method_params(cfg), len(members))  # bad input fails early
    strategy = _instantiate_strategy(cfg) if selective else None
    ensure_available(refs + [base], cfg.mini_size)
    tasks_dir = _tasks_dir(cfg)
    provenance = _provenance()
    common = {"zoo": cfg.zoo.name, "strategy": cfg.strategy.name, "mixture": cfg.mixture.name,
              "router": cfg.router.name, **provenance}

    # single models (and the base, for reference): one job each, keyed by model + eval settings,
    # so every zoo and sweep shares them
    _evaluate_singles(store, refs, base, cfg, eval_cfg, tasks_dir, common)

    if cfg.method.name == "none" and not mixture and not stack:
        return {"status": "singles", "job_key": None}

    payload = candidate_payload(cfg)
    key = job_key(payload)
    if store.has_job(key):
        if not cfg.force:
            _log(f"job {key} already in the store; skipping (force=true re-runs it)")
            return {"status": "skipped", "job_key": key}
        store.delete_job(key)
    if stack:
        return _run_stack(cfg, store, key, payload, members, eval_cfg, tasks_dir, common)
    if recipe:
        return _run_recipe(cfg, strategy, store, key, payload, refs, members, base, eval_cfg, tasks_dir, common)
    if mixture:
        return _run_mixture(cfg, store, key, payload, members, base, eval_cfg, tasks_dir, common)
    if selective:
        return _run_selective(cfg, strategy, store, key, payload, refs, members, base, eval_cfg, tasks_dir, common)

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


def _evaluate_singles(store: ResultStore, refs: list[ModelRef], base: ModelRef, cfg: DictConfig,
                      eval_cfg: EvalConfig, tasks_dir, common: dict, samples: dict | None = None,
                      items: tuple[str, str] | None = None) -> None:
    """The base's and each single model's scores, each once per eval settings (and item set:
    `samples` as lm-eval takes them, `items` = (key, label))."""
    for ref in [base] + [r for r in refs if r.key != base.key]:
        key = job_key({"single": ref.key, "eval": _eval_payload(cfg), **({"items": items[0]} if items else {})})
        if store.has_job(key):
            continue
        _log(f"evaluating single model {ref.name}" + (f" on the {items[1]}" if items else ""))
        start = time.perf_counter()
        model, tok = load_model(ref, eval_cfg.device), load_tokenizer(ref)
        load_s = time.perf_counter() - start
        rows, stats = evaluate_model(model, tok, tasks_dir, eval_cfg, samples=samples)
        store.append_job(key, [{**common, **r, "candidate": ref.name, "method": "none", "strategy": "none",
                                "mixture": "none", "router": "none", "models": ref.name, "load_s": load_s,
                                "build_s": 0.0, "eval_s": stats["eval_s"], "items": items[1] if items else None,
                                "config": json.dumps({"model": ref.location})} for r in rows])


def _instantiate_strategy(cfg: DictConfig):
    from hydra.utils import instantiate

    search = cfg.strategy.get("search")
    if search is None or "_target_" not in search:
        raise JobError(f"strategy {cfg.strategy.name}: its config has no `search._target_`")
    try:
        return instantiate(search, _convert_="all")
    except Exception as exc:  # a wrong field or target: one line naming the strategy
        raise JobError(f"strategy {cfg.strategy.name}: cannot build its search: {' '.join(str(exc).split())}") from None


class ProxyCache:
    """Proxy scores of a search's candidates, kept in the results store as jobs of their own (rows
    marked `items = proxy ...`, never shown in tables): a later job, or a rerun, reuses them."""

    def __init__(self, store: ResultStore, meta: dict):
        self.store, self.meta = store, meta

    def __contains__(self, key: str) -> bool:
        return self.store.has_job(key)

    def __getitem__(self, key: str) -> tuple[float, dict[str, float]]:
        from glue_bench.select.proxy import primary_mean

        return primary_mean(self.store.job_rows(key))

    def __setitem__(self, key: str, value: tuple[float, dict[str, float]]) -> None:
        from glue_bench.evaluate import PRIMARY_METRIC

        _, per_task = value
        self.store.append_job(key, [{**self.meta, "task": t, "metric": PRIMARY_METRIC[t], "value": v}
                                    for t, v in per_task.items()])


def _run_selective(cfg, strategy, store, key, payload, refs, members, base, eval_cfg, tasks_dir, common) -> dict:
    """A selective strategy: search on the proxy set, then judge the choice, every single model and
    the merge of all candidates on the test items outside the proxy set."""
    from glue_bench.merge.engine import TensorSource
    from glue_bench.select.cluster import architecture_groups
    from glue_bench.select.problem import dumps
    from glue_bench.select.report import ZooSearch

    method = cfg.method.name
    proxy, described, final = _proxy_and_final_items(cfg, eval_cfg, tasks_dir)
    sources = {m.name: TensorSource(m.name, local_dir(m)) for m in members}
    # the candidates: the largest group of mutually mergeable models (the zoo's order among ties)
    groups = architecture_groups(list(sources.values()))
    pool_names = {s.name for s in max(groups, key=len)}
    pool = [m for m in members if m.name in pool_names]
    if excluded := [m.name for m in members if m.name not in pool_names]:
        _log(f"{cfg.strategy.name}: left out, not mergeable with the others: {', '.join(excluded)}")
    zs = ZooSearch(pool, [sources[m.name] for m in pool], TensorSource(base.name, local_dir(base)),
                   load_tokenizer(pool[0]), tasks_dir, eval_cfg, proxy)
    out_dir = _output_dir()
    cache = ProxyCache(store, {**common, "candidate": "proxy", "method": method, "items": f"proxy {described}"})
    problem = zs.problem(method, _method_params(cfg), cache=cache, out_dir=out_dir)
    _log(f"{cfg.strategy.name}: searching over {', '.join(problem.names)} with {method}")
    start = time.perf_counter()
    choice = strategy.run(problem)
    search_s = time.perf_counter() - start
    problem.write("choice.json", dumps({"candidate": choice.candidate, "proxy_score": choice.proxy_score,
                                        "left_out": excluded, **choice.details}))
    _log(f"{cfg.strategy.name}: chose {json.dumps(choice.candidate)} (proxy score {choice.proxy_score:.3f}, "
         f"{problem.fitness.builds} candidates evaluated, {search_s:.0f} s)")

    samples = _judge_singles(store, proxy, final, refs, base, cfg, eval_cfg, tasks_dir, common)
    all_key = job_key({"all": [m.key for m in pool], "method": OmegaConf.to_container(cfg.method, resolve=True),
                       "eval": _eval_payload(cfg), "items": proxy.key})
    if not store.has_job(all_key):
        _log(f"evaluating {method} of all {len(pool)} candidates on the {final[1]}")
        rows, stats = evaluate_model(problem.builder(problem.fixed), zs.tokenizer, tasks_dir, eval_cfg, samples=samples)
        store.append_job(all_key, [{**common, **r, "strategy": "all", "candidate": f"{method}(all {len(pool)})",
                                    "method": method, "models": problem.names, "eval_s": stats["eval_s"],
                                    "items": final[1]} for r in rows])
    model = problem.builder(choice.candidate)
    rows, stats = evaluate_model(model, zs.tokenizer, tasks_dir, eval_cfg, samples=samples)
    chosen = _chosen_models(choice.candidate, problem.names)
    config = {**payload, "chosen": choice.candidate, "proxy_score": choice.proxy_score}
    store.append_job(key, [{**common, **r, "candidate": f"{cfg.strategy.name}({method})", "method": method,
                            "models": chosen, "build_s": search_s, "eval_s": stats["eval_s"], "items": final[1],
                            "config": json.dumps(config, sort_keys=True, default=str)} for r in rows])
    if cfg.save:
        if "path" in choice.candidate:  # its input scales are forward hooks: no standard format holds them
            _log("save=true: a data-flow candidate is not saved (choice.json describes it)")
        else:
            _save_candidate(model, zs.tokenizer, cfg, config, key)
    return {"status": "done", "job_key": key, "search_s": search_s, "proxy_score": choice.proxy_score, **stats}


def _proxy_and_final_items(cfg, eval_cfg: EvalConfig, tasks_dir):
    """The strategy's proxy set, a label of it, and (key, label) of the final items."""
    from glue_bench.evaluate import selected_tasks
    from glue_bench.select.proxy import ProxySet

    proxy_cfg = cfg.strategy.proxy
    proxy = ProxySet.draw(tasks_dir, selected_tasks(eval_cfg), proxy_cfg.size, proxy_cfg.seed)
    described = f"({proxy_cfg.size}/task, seed {proxy_cfg.seed}, {proxy.key[:8]})"
    return proxy, described, (proxy.key, f"final items: test minus proxy {described}")


def _judge_singles(store, proxy, final, refs, base, cfg, eval_cfg, tasks_dir, common) -> dict:
    """Every single model (and the base) on the final items; returns those items as lm-eval samples."""
    samples = {t: list(i) for t, i in proxy.final.items()}
    _evaluate_singles(store, refs, base, cfg, eval_cfg, tasks_dir, common, samples, final)
    return samples


def _run_recipe(cfg, strategy, store, key, payload, refs, members, base, eval_cfg, tasks_dir, common) -> dict:
    """The Model-GLUE recipe: families, a selective merge in each, a model-level mixture of their
    representatives; judged on the final items beside every single model, each family's merge and
    the model-level mixture of all the models."""
    from glue_bench.merge.engine import TensorSource
    from glue_bench.mixture.build import MixtureError, model_mixture
    from glue_bench.mixture.recipe import families, recipe_mixture, representatives
    from glue_bench.select.problem import dumps
    from glue_bench.select.report import ZooSearch

    method, recipe_cfg = cfg.method.name, cfg.strategy.recipe
    router_cfg = OmegaConf.to_container(cfg.router, resolve=True)
    proxy, described, final = _proxy_and_final_items(cfg, eval_cfg, tasks_dir)
    sources = {m.name: TensorSource(m.name, local_dir(m)) for m in members}
    start = time.perf_counter()
    groups = families(members, sources, recipe_cfg.threshold, recipe_cfg.rule)
    _log(f"recipe: families {' | '.join(', '.join(r.name for r in g) for g in groups)}")
    zs = ZooSearch(members, list(sources.values()), TensorSource(base.name, local_dir(base)),
                   load_tokenizer(members[0]), tasks_dir, eval_cfg, proxy)
    cache = ProxyCache(store, {**common, "candidate": "proxy", "method": method, "items": f"proxy {described}"})
    reps = representatives(groups, zs, strategy, method, _method_params(cfg), cache, _output_dir(), log=_log)
    try:
        lm = recipe_mixture(reps, base, router_cfg, eval_cfg)
    except MixtureError as err:
        raise JobError(str(err)) from None
    build_s = time.perf_counter() - start
    summary = [{"family": [r.name for r in rep.members], "expert": rep.name, "chosen": rep.candidate,
                "proxy_score": rep.proxy_score} for rep in reps]
    out_dir = _output_dir()
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "choice.json").write_text(dumps({"representatives": summary,
                                                    "details": {rep.name: rep.details for rep in reps}}))

    samples = _judge_singles(store, proxy, final, refs, base, cfg, eval_cfg, tasks_dir, common)
    judged = {}  # label -> (key, build an lm-eval LM or a model + its tokenizer)
    everything = job_key({"mixture_all": [m.key for m in members], "router": router_cfg,
                          "eval": _eval_payload(cfg), "items": proxy.key})
    judged[f"mixture(model, {cfg.router.name}) of all {len(members)}"] = (
        everything, lambda: model_mixture(members, base, {"top_k": 1}, router_cfg, eval_cfg))
    for rep in reps:
        if rep.candidate is not None:
            family_key = job_key({"family": [r.key for r in rep.members], "chosen": rep.candidate,
                                  "method": method, "eval": _eval_payload(cfg), "items": proxy.key})
            judged[f"family merge ({method}) of {rep.name}"] = (
                family_key, lambda rep=rep: hf_lm(rep.model, rep.tokenizer, eval_cfg))
    for label, (job, build) in judged.items():
        if not store.has_job(job):
            _log(f"evaluating {label} on the {final[1]}")
            rows, stats = evaluate_lm(build(), tasks_dir, eval_cfg, samples=samples)
            store.append_job(job, [{**common, **r, "candidate": label, "method": method, "items": final[1],
                                    "eval_s": stats["eval_s"]} for r in rows])
    rows, stats = evaluate_lm(lm, tasks_dir, eval_cfg, samples=samples)
    routed = {name: lm.usage.get(name, 0) for name in lm.names}
    _log(f"recipe: documents routed to each expert: {routed}")
    store.append_job(key, [{**common, **r, "candidate": f"glue_recipe({method}, {cfg.router.name})", "method": method,
                            "models": [m.name for m in members], "build_s": build_s, "eval_s": stats["eval_s"],
                            "items": final[1], "config": json.dumps({**payload, "representatives": summary,
                                                                     "routed": routed}, sort_keys=True, default=str)}
                           for r in rows])
    return {"status": "done", "job_key": key, "build_s": build_s, "routed": routed, **stats}


def _run_stack(cfg, store, key, payload, members, eval_cfg, tasks_dir, common) -> dict:
    from glue_bench.merge import MergeError
    from glue_bench.mixture.stack import build_stack

    names = [m.name for m in members]
    mode, drop = cfg.strategy.mode, int(cfg.strategy.drop)
    _log(f"stacking {', '.join(names)} ({mode}, drop {drop})")
    start = time.perf_counter()
    try:
        model = build_stack(members, mode, drop, eval_cfg.device)
    except (ValueError, MergeError) as err:
        raise JobError(f"strategy stack: {err}") from None
    build_s = time.perf_counter() - start
    tok = load_tokenizer(members[0])
    rows, stats = evaluate_model(model, tok, tasks_dir, eval_cfg)
    label = f"{mode}({'+'.join(names)}{f', drop {drop}' if drop else ''})"
    store.append_job(key, [{**common, **r, "candidate": label, "method": "stack", "models": names, "build_s": build_s,
                            "eval_s": stats["eval_s"], "config": json.dumps(payload, sort_keys=True)} for r in rows])
    if cfg.save:
        _save_candidate(model, tok, cfg, payload, key)
    return {"status": "done", "job_key": key, "build_s": build_s, "layers": len(model.model.layers), **stats}


def _run_mixture(cfg, store, key, payload, members, base, eval_cfg, tasks_dir, common) -> dict:
    from glue_bench.mixture.build import MixtureError, layered_mixture_lm, model_mixture

    names = [m.name for m in members]
    level = cfg.mixture.level
    _log(f"mixing {', '.join(names)} at {level} level, router {cfg.router.name}")
    mixture_cfg = OmegaConf.to_container(cfg.mixture, resolve=True)
    router_cfg = OmegaConf.to_container(cfg.router, resolve=True)
    start = time.perf_counter()
    try:
        if level == "model":
            lm = model_mixture(members, base, mixture_cfg, router_cfg, eval_cfg)
        else:
            lm, model = layered_mixture_lm(members, base, cfg.method.name, _method_params(cfg), mixture_cfg,
                                       router_cfg, eval_cfg)
    except MixtureError as err:
        raise JobError(str(err)) from None
    build_s = time.perf_counter() - start
    rows, stats = evaluate_lm(lm, tasks_dir, eval_cfg)
    if level == "model":
        routed = {name: lm.usage.get(name, 0) for name in names}
        _log(f"documents routed to each expert: {routed}")
    else:
        from glue_bench.mixture.layered import routed_layers

        per_expert = sum(layer.tokens_routed for layer in routed_layers(model))
        routed = dict(zip(names, per_expert.tolist()))
        _log(f"(token, layer) pairs routed to each expert: {routed}")
    details = "" if level == "model" else f", {mixture_cfg.get('routing', 'token')}" + (
        f", dense {mixture_cfg['dense_layers']}" if mixture_cfg.get("dense_layers") else "")
    label = f"mixture({cfg.mixture.name}, {cfg.router.name}{details})"
    if cfg.save:
        _save_mixture(model if level != "model" else None, members, mixture_cfg)
    method = "none" if level == "model" else cfg.method.name
    store.append_job(key, [{**common, **r, "candidate": label, "method": method, "models": names,
                            "build_s": build_s, "eval_s": stats["eval_s"],
                            "config": json.dumps({**payload, "routed": routed}, sort_keys=True)} for r in rows])
    return {"status": "done", "job_key": key, "build_s": build_s, "routed": routed, **stats}


def _save_mixture(model, members, mixture_cfg: dict) -> None:
    """save=true: an FFN-level mixture with linear gates and token routing as a Mixtral checkpoint;
    the others have no standard format (their config and glue_bench rebuild them)."""
    from glue_bench.mixture.layered import save_mixtral

    why = None
    if mixture_cfg["level"] != "ffn":
        why = f"a {mixture_cfg['level']}-level mixture has no standard format"
    elif mixture_cfg.get("routing", "token") != "token":
        why = "Mixtral routes each token: a sample-routed mixture has no standard format"
    if why is None:
        out = _output_dir() / "candidate"
        try:
            save_mixtral(model, load_tokenizer(members[0]), out)
            _log(f"saved the mixture as a Mixtral checkpoint to {out}")
            return
        except ValueError as err:
            why = str(err)
    _log(f"save=true: not saved ({why}); the job's config rebuilds it")


def _chosen_models(candidate: dict, names: list[str]) -> list[str]:
    """The models a chosen candidate is built from (a weight list may be anchors over depth)."""
    if "model" in candidate:
        return [candidate["model"]]
    if "path" in candidate:
        return sorted({source for source, _, _ in candidate["path"]})
    weights = candidate.get("weights") or [1.0] * len(names)
    return [n for n, w in zip(names, weights) if any(v != 0 for v in (w if isinstance(w, list) else [w]))]


def _output_dir() -> Path | None:
    from hydra.core.hydra_config import HydraConfig

    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # not under Hydra (a test calling run_job directly)
        return None


def _method_params(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg.method.params, resolve=True) or {}


def _tasks_dir(cfg: DictConfig) -> Path:
    from glue_bench.zoo.mini.build import ensure_data, size_dir

    return render_tasks(ensure_data(cfg.mini_size), size_dir(cfg.mini_size) / "lm_eval_tasks")


def _save_candidate(model, tok, cfg: DictConfig, payload: dict, key: str | None = None) -> Path:
    from hydra.core.hydra_config import HydraConfig

    out = Path(HydraConfig.get().runtime.output_dir) / "candidate"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    card = (f"---\ntags: [merge, glue_bench]\n---\n# {cfg.method.name} merge of zoo {cfg.zoo.name}\n\n"
            f"Made by glue_bench (job key `{key or job_key(payload)}`) from this resolved config:\n\n"
            f"```yaml\n{OmegaConf.to_yaml(OmegaConf.create(payload))}```\n")
    (out / "README.md").write_text(card)
    _log(f"saved the candidate to {out}")
    return out
