"""A model reference and the zoo's error: what every layer may hold of a zoo without importing one."""

from __future__ import annotations

from dataclasses import dataclass

from glue_bench.errors import UserError


class ZooError(UserError):
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


def check_replicate(value, what: str) -> int:
    """A replicate is a non-negative int; anything else is a ZooError naming `what`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ZooError(f"{what}: a replicate is a non-negative integer, got {value!r}")
    return value


def mini_key_parts(key: str) -> tuple[str, str, str] | None:
    """(version, size[-r<replicate>], name) of a mini-zoo model's key, as `model_ref` writes it:
    mini-<version>/<size>[-r<replicate>]/<name>-<fingerprint>; None for any other key."""
    parts = key.split("/")
    if len(parts) != 3 or not parts[0].startswith("mini-v"):
        return None
    return parts[0].removeprefix("mini-"), parts[1], parts[2].rsplit("-", 1)[0]
