"""The GPU check, ready for the day a GPU is here: merges and evaluation on the device against the
CPU's, and what the device does with them.

    python benchmarks/gpu_check.py                                       # one GPU, the mini zoo: <= 5 min
    GLUE_BENCH_MINI_SIZE=micro python benchmarks/gpu_check.py --device cpu   # CI: the same code on the CPU

Measured in this run, on the zoo's models (mini4 and its base, built if missing):
1. each merge method's result on the device against the CPU's: the largest |difference| over all
   tensors (the device's copied back), beside the largest |weight|;
2. the merge of all four models (linear) evaluated on the device and on the CPU, on the same
   items (`--limit` per task): each task's primary metric both ways, and the items whose
   outcome differs;
3. merge throughput on the device, inputs already there (the engine's cache: a search's
   situation): GB of input read per second, the median of `--repeats`, beside the device's read
   bandwidth from a copy of a 512 MiB tensor (bytes read per second, median of `--repeats`) and
   their ratio;
4. evaluation throughput on the device: prompt and generated tokens per second;
5. peak device memory (CUDA's allocator; on the CPU, the process's peak resident memory).
Exits 1 when a merge differs by more than `--tolerance` relative to its largest weight, or more
than `--max-differing` of the items' outcomes differ: kernels may round differently, not compute
something else.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

METHODS = {"linear": {}, "task_arithmetic": {}, "ties": {"density": 0.5}, "dare_ties": {"density": 0.5, "seed": 0},
           "tsv": {}, "magmax": {}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def read_bandwidth(device: torch.device, repeats: int) -> float:
    """Bytes read per second by a device-to-device copy of 512 MiB (it reads them once, writes once)."""
    source = torch.empty(2**27, dtype=torch.float32, device=device).fill_(1.0)
    target = torch.empty_like(source)
    times = []
    for _ in range(repeats + 1):  # the first warms up
        _sync(device)
        start = time.perf_counter()
        target.copy_(source)
        _sync(device)
        times.append(time.perf_counter() - start)
    return source.numel() * source.element_size() / statistics.median(times[1:])


def merges(sources, base, device: torch.device, repeats: int) -> list[dict]:
    from glue_bench.merge.engine import Merger

    rows = []
    for name, params in METHODS.items():
        on_cpu = Merger(sources, name, base).to_model(params)
        merger = Merger(sources, name, base, device=device, cache=True)
        model = merger.to_model(params)  # reads the inputs into the cache: the timed merges reuse them
        times = []
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            merger.to_model(params, model)
            _sync(device)
            times.append(time.perf_counter() - start)
        inputs = [*sources, base] if merger.method.base == "required" else sources
        read = sum(source.nbytes(key) for source in inputs for key in merger.keys)
        ours, theirs = dict(model.named_parameters()), dict(on_cpu.named_parameters())
        diff = max(float((ours[k].detach().cpu() - theirs[k].detach()).abs().max()) for k in theirs)
        scale = max(float(t.detach().abs().max()) for t in theirs.values())
        rows.append({"method": name, "max_diff": diff, "max_weight": scale, "seconds": statistics.median(times),
                     "bytes_read": read})
    return rows


def evaluation(sources, base, tokenizer, tasks_dir, device: torch.device, limit: int) -> tuple[dict, dict, dict]:
    """The linear merge of all on the device and on the CPU: (per task (device, cpu) primary metric,
    per task items differing / items, the device's stats)."""
    from glue_bench.evaluate import PRIMARY_METRIC, EvalConfig, evaluate_model
    from glue_bench.merge.engine import Merger

    runs = []
    for where in (device, torch.device("cpu")):
        model = Merger(sources, "linear", base, device=where).to_model({})
        runs.append(evaluate_model(model, tokenizer, tasks_dir,
                                   EvalConfig(limit=limit, device=str(where), allow_code_execution=True)))
    (dev_rows, dev_stats), (cpu_rows, cpu_stats) = runs
    metric = {t: (next(r["value"] for r in dev_rows if r["task"] == t and r["metric"] == m),
                  next(r["value"] for r in cpu_rows if r["task"] == t and r["metric"] == m))
              for t, m in PRIMARY_METRIC.items() if any(r["task"] == t for r in cpu_rows)}
    outcome = {(o["task"], o["doc_id"]): o["value"] for o in cpu_stats["outcomes"] if o["metric"] == PRIMARY_METRIC[o["task"]]}
    differing = {t: [0, 0] for t in metric}
    for o in dev_stats["outcomes"]:
        if o["metric"] == PRIMARY_METRIC[o["task"]]:
            differing[o["task"]][1] += 1
            differing[o["task"]][0] += o["value"] != outcome[(o["task"], o["doc_id"])]
    return metric, differing, dev_stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="the device checked against the CPU (default: cuda)")
    parser.add_argument("--zoo", default="mini4")
    parser.add_argument("--limit", type=int, default=20, help="items per task evaluated both ways")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tolerance", type=float, default=1e-5, help="largest merge |difference| / largest |weight|")
    parser.add_argument("--max-differing", type=float, default=0.05, help="share of items whose outcome may differ")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here (torch.cuda.is_available() is false); --device cpu checks the code")

    from glue_bench.evaluate import render_tasks
    from glue_bench.merge.engine import TensorSource
    from glue_bench.zoo import ensure_available, load_tokenizer, local_dir, resolve_zoo, zoo_config
    from glue_bench.zoo.mini.build import ensure_data

    size = os.environ.get("GLUE_BENCH_MINI_SIZE", "mini")
    refs, base_ref = resolve_zoo(zoo_config(args.zoo), size)
    ensure_available([*refs, base_ref], size)
    sources = [TensorSource(r.name, local_dir(r)) for r in refs]
    base = TensorSource(base_ref.name, local_dir(base_ref))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"gpu_check: {args.zoo} ({size}, {len(refs)} models + base) on {name} against the CPU; "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    bandwidth = read_bandwidth(device, args.repeats)
    rows = merges(sources, base, device, args.repeats)
    print(f"\n1, 3. merges: device against CPU, and device throughput (inputs on the device; its read bandwidth "
          f"{bandwidth / 1e9:.1f} GB/s, a copy of 512 MiB, median of {args.repeats})")
    print(f"{'method':<16}{'max |diff|':>12}{'max |w|':>10}{'ms':>9}{'GB/s':>8}{'/ read bw':>11}")
    failed = []
    for r in rows:
        rate = r["bytes_read"] / r["seconds"]
        print(f"{r['method']:<16}{r['max_diff']:>12.2e}{r['max_weight']:>10.3f}{r['seconds'] * 1e3:>9.1f}"
              f"{rate / 1e9:>8.2f}{rate / bandwidth:>11.2f}")
        if r["max_diff"] > args.tolerance * r["max_weight"]:
            failed.append(f"{r['method']}: merges differ by {r['max_diff']:.2e}")

    with tempfile.TemporaryDirectory() as tmp:
        tasks_dir = render_tasks(ensure_data(size, base_ref.replicate), Path(tmp) / "tasks")
        metric, differing, stats = evaluation(sources, base, load_tokenizer(refs[0]), tasks_dir, device, args.limit)
    print(f"\n2. linear(all) evaluated on {args.limit} items a task: primary metric on the device / on the CPU, "
          "items whose outcome differs")
    for task, (on_device, on_cpu) in metric.items():
        print(f"{task:<18}{on_device:>8.3f}{on_cpu:>8.3f}   {differing[task][0]}/{differing[task][1]}")
    changed, total = sum(d for d, _ in differing.values()), sum(n for _, n in differing.values())
    if changed > args.max_differing * total:
        failed.append(f"evaluation: {changed} of {total} outcomes differ")
    print(f"\n4. evaluation on the device: {stats['tokens']} tokens in {stats['eval_s']:.1f} s, "
          f"{stats['tokens'] / stats['eval_s']:.0f} tokens/s (prompt and generated; the sandboxed programs' time included)")
    if device.type == "cuda":
        print(f"5. peak device memory: {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB (CUDA's allocator)")
    else:
        print(f"5. peak resident memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if failed:
        sys.exit("gpu_check: FAILED: " + "; ".join(failed))
    print("gpu_check: the device's merges and scores agree with the CPU's")


if __name__ == "__main__":
    main()
