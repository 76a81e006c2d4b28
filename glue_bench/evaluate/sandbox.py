"""Run untrusted, model-generated Python (MBPP/HumanEval-style solution + asserts) in a sandbox.

Layers, outermost first:

* a separate interpreter (``python -I -B``) in a new session, with a stripped environment and
  a fresh temporary directory as cwd/HOME/TMPDIR that is removed afterwards;
* resource limits set in ``preexec_fn`` (address space, CPU, file size, no core dumps, and a
  process cap for non-root users) plus a wall-clock timeout after which the whole process
  group is SIGKILLed;
* inside the child, a bootstrap installs an audit hook (PEP 578) before the program runs,
  refusing process creation, signals to other processes, sockets, ffi, and any file-system
  change outside the temporary directory.

Threat model: buggy or naive code (``rm -rf``, ``os.system``, fork loops, network calls, huge
allocations, endless output). An audit hook lives in the same interpreter as the program, so
it is *not* a boundary against code written to defeat it (e.g. recovering a replaced function
by re-initialising ``posix``, walking frames to the hook's state, or loading a C extension
from site-packages that calls libc directly); the child also runs as the same user as the
caller, i.e. root on the benchmark machines. Run the whole harness in a container or as an
unprivileged user when the code may be hostile.
"""
from __future__ import annotations

import functools
import inspect
import json
import math
import os
import resource
import secrets
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

__all__ = ["SandboxLimits", "SandboxResult", "run_untrusted"]


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 5.0          # wall clock; the whole process group is killed after it
    memory_mb: int = 512            # RLIMIT_AS of the child
    max_file_mb: int = 16           # RLIMIT_FSIZE


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    status: str        # "passed" | "failed" | "timeout" | "blocked" | "error"
    detail: str        # one short line: exception type + message, or why it was blocked


_OUTPUT_CAP = 64 * 1024      # bytes of child output (and of its report file) kept by the parent
_DETAIL_CAP = 300            # characters of a detail line
_PROGRAM_FILE = "program.py"
_NPROC_CAP = 1024            # per-user task cap for non-root callers (root ignores RLIMIT_NPROC)
_EXIT_CODES = {"passed": 0, "failed": 1, "error": 2, "blocked": 3}

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
# event (CPython 3.11); the bootstrap replaces them with stubs that count as blocked.
_UNAUDITED = (
    ("os", "mknod"), ("posix", "mknod"), ("os", "mkfifo"), ("posix", "mkfifo"),
    ("os", "chroot"), ("posix", "chroot"), ("os", "pidfd_open"), ("posix", "pidfd_open"),
    ("signal", "pidfd_send_signal"), ("_signal", "pidfd_send_signal"),
)


def _child_main(cfg: dict) -> None:
    """Bootstrap executed by the sandboxed interpreter; never called in the parent.

    Its source is sent with ``-c`` and exec'd with a private copy of the builtins as globals,
    so a program that monkeypatches ``builtins`` does not change how the hook decides. It must
    be self-contained and import nothing that the program should not get for free: modules
    imported here stay in ``sys.modules``, and cached imports raise no "import" event.
    """
    import builtins
    import json
    import posix
    import signal
    import sys

    # Everything the hook needs is bound now, before the program can replace module attributes.
    getcwd, readlink, stat, write = posix.getcwd, posix.readlink, posix.stat, posix.write
    normpath = posix._path_normpath
    dumps, fs_encoding = json.dumps, sys.getfilesystemencoding()
    root = getcwd()
    write_flags = posix.O_WRONLY | posix.O_RDWR | posix.O_APPEND | posix.O_CREAT | posix.O_TRUNC
    deny_events, deny_prefixes = frozenset(cfg["deny_events"]), tuple(cfg["deny_prefixes"])
    deny_modules, path_events = frozenset(cfg["deny_modules"]), dict(cfg["path_events"])
    reported = []

    # The report file's random name comes on stdin (not argv, which the program can read in
    # /proc); it is opened before the hook exists, which would refuse it otherwise.
    report_fd = posix.open(sys.stdin.readline().strip(),
                           posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL | posix.O_APPEND, 0o600)
    with open(cfg["program"], encoding="utf-8") as f:
        source = f.read()
    # Past RLIMIT_FSIZE a write then raises OSError(EFBIG) instead of killing us without a report.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    class SandboxViolation(PermissionError):
        """An operation the sandbox forbids."""

    class SandboxImportBlocked(ImportError):
        """An import the sandbox forbids."""

    def report(status, detail):
        write(report_fd, (dumps({"status": status, "detail": detail}) + "\n").encode())

    def violation(what):
        # Report at once: the program may catch the exception, but the run still counts as blocked.
        if not reported:
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

    for module, name in cfg["unaudited"]:
        if hasattr(sys.modules[module], name):
            setattr(sys.modules[module], name, stub(f"{module}.{name}"))

    sys.addaudithook(hook)   # from here on it cannot be removed

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
    posix._exit(cfg["exit_codes"][status])


