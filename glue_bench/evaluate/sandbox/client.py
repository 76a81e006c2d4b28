"""The caller's side of the sandbox: one worker process per calling process (`worker.py`), started
on first use and again if it died or the caller forked, sent one program at a time."""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from glue_bench.evaluate.sandbox.policy import ENV, WORKER_GRACE_S, WORKER_START_S, worker_config

WORKER = str(Path(__file__).with_name("worker.py"))


@dataclass(frozen=True)
class Outcome:
    """What the worker saw of one program's process."""
    pid: int
    timed_out: bool
    returncode: int    # negative: killed by that signal
    output: str        # the last OUTPUT_CAP bytes of stdout and stderr, decoded


class WorkerError(Exception):
    """The worker could not run a program: it did not start, died, or stopped answering."""


class _Worker:
    """The caller's side of a worker: its process and pipes. One request at a time (callers
    hold _worker_lock); a worker whose request failed half-way is killed, never reused, as its
    replies could be out of step."""

    def __init__(self):
        self.owner_pid = os.getpid()
        self._pending = b""
        try:
            self.proc = subprocess.Popen(
                # -I: no env vars, user site or cwd on sys.path; -B: never write .pyc files,
                # which the hook would refuse outside a sandbox dir.
                [sys.executable, "-I", "-B", WORKER, json.dumps(worker_config())],
                env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                start_new_session=True, bufsize=0)
        except (OSError, subprocess.SubprocessError) as exc:
            raise WorkerError(f"could not start the sandbox: {exc}") from None
        self._poll = select.poll()
        self._poll.register(self.proc.stdout, select.POLLIN)
        try:
            ready = self._receive(time.monotonic() + WORKER_START_S)
            if "ready" not in ready:
                raise WorkerError(f"could not start the sandbox: {ready.get('error')}")
        except BaseException:
            self.kill()
            raise

    def alive(self) -> bool:
        return self.owner_pid == os.getpid() and self.proc.poll() is None

    def run(self, request: dict, deadline: float) -> Outcome:
        pid = None
        try:
            data = (json.dumps(request) + "\n").encode()
            try:
                while data:
                    data = data[os.write(self.proc.stdin.fileno(), data):]
            except OSError as exc:
                raise WorkerError(f"the sandbox worker died: {exc}") from None
            started = self._receive(deadline)
            if "pid" not in started:
                raise WorkerError(f"the sandbox could not run the program: {started.get('error')}")
            pid = started["pid"]
            outcome = self._receive(deadline)
            if "returncode" not in outcome:
                raise WorkerError(f"the sandbox could not run the program: {outcome.get('error')}")
        except BaseException:   # KeyboardInterrupt too: the reply to this request would come next time
            self.kill(pid)
            raise
        return Outcome(pid, outcome["timed_out"], outcome["returncode"], outcome["output"])

    def _receive(self, deadline: float) -> dict:
        while b"\n" not in self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._poll.poll(remaining * 1000):
                raise WorkerError("the sandbox worker did not answer in time")
            try:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
            except OSError as exc:
                raise WorkerError(f"the sandbox worker's pipe failed: {exc}") from None
            if not chunk:
                raise WorkerError("the sandbox worker died")
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        try:
            return json.loads(line)
        except ValueError:
            raise WorkerError(f"the sandbox worker sent a garbled reply: {line[:80]!r}") from None

    def kill(self, program_pid: int | None = None) -> None:
        """Kill the worker, and first the program it was running, if any: while the worker
        lives, it has not reaped the program, whose pid (its group id) cannot have been reused."""
        for pgid in (program_pid, self.proc.pid):
            if pgid is not None:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        self.proc.wait()
        self.close_pipes()

    def abandon(self) -> None:
        """In a forked copy of the caller: let go of the pipes, and of the process, which is not
        this process's child (poll() records that, so nothing waits for it or warns about it)."""
        self.close_pipes()
        self.proc.poll()

    def close_pipes(self) -> None:
        self.proc.stdin.close()
        self.proc.stdout.close()

    def stop(self) -> None:
        """Let the worker exit on its own (end of its request pipe); kill it if it does not."""
        self.close_pipes()
        try:
            self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            self.kill()


# One worker per calling process, used by one thread at a time.
_worker: _Worker | None = None
_worker_lock = threading.Lock()


def _forget_worker_after_fork() -> None:
    """A forked caller starts its own worker: sharing the pipes would mix up replies. Its lock is
    new too, as another thread of the parent may have held the old one at the fork."""
    global _worker, _worker_lock
    _worker_lock = threading.Lock()
    if _worker is not None:
        _worker.abandon()
        _worker = None


def _stop_worker_at_exit() -> None:
    if _worker is not None and _worker.alive():
        _worker.stop()


os.register_at_fork(after_in_child=_forget_worker_after_fork)
atexit.register(_stop_worker_at_exit)


def run_in_worker(request: dict, timeout_s: float) -> Outcome:
    global _worker
    with _worker_lock:
        # The pid check covers forks that bypass os.register_at_fork (a C library's fork()).
        if _worker is not None and not _worker.alive():
            if _worker.owner_pid != os.getpid():
                _worker.abandon()
            else:
                _worker.close_pipes()
            _worker = None
        if _worker is None:
            _worker = _Worker()
        try:
            return _worker.run(request, time.monotonic() + timeout_s + WORKER_GRACE_S)
        except BaseException:
            _worker = None   # run() killed it
            raise
