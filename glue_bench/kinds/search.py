"""What the search-based kinds (selective, recipe) share: the strategy's search, its proxy set and
final items, and the proxy scores kept in the results store."""

from __future__ import annotations

import re

from omegaconf import DictConfig

from glue_bench.errors import JobError
from glue_bench.job import ItemSet, Job
from glue_bench.results import ResultStore


def searching_refusal(cfg: DictConfig) -> str | None:
    if cfg.method.name == "none":
        return f"strategy {cfg.strategy.name}: needs a merge method (method=linear, ties, ...)"
    return None


def instantiate_search(cfg: DictConfig):
    """The strategy's search object (`strategy.search._target_`), or one line naming the strategy."""
    from hydra.utils import instantiate

    search = cfg.strategy.get("search")
    if search is None or "_target_" not in search:
        raise JobError(f"strategy {cfg.strategy.name}: its config has no `search._target_`")
    try:
        return instantiate(search, _convert_="all")
    except Exception as exc:
        full_key = re.search(r"full_key: (\S+)", str(exc))
        if isinstance(exc.__cause__, ValueError) and full_key:  # a setting the search refused: name it
            raise JobError(f"{full_key.group(1)}.{exc.__cause__}") from None
        # a wrong field or target: one line naming the strategy
        raise JobError(f"strategy {cfg.strategy.name}: cannot build its search: {' '.join(str(exc).split())}") from None


def proxy_and_final_items(job: Job):
    """The strategy's proxy set, a label of it, and the final items (the test split minus the proxy
    set), where the search's choice is judged."""
    from glue_bench.evaluate import selected_tasks
    from glue_bench.select.proxy import ProxySet

    proxy_cfg = job.cfg.strategy.proxy
    proxy = ProxySet.draw(job.tasks_dir, selected_tasks(job.eval_cfg), proxy_cfg.size, proxy_cfg.seed,
                          limit=job.eval_cfg.limit)
    described = f"({proxy_cfg.size}/task, seed {proxy_cfg.seed}, {proxy.key[:8]})"
    final = ItemSet({t: list(i) for t, i in proxy.final.items()}, proxy.key,
                    f"final items: test minus proxy {described}")
    return proxy, described, final


def proxy_cache(job: Job, described: str) -> "ProxyCache":
    return ProxyCache(job.store, {**job.common, "candidate": "proxy", "method": job.method,
                                  "items": f"proxy {described}"})


class ProxyCache:
    """Proxy scores of a search's candidates, kept in the results store as jobs of their own (rows
    marked `items = proxy ...`, never shown in tables), with their per-item outcomes: a later job,
    or a rerun, reuses them."""

    def __init__(self, store: ResultStore, meta: dict):
        self.store, self.meta = store, meta

    def __contains__(self, key: str) -> bool:
        return self.store.has_job(key)

    def __getitem__(self, key: str) -> tuple[float, dict[str, float]]:
        from glue_bench.select.proxy import primary_mean

        return primary_mean(self.store.job_rows(key))

    def __setitem__(self, key: str, value: tuple[float, dict[str, float], list[dict]]) -> None:
        """value: (score, per_task, per-item outcomes), each row with its closed-form stderr."""
        from glue_bench.evaluate import PRIMARY_METRIC, with_stderr

        _, per_task, outcomes = value
        rows = [{**self.meta, "task": t, "metric": PRIMARY_METRIC[t], "value": v, "stderr": None}
                for t, v in per_task.items()]
        self.store.append_job(key, with_stderr(rows, outcomes), outcomes=outcomes)
