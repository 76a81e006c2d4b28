"""How fast and how lean glue_bench's merges are, side by side with a bandwidth baseline and mergekit.

    python benchmarks/merge_bench.py [--zoo mini8] [--methods linear ties dare_ties] [--repeats 9] [--threads N]

For each method, over the zoo's members (and its base, for task-vector methods), on this machine:
(a) throughput of one streamed merge into an in-memory model, in GB/s of input weights read, and
    its ratio to a plain torch sum over the same tensors read the same way (the bandwidth
    baseline), run alternately with it (the median of the pairs' ratios); also a sum over tensors
    read with safetensors' own `safe_open`, for reference;
(b) one merge written to disk: glue_bench's `Merger.save` against mergekit's `run_merge` (what
    `mergekit-yaml` calls), both in this process after a warm-up; and the `mergekit-yaml` command's
    own wall time, start-up included;
(c) a loop of 10 random coefficient vectors: glue_bench in memory (inputs cached, the output model
    reused) against merging each to disk with mergekit and loading it with transformers;
(d) peak resident memory of one streamed merge (fresh process, warmed up by the same merge, peak
    reset; median of 3 processes, as it varies by a few MB from one to the next) against one
    model's size and the bound 1.5 x model + N x largest tensor. Twice: with
    glibc's default allocator, and with its mmap threshold pinned at 64 KiB. glibc always maps
    blocks above 32 MiB (every large tensor of a 7B model) and returns them when freed, but keeps
    the mini zoo's blocks (a few MiB at most) in its heap, where fragmentation adds a few MB; the pinned
    run shows the merge's own working set, as it is at the paper's scale.
Times are medians of --repeats runs; the page cache is warm, so "read" means memory bandwidth, not
disk. On the CPU, TIES and DARE use glue_bench's C kernels; GLUE_BENCH_KERNELS=0 measures the torch
path instead. Needs the `test` extra (mergekit).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from glue_bench.merge import get_method, kernels  # noqa: E402
from glue_bench.merge.engine import Merger, TensorSource  # noqa: E402
from glue_bench.zoo import local_dir  # noqa: E402

METHOD_PARAMS = {"linear": {}, "ties": {"density": 0.5}, "dare_ties": {"density": 0.5, "seed": 0}}


def zoo_dirs(zoo: str, size: str) -> tuple[dict[str, Path], Path]:
    from glue_bench.zoo import ensure_available, resolve_zoo, zoo_config

    refs, base = resolve_zoo(zoo_config(zoo), size)
    ensure_available(refs + [base], size)
    return {r.name: local_dir(r) for r in refs}, local_dir(base)


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up: imports, page cache, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired_times(first, second, repeats: int) -> list[tuple[float, float]]:
    """Times of `first` and `second` run alternately: on a shared machine whose load drifts, each
    pair sees about the same load, so their ratio is steadier than a ratio of separate medians."""
    first(), second()  # warm-up
    pairs = []
    for _ in range(repeats):
        times = []
        for fn in (first, second):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        pairs.append(tuple(times))
    return pairs


def input_bytes(sources: list[TensorSource]) -> int:
    return sum(s.nbytes(k) for s in sources for k in s.keys())


def sum_baseline(sources: list[TensorSource]) -> None:
    """The bandwidth baseline: read every tensor the same way the engine does and add them up."""
    for key in sources[0].keys():
        total = sources[0].get(key).to(torch.float32, copy=True)
        for source in sources[1:]:
            total += source.get(key)
        for source in sources:
            source.release(key)


def safe_open_baseline(dirs: list[Path]) -> None:
    from safetensors import safe_open

    handles = [safe_open(d / "model.safetensors", framework="pt") for d in dirs]
    for key in handles[0].keys():
        total = handles[0].get_tensor(key).to(torch.float32)
        for handle in handles[1:]:
            total += handle.get_tensor(key)


def mergekit_config(method: str, params: dict, dirs: list[Path], base: Path, weights=None) -> dict:
    per_model = {"density": params["density"]} if "density" in params else {}
    models = [{"model": str(d), "parameters": {"weight": w, **per_model}}
              for d, w in zip(dirs, weights or [1.0] * len(dirs))]
    config = {"merge_method": method, "dtype": "float32", "models": models}
    if get_method(method).base == "required":
        config["base_model"] = str(base)
        config["parameters"] = {"normalize": True}
    return config


def mergekit_run(config: dict, out: Path) -> None:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    shutil.rmtree(out, ignore_errors=True)
    run_merge(MergeConfiguration.model_validate(config), str(out),
              MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True))


def peak_rss_of_merge(method: str, dirs: list[Path], base: Path, env: dict | None = None) -> dict:
    """A fresh process runs the merge once to warm up (imports, and the code pages of the kernels
    it uses, which are the libraries' and not the merge's), returns freed memory to the OS
    (malloc_trim), resets the peak and runs it again into a new model; returns the peak's increase
    over the resident size just before."""
    script = f"""
import ctypes, gc, json
from glue_bench.merge.engine import Merger, TensorSource
def rss(field):
    return int(next(l for l in open('/proc/self/status') if l.startswith(field)).split()[1]) * 1024
