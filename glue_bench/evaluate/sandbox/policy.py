"""What the sandbox refuses and what it allows, in one place: the caller sends it to the worker
(`worker_config`), which holds every program it runs to it."""

import os

OUTPUT_CAP = 64 * 1024      # bytes of child output (and of its report file) kept
DETAIL_CAP = 300            # characters of a detail line
PROGRAM_FILE = "program.py"
NPROC_CAP = 1024            # per-user task cap for non-root callers (root ignores RLIMIT_NPROC)
EXIT_CODES = {"passed": 0, "failed": 1, "error": 2, "blocked": 3}
WORKER_START_S = 30.0       # for the worker's start-up (interpreter + pre-imports) on a loaded machine
WORKER_GRACE_S = 5.0        # past a program's timeout, for the worker to kill, reap and report it

# Imported by the worker before it forks, so that programs get them without paying for the
# import: what MBPP/HumanEval solutions commonly use. Nothing here may (even indirectly) load a
# module of DENIED_MODULES, as cached imports raise no "import" event; the worker checks.
PREIMPORTED = (
    "array", "bisect", "cmath", "collections", "copy", "dataclasses", "datetime", "decimal",
    "fractions", "functools", "hashlib", "heapq", "itertools", "json", "math", "operator",
    "random", "re", "statistics", "string", "textwrap", "typing",
)

# The worker's environment; each child adds HOME and TMPDIR (its own directory).
ENV = {"PATH": os.defpath, "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
        # Native thread pools reserve address space per thread and would hit RLIMIT_AS.
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# Audit events refused outright: creating processes, signalling processes (as root the program
# could kill anything), raising resource limits (root may), symlinks (a link inside the sandbox
# dir could point anywhere and later writes through it would pass the path check), ioctl (e.g.
# TIOCSTI into a terminal), and subinterpreters and namespaces (a new interpreter would not
# carry the hook).
DENIED_EVENTS = frozenset({
    "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
    "os.startfile", "subprocess.Popen", "pty.spawn",
    "os.kill", "os.killpg", "signal.pthread_kill",
    "resource.setrlimit", "resource.prlimit",
    "os.symlink", "fcntl.ioctl",
    "cpython.PyInterpreterState_New", "os.unshare", "os.setns",
})
DENIED_PREFIXES = ("socket.", "ctypes.")   # socket.__new__/connect/bind/getaddrinfo/..., ctypes.dlopen/...

# Top-level modules whose import is refused (the "import" event): network, ffi, process
# creation, and C libraries that write files without raising the "open" event. Refused with an
# ImportError subclass so that stdlib fallbacks (`try: import _gdbm except ImportError`) still
# work; such a refusal counts as "blocked" only if the program lets it propagate.
DENIED_MODULES = frozenset({
    "socket", "_socket", "ssl", "_ssl", "ctypes", "_ctypes", "cffi", "_cffi_backend",
    "subprocess", "_posixsubprocess", "multiprocessing", "_multiprocessing",
    "multiprocess", "_multiprocess", "_posixshmem", "sqlite3", "_sqlite3", "_dbm", "_gdbm",
    "readline", "syslog", "_xxsubinterpreters", "_xxinterpchannels",
    "_testcapi", "_testinternalcapi",
})

# Events that change the file system: event -> ((path arg index, dir_fd arg index or None), ...).
# Every such path must resolve inside the sandbox dir. os.link checks its source too, since a
# hard link to an outside file would make later writes to it look like writes inside.
PATH_EVENTS = {
    "os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),),
    "os.rename": ((0, 2), (1, 3)), "os.link": ((0, 2), (1, 3)),
    "os.chmod": ((0, 2),), "os.chown": ((0, 3),), "os.utime": ((0, 3),),
    "os.truncate": ((0, None),), "os.setxattr": ((0, None),), "os.removexattr": ((0, None),),
    "os.chflags": ((0, None),), "os.lchflags": ((0, None),), "os.chdir": ((0, None),),
    "shutil.rmtree": ((0, None),), "shutil.chown": ((0, None),),
}

# Functions that change the file system or reach other processes without raising any audit
# event (CPython 3.11); the worker replaces them with stubs that count as blocked.
UNAUDITED = (
    ("os", "mknod"), ("posix", "mknod"), ("os", "mkfifo"), ("posix", "mkfifo"),
    ("os", "chroot"), ("posix", "chroot"), ("os", "pidfd_open"), ("posix", "pidfd_open"),
    ("signal", "pidfd_send_signal"), ("_signal", "pidfd_send_signal"),
)


def worker_config() -> dict:
    """Everything the worker needs, as JSON (it imports nothing of glue_bench)."""
    return dict(deny_events=sorted(DENIED_EVENTS), deny_prefixes=DENIED_PREFIXES,
                deny_modules=sorted(DENIED_MODULES), path_events=PATH_EVENTS,
                unaudited=UNAUDITED, program=PROGRAM_FILE, detail_cap=DETAIL_CAP,
                exit_codes=EXIT_CODES, output_cap=OUTPUT_CAP, nproc_cap=NPROC_CAP,
                preimport=PREIMPORTED)
