"""A zoo's YAML (conf/zoo/*.yaml): read, checked, and its entries' names."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from glue_bench.zoo.refs import ZooError, check_replicate

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def zoo_config(zoo: str) -> dict:
    path = CONF_DIR / "zoo" / f"{zoo}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in (CONF_DIR / "zoo").glob("*.yaml"))
        raise ZooError(f"unknown zoo {zoo!r}; known: {', '.join(known)}")
    return yaml.safe_load(path.read_text())


def zoo_members(zoo: str) -> list[str]:
    config = zoo_config(zoo)
    return [entry_name(m, config["source"]) for m in config["models"]]


def entry_name(entry: str | dict, source: str) -> str:
    """The short name a zoo entry goes by in results and tables (the same as `model_ref(...).name`)."""
    if isinstance(entry, dict):
        return entry["name"]
    if source != "mini" and (source == "local" or os.path.isdir(os.path.expanduser(entry))):
        return Path(entry).name
    return entry


def zoo_replicate(config: dict) -> int:
    """The zoo config's `replicate` (0 when absent), which only a mini zoo can have other than 0:
    the other sources' models are what they are."""
    replicate = check_replicate(config.get("replicate", 0), f"zoo {config.get('name', '?')}: replicate")
    if replicate and config["source"] != "mini":
        raise ZooError(f"zoo {config.get('name', '?')}: replicate={replicate} needs source: mini "
                       f"(this zoo's source is {config['source']})")
    return replicate


SOURCES = ("mini", "local", "hub")


def check_zoo_config(config) -> None:
    """A zoo's YAML: a name, a known source, a base and a non-empty list of models, each entry a
    name/id/path or a {name, path[, gguf_file][, add_bos_token]} mapping; one line naming the key at fault."""
    if not isinstance(config, dict):
        raise ZooError(f"zoo config: expected a mapping with name, source, base and models, got {config!r}")
    name = config.get("name")
    if not isinstance(name, str) or not name:
        raise ZooError(f"zoo config: 'name' must be a non-empty string, got {name!r}")
    if config.get("source") not in SOURCES:
        raise ZooError(f"zoo {name}: source must be one of {', '.join(SOURCES)}, got {config.get('source')!r}")
    for key in ("base", "models"):
        if config.get(key) is None:
            raise ZooError(f"zoo {name}: no {key!r} (a zoo names its base model and a list of models)")
    models = config["models"]
    if not isinstance(models, list) or not models:
        raise ZooError(f"zoo {name}: 'models' must be a non-empty list of models, got {models!r}")
    for where, entry in [("base", config["base"])] + [(f"models[{i}]", m) for i, m in enumerate(models)]:
        _check_entry(f"zoo {name}: {where}", entry)


def _check_entry(where: str, entry) -> None:
    if isinstance(entry, str) and entry:
        return
    if isinstance(entry, dict):
        bad = [k for k in ("name", "path") if not isinstance(entry.get(k), str) or not entry.get(k)]
        unknown = sorted(set(entry) - {"name", "path", "gguf_file", "add_bos_token"})
        if not bad and not unknown:
            if not isinstance(entry.get("add_bos_token", False), bool):
                raise ZooError(f"{where}: add_bos_token={entry['add_bos_token']!r}: expected true or false")
            return
        raise ZooError(f"{where}: a model mapping needs a string name and path (and optionally gguf_file, "
                       f"add_bos_token), got {entry!r}")
    raise ZooError(f"{where}: expected a model name, hub id or path, or {{name, path}}, got {entry!r}")
