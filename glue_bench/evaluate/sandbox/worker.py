"""The sandbox's worker process: `python -I -B worker.py <config as JSON>`, started by the caller
(`client.py`). It installs the audit hook (`hook.py`), pre-imports common modules, then forks one
child per program it is sent, sets the child's limits, drains its output and kills its whole
process group when it ends or times out."""

# Run in the worker (and its forked children), never in the caller. Every function here looks up
# builtins in a private copy taken before any program runs, so that a program that monkeypatches
# `builtins` does not change how the hook decides (a function keeps the builtins of the globals it
# was defined in). Self-contained: constants come in `cfg`, modules are imported locally, and
# nothing is imported that a program should not get for free (modules imported in the worker stay
# in `sys.modules`, and cached imports raise no "import" event).
import builtins as _builtins

__builtins__ = dict(vars(_builtins))
del _builtins


def _load_hook():
    """hook.py, beside this file, as a module of its own: the worker runs isolated (-I), with no
    path to glue_bench, and imports nothing of it."""
    import importlib.util
    import os

    spec = importlib.util.spec_from_file_location("glue_bench_sandbox_hook", os.path.join(os.path.dirname(__file__), "hook.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def set_limits(request, nproc_cap):
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


def start_child(cfg, request, run_program, stdin_fd, output_fd):
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
        set_limits(request, cfg["nproc_cap"])
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


def wait_draining(pid, output_fd, deadline, cap):
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


def serve(cfg, request, run_program, devnull, send):
    """In the worker: run one program in a forked child; send its pid, then what became of it."""
    import os
    import signal
    import time

    output_r, output_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        start_child(cfg, request, run_program, devnull, output_w)
    os.close(output_w)
    deadline = time.monotonic() + request["timeout_s"]
    try:
        send({"pid": pid})
        timed_out, output = wait_draining(pid, output_r, deadline, cfg["output_cap"])
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


def main(cfg):
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
        run_program = _load_hook().install_hook(cfg)
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
            serve(cfg, json.loads(line), run_program, devnull, send)
        except Exception as exc:
            send({"error": f"{type(exc).__name__}: {exc}"})


if __name__ == "__main__":
    import json
    import sys

    main(json.loads(sys.argv[1]))