sources = [TensorSource(str(i), d) for i, d in enumerate({[str(d) for d in dirs]!r})]
base = TensorSource('base', {str(base)!r})
warm = Merger(sources, {method!r}, base).to_model({METHOD_PARAMS[method]!r})
del warm
gc.collect()
ctypes.CDLL('libc.so.6').malloc_trim(0)
before = rss('VmRSS:')
open('/proc/self/clear_refs', 'w').write('5')              # reset the peak (VmHWM)
model = Merger(sources, {method!r}, base).to_model({METHOD_PARAMS[method]!r})
print(json.dumps({{"before": before, "peak": rss('VmHWM:')}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True,
                         env={**os.environ, **(env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default="mini8")
    parser.add_argument("--size", default=os.environ.get("GLUE_BENCH_MINI_SIZE", "mini"))
    parser.add_argument("--methods", nargs="+", default=list(METHOD_PARAMS))
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--loop", type=int, default=10, help="coefficient vectors in the search loop")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    members, base_dir = zoo_dirs(args.zoo, args.size)
    dirs = list(members.values())
    sources = [TensorSource(n, d) for n, d in members.items()]
    base = TensorSource("base", base_dir)
    one_model = input_bytes([base])
    largest = max(base.nbytes(k) for k in base.keys())
    cpu_kernels = "on" if kernels.library() is not None else "off (GLUE_BENCH_KERNELS=0, or none built)"
    print(f"# merge_bench: zoo {args.zoo} ({args.size}), {len(dirs)} models of {one_model / 1e6:.1f} MB "
          f"(largest tensor {largest / 1e6:.2f} MB), device {args.device}, torch threads "
          f"{torch.get_num_threads()}, CPU kernels {cpu_kernels}, medians of {args.repeats}")

    sum_s = median_time(lambda: sum_baseline(sources), args.repeats)
    safe_s = median_time(lambda: safe_open_baseline(dirs), args.repeats)
    read = input_bytes(sources)
    print(f"baseline: torch sum over {len(dirs)} models: {read / sum_s / 1e9:.2f} GB/s "
          f"({sum_s * 1e3:.1f} ms); same via safe_open: {read / safe_s / 1e9:.2f} GB/s")

    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for method in args.methods:
            params = METHOD_PARAMS[method]
            uses_base = get_method(method).base == "required"
            bytes_read = read + (one_model if uses_base else 0)
            model = Merger(sources, method, base, device=args.device).empty_model()

            def streamed():
                Merger(sources, method, base, device=args.device).to_model(params, model)

            pairs = paired_times(lambda: sum_baseline(sources), streamed, args.repeats)
            merge_s = statistics.median(m for _, m in pairs)
            ratio = statistics.median((bytes_read / m) / (read / b) for b, m in pairs)
            print(f"\n## {method}\n(a) streamed merge: {bytes_read / merge_s / 1e9:.2f} GB/s "
                  f"({merge_s * 1e3:.1f} ms), {ratio:.2f}x the sum baseline (median ratio of "
                  f"{args.repeats} pairs, each baseline run just before its merge)")

            ours_disk = median_time(lambda: Merger(sources, method, base).save(
                params, _fresh(scratch / "ours")), args.repeats)
            config = mergekit_config(method, params, dirs, base_dir)
            mk_disk = median_time(lambda: mergekit_run(config, scratch / "mk"), max(3, args.repeats // 3))
            (scratch / "mk.yaml").write_text(yaml.safe_dump(config))
            start = time.perf_counter()
            subprocess.run(["mergekit-yaml", str(scratch / "mk.yaml"), str(_fresh(scratch / "mkcli")),
                            "--no-copy-tokenizer", "--quiet"], check=True, capture_output=True)
            cli_s = time.perf_counter() - start
            print(f"(b) merge to disk: glue_bench {ours_disk * 1e3:.0f} ms, mergekit run_merge "
                  f"{mk_disk * 1e3:.0f} ms: {mk_disk / ours_disk:.1f}x faster "
                  f"(mergekit-yaml command, start-up included: {cli_s:.1f} s)")

            vectors = [[rng.uniform(0.1, 1.0) for _ in dirs] for _ in range(args.loop)]
            cached = Merger(sources, method, base, device=args.device, cache=True)
            start = time.perf_counter()
            for weights in vectors:
                model = cached.to_model({**params, "weights": weights}, model)
            ours_loop = time.perf_counter() - start
            start = time.perf_counter()
            from transformers import AutoModelForCausalLM
            from transformers.utils.logging import disable_progress_bar

            disable_progress_bar()

            for weights in vectors:
                mergekit_run(mergekit_config(method, params, dirs, base_dir, weights), scratch / "mk")
                AutoModelForCausalLM.from_pretrained(scratch / "mk")
            mk_loop = time.perf_counter() - start
            print(f"(c) {args.loop}-candidate loop: glue_bench in memory {ours_loop:.2f} s, mergekit to disk "
                  f"+ load {mk_loop:.2f} s: {mk_loop / ours_loop:.0f}x faster")

            n = len(dirs) + uses_base
            bound = 1.5 * one_model + n * largest
            for allocator, env in (("glibc defaults", None),
                                   ("mmap threshold 64 KiB", {"MALLOC_MMAP_THRESHOLD_": "65536"})):
                runs = [peak_rss_of_merge(method, dirs, base_dir, env) for _ in range(3)]
                grew = statistics.median(rss["peak"] - rss["before"] for rss in runs)
                print(f"(d) peak RSS of one streamed merge, {allocator}, median of 3 processes: "
                      f"+{grew / 1e6:.1f} MB over the {runs[0]['before'] / 1e6:.0f} MB process = "
                      f"{grew / one_model:.2f}x one model; bound "
                      f"1.5 x model + {n} x largest tensor = {bound / 1e6:.1f} MB: "
                      f"{'within' if grew <= bound else 'ABOVE'}")


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


if __name__ == "__main__":
    main()
