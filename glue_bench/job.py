"""A job: what every candidate kind needs, resolved once from the composed config.

The job key is a stable hash of the resolved config (minus the settings that do not change a
score), so a sweep re-run skips finished jobs and parallel jobs never store one twice. Single
models are jobs of their own, keyed by the model and the eval settings, so every zoo shares them.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from glue_bench.console import log
from glue_bench.costs import measuring
from glue_bench.errors import JobError
from glue_bench.evaluate import EvalConfig, eval_config, eval_threads, evaluate_model, render_tasks
from glue_bench.evaluate import tasks as mini_tasks
from glue_bench.provenance import machine_facts
from glue_bench.results import ResultStore
from glue_bench.zoo import (ModelRef, add_bos_token, ensure_available, load_model, load_tokenizer, rendered_tasks_dir,
                            resolve_zoo, task_data, weights_fingerprint, zoo_replicate)

# config keys that do not change a job's scores, so they stay out of its key
_NOT_IN_KEY = ("results_path", "force", "save", "print_table")
_NOT_IN_EVAL_KEY = ("batch_size", "threads")  # how fast, not what is scored


def job_key(payload: dict) -> str:
    """Stable hash of a resolved config: sorted JSON, so key order never matters."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ItemSet:
    """Test items a candidate is judged on, other than the whole split: lm-eval `samples`
    (task -> document indices), the key that identifies them and the label rows carry."""
    samples: dict[str, list[int]]
    key: str
    label: str


