"""Where one default job spends its time: loading, building the candidate, evaluating.

    python benchmarks/sweep_bench.py [--repeats 3] [overrides ...]

Composes the default job (conf/config.yaml, plus any Hydra overrides given), runs it once to
build the zoo and evaluate the single models (not timed), then re-runs the candidate `--repeats`
times (force=true) into a scratch store and prints medians: the share of the job's wall time spent
loading weights (model skeleton + tensor reads), merging, evaluating and elsewhere, and the
evaluation throughput in tokens/s (prompt + continuation/generated tokens of every lm-eval request).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from glue_bench.run import run_job

CONF = Path(__file__).resolve().parents[1] / "conf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*", default=["eval.allow_code_execution=true"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch, initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*args.overrides, f"results_path={scratch}/results.sqlite"])
        run_job(cfg)  # builds what is missing and evaluates the single models: not timed
        cfg = compose("config", overrides=[*args.overrides, f"results_path={scratch}/results.sqlite", "force=true"])
        runs = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            summary = run_job(cfg)
            runs.append({**summary, "wall_s": time.perf_counter() - start})

    med = {k: statistics.median(r[k] for r in runs) for k in ("wall_s", "load_s", "build_s", "eval_s", "tokens")}
    other = med["wall_s"] - med["load_s"] - med["build_s"] - med["eval_s"]
    print(f"default job: zoo={cfg.zoo.name} method={cfg.method.name} tasks={len(cfg.eval.tasks)} "
          f"device={cfg.eval.device}; median of {args.repeats} runs")
    print(f"  wall time      {med['wall_s']:8.2f} s")
    for name, key in (("loading", "load_s"), ("merging", "build_s"), ("evaluating", "eval_s")):
        print(f"  {name:<14} {med[key]:8.2f} s  {med[key] / med['wall_s']:6.1%}")
    print(f"  elsewhere      {other:8.2f} s  {other / med['wall_s']:6.1%}")
    print(f"  eval throughput {med['tokens'] / med['eval_s']:,.0f} tokens/s ({med['tokens']:,.0f} tokens per evaluation)")


if __name__ == "__main__":
    main()