@functools.cache
def _bootstrap_command() -> str:
    cfg = dict(deny_events=sorted(_DENIED_EVENTS), deny_prefixes=_DENIED_PREFIXES,
               deny_modules=sorted(_DENIED_MODULES), path_events=_PATH_EVENTS,
               unaudited=_UNAUDITED, program=_PROGRAM_FILE, detail_cap=_DETAIL_CAP,
               exit_codes=_EXIT_CODES)
    return (f"import builtins\n"
            f"ns = {{'__builtins__': dict(vars(builtins))}}\n"
            f"exec({inspect.getsource(_child_main)!r}, ns)\n"
            f"del builtins\n"
            f"ns['_child_main']({cfg!r})\n")


def _set_limits(limits: SandboxLimits) -> None:
    """preexec_fn: runs in the forked child before exec, so the limits bind the new interpreter."""
    def limit(which, soft, hard=None):
        hard = soft if hard is None else hard
        ceiling = resource.getrlimit(which)[1]
        if ceiling != resource.RLIM_INFINITY:   # never ask for more than we already have
            soft, hard = min(soft, ceiling), min(hard, ceiling)
        resource.setrlimit(which, (soft, hard))

    limit(resource.RLIMIT_AS, limits.memory_mb * 1024 * 1024)
    limit(resource.RLIMIT_FSIZE, limits.max_file_mb * 1024 * 1024)
    limit(resource.RLIMIT_CORE, 0)
    # CPU time as a backstop in case the wall-clock kill does not happen (e.g. the parent dies):
    # SIGXCPU at the soft limit (reported as a timeout), SIGKILL a second later.
    cpu_s = math.ceil(limits.timeout_s) + 1
    limit(resource.RLIMIT_CPU, cpu_s, cpu_s + 1)
    # RLIMIT_NPROC counts all tasks of the user and is not enforced for root; the audit hook
    # is what actually stops forks, this only bounds the damage for non-root callers.
    if os.geteuid() != 0:
        limit(resource.RLIMIT_NPROC, _NPROC_CAP)


def _wait_draining(proc: subprocess.Popen, deadline: float) -> tuple[bool, bytes]:
    """Read the child's output (keeping the last _OUTPUT_CAP bytes) until it exits or the
    deadline passes, without reaping it, so its pid cannot be reused before the group is
    killed. Returns (timed_out, output tail)."""
    tail = b""
    pidfd = os.pidfd_open(proc.pid)   # readable once the child has exited (Linux >= 5.3)
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            sel.register(pidfd, selectors.EVENT_READ)
            exited = False
            while not exited:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return True, tail
                for key, _ in sel.select(remaining):
                    if key.fileobj is pidfd:
                        exited = True
                    elif chunk := os.read(key.fd, _OUTPUT_CAP):
                        tail = (tail + chunk)[-_OUTPUT_CAP:]   # drain, but keep memory bounded
                    else:
                        sel.unregister(proc.stdout)   # EOF
            # What the child wrote just before exiting; bounded, as a stray writer might not stop.
            sel.unregister(pidfd)
            for _ in range(64):
                if not sel.get_map() or not sel.select(0):
                    break
                if not (chunk := os.read(proc.stdout.fileno(), _OUTPUT_CAP)):
                    break
                tail = (tail + chunk)[-_OUTPUT_CAP:]
            return False, tail
    finally:
        os.close(pidfd)


