"""Where glue_bench keeps what it builds and measures on this machine: the mini zoo, merge
statistics, compiled kernels and per-item costs, all under one root."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$GLUE_BENCH_CACHE, else ~/.cache/glue_bench."""
    return Path(os.environ.get("GLUE_BENCH_CACHE", Path.home() / ".cache" / "glue_bench")).expanduser()
