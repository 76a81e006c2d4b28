"""The composed config's own settings, checked where they enter (before any model is read), each
failure one line naming the setting and what it expects. The config groups with a module of their
own are checked there: eval (`evaluate.eval_config`), zoo (`zoo.check_zoo_config`), method
parameters (`MergeMethod.validate_early`), strategy/mixture/router (the candidate kinds)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from glue_bench.errors import JobError
from glue_bench.evaluate import eval_config

_FLAGS = ("force", "save", "print_table")


def check_config(cfg: DictConfig) -> None:
    from glue_bench.zoo.mini.spec import SIZES

    for flag in _FLAGS:
        if not isinstance(cfg.get(flag), bool):
            raise JobError(f"{flag}={cfg.get(flag)!r}: expected true or false")
    if not isinstance(cfg.results_path, str) or not cfg.results_path:
        raise JobError(f"results_path={cfg.results_path!r}: expected the path of a results store (SQLite file)")
    if cfg.mini_size not in SIZES:
        raise JobError(f"mini_size={cfg.mini_size!r}: expected one of {', '.join(SIZES)}")
    eval_config(OmegaConf.to_container(cfg.eval, resolve=True))
    _check_strategy_models(cfg.strategy.get("models"))


def _check_strategy_models(models) -> None:
    if models is None:
        return
    models = OmegaConf.to_container(models) if OmegaConf.is_config(models) else models
    if not isinstance(models, list) or not models or not all(isinstance(m, str) and m for m in models):
        raise JobError(f"strategy.models={models!r}: expected a non-empty list of the zoo's model names")
    if twice := sorted({m for m in models if models.count(m) > 1}):
        raise JobError(f"strategy.models={models}: {', '.join(twice)} listed twice; each model may appear once")
