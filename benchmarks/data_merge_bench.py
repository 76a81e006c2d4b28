"""Cost of the data-dependent merges (fisher, regmean): statistics time, merge time, peak memory.

    python benchmarks/data_merge_bench.py [--zoo mini8] [--methods fisher regmean] [--documents 256]

For each method, in a fresh process of its own, over the zoo's members on the CPU:
(a) statistics: the time to compute every member's statistic from scratch (a new, empty cache),
    one model after another, as `strategy=all` does (model load + calibration pass + write);
    then the time to find them all in the cache (a second merge's cost);
(b) merge: one streamed merge into an in-memory model, reading the statistics beside the weights;
(c) peak resident memory (VmHWM) of (a) and of (b), each reset just before (clear_refs) and
    measured above the resident size then (after malloc_trim), as a multiple of one member's
    weight file. Warm-ups, unmeasured: the statistic of one model on two documents before (a),
    the same merge before (b) (imports, code pages). `linear` runs the same merge without
    statistics, for reference. Twice: with glibc's default allocator, which keeps freed blocks
    under 32 MiB (all of the mini zoo's) in its heap, where fragmentation adds to the peak, and
    with its mmap threshold pinned at 64 KiB, which shows the working set itself, as it is for
    large models (as benchmarks/merge_bench.py does).
One run each (the statistics pass is seconds per model); the load average before and after is
printed, as others may share the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SCRIPT = """
import ctypes, gc, json, sys, tempfile, time
from pathlib import Path
from glue_bench.merge import get_method
from glue_bench.merge.engine import Merger, TensorSource
from glue_bench.merge.statistics import Calibration, ensure_statistics
from glue_bench.zoo import local_dir, resolve_zoo, zoo_config

def rss(field):
    return int(next(l for l in open('/proc/self/status') if l.startswith(field)).split()[1]) * 1024

def reset_peak():
    gc.collect()
    ctypes.CDLL('libc.so.6').malloc_trim(0)
    open('/proc/self/clear_refs', 'w').write('5')
    return rss('VmRSS:')

method, zoo, size, documents = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
refs, _ = resolve_zoo(zoo_config(zoo), size)
needs = get_method(method).needs
sources = [TensorSource(r.name, local_dir(r)) for r in refs]
out = {}
with tempfile.TemporaryDirectory() as cache:
    stats = {}
    if needs:
        ensure_statistics(refs[:1], needs, Calibration(documents=2), cache_dir=cache + '/warm', progress=False)
        before = reset_peak()
        start = time.perf_counter()
        stats = ensure_statistics(refs, needs, Calibration(documents=documents), cache_dir=cache, progress=False)
        out['statistics_s'] = time.perf_counter() - start
        out['statistics_peak'] = rss('VmHWM:') - before
        start = time.perf_counter()
        ensure_statistics(refs, needs, Calibration(documents=documents), cache_dir=cache, progress=False)
        out['cached_s'] = time.perf_counter() - start
        out['statistics_bytes'] = sum(Path(s.directory, 'model.safetensors').stat().st_size for s in stats[needs[0]])
    warm = Merger(sources, method, statistics=stats).to_model({})  # the same merge, unmeasured: code pages, allocator
    del warm
    before = reset_peak()
    start = time.perf_counter()
    model = Merger(sources, method, statistics=stats).to_model({})
    out['merge_s'] = time.perf_counter() - start
    out['merge_peak'] = rss('VmHWM:') - before
print(json.dumps(out))
"""


def run_method(method: str, zoo: str, size: str, documents: int, pin_mmap: bool) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if pin_mmap:
        env["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)
    done = subprocess.run([sys.executable, "-c", SCRIPT, method, zoo, size, str(documents)], capture_output=True,
                          text=True, cwd=REPO, env=env)
    if done.returncode:
        sys.exit(f"{method}: the measuring process failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def model_bytes(zoo: str, size: str) -> tuple[int, int]:
    from glue_bench.zoo import ensure_available, local_dir, resolve_zoo, zoo_config
    from glue_bench.zoo.files import weight_files

    refs, base = resolve_zoo(zoo_config(zoo), size)
    ensure_available(refs + [base], size)
    return sum(f.stat().st_size for f in weight_files(local_dir(refs[0]))), len(refs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default="mini8")
    parser.add_argument("--size", default=os.environ.get("GLUE_BENCH_MINI_SIZE", "mini"))
    parser.add_argument("--methods", nargs="+", default=["fisher", "regmean", "linear"])
    parser.add_argument("--documents", type=int, default=256, help="calibration documents per model")
    args = parser.parse_args()
    one_model, n_models = model_bytes(args.zoo, args.size)
    print(f"load average before: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}")
    print(f"zoo {args.zoo} ({args.size}): {n_models} models, one model's weights {one_model / 1e6:.2f} MB; "
          f"{args.documents} calibration documents per model")
    for pin_mmap in (False, True):
        print("glibc's mmap threshold pinned at 64 KiB (blocks above it mapped, returned when freed)" if pin_mmap
              else "glibc's default allocator")
        print(f"{'method':<10}{'statistics s':>14}{'(cached) s':>12}{'stats MB':>10}{'peak x model':>14}"
              f"{'merge s':>10}{'peak x model':>14}")
        for method in args.methods:
            r = run_method(method, args.zoo, args.size, args.documents, pin_mmap)
            stats = (f"{r['statistics_s']:>14.2f}{r['cached_s']:>12.2f}{r['statistics_bytes'] / 1e6:>10.1f}"
                     f"{r['statistics_peak'] / one_model:>14.2f}") if "statistics_s" in r else \
                f"{'-':>14}{'-':>12}{'-':>10}{'-':>14}"
            print(f"{method:<10}{stats}{r['merge_s']:>10.2f}{r['merge_peak'] / one_model:>14.2f}")
    print(f"load average after: {os.getloadavg()[0]:.2f} (1 min)")
    print("statistics s: every model's statistic computed from an empty cache, one model at a time; (cached) s: "
          "the same call again, all found on disk; stats MB: their files, all models; peak x model: the rise of "
          "the process's VmHWM above its resident size just before (peak reset), over one model's weight file; "
          "merge s: one streamed merge into an in-memory model")


if __name__ == "__main__":
    main()
