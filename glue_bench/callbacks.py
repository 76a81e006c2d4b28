"""The Hydra callback that prints a run's or a sweep's tables when it ends (conf/hydra/callbacks).

Kept apart from glue_bench.tables, whose imports (pandas, scipy, the evidence) it loads only when
there is a table to print: Hydra builds its callbacks before every run, skipped jobs included.
"""

from __future__ import annotations

import os

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import OmegaConf


class PrintTableCallback(Callback):
    """Prints the tables of the zoos a run or sweep used, when it ends (in the launching process)."""

    def on_run_end(self, config, **kwargs) -> None:
        if config.get("print_table", True) and os.path.exists(config.results_path):
            zoo = OmegaConf.to_container(config.zoo, resolve=True)
            from glue_bench.tables import print_tables

            print_tables(config.results_path, zoos=[config.zoo.name], zoo_cfg=zoo, mini_size=config.mini_size)

    def on_multirun_end(self, config, **kwargs) -> None:
        if not (config.get("print_table", True) and os.path.exists(config.results_path)):
            return
        from glue_bench.tables import print_tables

        for zoo in _swept_zoos(config):
            where = {"zoo_cfg": _zoo_config(config.hydra.job.config_name, zoo), "mini_size": config.mini_size}
            print_tables(config.results_path, zoos=[zoo], **where)


def _swept_zoos(config) -> list[str]:
    """Zoo names from the last `zoo=a,b` override (Hydra's last one wins), else the config's zoo."""
    zoos = [config.zoo.name]
    for override in config.hydra.overrides.task:
        key, _, value = override.partition("=")
        if key.lstrip("+~") == "zoo":
            zoos = [z.strip() for z in value.split(",") if z.strip()]
    return zoos


def _zoo_config(config_name: str, name: str) -> dict | None:
    """The zoo's config as this run composed it: found on Hydra's search path (--config-dir too)."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
    if loader is None:
        return None
    try:
        zoo = loader.load_configuration(config_name, overrides=[f"zoo={name}"], run_mode=RunMode.RUN).zoo
    except Exception:  # noqa: BLE001  not composable here: the table then looks in conf/zoo
        return None
    return OmegaConf.to_container(zoo, resolve=True)
