"""Zoos: named lists of models plus a base model, from conf/zoo/*.yaml.

A model reference is a mini-zoo name (built on demand into the cache), a local HF directory, a hub
id, or a local GGUF file. All load through `AutoModelForCausalLM.from_pretrained`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


class ZooError(Exception):
    """A zoo or one of its models cannot be used; the message is one line naming the culprit."""


@dataclass(frozen=True)
class ModelRef:
    name: str                 # short name used in tables
    source: str               # "mini" | "local" | "hub" | "gguf"
    location: str             # directory, hub id, or directory holding the GGUF file
    gguf_file: str | None = None


def zoo_config(zoo: str) -> dict:
    path = CONF_DIR / "zoo" / f"{zoo}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in (CONF_DIR / "zoo").glob("*.yaml"))
        raise ZooError(f"unknown zoo {zoo!r}; known: {', '.join(known)}")
    return yaml.safe_load(path.read_text())


def zoo_members(zoo: str) -> list[str]:
    return [m if isinstance(m, str) else m["name"] for m in zoo_config(zoo)["models"]]


def model_ref(entry: str | dict, source: str, mini_size: str = "mini") -> ModelRef:
    """Resolve one zoo entry (a name/id string, or a dict with name/path/gguf_file)."""
    if isinstance(entry, dict):
        path = os.path.expanduser(str(entry["path"]))
        if entry.get("gguf_file"):
            return ModelRef(entry["name"], "gguf", path, entry["gguf_file"])
        return ModelRef(entry["name"], "local", path)
    if source == "mini":
        from glue_bench.zoo.mini.build import model_dir

        return ModelRef(entry, "mini", str(model_dir(entry, mini_size)))
    if source == "local" or os.path.isdir(os.path.expanduser(entry)):
        return ModelRef(Path(entry).name, "local", os.path.expanduser(entry))
    return ModelRef(entry, "hub", entry)


def ensure_available(refs: list[ModelRef], mini_size: str = "mini") -> None:
    """Build missing mini-zoo models; check that local ones exist (one clear error otherwise)."""
    mini = [r.name for r in refs if r.source == "mini"]
    if mini:
        from glue_bench.zoo.mini.build import ensure_models

        ensure_models(mini, mini_size)
    for ref in refs:
        if ref.source in ("local", "gguf") and not os.path.isdir(ref.location):
            raise ZooError(f"model {ref.name!r}: directory {ref.location} does not exist")
        if ref.source == "local" and not os.path.exists(os.path.join(ref.location, "config.json")):
            raise ZooError(f"model {ref.name!r}: {ref.location} has no config.json (not a HF model directory)")
        if ref.source == "gguf" and not os.path.exists(os.path.join(ref.location, ref.gguf_file)):
            raise ZooError(f"model {ref.name!r}: GGUF file {ref.gguf_file} not found in {ref.location}")
