"""benchmarks/gpu_check.py runs in CI on the CPU (`--device cpu`), so that it works the day a GPU is here."""

import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu_and_finds_its_merges_and_scores_equal(micro_cache):
    env = {**os.environ, "GLUE_BENCH_CACHE": str(micro_cache), "GLUE_BENCH_MINI_SIZE": "micro"}
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--limit", "4", "--repeats", "2"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.splitlines()
    merged = {line.split()[0]: line.split() for line in lines if line.split() and line.split()[0] in
              ("linear", "task_arithmetic", "ties", "dare_ties", "tsv", "magmax")}
    assert len(merged) == 6 and all(float(row[1]) == 0.0 for row in merged.values())  # the same device: no difference
    assert sum(line.startswith("mini_") and line.endswith("0/4") for line in lines) == 6
    assert any("tokens/s" in line for line in lines) and lines[-1].startswith("gpu_check: the device's merges")


def test_gpu_check_says_in_one_line_when_there_is_no_cuda(micro_cache):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here")
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "GLUE_BENCH_MINI_SIZE": "micro"})
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [
        "gpu_check: no CUDA device here (torch.cuda.is_available() is false); --device cpu checks the code"]
