"""Zoos: named lists of models plus a base model, from conf/zoo/*.yaml.

A model reference is a mini-zoo name (built on demand into the cache), a local HF directory, a hub
id, or a local GGUF file. All load through `AutoModelForCausalLM.from_pretrained`.
"""

from __future__ import annotations

import json
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
    key: str = ""             # identity in result keys (not the cache path, which varies by machine)
    replicate: int = 0        # which independent build of the mini zoo (0 for every other source)
    add_bos_token: bool | None = None  # the zoo entry's BOS convention for this model (None: it says nothing)


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


def check_replicate(value, what: str) -> int:
    """A replicate is a non-negative int; anything else is a ZooError naming `what`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ZooError(f"{what}: a replicate is a non-negative integer, got {value!r}")
    return value


def zoo_replicate(config: dict) -> int:
    """The zoo config's `replicate` (0 when absent), which only a mini zoo can have other than 0:
    the other sources' models are what they are."""
    replicate = check_replicate(config.get("replicate", 0), f"zoo {config.get('name', '?')}: replicate")
    if replicate and config["source"] != "mini":
        raise ZooError(f"zoo {config.get('name', '?')}: replicate={replicate} needs source: mini "
                       f"(this zoo's source is {config['source']})")
    return replicate


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
        from glue_bench.zoo.mini.build import model_dir

        path = model_dir(entry, mini_size, replicate)  # its name holds the cache version and recipe fingerprint
        # mini-<version>/<size>[-r<replicate>]/<name>-<fingerprint>
        return ModelRef(entry, "mini", str(path), key="/".join(p.name for p in (path.parents[2], path.parents[1], path)),
                        replicate=replicate)
    if source == "local" or os.path.isdir(os.path.expanduser(entry)):
        return ModelRef(entry_name(entry, source), "local", os.path.expanduser(entry), key=os.path.expanduser(entry))
    return ModelRef(entry, "hub", entry, key=f"hub:{entry}")


def mini_key_parts(key: str) -> tuple[str, str, str] | None:
    """(version, size[-r<replicate>], name) of a mini-zoo model's key, as `model_ref` writes it:
    mini-<version>/<size>[-r<replicate>]/<name>-<fingerprint>; None for any other key."""
    parts = key.split("/")
    if len(parts) != 3 or not parts[0].startswith("mini-v"):
        return None
    return parts[0].removeprefix("mini-"), parts[1], parts[2].rsplit("-", 1)[0]


def resolve_zoo(config: dict, mini_size: str = "mini") -> tuple[list[ModelRef], ModelRef]:
    """A zoo's members and base, from its config (`zoo_config(name)`, or a composed one), at the
    config's replicate."""
    check_zoo_config(config)
    replicate = zoo_replicate(config)
    refs = [model_ref(m, config["source"], mini_size, replicate) for m in config["models"]]
    check_distinct(f"zoo {config['name']}", refs)
    return refs, model_ref(config["base"], config["source"], mini_size, replicate)


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


def ensure_available(refs: list[ModelRef], mini_size: str = "mini") -> None:
    """Build missing mini-zoo models; check that local ones exist (one clear error otherwise)."""
    for replicate in sorted({r.replicate for r in refs if r.source == "mini"}):
        from glue_bench.zoo.mini.build import ensure_models

        ensure_models([r.name for r in refs if r.source == "mini" and r.replicate == replicate], mini_size,
                      replicate=replicate)
    for ref in refs:
        if ref.source in ("local", "gguf") and not os.path.isdir(ref.location):
            raise ZooError(f"model {ref.name!r}: directory {ref.location} does not exist")
        if ref.source == "local" and not os.path.exists(os.path.join(ref.location, "config.json")):
            raise ZooError(f"model {ref.name!r}: {ref.location} has no config.json (not a HF model directory)")
        if ref.source == "gguf" and not os.path.exists(os.path.join(ref.location, ref.gguf_file)):
            raise ZooError(f"model {ref.name!r}: GGUF file {ref.gguf_file} not found in {ref.location}")
    for ref in {r.key: r for r in refs}.values():
        check_model_files(ref)


