"""`python -m glue_bench`: the Hydra app. One job per config; `-m` sweeps the config groups."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from glue_bench.errors import USER_ERRORS


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    from glue_bench.run import run_job

    try:
        return run_job(cfg)
    except USER_ERRORS as exc:
        # bad input is reported as one line, not a traceback; nothing in the store was touched
        print(f"glue_bench: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
