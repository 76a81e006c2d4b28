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

Threat model: buggy or naive code (``rm -rf``, ``os.system``, fork loops, network calls, huge
allocations, endless output). An audit hook lives in the same interpreter as the program, so
it is *not* a boundary against code written to defeat it (e.g. recovering a replaced function
by re-initialising ``posix``, walking frames or the garbage collector to the hook's state and
disarming it, or loading a C extension from site-packages that calls libc directly); the child
also runs as the same user as the caller, i.e. root on the benchmark machines. Run the whole
harness in a container or as an unprivileged user when the code may be hostile.
"""
from __future__ import annotations

import atexit
import functools
import inspect
import json
import math
import os
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

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


_OUTPUT_CAP = 64 * 1024      # bytes of child output (and of its report file) kept
_DETAIL_CAP = 300            # characters of a detail line
_PROGRAM_FILE = "program.py"
_NPROC_CAP = 1024            # per-user task cap for non-root callers (root ignores RLIMIT_NPROC)
_EXIT_CODES = {"passed": 0, "failed": 1, "error": 2, "blocked": 3}
_WORKER_START_S = 30.0       # for the worker's start-up (interpreter + pre-imports) on a loaded machine
_WORKER_GRACE_S = 5.0        # past a program's timeout, for the worker to kill, reap and report it

# Imported by the worker before it forks, so that programs get them without paying for the
# import: what MBPP/HumanEval solutions commonly use. Nothing here may (even indirectly) load a
# module of _DENIED_MODULES, as cached imports raise no "import" event; the worker checks.
_PREIMPORTED = (
    "array", "bisect", "cmath", "collections", "copy", "dataclasses", "datetime", "decimal",
    "fractions", "functools", "hashlib", "heapq", "itertools", "json", "math", "operator",
    "random", "re", "statistics", "string", "textwrap", "typing",
)

# The worker's environment; each child adds HOME and TMPDIR (its own directory).
_ENV = {"PATH": os.defpath, "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
        # Native thread pools reserve address space per thread and would hit RLIMIT_AS.
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# Audit events refused outright: creating processes, signalling processes (as root the program
# could kill anything), raising resource limits (root may), symlinks (a link inside the sandbox
# dir could point anywhere and later writes through it would pass the path check), ioctl (e.g.
# TIOCSTI into a terminal), and subinterpreters and namespaces (a new interpreter would not
# carry the hook).
_DENIED_EVENTS = frozenset({
    "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
    "os.startfile", "subprocess.Popen", "pty.spawn",
    "os.kill", "os.killpg", "signal.pthread_kill",
    "resource.setrlimit", "resource.prlimit",
    "os.symlink", "fcntl.ioctl",
    "cpython.PyInterpreterState_New", "os.unshare", "os.setns",
})
_DENIED_PREFIXES = ("socket.", "ctypes.")   # socket.__new__/connect/bind/getaddrinfo/..., ctypes.dlopen/...

# Top-level modules whose import is refused (the "import" event): network, ffi, process
# creation, and C libraries that write files without raising the "open" event. Refused with an
# ImportError subclass so that stdlib fallbacks (`try: import _gdbm except ImportError`) still
# work; such a refusal counts as "blocked" only if the program lets it propagate.
_DENIED_MODULES = frozenset({
    "socket", "_socket", "ssl", "_ssl", "ctypes", "_ctypes", "cffi", "_cffi_backend",
    "subprocess", "_posixsubprocess", "multiprocessing", "_multiprocessing",
    "multiprocess", "_multiprocess", "_posixshmem", "sqlite3", "_sqlite3", "_dbm", "_gdbm",
    "readline", "syslog", "_xxsubinterpreters", "_xxinterpchannels",
    "_testcapi", "_testinternalcapi",
})

# Events that change the file system: event -> ((path arg index, dir_fd arg index or None), ...).
# Every such path must resolve inside the sandbox dir. os.link checks its source too, since a
# hard link to an outside file would make later writes to it look like writes inside.
_PATH_EVENTS = {
    "os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),),
    "os.rename": ((0, 2), (1, 3)), "os.link": ((0, 2), (1, 3)),
    "os.chmod": ((0, 2),), "os.chown": ((0, 3),), "os.utime": ((0, 3),),
    "os.truncate": ((0, None),), "os.setxattr": ((0, None),), "os.removexattr": ((0, None),),
    "os.chflags": ((0, None),), "os.lchflags": ((0, None),), "os.chdir": ((0, None),),
    "shutil.rmtree": ((0, None),), "shutil.chown": ((0, None),),
}

# Functions that change the file system or reach other processes without raising any audit
# event (CPython 3.11); the worker replaces them with stubs that count as blocked.
_UNAUDITED = (
    ("os", "mknod"), ("posix", "mknod"), ("os", "mkfifo"), ("posix", "mkfifo"),
    ("os", "chroot"), ("posix", "chroot"), ("os", "pidfd_open"), ("posix", "pidfd_open"),
    ("signal", "pidfd_send_signal"), ("_signal", "pidfd_send_signal"),
)


# The functions from here to _worker_main run in the worker (and its children), never in the
# caller: their source is sent with ``-c`` and exec'd there with a private copy of the builtins
# as globals, so a program that monkeypatches ``builtins`` does not change how the hook decides.
# They are self-contained (constants come in `cfg`, modules are imported locally) and import
# nothing that a program should not get for free: modules imported in the worker stay in
# ``sys.modules``, and cached imports raise no "import" event.

def _install_hook(cfg):
    """Install the audit hook, disarmed, and return ``run_program(source, root, report_fd)``,
    which arms it for `root` and runs the program (in a forked child: it never returns)."""
    import builtins
    import json
    import posix
    import signal  # noqa: F401 (not loaded at start-up; the stubs below replace its pidfd_send_signal)
    import sys

    # Everything the hook needs is bound now, before a program can replace module attributes.
    getcwd, readlink, stat, write, exit_ = posix.getcwd, posix.readlink, posix.stat, posix.write, posix._exit
    normpath = posix._path_normpath
    dumps, fs_encoding = json.dumps, sys.getfilesystemencoding()
    write_flags = posix.O_WRONLY | posix.O_RDWR | posix.O_APPEND | posix.O_CREAT | posix.O_TRUNC
    deny_events, deny_prefixes = frozenset(cfg["deny_events"]), tuple(cfg["deny_prefixes"])
    deny_modules, path_events = frozenset(cfg["deny_modules"]), dict(cfg["path_events"])
    root = report_fd = None   # set when armed; the worker itself is never restricted, as it forks
    reported = []

    class SandboxViolation(PermissionError):
        """An operation the sandbox forbids."""

    class SandboxImportBlocked(ImportError):
        """An import the sandbox forbids."""

    def report(status, detail):
        write(report_fd, (dumps({"status": status, "detail": detail}) + "\n").encode())

    def violation(what):
        # Report at once: the program may catch the exception, but the run still counts as blocked.
        if root is not None and not reported:
            reported.append(what)
            report("blocked", what)
        raise SandboxViolation(f"sandbox: {what}")

    def resolve(path, dir_fd):
        """Absolute normalised path of a str/bytes/fd argument; None if unknown.

        dir_fd: an fd the path is relative to, negative for cwd, None when the event does not
        say (os.open(..., dir_fd=fd) raises "open" without its dir_fd).
        """
        try:
            if type(path) is int:
                path = readlink(f"/proc/self/fd/{path}")
            elif type(path) is bytes:
                path = path.decode(fs_encoding, "surrogateescape")
            if type(path) is not str:
                return None
            if not path.startswith("/"):
                if dir_fd is None:
                    return None
                path = (getcwd() if dir_fd < 0 else readlink(f"/proc/self/fd/{dir_fd}")) + "/" + path
            # Lexical normalisation is enough: nothing inside the sandbox dir can be a symlink.
            return normpath(path) if path.startswith("/") else None
        except (OSError, ValueError):
            return None

    def inside(path, dir_fd=-1):
        path = resolve(path, dir_fd)
        return path is not None and (path == root or path.startswith(root + "/"))

    def writable(path, mode):
        if path in ("/dev/null", b"/dev/null"):   # os.devnull: a common way to silence output
            return True
        # io.open raises "open" with its str mode and resolves relative paths against cwd;
        # os.open raises it with mode None and does not show its dir_fd.
        if not inside(path, -1 if mode is not None else None):
            return False
        try:   # an existing target must be a regular file or a directory (O_TMPFILE): no devices, FIFOs
            return stat(resolve(path, -1)).st_mode & 0o170000 in (0o100000, 0o040000)
        except OSError:
            return True   # does not exist yet: it will be created as a regular file

    def hook(event, args):
        if root is None:
            return
        if event in deny_events or event.startswith(deny_prefixes):
            violation(f"{event} is not allowed")
        elif event == "import":
            if args[0].partition(".")[0] in deny_modules:
                raise SandboxImportBlocked(f"sandbox: import of {args[0]} is not allowed", name=args[0])
        elif event == "open":
            path, mode, flags = args
            wants_write = ((type(flags) is int and flags & write_flags)
                           or (type(mode) is str and ("w" in mode or "a" in mode or "x" in mode or "+" in mode)))
            # Writing through an already open fd (open(1, "w")) is fine; the fd was checked.
            if wants_write and type(path) is not int and not writable(path, mode):
                violation(f"writing {path!r} outside the sandbox dir is not allowed")
        elif event in path_events:
            for i, j in path_events[event]:
                if not inside(args[i], -1 if j is None else args[j]):
                    violation(f"{event} on {args[i]!r} outside the sandbox dir is not allowed")

    def stub(name):
        def refuse(*args, **kwargs):
            violation(f"{name} is not allowed")
        return refuse

    sys.addaudithook(hook)   # from here on it cannot be removed, in the worker or its children

    def run_program(source, sandbox_root, fd):
        nonlocal root, report_fd
        # Stubbed in the child only: the worker itself uses pidfd_open.
        for module, name in cfg["unaudited"]:
            if hasattr(sys.modules[module], name):
                setattr(sys.modules[module], name, stub(f"{module}.{name}"))
        root, report_fd = sandbox_root, fd   # armed
        status, detail = "passed", ""
        try:
            exec(compile(source, "<program>", "exec"), {"__name__": "__main__", "__builtins__": builtins})
        except BaseException as exc:   # SystemExit too: exiting before the asserts is no pass
            if isinstance(exc, (SandboxViolation, SandboxImportBlocked)):
                status = "blocked"
            else:
                status = "failed" if isinstance(exc, AssertionError) else "error"
            try:
                message = str(exc)
            except BaseException:
                message = "<unprintable>"
            detail = type(exc).__name__ + (f": {message}" if message else "")
            line, tb = None, exc.__traceback__
            while tb is not None:   # innermost line of the program, for debugging failed asserts
                if tb.tb_frame.f_code.co_filename == "<program>":
                    line = tb.tb_lineno
                tb = tb.tb_next
            if line is not None:
                detail += f" (line {line})"
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        report(status, " ".join(detail.split())[:cfg["detail_cap"]])
        # _exit: skip atexit handlers and non-daemon threads the program may have left behind.
        exit_(cfg["exit_codes"][status])

    return run_program


def _set_limits(request, nproc_cap):
    """In the forked child, before the program runs (the hook refuses setrlimit once armed)."""
    import math
    import os
    import resource

    def limit(which, soft, hard=None):
        hard = soft if hard is None else hard
        ceiling = resource.getrlimit(which)[1]
        if ceiling != resource.RLIM_INFINITY:   # never ask for more than we already have
            soft, hard = min(soft, ceiling), min(hard, ceiling)
        resource.setrlimit(which, (soft, hard))

    limit(resource.RLIMIT_AS, request["memory_mb"] * 1024 * 1024)
    limit(resource.RLIMIT_FSIZE, request["max_file_mb"] * 1024 * 1024)
    limit(resource.RLIMIT_CORE, 0)
    # CPU time as a backstop in case the wall-clock kill does not happen (e.g. the worker dies):
    # SIGXCPU at the soft limit (reported as a timeout), SIGKILL a second later. A forked child
    # starts with no CPU time used.
    cpu_s = math.ceil(request["timeout_s"]) + 1
    limit(resource.RLIMIT_CPU, cpu_s, cpu_s + 1)
    # RLIMIT_NPROC counts all tasks of the user and is not enforced for root; the audit hook
    # is what actually stops forks, this only bounds the damage for non-root callers.
    if os.geteuid() != 0:
        limit(resource.RLIMIT_NPROC, nproc_cap)


def _start_child(cfg, request, run_program, stdin_fd, output_fd):
    """In the forked child: set it up as a fresh sandbox and run the program. Never returns."""
    import os
    import signal

    exit_ = os._exit   # bound before anything can replace it
    try:
        os.setsid()   # its own session and process group, killed as a whole
        os.dup2(stdin_fd, 0)
        os.dup2(output_fd, 1)
        os.dup2(output_fd, 2)
        # Nothing of the worker's stays open: the program must not read the next request or
        # write replies to the caller.
        os.closerange(3, 2**31 - 1)
        root = request["root"]
        os.chdir(root)
        os.environ.update(HOME=root, TMPDIR=root)
        _set_limits(request, cfg["nproc_cap"])
        # The report file's random name came with the request (not in argv, which the program
        # can read in /proc); opened now, as the armed hook would refuse it.
        report_fd = os.open(f"{root}/{request['report']}",
                            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        with open(cfg["program"], encoding="utf-8") as f:
            source = f.read()
        # Past RLIMIT_FSIZE a write then raises OSError(EFBIG) instead of killing us without a report.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    except BaseException as exc:
        try:
            os.write(2, f"sandbox: could not set up the program: {type(exc).__name__}: {exc}\n".encode())
        finally:
            exit_(cfg["exit_codes"]["error"])
    try:
        run_program(source, root, report_fd)
    finally:   # run_program exits itself; this only guards the worker's loop against a second reader
        exit_(cfg["exit_codes"]["error"])


def _wait_draining(pid, output_fd, deadline, cap):
    """In the worker: read the child's output (keeping the last `cap` bytes) until it exits or
    the deadline passes, without reaping it, so its pid cannot be reused before the group is
    killed. Returns (timed_out, output tail)."""
    import os
    import selectors
    import time

    tail = b""
    pidfd = os.pidfd_open(pid)   # readable once the child has exited (Linux >= 5.3)
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(output_fd, selectors.EVENT_READ)
            sel.register(pidfd, selectors.EVENT_READ)
            exited = False
            while not exited:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return True, tail
                for key, _ in sel.select(remaining):
                    if key.fd == pidfd:
                        exited = True
                    elif chunk := os.read(output_fd, cap):
                        tail = (tail + chunk)[-cap:]   # drain, but keep memory bounded
                    else:
                        sel.unregister(output_fd)   # EOF
            # What the child wrote just before exiting; bounded, as a stray writer might not stop.
            sel.unregister(pidfd)
            for _ in range(64):
                if not sel.get_map() or not sel.select(0):
                    break
                if not (chunk := os.read(output_fd, cap)):
                    break
                tail = (tail + chunk)[-cap:]
            return False, tail
    finally:
        os.close(pidfd)


def _serve(cfg, request, run_program, devnull, send):
    """In the worker: run one program in a forked child; send its pid, then what became of it."""
    import os
    import signal
    import time

    output_r, output_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        _start_child(cfg, request, run_program, devnull, output_w)
    os.close(output_w)
    deadline = time.monotonic() + request["timeout_s"]
    try:
        send({"pid": pid})
        timed_out, output = _wait_draining(pid, output_r, deadline, cfg["output_cap"])
    finally:
        # Always kill the whole group, not only on timeout: it takes any process that escaped
        # the hook with it (SIGKILL: whatever the program does with signals, or if it hangs in C
        # code). The child is not reaped yet, so its pid (the group id) still belongs to it. Until
        # the child has called setsid() there is no such group, so kill the child itself too.
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _, status = os.waitpid(pid, 0)
        os.close(output_r)
    send({"timed_out": timed_out, "returncode": os.waitstatus_to_exitcode(status),
          "output": output.decode("utf-8", "replace")})


def _worker_main(cfg):
    """The worker's entry point: set up, say "ready", then serve requests (one JSON line each)
    until the caller closes the pipe."""
    import json
    import os
    import sys

    replies = os.dup(1)

    def send(message):
        data = (json.dumps(message) + "\n").encode()
        while data:
            data = data[os.write(replies, data):]

    try:
        run_program = _install_hook(cfg)
        # Modules the worker's own code uses (imported once here, not in every child), then
        # what programs commonly use.
        for name in ("resource", "selectors", *cfg["preimport"]):
            __import__(name)
        leaked = sorted(m for m in sys.modules if m.partition(".")[0] in cfg["deny_modules"])
        if leaked:
            raise RuntimeError(f"pre-imports loaded modules that programs may not import: {', '.join(leaked)}")
        os.chdir("/")   # hold no directory of the caller's
        requests = os.dup(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        # A stray print or input() in the worker must not touch the request or reply pipes.
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
    except BaseException as exc:
        send({"error": f"{type(exc).__name__}: {exc}"})
        return
    send({"ready": True})
    pending = b""
    while True:
        while b"\n" not in pending:
            if not (chunk := os.read(requests, 65536)):
                return   # the caller closed the pipe or exited
            pending += chunk
        line, _, pending = pending.partition(b"\n")
        try:
            _serve(cfg, json.loads(line), run_program, devnull, send)
        except Exception as exc:
            send({"error": f"{type(exc).__name__}: {exc}"})


_WORKER_FUNCTIONS = (_install_hook, _set_limits, _start_child, _wait_draining, _serve, _worker_main)


@functools.cache
def _bootstrap_command() -> str:
    cfg = dict(deny_events=sorted(_DENIED_EVENTS), deny_prefixes=_DENIED_PREFIXES,
               deny_modules=sorted(_DENIED_MODULES), path_events=_PATH_EVENTS,
               unaudited=_UNAUDITED, program=_PROGRAM_FILE, detail_cap=_DETAIL_CAP,
               exit_codes=_EXIT_CODES, output_cap=_OUTPUT_CAP, nproc_cap=_NPROC_CAP,
               preimport=_PREIMPORTED)
    source = "\n\n".join(inspect.getsource(f) for f in _WORKER_FUNCTIONS)
    return (f"import builtins\n"
            f"ns = {{'__builtins__': dict(vars(builtins))}}\n"
            f"exec({source!r}, ns)\n"
            f"del builtins\n"
            f"ns['_worker_main']({cfg!r})\n")


@dataclass(frozen=True)
class _Outcome:
    """What the worker saw of one program's process."""
    pid: int
    timed_out: bool
    returncode: int    # negative: killed by that signal
    output: str        # the last _OUTPUT_CAP bytes of stdout and stderr, decoded


