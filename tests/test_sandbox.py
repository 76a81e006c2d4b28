"""The sandbox for model-generated code: outcomes, limits, what it refuses to do, and its worker."""
import json
import os
import re
import resource
import signal
import tempfile
import textwrap
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from glue_bench.evaluate import sandbox
from glue_bench.evaluate.sandbox import SandboxLimits, SandboxResult, client, policy, run_untrusted

FAST = SandboxLimits(timeout_s=1)
MARGIN_S = 1.5   # interpreter start-up, group kill and temp dir cleanup on a loaded machine


def run(program: str, limits: SandboxLimits = FAST) -> SandboxResult:
    return run_untrusted(textwrap.dedent(program), limits)


def assert_blocked(result: SandboxResult, *needles: str) -> None:
    assert (result.passed, result.status) == (False, "blocked"), result
    for needle in needles:
        assert needle in result.detail, result


@pytest.fixture
def child_pids(monkeypatch):
    """Pids of the sandboxed processes (forked by the worker) that ran the test's programs."""
    pids = []
    monkeypatch.setattr(client, "Outcome", recording_subclass(client.Outcome, "pid", pids))
    return pids


def recording_subclass(base: type, attribute: str, into: list) -> type:
    """A subclass of `base` whose every new instance appends its `attribute` to `into`."""
    class Recording(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            into.append(getattr(self, attribute))

    return Recording


def live_processes_in_session(sid: int, grace_s: float = 2.0) -> list[int]:
    """Processes of session `sid` (forked grandchildren keep their parent's session) that are
    still alive after a grace period; zombies waiting for init to reap them are dead already."""
    deadline = time.monotonic() + grace_s
    while True:
        alive = []
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):   # not a process, or gone meanwhile
                continue
            state, session = fields[0], int(fields[3])
            if session == sid and state not in ("Z", "X"):
                alive.append(int(entry))
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def test_correct_solution_passes():
    result = run("""
        def add(a, b):
            return a + b

        assert add(1, 2) == 3
        assert add(-1, 1) == 0
    """)
    assert result == SandboxResult(True, "passed", "")


def test_wrong_solution_fails_with_the_assert_line():
    result = run("""
        def add(a, b):
            return a - b

        assert add(0, 0) == 0
        assert add(1, 2) == 3, "add(1, 2)"
    """)
    assert (result.passed, result.status) == (False, "failed")
    assert result.detail == "AssertionError: add(1, 2) (line 6)"


def test_other_exceptions_and_early_exit_are_errors():
    result = run("raise ValueError('bad\\nvalue')")
    assert (result.status, result.detail) == ("error", "ValueError: bad value (line 1)")
    assert run("def f(:\n    pass").status == "error"
    # Exiting before the asserts run must not count as a pass, however the program exits.
    assert run("import sys; sys.exit(0)\nassert False").status == "error"
    result = run("import os; os._exit(0)\nassert False")
    assert (result.status, result.detail) == ("error", "exited with code 0 without a report")


def test_infinite_loop_times_out():
    start = time.monotonic()
    result = run("while True:\n    pass")
    elapsed = time.monotonic() - start
    assert (result.passed, result.status) == (False, "timeout")
    assert 1.0 <= elapsed < 1.0 + MARGIN_S


def test_fork_is_blocked():
    result = run("""
        import os
        if os.fork() == 0:
            os._exit(0)
    """)
    assert_blocked(result, "os.fork")


def test_fork_bomb_is_blocked_and_leaves_no_processes(child_pids):
    # Catching the refusal does not help: the run still counts as blocked. Children would only
    # sleep (no real bomb if the hook ever regressed); they must all be gone afterwards.
    result = run("""
        import os, time
        refused = 0
        for _ in range(200):
            try:
                pid = os.fork()
            except PermissionError:
                refused += 1
                continue
            if pid == 0:
                time.sleep(60)
        assert refused == 200
    """)
    assert_blocked(result, "os.fork")
    assert len(child_pids) == 1
    assert live_processes_in_session(child_pids[0]) == []


@pytest.mark.parametrize("program", [
    "import subprocess\nsubprocess.run(['echo', 'x'])",
    "import os\nos.system('echo x')",
    "import os\nos.execv('/bin/echo', ['echo', 'x'])",
    "import os\nos.posix_spawn('/bin/echo', ['echo', 'x'], {})",
], ids=["subprocess.run", "os.system", "os.execv", "os.posix_spawn"])
def test_running_commands_is_blocked(program):
    assert_blocked(run(program))


def test_os_system_never_runs_the_command(tmp_path):
    marker = tmp_path / "ran"
    assert_blocked(run(f"import os\nos.system('touch {marker}')"), "os.system")
    assert not marker.exists()


@pytest.mark.parametrize("where", ["tmp", "tmp_path"])
def test_write_outside_its_dir_is_blocked(where, tmp_path):
    target = (f"{tempfile.gettempdir()}/glue_sandbox_test_{uuid.uuid4().hex}.txt" if where == "tmp"
              else str(tmp_path / "evil.txt"))
    assert_blocked(run(f"open({target!r}, 'w').write('pwned')"), target)
    assert not os.path.exists(target)


