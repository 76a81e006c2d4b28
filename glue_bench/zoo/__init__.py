"""The model pool: zoos (named lists of models plus a base model, conf/zoo/*.yaml) resolved into
model references, and everything the rest of glue_bench asks of a model, asked here.

A reference (`refs.ModelRef`) is a mini-zoo name (built on demand into the cache), a local HF
directory, a hub id, or a local GGUF file; each source answers for its own (`sources.Source`; the
mini zoo's: `mini.source`). Nothing outside this package imports `glue_bench.zoo.mini`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from glue_bench.zoo.configs import CONF_DIR, SOURCES, check_zoo_config, entry_name, zoo_config, zoo_members, zoo_replicate
from glue_bench.zoo.refs import ModelRef, ZooError, check_replicate, mini_key_parts
from glue_bench.zoo.sources import GGUFSource, HubSource, Source

__all__ = [  # the pool: what every layer above asks of a zoo and its models
    "CONF_DIR", "SOURCES", "ModelRef", "Source", "ZooError", "add_bos_token", "check_distinct", "check_replicate",
    "check_zoo_config", "declared_depth", "ensure_available", "entry_name", "load_model", "load_tokenizer",
    "local_dir", "mini_build_seconds", "mini_design", "mini_key_parts", "mini_sizes", "model_ref", "own_documents",
    "rendered_tasks_dir", "resolve_zoo", "source_of", "task_data", "tokenizer_identity", "weights_fingerprint",
    "zoo_config", "zoo_members", "zoo_replicate"]


def model_ref(entry: str | dict, source: str, mini_size: str = "mini", replicate: int = 0) -> ModelRef:
    """Resolve one zoo entry (a name/id string, or a dict with name/path[/gguf_file][/add_bos_token])."""
    if isinstance(entry, dict):
        path = _resolve_path(str(entry["path"]))
        bos = entry.get("add_bos_token")
        if entry.get("gguf_file"):
            return ModelRef(entry["name"], "gguf", path, entry["gguf_file"], key=f"{path}/{entry['gguf_file']}",
                            add_bos_token=bos)
        return ModelRef(entry["name"], "local", path, key=path, add_bos_token=bos)
    if source == "mini":
        return source_of("mini").ref(entry, mini_size, replicate)
    if source == "local" or os.path.isdir(os.path.expanduser(entry)):
        return ModelRef(entry_name(entry, source), "local", os.path.expanduser(entry), key=os.path.expanduser(entry))
    return ModelRef(entry, "hub", entry, key=f"hub:{entry}")


def resolve_zoo(config: dict, mini_size: str = "mini") -> tuple[list[ModelRef], ModelRef]:
    """A zoo's members and base, from its config (`zoo_config(name)`, or a composed one), at the
    config's replicate."""
    check_zoo_config(config)
    replicate = zoo_replicate(config)
    refs = [model_ref(m, config["source"], mini_size, replicate) for m in config["models"]]
    check_distinct(f"zoo {config['name']}", refs)
    return refs, model_ref(config["base"], config["source"], mini_size, replicate)


def check_distinct(where: str, refs: list[ModelRef]) -> None:
    """No model twice: not under one name, nor under two names that resolve to the same weights
    (a merge of a model with itself would be stored as a merge of two)."""
    seen: dict[str, ModelRef] = {}
    for ref in refs:
        for identity in {ref.name, ref.key}:
            if identity in seen:
                other = seen[identity]
                same = "is listed twice" if other.name == ref.name else f"and {other.name!r} are the same model ({ref.key})"
                raise ZooError(f"{where}: model {ref.name!r} {same}; each model may appear once")
            seen[identity] = ref


def _resolve_path(path: str) -> str:
    """`pkg://name` is the directory of an installed Python package (e.g. one shipping a GGUF)."""
    if not path.startswith("pkg://"):
        return os.path.expanduser(path)
    import importlib.util

    spec = importlib.util.find_spec(path.removeprefix("pkg://"))
    if spec is None or not spec.submodule_search_locations:
        raise ZooError(f"package {path.removeprefix('pkg://')!r} is not installed (needed for {path})")
    return list(spec.submodule_search_locations)[0]


def source_of(ref: ModelRef | str) -> Source:
    """The `Source` that answers for a reference (or a source's name)."""
    name = ref if isinstance(ref, str) else ref.source
    if name == "mini":
        from glue_bench.zoo.mini.source import MiniSource  # the mini zoo's build machinery loads only when used

        return MiniSource()
    if name not in _SOURCES:
        raise ZooError(f"unknown model source {name!r}; known: mini, {', '.join(_SOURCES)}")
    return _SOURCES[name]


_SOURCES = {"local": Source(), "hub": HubSource(), "gguf": GGUFSource()}