def _read_reports(path: str) -> list[dict]:
    """The JSON lines the bootstrap wrote, read defensively: the program could have replaced
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
    """Run `program` (solution code followed by test asserts) in a sandboxed subprocess.

    passed: it ran to the end; failed: an AssertionError escaped; blocked: it attempted a
    forbidden operation (even if it caught the exception); timeout: wall clock or CPU limit;
    error: any other exception, a crash, or no report.

    ``preexec_fn`` runs Python in the forked child, which the subprocess docs warn may deadlock
    when the parent has other threads; to run many programs at once, prefer a process pool.
    """
    with tempfile.TemporaryDirectory(prefix="glue_sandbox_", ignore_cleanup_errors=True) as tmp:
        root = os.path.realpath(tmp)
        with open(os.path.join(root, _PROGRAM_FILE), "w", encoding="utf-8") as f:
            f.write(program)
        report_name = f"report-{secrets.token_hex(16)}.jsonl"
        env = {"PATH": os.defpath, "HOME": root, "TMPDIR": root, "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1",
               # Native thread pools reserve address space per thread and would hit RLIMIT_AS.
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        try:
            proc = subprocess.Popen(
                # -I: no env vars, user site or cwd on sys.path; -B: never write .pyc files,
                # which the hook would refuse outside the sandbox dir.
                [sys.executable, "-I", "-B", "-c", _bootstrap_command()],
                cwd=root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=functools.partial(_set_limits, limits))
        except (OSError, subprocess.SubprocessError) as exc:
            return SandboxResult(False, "error", _one_line(f"could not start the sandbox: {exc}"))
        deadline = time.monotonic() + limits.timeout_s
        try:
            try:
                proc.stdin.write(report_name.encode() + b"\n")
                proc.stdin.close()
            except OSError:   # the child died at startup; its exit status says why
                pass
            timed_out, output = _wait_draining(proc, deadline)
        finally:
            # Always kill the whole group, not only on timeout: it takes any process that
            # escaped the hook with it. The leader is not reaped yet, so its pid (the group id)
            # still belongs to it.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            proc.stdout.close()
        reports = _read_reports(os.path.join(root, report_name))

    blocked = [r for r in reports if r["status"] == "blocked"]
    if blocked:   # a forbidden attempt wins over whatever the program did afterwards
        return SandboxResult(False, "blocked", _one_line(str(blocked[0].get("detail", ""))))
    if timed_out:
        return SandboxResult(False, "timeout", f"no result within {limits.timeout_s:g} s (wall clock)")
    if proc.returncode == -signal.SIGXCPU:
        return SandboxResult(False, "timeout", "CPU time limit exceeded")
    if reports and proc.returncode == _EXIT_CODES[reports[-1]["status"]]:
        status = reports[-1]["status"]
        return SandboxResult(status == "passed", status, _one_line(str(reports[-1].get("detail", ""))))
    # No (consistent) report: it crashed, was killed (e.g. by the OOM killer) or exited early.
    if proc.returncode < 0:
        try:
            why = f"killed by {signal.Signals(-proc.returncode).name}"
        except ValueError:
            why = f"killed by signal {-proc.returncode}"
    else:
        why = f"exited with code {proc.returncode} without a {'matching ' if reports else ''}report"
    last = output.decode("utf-8", "replace").strip().splitlines()
    return SandboxResult(False, "error", _one_line(why + (f": {last[-1]}" if last else "")))