def test_caught_write_outside_still_counts_as_blocked(tmp_path):
    target = tmp_path / "evil.txt"
    result = run(f"""
        try:
            open({str(target)!r}, "a").write("pwned")
        except PermissionError:
            pass
        assert True
    """)
    assert_blocked(result, str(target))
    assert not target.exists()


def test_deleting_outside_its_dir_is_blocked(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "data.txt").write_text("keep me")
    for program in (f"import shutil\nshutil.rmtree({str(victim)!r})",
                    f"import os\nos.remove({str(victim / 'data.txt')!r})",
                    f"import os\nos.rename({str(victim / 'data.txt')!r}, 'mine.txt')",
                    f"import os\nos.chmod({str(victim)!r}, 0o777)",
                    "import os\nos.chdir('/')"):
        assert_blocked(run(program), "outside the sandbox dir")
    assert (victim / "data.txt").read_text() == "keep me"


def test_writing_inside_its_own_dir_is_allowed():
    result = run("""
        import os, pathlib, shutil, tempfile
        with open("out.txt", "w") as f:
            f.write("hello")
        assert open("out.txt").read() == "hello"
        os.makedirs("a/b")
        pathlib.Path("a/b/c.txt").write_text("x")
        shutil.copytree("a", "copy")
        shutil.rmtree("a")
        with tempfile.NamedTemporaryFile() as t:   # TMPDIR is the sandbox dir
            t.write(b"x")
        with open(os.devnull, "w") as f:
            f.write("silenced")
    """)
    assert result == SandboxResult(True, "passed", "")


def test_environment_is_minimal_and_its_dir_is_removed(monkeypatch):
    monkeypatch.setenv("http_proxy", "http://proxy.invalid:3128")
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    made = []
    monkeypatch.setattr(sandbox.tempfile, "TemporaryDirectory",
                        recording_subclass(tempfile.TemporaryDirectory, "name", made))
    result = run(f"""
        import os
        assert os.getcwd() == os.environ["HOME"] == os.environ["TMPDIR"]
        assert os.getcwd() != {os.getcwd()!r}
        assert "http_proxy" not in os.environ and "SECRET_TOKEN" not in os.environ
    """)
    assert result == SandboxResult(True, "passed", "")
    assert len(made) == 1 and not os.path.exists(made[0])


@pytest.mark.parametrize("program", [
    "import socket",
    "import importlib\nimportlib.import_module('_socket')",
    "import urllib.request\nurllib.request.urlopen('http://example.com')",
    "import ctypes",
], ids=["socket", "_socket", "urllib", "ctypes"])
def test_network_and_ffi_are_blocked(program):
    assert_blocked(run(program))


def test_import_socket_is_blocked():
    assert_blocked(run("import socket\nsocket.create_connection(('example.com', 80))"),
                   "import of socket")


def test_memory_hog_fails_with_memory_error():
    result = run("x = bytearray(2 * 1024**3)", SandboxLimits(timeout_s=5, memory_mb=256))
    assert (result.passed, result.status) == (False, "error")
    assert result.detail.startswith("MemoryError"), result


def test_output_flood_neither_hangs_nor_fills_memory():
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    result = run("while True:\n    print('x' * 1000)")
    assert time.monotonic() - start < 1.0 + MARGIN_S
    assert result.status == "timeout"
    # A second of printing is hundreds of MB; the parent keeps at most 64 KiB of it.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_kib < 64 * 1024


def worker_pid() -> int:
    """Pid of the sandbox worker that runs this process's programs: their parent."""
    result = run("import os\nassert False, os.getppid()")
    match = re.fullmatch(r"AssertionError: (\d+) \(line 2\)", result.detail)
    assert match, result
    return int(match[1])


@pytest.mark.parametrize("program", [
    "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):\n"
    "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass",
    "import time\ntime.sleep(60)",
    "sum(range(10**13))",   # one C call: no Python-level signal handler or check would run
], ids=["ignores-signals", "sleeps", "hangs-in-C"])
def test_hung_programs_are_killed_at_the_timeout(program, child_pids):
    start = time.monotonic()
    result = run(program)
    assert time.monotonic() - start < 1.0 + MARGIN_S
    assert (result.status, result.detail) == ("timeout", "no result within 1 s (wall clock)")
    assert live_processes_in_session(child_pids[0]) == []


def test_the_hook_decides_with_its_own_builtins(tmp_path):
    # the hook asks `type(path) is int` (an fd: checked when it was opened): were it to look up the
    # program's builtins, this replacement would let a write outside the sandbox dir through
    target = tmp_path / "outside.txt"
    result = run(f"""
        import builtins
        builtins.type = lambda *args: int
        open({str(target)!r}, "w").write("x")
    """)
    assert_blocked(result, "outside the sandbox dir")
    assert not target.exists()


