"""What a job tells its user as it goes: one `[glue_bench] ...` line on stderr, flushed at once
(stdout is the results table's)."""

import sys


def log(message: str) -> None:
    print(f"[glue_bench] {message}", file=sys.stderr, flush=True)