def check_model_files(ref: ModelRef) -> None:
    """A mini or local model's config, tokenizer and weight files readable, its weights finite:
    checked before any model is evaluated, so a broken member fails its job before anything is
    stored. A hub model's files are checked as it loads (`load_model`), a GGUF file by its reader."""
    if ref.source not in ("mini", "local"):
        return
    from glue_bench.zoo.files import check_directory, check_finite_files

    try:
        check_finite_files(check_directory(Path(ref.location)))
    except (OSError, ValueError) as err:
        raise ZooError(f"model {ref.name!r}: {err}") from None


def declared_depth(ref: ModelRef, mini_size: str = "mini") -> int | None:
    """A model's number of layers before it is loaded: a mini model's from its recipe, a local one's
    from its config.json; None where only loading tells (a hub or GGUF model, an unreadable file)."""
    if ref.source == "mini":
        from glue_bench.zoo.mini.spec import RECIPES, SIZES

        size = SIZES[mini_size]
        return (size.foreign_arch if RECIPES[ref.name].foreign else size.arch)["layers"]
    try:
        return int(json.loads((Path(ref.location) / "config.json").read_text())["num_hidden_layers"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def local_dir(ref: ModelRef) -> Path:
    """A directory holding the model's safetensors; hub ids resolve through the HF cache."""
    if ref.source == "gguf":
        raise ZooError(f"model {ref.name!r}: a GGUF file cannot be streamed tensor by tensor; "
                       "convert it to safetensors first (load_model + save_pretrained)")
    if ref.source != "hub":
        return Path(ref.location)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(ref.location, allow_patterns=["*.json", "*.safetensors", "*.model",
                                                                    "tokenizer*"]))
    except Exception as exc:  # offline, gated, missing: all end the same way for the user
        raise _unreachable(ref, exc) from None


def _unreachable(ref: ModelRef, exc: Exception) -> ZooError:
    return ZooError(f"model {ref.name!r}: cannot get {ref.location} from the Hugging Face hub "
                    f"({type(exc).__name__}); this needs hub access, or a local copy in HF_HOME")


def load_model(ref: ModelRef, device: str = "cpu"):
    from transformers import AutoModelForCausalLM

    if ref.source == "gguf":
        model = AutoModelForCausalLM.from_pretrained(ref.location, gguf_file=ref.gguf_file)
    else:
        model = AutoModelForCausalLM.from_pretrained(local_dir(ref), dtype="auto")
    if ref.source in ("hub", "gguf"):  # the others' files were checked before the job began
        from glue_bench.zoo.files import first_non_finite

        if bad := first_non_finite(model.named_parameters()):
            raise ZooError(f"model {ref.name!r}: tensor {bad!r} holds NaN or inf")
    return model.to(device).eval()


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
    import json

    path = _tokenizer_config(ref)
    if path is None or not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ZooError(f"model {ref.name!r}: {path.name} cannot be read ({err})") from None
    declared = config.get("add_bos_token") if isinstance(config, dict) else None
    return declared if isinstance(declared, bool) else None


def _tokenizer_config(ref: ModelRef) -> Path | None:
    """Where a model's tokenizer_config.json is; a hub model's alone is fetched (or found in the HF
    cache), not its weights."""
    if ref.source == "gguf":
        return None
    if ref.source != "hub":
        return Path(ref.location) / "tokenizer_config.json"
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(ref.location, "tokenizer_config.json"))
    except EntryNotFoundError:
        return None
    except Exception as exc:  # offline, gated, missing: all end the same way for the user
        raise _unreachable(ref, exc) from None


def load_tokenizer(ref: ModelRef):
    from transformers import AutoTokenizer

    if ref.source == "gguf":
        return AutoTokenizer.from_pretrained(ref.location, gguf_file=ref.gguf_file)
    return AutoTokenizer.from_pretrained(local_dir(ref))