def test_a_program_cannot_affect_the_next():
    first = run("""
        import builtins, collections, math, os, sys
        builtins.len = lambda x: 42
        math.pi = 3
        collections.Counter = None
        sys.modules["json"] = None
        sys.setrecursionlimit(100)
        os.environ["LEAKED"] = "1"
        with open("leftover.txt", "w") as f:
            f.write("x")
        assert len([]) == 42 and os.path.exists("leftover.txt")
    """)
    assert first == SandboxResult(True, "passed", "")
    second = run("""
        import collections, json, math, os, sys
        assert len([]) == 0
        assert math.pi > 3.14 and collections.Counter("aab")["a"] == 2
        assert json.dumps([1]) == "[1]"
        assert sys.getrecursionlimit() == 1000
        assert "LEAKED" not in os.environ
        assert not os.path.exists("leftover.txt")
    """)
    assert second == SandboxResult(True, "passed", "")


def test_each_program_draws_its_own_random_numbers():
    # `random` is imported before the worker forks; a child that kept its state would repeat it.
    draws = {run("import random\nassert False, random.getrandbits(64)").detail for _ in range(3)}
    assert len(draws) == 3


def test_programs_start_without_denied_modules_loaded():
    # A denied module already in sys.modules would be imported from the cache, unchecked.
    result = run(f"""
        import sys
        loaded = sorted(m for m in sys.modules if m.partition(".")[0] in {sorted(policy.DENIED_MODULES)!r})
        assert not loaded, loaded
        assert "collections" in sys.modules and "heapq" in sys.modules   # pre-imported
    """)
    assert result == SandboxResult(True, "passed", "")


def test_a_worker_that_would_preload_a_denied_module_does_not_start(monkeypatch):
    monkeypatch.setattr(policy, "PREIMPORTED", (*policy.PREIMPORTED, "socket"))
    monkeypatch.setattr(client, "_worker", None)   # the usual worker is back after the test
    result = run("assert True")
    assert (result.passed, result.status) == (False, "error")
    assert result.detail.startswith("could not start the sandbox: RuntimeError: pre-imports loaded"), result
    assert "socket" in result.detail


@pytest.mark.parametrize("program, outcome", [
    ("import faulthandler\nfaulthandler._sigsegv()", ("error", "killed by SIGSEGV")),
    ("while True:\n    pass", ("timeout", "no result within 1 s (wall clock)")),
    ("x = bytearray(2 * 1024**3)", ("error", "MemoryError (line 1)")),
    ("import os\nos._exit(7)", ("error", "exited with code 7 without a report")),
], ids=["segfault", "timeout", "memory", "exit"])
def test_the_worker_survives_a_crash_or_timeout(program, outcome):
    worker = worker_pid()
    result = run(program, SandboxLimits(timeout_s=1, memory_mb=256))
    assert (result.status, result.detail) == outcome
    assert worker_pid() == worker
    assert run("assert 1 + 1 == 2") == SandboxResult(True, "passed", "")


def test_a_dead_worker_is_replaced():
    worker = worker_pid()
    os.kill(worker, signal.SIGKILL)
    assert live_processes_in_session(worker) == []   # the worker leads a session of its own
    assert run("assert 1 + 1 == 2") == SandboxResult(True, "passed", "")
    assert worker_pid() != worker


def test_threads_take_turns_at_the_worker():
    programs = [f"assert {i} % 2 == 0, {i}" for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, programs))
    assert [r.status for r in results] == ["passed", "failed"] * 4
    assert [r.detail for r in results[1::2]] == [f"AssertionError: {i} (line 1)" for i in (1, 3, 5, 7)]


def test_a_forked_caller_gets_its_own_worker():
    parents_worker = worker_pid()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:   # the forked caller: answer through the pipe, never return into pytest
        try:
            os.close(read_end)
            seen = {"worker": worker_pid(), "failed": run("assert 1 + 1 == 3, 'child'").detail,
                    "passed": run("assert 1 + 1 == 2").status}
        except BaseException as exc:
            seen = {"exception": repr(exc)}
        finally:
            try:
                os.write(write_end, json.dumps(seen).encode())
            finally:
                os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        seen = json.loads(f.read())
    os.waitpid(pid, 0)
    assert seen.get("worker") not in (None, parents_worker), seen
    assert (seen["failed"], seen["passed"]) == ("AssertionError: child (line 1)", "passed")
    # The parent's worker is untouched by the child's start and exit.
    assert worker_pid() == parents_worker
    assert run("assert 1 + 1 == 3, 'parent'").detail == "AssertionError: parent (line 1)"


def test_bad_input_is_refused_with_a_clear_error():
    with pytest.raises(TypeError, match="^program must be a str, not bytes$"):
        run_untrusted(b"assert True")
    with pytest.raises(TypeError, match="^limits must be a SandboxLimits, not dict$"):
        run_untrusted("assert True", {"timeout_s": 1})
    with pytest.raises(ValueError, match="^SandboxLimits.timeout_s must be a positive number of seconds, not 0$"):
        SandboxLimits(timeout_s=0)
    with pytest.raises(ValueError, match="^SandboxLimits.memory_mb must be a positive int, not 0.5$"):
        SandboxLimits(memory_mb=0.5)
