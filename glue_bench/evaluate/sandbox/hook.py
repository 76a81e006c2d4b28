"""The audit hook (PEP 578) that holds a sandboxed program to the policy (`policy.py`): installed
in the worker, disarmed, inherited by every forked child, armed right before its program runs."""

# Run in the worker (and its forked children), never in the caller. Every function here looks up
# builtins in a private copy taken before any program runs, so that a program that monkeypatches
# `builtins` does not change how the hook decides (a function keeps the builtins of the globals it
# was defined in). Self-contained: constants come in `cfg`, modules are imported locally, and
# nothing is imported that a program should not get for free (modules imported in the worker stay
# in `sys.modules`, and cached imports raise no "import" event).
import builtins as _builtins

__builtins__ = dict(vars(_builtins))
del _builtins


def install_hook(cfg):
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