@dataclass
class Job:
    cfg: DictConfig
    store: ResultStore
    eval_cfg: EvalConfig
    refs: list[ModelRef]          # the zoo's models
    base: ModelRef
    members: list[ModelRef]       # the ones the candidate is built from (strategy.models, else all)
    payload: dict                 # the resolved config the key is made of
    key: str
    common: dict                  # what every row of the job carries: zoo, axes, provenance
    tasks_dir: Path | None = None  # rendered task YAMLs (`prepare`)
    replicate: int = 0            # which independent build of the mini zoo
    preset: str | None = None     # the experiment preset running it: every job it stores or reuses is linked to it

    @classmethod
    def from_config(cls, cfg: DictConfig, unused: tuple[str, ...] = (), eval_cfg: EvalConfig | None = None) -> "Job":
        """Everything cheap: no model is built or read. `unused`: config groups the candidate
        kind ignores, left out of the key (the same candidate whatever they say). `eval_cfg`: the
        eval settings as `validate.check_config` checked them (else checked here)."""
        store = ResultStore(cfg.results_path)  # a corrupt store fails here, before any work
        if eval_cfg is None:
            eval_cfg = eval_config(OmegaConf.to_container(cfg.eval, resolve=True))
        zoo_cfg = OmegaConf.to_container(cfg.zoo, resolve=True)
        refs, base = resolve_zoo(zoo_cfg, cfg.mini_size)
        replicate = zoo_replicate(zoo_cfg)
        full = OmegaConf.to_container(cfg, resolve=True)
        payload = {k: v for k, v in full.items() if k not in _NOT_IN_KEY and k not in unused}
        if not replicate:  # replicate 0 keeps the keys jobs had before there were replicates
            payload["zoo"].pop("replicate", None)
        payload["eval"] = eval_payload(cfg)
        payload["models"] = [r.key for r in refs]
        common = {"zoo": cfg.zoo.name, "strategy": cfg.strategy.name, "mixture": cfg.mixture.name,
                  "router": cfg.router.name, "replicate": replicate,
                  **_provenance(eval_cfg.device, eval_threads(eval_cfg.threads))}
        return cls(cfg, store, eval_cfg, refs, base, selected_members(cfg, refs), payload, job_key(payload), common,
                   replicate=replicate)

    def prepare(self) -> None:
        """The models on disk (mini-zoo models built if missing) and the task YAMLs rendered."""
        ensure_available(self.refs + [self.base], self.cfg.mini_size)
        size, replicate = self.cfg.mini_size, self.replicate  # the replicate's own test splits
        self.tasks_dir = render_tasks(task_data(size, replicate), rendered_tasks_dir(size, replicate))

    @property
    def method(self) -> str:
        return self.cfg.method.name

    @property
    def method_params(self) -> dict:
        return OmegaConf.to_container(self.cfg.method.params, resolve=True) or {}

    def section(self, group: str) -> dict:
        """One config group, resolved (e.g. `mixture`, `router`)."""
        return OmegaConf.to_container(self.cfg[group], resolve=True)

    def sub_key(self, what: dict, items: ItemSet | None = None) -> str:
        """The key of another job this one stores (a single model, the merge of all candidates...):
        `what` identifies it; the eval settings and the item set complete it."""
        return job_key({**what, "eval": self.payload["eval"], **({"items": items.key} if items else {})})

    def evaluate_singles(self, items: ItemSet | None = None) -> None:
        """The base's and each single model's scores, each once per eval settings and item set."""
        for ref in [self.base] + [r for r in self.refs if r.key != self.base.key]:
            bos = add_bos_token(ref, self.eval_cfg.add_bos_token)
            # a model evaluated by a BOS convention of its own is another job than under the eval
            # setting; the key says so only then, so that the keys of every other single hold
            key = self.sub_key({"single": ref.key, **({} if bos == self.eval_cfg.add_bos_token else
                                                      {"add_bos_token": bos})}, items)
            if self.stored(key):
                continue
            log(f"evaluating single model {ref.name}" + (f" on the {items.label}" if items else ""))
            start = time.perf_counter()
            model, tok = load_model(ref, self.eval_cfg.device), load_tokenizer(ref)
            load_s = time.perf_counter() - start
            with measuring(kind="single"):
                rows, stats = evaluate_model(model, tok, self.tasks_dir, self.eval_cfg,
                                             samples=items.samples if items else None, add_bos_token=bos)
            self.store_evaluation(key, rows, stats, items, candidate=ref.name, method="none", strategy="none",
                                  mixture="none", router="none", models=ref.name, load_s=load_s, build_s=0.0,
                                  weights=weights_fingerprint(ref),
                                  config=json.dumps({"model": ref.location, "key": ref.key}))

    def stored(self, key: str) -> bool:
        """Whether job `key` is in the store already (then linked to this job's preset, which reuses it)."""
        if not self.store.has_job(key):
            return False
        if self.preset:
            self.store.link(key, self.preset)
        return True

    def store_evaluation(self, key: str, rows: list[dict], stats: dict, items: ItemSet | None, *,
                         replace: bool = False, **fields) -> None:
        """One evaluation's rows (one per task and metric) and per-item outcomes, in one transaction:
        the job's common fields (zoo, strategy, replicate, machine...), the evaluation's, the item
        set it was judged on, and `fields` (candidate, method, models, weights...), which win."""
        self.store.append_job(key, [{**self.common, **r, "items": items.label if items else None,
                                     "eval_s": stats["eval_s"], **fields} for r in rows],
                              outcomes=stats["outcomes"], replace=replace, preset=self.preset)

    @property
    def output_dir(self) -> Path | None:
        from hydra.core.hydra_config import HydraConfig

        try:
            return Path(HydraConfig.get().runtime.output_dir)
        except ValueError:  # not under Hydra (a test calling run_job directly)
            return None


def eval_payload(cfg: DictConfig) -> dict:
    """The eval settings that change a score; for the mini tasks, which version of their test
    splits too (the same settings on other items are another job), left out for the first
    version so that the jobs stored then keep their keys."""
    ev = OmegaConf.to_container(cfg.eval, resolve=True)
    payload = {k: v for k, v in ev.items() if k not in _NOT_IN_EVAL_KEY}
    if mini_tasks.SPLITS_VERSION != 1 and any(str(task).startswith("mini_") for task in ev.get("tasks") or ()):
        payload["mini_test_splits"] = mini_tasks.SPLITS_VERSION
    return payload


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


def _provenance(device: str, threads: int) -> dict:
    versions = {p: _version(p) for p in ("glue_bench", "torch", "transformers", "lm_eval")}
    try:  # stderr captured: outside a git checkout git's "fatal: not a git repository" is no news
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"versions": json.dumps(versions), "git_commit": commit, "machine": machine_facts(device, threads)}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
