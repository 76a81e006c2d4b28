"""The composed config's own settings, checked where they enter (before any model is read), each
failure one line naming the setting and what it expects. The config groups with a module of their
own are checked there: eval (`evaluate.eval_config`), zoo (`zoo.check_zoo_config`), method
parameters (`MergeMethod.validate_early`), strategy/mixture/router (the candidate kinds)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from glue_bench.cache import cache_root
from glue_bench.errors import JobError
from glue_bench.evaluate import EvalConfig, eval_config
from glue_bench.zoo import mini_sizes

_FLAGS = ("force", "save", "print_table")


def check_config(cfg: DictConfig) -> EvalConfig:
    """The config's own settings, each fault in one line; returns the eval settings, checked."""
    for flag in _FLAGS:
        if not isinstance(cfg.get(flag), bool):
            raise JobError(f"{flag}={cfg.get(flag)!r}: expected true or false")
    if not isinstance(cfg.results_path, str) or not cfg.results_path:
        raise JobError(f"results_path={cfg.results_path!r}: expected the path of a results store (SQLite file)")
    _check_cache_root()
    if cfg.mini_size not in mini_sizes():
        raise JobError(f"mini_size={cfg.mini_size!r}: expected one of {', '.join(mini_sizes())}")
    params = cfg.method.get("params", {})
    if params is None or not (OmegaConf.is_dict(params) or isinstance(params, dict)):
        raise JobError(f"method.params={'null' if params is None else repr(params)}: expected a mapping of the method's parameters ({{}} for its defaults)")
    eval_settings = eval_config(OmegaConf.to_container(cfg.eval, resolve=True))
    _check_strategy_models(cfg.strategy.get("models"))
    if cfg.router.name != "none":
        _check_router(OmegaConf.to_container(cfg.router, resolve=True))
    if cfg.strategy.get("proxy") is not None:
        _check_proxy(OmegaConf.to_container(cfg.strategy.proxy, resolve=True), eval_settings.tasks, eval_settings.limit)
    return eval_settings


# router settings that must be positive integers, by router (conf/router/)
_ROUTER_COUNTS = {"prompt": ("n_prompts",), "mlp": ("documents", "width", "steps", "batch_size", "seq_len")}


def _check_router(router: dict) -> None:
    """The router's counts positive, its learning rate a positive number, its layer null or >= 0
    (checked against the base's depth when the router is built)."""
    for name in _ROUTER_COUNTS.get(router.get("name"), ()):
        value = router.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise JobError(f"router.{name}={value!r}: expected a positive integer")
    if "lr" in router and (isinstance(router["lr"], bool) or not isinstance(router["lr"], (int, float))
                           or not 0 < router["lr"] < float("inf")):
        raise JobError(f"router.lr={router['lr']!r}: expected a positive number")
    if "seed" in router and (isinstance(router["seed"], bool) or not isinstance(router["seed"], int)):
        raise JobError(f"router.seed={router['seed']!r}: expected an integer")
    layer = router.get("layer")
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 0):
        raise JobError(f"router.layer={layer!r}: expected null (the mean over all layers) or a layer index >= 0")


def _check_proxy(proxy: dict, tasks: list[str], limit: int | None = None) -> None:
    """strategy.proxy: a positive size that leaves final items in every mini task, within eval.limit
    (a task of lm-eval's registry is checked when its split is loaded), an integer seed."""
    from glue_bench.evaluate.tasks import TEST_ITEMS

    size, seed = proxy.get("size"), proxy.get("seed")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise JobError(f"strategy.proxy.size={size!r}: expected a positive integer (documents per task)")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise JobError(f"strategy.proxy.seed={seed!r}: expected an integer")
    within = {t: min(TEST_ITEMS[t], limit or TEST_ITEMS[t]) for t in tasks if t in TEST_ITEMS}
    if short := [f"{t} ({n} items{'' if n == TEST_ITEMS[t] else f', eval.limit={limit}'})"
                 for t, n in within.items() if n <= size]:
        raise JobError(f"strategy.proxy.size={size}: would leave no final test items for {', '.join(short)}")


def _check_cache_root() -> None:
    """GLUE_BENCH_CACHE (the mini zoo, statistics, compiled kernels): a folder, made if missing. A
    read-only one serves what it holds; only building into it needs writing."""
    root = cache_root()
    if root.exists() and not root.is_dir():
        raise JobError(f"GLUE_BENCH_CACHE={root}: is a file, expected a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise JobError(f"GLUE_BENCH_CACHE={root}: cannot create it ({err.strerror})") from None


def _check_strategy_models(models) -> None:
    if models is None:
        return
    models = OmegaConf.to_container(models) if OmegaConf.is_config(models) else models
    if not isinstance(models, list) or not models or not all(isinstance(m, str) and m for m in models):
        raise JobError(f"strategy.models={models!r}: expected a non-empty list of the zoo's model names")
    if twice := sorted({m for m in models if models.count(m) > 1}):
        raise JobError(f"strategy.models={models}: {', '.join(twice)} listed twice; each model may appear once")