def ensure_available(refs: list[ModelRef], mini_size: str = "mini") -> None:
    """Every model here (mini-zoo models built if missing) with readable, finite files, or one clear
    error naming the first that is not: checked before any model is evaluated, so a broken member
    fails its job before anything is stored."""
    for name in dict.fromkeys(r.source for r in refs):
        source_of(name).ensure([r for r in refs if r.source == name], mini_size)
    for ref in {r.key: r for r in refs}.values():
        source_of(ref).check_files(ref)


def declared_depth(ref: ModelRef, mini_size: str = "mini") -> int | None:
    """A model's number of layers before it is loaded (a mini model's from its recipe, a local one's
    from its config.json); None where only loading tells (a hub or GGUF model, an unreadable file)."""
    return source_of(ref).depth(ref, mini_size)


def local_dir(ref: ModelRef) -> Path:
    """A directory holding the model's safetensors; hub ids resolve through the HF cache."""
    return source_of(ref).local_dir(ref)


def load_model(ref: ModelRef, device: str = "cpu"):
    model = source_of(ref).load_model(ref)
    if ref.source in ("hub", "gguf"):  # the others' files were checked before the job began
        from glue_bench.zoo.files import first_non_finite

        if bad := first_non_finite(model.named_parameters()):
            raise ZooError(f"model {ref.name!r}: tensor {bad!r} holds NaN or inf")
    return model.to(device).eval()


def load_tokenizer(ref: ModelRef):
    return source_of(ref).load_tokenizer(ref)


def tokenizer_identity(ref: ModelRef) -> tuple:
    """Equal for two models exactly when they tokenize alike (a mini model's known from its recipe)."""
    return source_of(ref).tokenizer_identity(ref)


def own_documents(ref: ModelRef, n: int, seed: int = 0) -> list[str] | None:
    """`n` documents of the data `ref` was fine-tuned on, in proportion to its fine-tuning mixture,
    where its source knows them (the mini zoo's); None for a model whose training data is unknown."""
    return source_of(ref).own_documents(ref, n, seed)


def task_data(mini_size: str = "mini", replicate: int = 0) -> Path:
    """The mini tasks' splits of a replicate (JSON lines, made if missing), the items jobs are scored
    on: drawn by the generators of the zoo's training data, apart from it (`mini.data`)."""
    from glue_bench.zoo.mini.build import ensure_data

    return ensure_data(mini_size, replicate)


def rendered_tasks_dir(mini_size: str = "mini", replicate: int = 0) -> Path:
    """Where a replicate's task YAMLs are rendered (`evaluate.render_tasks`), beside its models."""
    from glue_bench.zoo.mini.build import size_dir

    return size_dir(mini_size, replicate) / "lm_eval_tasks"


def mini_sizes() -> tuple[str, ...]:
    """The mini zoo's sizes (`mini_size=`): mini, and micro for the tests."""
    from glue_bench.zoo.mini.spec import SIZES

    return tuple(SIZES)


def mini_design():
    """What the mini zoo is built to show (`mini.spec.Design`): its version, its domain experts and
    the models set apart (far-trained, another init, another architecture), for the check that its
    builds show it (`glue_bench.phenomena`)."""
    from glue_bench.zoo.mini.spec import design

    return design()


def mini_build_seconds(names: list[str], mini_size: str, replicate: int) -> float | None:
    """Training seconds of the mini models `names` (and their parents) not yet built at this
    replicate here, from the builds here (`mini.build.build_seconds`); None if one was never built."""
    from glue_bench.zoo.mini.build import build_seconds

    return build_seconds(names, mini_size, replicate)


def weights_fingerprint(ref: ModelRef) -> str | None:
    """A zoo model's fingerprint, from its files as stored (`provenance.files_fingerprint`)."""
    from glue_bench.provenance import files_fingerprint

    if ref.source == "gguf":
        return files_fingerprint(ref.location, ref.gguf_file)
    return files_fingerprint(local_dir(ref))


def add_bos_token(ref: ModelRef, default: bool) -> bool:
    """Whether the model is evaluated with a BOS token, each model by its own convention: its zoo
    entry's `add_bos_token`, else its tokenizer_config.json's `add_bos_token` (what the model's
    authors declared), else `default` (eval.add_bos_token). Whether the tokenizer's template
    prepends a BOS is no separate evidence: lm-eval's add_bos_token=true applies that template,
    so a tokenizer that prepends none gets none either way."""
    if ref.add_bos_token is not None:
        return ref.add_bos_token
    declared = _declared_bos(ref)
    return default if declared is None else declared


def _declared_bos(ref: ModelRef) -> bool | None:
    """tokenizer_config.json's `add_bos_token`, read from the file: transformers 5 drops it from a
    loaded tokenizer's settings. A GGUF file's own metadata is not read (its zoo entry says it)."""
    path = source_of(ref).tokenizer_config(ref)
    if path is None or not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ZooError(f"model {ref.name!r}: {path.name} cannot be read ({err})") from None
    declared = config.get("add_bos_token") if isinstance(config, dict) else None
    return declared if isinstance(declared, bool) else None
