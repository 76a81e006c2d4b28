"""Run untrusted, model-generated Python (MBPP/HumanEval-style solution + asserts) in a sandbox.

Starting an interpreter per program costs far more than most programs take to run, so programs
run in children forked from a pre-started worker (a "zygote"): 8 ms per program instead of 36 ms
on a busy 2-core machine (benchmarks/sandbox_bench.py). Layers, outermost first:

* the worker: a separate interpreter (``python -I -B``) in a new session, with a stripped
  environment, started on first use by each calling process (and again if it died, or in a
  forked copy of the caller, which must not share its pipes). It installs the audit hook,
  disarmed, pre-imports common stdlib modules, then forks one child per program;
* each child: its own session (and so process group), a fresh temporary directory as
  cwd/HOME/TMPDIR that the caller removes afterwards, and resource limits set after the fork
  (address space, CPU, file size, no core dumps, and a process cap for non-root users); its
  output goes to a pipe the worker drains, keeping the last 64 KiB, and after the wall-clock
  timeout the worker SIGKILLs the whole process group;
* in the child, right before the program runs, the audit hook (PEP 578, inherited from the
  worker and impossible to remove) is armed: it refuses process creation, signals to other
  processes, sockets, ffi, and any file-system change outside the temporary directory.

A program cannot affect the next one: whatever it changes (builtins, modules, environment, files)
lives in its own forked child or its own temporary directory, both gone when it ends. What
programs share is what the worker had before forking: the pre-imported modules (copies) and the
hash seed; `random` is reseeded in every child.

Files: `policy.py` what is refused and allowed; `client.py` the caller's worker (start, send,
restart); `worker.py` the worker process (run isolated, importing nothing of glue_bench);
`hook.py` the audit hook; here, `run_untrusted` and what its result means.

Threat model: buggy or naive code (``rm -rf``, ``os.system``, fork loops, network calls, huge
allocations, endless output). An audit hook lives in the same interpreter as the program, so
it is *not* a boundary against code written to defeat it (e.g. recovering a replaced function
by re-initialising ``posix``, walking frames or the garbage collector to the hook's state and
disarming it, or loading a C extension from site-packages that calls libc directly); the child
also runs as the same user as the caller, i.e. root on the benchmark machines. Run the whole
harness in a container or as an unprivileged user when the code may be hostile.
"""
from __future__ import annotations

import json
import math
import os
import secrets
import signal
import tempfile
from dataclasses import dataclass

from glue_bench.evaluate.sandbox.client import WorkerError, run_in_worker
from glue_bench.evaluate.sandbox.policy import DETAIL_CAP, EXIT_CODES, OUTPUT_CAP, PROGRAM_FILE

__all__ = ["SandboxLimits", "SandboxResult", "run_untrusted"]


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 5.0          # wall clock; the whole process group is killed after it
    memory_mb: int = 512            # RLIMIT_AS of the child
    max_file_mb: int = 16           # RLIMIT_FSIZE

    def __post_init__(self):
        timeout = self.timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
            raise ValueError(f"SandboxLimits.timeout_s must be a positive number of seconds, not {timeout!r}")
        for name in ("memory_mb", "max_file_mb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SandboxLimits.{name} must be a positive int, not {value!r}")


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    status: str        # "passed" | "failed" | "timeout" | "blocked" | "error"
    detail: str        # one short line: exception type + message, or why it was blocked


def _read_reports(path: str) -> list[dict]:
    """The JSON lines the child wrote, read defensively: the program could have replaced
    the file with a FIFO (open would block) or a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return []
    with open(fd, "rb") as f:
        if not os.path.isfile(f"/proc/self/fd/{fd}"):
            return []
        data = f.read(OUTPUT_CAP)
    reports = []
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("status") in EXIT_CODES:
            reports.append(record)
    return reports


def _one_line(text: str) -> str:
    return " ".join(text.split())[:DETAIL_CAP]


def run_untrusted(program: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run `program` (solution code followed by test asserts) in a sandboxed process.

    passed: it ran to the end; failed: an AssertionError escaped; blocked: it attempted a
    forbidden operation (even if it caught the exception); timeout: wall clock or CPU limit;
    error: any other exception, a crash, no report, or a sandbox that could not run it.

    Safe to call from several threads (they take turns) and processes (each has its own worker).
    """
    if not isinstance(program, str):
        raise TypeError(f"program must be a str, not {type(program).__name__}")
    if not isinstance(limits, SandboxLimits):
        raise TypeError(f"limits must be a SandboxLimits, not {type(limits).__name__}")
    with tempfile.TemporaryDirectory(prefix="glue_sandbox_", ignore_cleanup_errors=True) as tmp:
        root = os.path.realpath(tmp)
        with open(os.path.join(root, PROGRAM_FILE), "w", encoding="utf-8") as f:
            f.write(program)
        report_name = f"report-{secrets.token_hex(16)}.jsonl"
        request = {"root": root, "report": report_name, "timeout_s": limits.timeout_s,
                   "memory_mb": limits.memory_mb, "max_file_mb": limits.max_file_mb}
        try:
            outcome = run_in_worker(request, limits.timeout_s)
        except WorkerError as exc:
            return SandboxResult(False, "error", _one_line(str(exc)))
        # The program's whole group is dead and reaped by now: nothing writes the report any more.
        reports = _read_reports(os.path.join(root, report_name))

    blocked = [r for r in reports if r["status"] == "blocked"]
    if blocked:   # a forbidden attempt wins over whatever the program did afterwards
        return SandboxResult(False, "blocked", _one_line(str(blocked[0].get("detail", ""))))
    if outcome.timed_out:
        return SandboxResult(False, "timeout", f"no result within {limits.timeout_s:g} s (wall clock)")
    if outcome.returncode == -signal.SIGXCPU:
        return SandboxResult(False, "timeout", "CPU time limit exceeded")
    if reports and outcome.returncode == EXIT_CODES[reports[-1]["status"]]:
        status = reports[-1]["status"]
        return SandboxResult(status == "passed", status, _one_line(str(reports[-1].get("detail", ""))))
    # No (consistent) report: it crashed, was killed (e.g. by the OOM killer) or exited early.
    if outcome.returncode < 0:
        try:
            why = f"killed by {signal.Signals(-outcome.returncode).name}"
        except ValueError:
            why = f"killed by signal {-outcome.returncode}"
    else:
        why = f"exited with code {outcome.returncode} without a {'matching ' if reports else ''}report"
    last = outcome.output.strip().splitlines()
    return SandboxResult(False, "error", _one_line(why + (f": {last[-1]}" if last else "")))
