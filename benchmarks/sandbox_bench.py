"""Per-program cost of the code sandbox: an interpreter started per program (the old sandbox)
against a child forked per program from the pre-started worker (this tree's), in one run.

    python benchmarks/sandbox_bench.py [--n 40] [--rev 449fa41]

The old path is `glue_bench/evaluate/sandbox.py` as of --rev (the last commit that started a
fresh `python -I -B` per program), loaded from `git show` as a module of its own; the new path is
the installed `glue_bench.evaluate.sandbox`. Both run the same N small passing MBPP/HumanEval-style
programs, with the default limits, alternately: program i goes through both paths one after the
other (which one first alternates), so that a noisy spell on the machine hits both alike. Before
that, one untimed call each: it starts the new path's worker, whose start-up is printed on its
own. Prints the median wall time per program of each path, the median of the pairs' ratios, and
the load average before and after (the timings are only as good as the machine is quiet).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE = "glue_bench/evaluate/sandbox.py"

# What MBPP and HumanEval items look like once the solution and the tests are joined.
PROGRAMS = [
    """
def similar_elements(test_tup1, test_tup2):
    return tuple(set(test_tup1) & set(test_tup2))

assert set(similar_elements((3, 4, 5, 6), (5, 7, 4, 10))) == {4, 5}
assert set(similar_elements((1, 2, 3, 4), (5, 4, 3, 7))) == {3, 4}
assert set(similar_elements((11, 12, 14, 13), (17, 15, 14, 13))) == {13, 14}
""",
    """
import math
def is_not_prime(n):
    for i in range(2, int(math.sqrt(n)) + 1):
        if n % i == 0:
            return True
    return False

assert is_not_prime(2) == False
assert is_not_prime(10) == True
assert is_not_prime(35) == True
""",
    """
import heapq as hq
def heap_queue_largest(nums, n):
    return hq.nlargest(n, nums)

assert heap_queue_largest([25, 35, 22, 85, 14, 65, 75, 22, 58], 3) == [85, 75, 65]
assert heap_queue_largest([25, 35, 22, 85, 14, 65, 75, 22, 58], 2) == [85, 75]
""",
    """
def count_ways(n):
    A = [0] * (n + 1)
    B = [0] * (n + 1)
    A[0], A[1], B[0], B[1] = 1, 0, 0, 1
    for i in range(2, n + 1):
        A[i] = A[i - 2] + 2 * B[i - 1]
        B[i] = A[i - 1] + B[i - 2]
    return A[n]

assert count_ways(2) == 3
assert count_ways(8) == 153
assert count_ways(12) == 2131
""",
    """
import re
def find_char_long(text):
    return re.findall(r"\\b\\w{4,}\\b", text)

assert find_char_long('Please move back to stream') == ['Please', 'move', 'back', 'stream']
assert find_char_long('Jing Eco and Tech') == ['Jing', 'Tech']
""",
    """
from collections import Counter
def count_common(words):
    return Counter(words).most_common(4)

assert count_common(['red', 'green', 'black', 'pink', 'black', 'white', 'black', 'eyes', 'white',
                     'black', 'orange', 'pink', 'pink', 'red', 'red', 'white', 'orange', 'white',
                     'black', 'pink', 'green', 'green', 'pink', 'green', 'pink', 'white', 'orange',
                     'orange', 'red']) == [('pink', 6), ('black', 5), ('white', 5), ('red', 4)]
""",
    """
from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    for idx, elem in enumerate(numbers):
        for idx2, elem2 in enumerate(numbers):
            if idx != idx2 and abs(elem - elem2) < threshold:
                return True
    return False


def check(candidate):
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False
    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.95) == True
    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 0.5) == False

check(has_close_elements)
""",
    """
def remove_occ(s, ch):
    first, last = s.find(ch), s.rfind(ch)
    if first == -1:
        return s
    return s[:first] + s[first + 1:last] + s[last + 1:] if first != last else s[:first] + s[first + 1:]

assert remove_occ("hello", "l") == "heo"
assert remove_occ("abcda", "a") == "bcd"
assert remove_occ("PHP", "P") == "H"
""",
]


def load_old_sandbox(rev: str):
    """`MODULE` as of `rev`, imported from a temporary file as a module of its own."""
    try:
        source = subprocess.run(["git", "show", f"{rev}:{MODULE}"], cwd=REPO, check=True,
                                capture_output=True, text=True).stdout
    except subprocess.CalledProcessError as exc:
        sys.exit(f"sandbox_bench: cannot read {MODULE} at {rev}: {exc.stderr.strip()}")
    if "def _child_main(" not in source:
        sys.exit(f"sandbox_bench: {MODULE} at {rev} is not the interpreter-per-program sandbox; "
                 "give --rev a commit before the worker")
    with tempfile.NamedTemporaryFile("w", suffix=".py", prefix="sandbox_old_", delete=False) as f:
        f.write(source)
    try:
        spec = importlib.util.spec_from_file_location("sandbox_old", f.name)
        module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)   # dataclasses look it up
        spec.loader.exec_module(module)
        module._bootstrap_command()   # reads its own source from the file, once (cached)
    finally:
        os.unlink(f.name)
    return module


def timed(run_untrusted, program: str) -> float:
    start = time.perf_counter()
    result = run_untrusted(program)
    elapsed = time.perf_counter() - start
    if not result.passed:
        sys.exit(f"sandbox_bench: a benchmark program did not pass: {result}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="programs (each through both paths)")
    parser.add_argument("--rev", default="449fa41",
                        help="git revision whose sandbox starts an interpreter per program")
    args = parser.parse_args()
    if args.n < 1:
        parser.error("--n must be at least 1")

    from glue_bench.evaluate import sandbox as new

    old = load_old_sandbox(args.rev)
    load_before = os.getloadavg()
    programs = [PROGRAMS[i % len(PROGRAMS)] for i in range(args.n)]
    old_warmup = timed(old.run_untrusted, programs[0])
    worker_start = timed(new.run_untrusted, programs[0])   # starts the worker
    paths = {"old": old.run_untrusted, "new": new.run_untrusted}
    times = {"old": [], "new": []}
    for i, program in enumerate(programs):
        for name in (("old", "new") if i % 2 == 0 else ("new", "old")):
            times[name].append(timed(paths[name], program))
    load_after = os.getloadavg()

    def ms(seconds: float) -> str:
        return f"{seconds * 1e3:.1f} ms"

    def summary(name: str) -> str:
        t = sorted(times[name])
        return f"median {ms(statistics.median(t))}/program (min {ms(t[0])}, max {ms(t[-1])})"

    ratios = [o / n for o, n in zip(times["old"], times["new"])]
    print(f"# sandbox_bench: {args.n} passing programs ({len(PROGRAMS)} distinct), each through both paths "
          f"alternately; Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average (1/5/15 min) "
          f"{' '.join(f'{x:.2f}' for x in load_before)} before, {' '.join(f'{x:.2f}' for x in load_after)} after")
    print(f"untimed first calls: old {ms(old_warmup)}; new {ms(worker_start)} (starts the worker)")
    print(f"old ({args.rev}: an interpreter per program): {summary('old')}")
    print(f"new (a child forked from the worker):    {summary('new')}")
    print(f"old/new: {statistics.median(times['old']) / statistics.median(times['new']):.1f}x "
          f"(ratio of the medians), {statistics.median(ratios):.1f}x (median of the pairs' ratios)")


if __name__ == "__main__":
    main()
