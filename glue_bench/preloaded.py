"""Sweeps started from a process that has already imported what a job needs.

A sweep (`python -m glue_bench --multirun ...`) spends its first seconds importing torch,
transformers, lm-eval and the job's own modules, whatever it then runs: about 5 s on 2 cores, paid
by each of the twelve sweeps of `reproduce --quick`, most of which run for 10-25 s. A `Sweeper`
starts one server process that imports them once (`PRELOAD`) and forks a fresh child for each sweep
it is given: the child starts with them imported and otherwise runs as `python -m glue_bench` would
(its own process: nothing a sweep loads or sets outlives it).

Protocol: the parent writes each sweep's arguments as one JSON line on the server's stdin; the
sweep's stdout follows on the server's stdout, then the line `EXIT_MARK<exit status>`. Stderr is
the parent's, as for any subprocess.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

# What every job imports before it computes anything (measured with sys.modules after a job):
# the lazily imported ones (the Llama classes, lm-eval's task loading) included.
PRELOAD = ("glue_bench.__main__", "glue_bench.run", "glue_bench.job", "lm_eval.evaluator", "lm_eval.tasks",
           "transformers.models.llama.modeling_llama", "transformers.models.auto.tokenization_auto", "datasets")
EXIT_MARK = "\x00glue_bench.preloaded exit "
_MAIN = Path(__file__).with_name("__main__.py")


class Sweeper:
    """One server process (started now, importing in the background) that runs sweeps one at a time."""

    def __init__(self, cwd: Path | None = None):
        self._server = subprocess.Popen([sys.executable, "-m", "glue_bench.preloaded"], cwd=cwd, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, bufsize=1)
        self.returncode: int | None = None

    def sweep(self, args: list[str]) -> Iterator[str]:
        """The lines the sweep `python -m glue_bench *args` prints on stdout, as it prints them;
        `returncode` is its exit status once they end."""
        self.returncode = None
        with contextlib.suppress(BrokenPipeError):  # a dead server: its stdout below is at its end
            self._server.stdin.write(json.dumps(args) + "\n")
            self._server.stdin.flush()
        for line in self._server.stdout:
            before, mark, status = line.partition(EXIT_MARK)
            if mark:
                if before.strip():  # a last line the sweep printed without its newline
                    yield before
                self.returncode = int(status)
                return
            yield line.rstrip("\n")
        # the server itself died (killed, or a failed import): its stderr said why
        self.returncode = self._server.wait() or 1

    def close(self) -> None:
        """End the server (between sweeps: a sweep's child ends on its own)."""
        with contextlib.suppress(BrokenPipeError):  # a dead server's pipe: what is left unsent goes nowhere
            self._server.stdin.close()
        self._server.terminate()  # it may still be importing
        self._server.wait()

    def __enter__(self) -> "Sweeper":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve() -> None:
    """The server: import `PRELOAD`, then fork a child for each sweep read from stdin."""
    # ^C reaches the whole process group: the running sweep reports it and exits; the server lives on
    # until its parent, interrupted too, closes its stdin
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for module in PRELOAD:
        importlib.import_module(module)
    for line in sys.stdin:
        args = json.loads(line)
        sys.stdout.flush()  # else the child would inherit, and print again, what is buffered
        sys.stderr.flush()
        # Safe to fork: the threads the imports start are OpenBLAS's (numpy's, scipy's) and jemalloc's
        # (pyarrow's), whose own fork handlers ready them for the child; torch's OpenMP pool, which has
        # none, starts with the first parallel op, and none runs here
        pid = os.fork()
        if pid == 0:
            _run_sweep(args)
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        print(f"{EXIT_MARK}{status}", flush=True)


def _run_sweep(args: list[str]) -> None:
    """In the forked child: `python -m glue_bench *args`, then exit with its status; never returns."""
    import logging
    import traceback

    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # the server's stdin carries the next sweeps, not this one's
    sys.argv = [str(_MAIN), *args]  # what Hydra parses
    status = 1
    try:
        from glue_bench.__main__ import cli

        cli()
        status = 0
    except SystemExit as exit:
        if isinstance(exit.code, str):
            print(exit.code, file=sys.stderr)
        status = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
    except BaseException:
        traceback.print_exc()
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


if __name__ == "__main__":
    serve()
