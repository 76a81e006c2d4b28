"""Shared fixtures: the micro mini zoo, built once per test session into a private cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one thread per worker (and per subprocess it starts), set before torch is imported: with two
    # OpenMP threads each, two workers' spinning threads fought over two cores (CI: 25 min, 20 without)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(items):
    """Slow tests first, and the longest of them (the study's reproduction, most of CI's time) first
    of all: under `-n 2 --dist worksteal` one worker starts it at once while the other works
    through everything else, stealing the first worker's queue when it runs out."""
    items.sort(key=lambda item: (item.get_closest_marker("slow") is None, "test_reproduce.py" not in item.nodeid))


def apt_install(package: str) -> str:
    """apt-get install `package` where we can (root, Debian's apt); what stopped it otherwise (empty:
    nothing did). For the tests that need a system program: they install it, never assume it."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "cannot be installed here (needs root and apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode:
            return f"`{' '.join(cmd)}` failed: {' '.join(proc.stderr.split())[-300:]}"
    return ""


@pytest.fixture(scope="session")
def micro_cache(tmp_path_factory) -> Path:
    """A cache holding the micro zoo's base and mini2 models (GLUE_BENCH_TEST_CACHE reuses one)."""
    cache = Path(os.environ.get("GLUE_BENCH_TEST_CACHE") or tmp_path_factory.mktemp("cache"))
    os.environ["GLUE_BENCH_CACHE"] = str(cache)
    from glue_bench.zoo.mini.build import ensure_models

    ensure_models(["base", "chat_a", "chat_b"], "micro", progress=False, workers=2)  # test_zoo rebuilds them in one
    return cache


@pytest.fixture
def run_cli(micro_cache, tmp_path):
    """Run `python -m glue_bench ...` on the micro zoo with a private results store."""
    results = tmp_path / "results.sqlite"

    def run(*args: str, timeout: int = 600, extra_env: dict | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
        env = {**os.environ, "GLUE_BENCH_CACHE": str(micro_cache), "GLUE_BENCH_MINI_SIZE": "micro",
               "GLUE_BENCH_RESULTS": str(results), "HYDRA_FULL_ERROR": "0", **(extra_env or {})}
        return subprocess.run([sys.executable, "-m", "glue_bench", *args, f"hydra.sweep.dir={tmp_path}/multirun",
                               f"hydra.run.dir={tmp_path}/run"], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=timeout)

    run.results = results
    return run
