"""`python -m glue_bench`: the Hydra app. One job per config; `-m` sweeps the config groups."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from glue_bench.errors import INTERRUPTED, USER_ERRORS, fail, one_line


# absolute: a relative path would resolve against the package when `cli` is imported, not run
@hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parents[1] / "conf"), config_name="config")
def main(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig

    from glue_bench.run import run_job

    try:
        return run_job(cfg, preset=HydraConfig.get().runtime.choices.get("experiment"))
    except USER_ERRORS as exc:
        # bad input is reported as one line, not a traceback; nothing in the store was touched.
        # Caught here too, not only in `cli`: a launcher's worker process runs this function alone.
        fail(exc)


def cli() -> None:
    """`main` with every failure as the user's last line: Hydra is told to raise what it would
    otherwise print with its own "Set the environment variable HYDRA_FULL_ERROR=1" tail."""
    import yaml
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    before = os.environ.get("HYDRA_FULL_ERROR")
    full_traceback = before == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except KeyboardInterrupt:
        print(f"glue_bench: error: {INTERRUPTED}", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    except OverrideParseException as exc:
        fail(f"override {exc.override!r} does not parse: {one_line(exc)}")
    except (HydraException, OmegaConfBaseException) as exc:  # a config that does not compose
        fail(one_line(exc))
    except yaml.YAMLError as exc:  # a config file (a zoo's YAML...) that does not parse
        fail(f"a YAML file does not parse: {one_line(exc)}")
    except OSError as exc:  # the environment's paths: a run folder that cannot be made, a full disk...
        fail(f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else one_line(exc))
    except Exception as exc:
        if full_traceback:
            raise
        fail(f"{type(exc).__name__}: {one_line(exc)} (an unexpected failure, a bug: HYDRA_FULL_ERROR=1 "
             "shows its traceback for a bug report)")
    finally:  # called in-process (the tests): the caller's environment as it was
        if before is None:
            del os.environ["HYDRA_FULL_ERROR"]
        else:
            os.environ["HYDRA_FULL_ERROR"] = before


if __name__ == "__main__":
    sys.exit(cli())