class _WorkerError(Exception):
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
                [sys.executable, "-I", "-B", "-c", _bootstrap_command()],
                env=_ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                start_new_session=True, bufsize=0)
        except (OSError, subprocess.SubprocessError) as exc:
            raise _WorkerError(f"could not start the sandbox: {exc}") from None
        self._poll = select.poll()
        self._poll.register(self.proc.stdout, select.POLLIN)
        try:
            ready = self._receive(time.monotonic() + _WORKER_START_S)
            if "ready" not in ready:
                raise _WorkerError(f"could not start the sandbox: {ready.get('error')}")
        except BaseException:
            self.kill()
            raise

    def alive(self) -> bool:
        return self.owner_pid == os.getpid() and self.proc.poll() is None

    def run(self, request: dict, deadline: float) -> _Outcome:
        pid = None
        try:
            data = (json.dumps(request) + "\n").encode()
            try:
                while data:
                    data = data[os.write(self.proc.stdin.fileno(), data):]
            except OSError as exc:
                raise _WorkerError(f"the sandbox worker died: {exc}") from None
            started = self._receive(deadline)
            if "pid" not in started:
                raise _WorkerError(f"the sandbox could not run the program: {started.get('error')}")
            pid = started["pid"]
            outcome = self._receive(deadline)
            if "returncode" not in outcome:
                raise _WorkerError(f"the sandbox could not run the program: {outcome.get('error')}")
        except BaseException:   # KeyboardInterrupt too: the reply to this request would come next time
            self.kill(pid)
            raise
        return _Outcome(pid, outcome["timed_out"], outcome["returncode"], outcome["output"])

    def _receive(self, deadline: float) -> dict:
        while b"\n" not in self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._poll.poll(remaining * 1000):
                raise _WorkerError("the sandbox worker did not answer in time")
            try:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
            except OSError as exc:
                raise _WorkerError(f"the sandbox worker's pipe failed: {exc}") from None
            if not chunk:
                raise _WorkerError("the sandbox worker died")
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        try:
            return json.loads(line)
        except ValueError:
            raise _WorkerError(f"the sandbox worker sent a garbled reply: {line[:80]!r}") from None

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


def _run_in_worker(request: dict, timeout_s: float) -> _Outcome:
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
            return _worker.run(request, time.monotonic() + timeout_s + _WORKER_GRACE_S)
        except BaseException:
            _worker = None   # run() killed it
            raise


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
        data = f.read(_OUTPUT_CAP)
    reports = []
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("status") in _EXIT_CODES:
            reports.append(record)
    return reports


def _one_line(text: str) -> str:
    return " ".join(text.split())[:_DETAIL_CAP]


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
        with open(os.path.join(root, _PROGRAM_FILE), "w", encoding="utf-8") as f:
            f.write(program)
        report_name = f"report-{secrets.token_hex(16)}.jsonl"
        request = {"root": root, "report": report_name, "timeout_s": limits.timeout_s,
                   "memory_mb": limits.memory_mb, "max_file_mb": limits.max_file_mb}
        try:
            outcome = _run_in_worker(request, limits.timeout_s)
        except _WorkerError as exc:
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
    if reports and outcome.returncode == _EXIT_CODES[reports[-1]["status"]]:
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
