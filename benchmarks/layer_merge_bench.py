"""Streamed merge throughput at the paper's tensor scale, against the machine's read bandwidth.

    python benchmarks/layer_merge_bench.py [--models 8] [--shape 11008x4096] [--dtype bfloat16] [--repeats 5]

merge_bench.py measures the mini zoo, whose tensors (< 1 MB) stay in the CPU's caches. Here every
model (and the base) is one Llama-2-7B-sized MLP tensor, stored like the hub checkpoints (bf16 by
default, so fine-tuning deltas take few distinct values and top-k selection meets many ties),
written as safetensors to a temp dir and read back through the engine. Printed first, the
machine's read bandwidth (STREAM-like: torch's threads summing an int64 buffer as large as the
inputs, in memory) and the torch-sum baseline (every model's tensor read through the engine's
memory maps and added up in float32); then each method's streamed merge (Merger.tensors of one
Merger, into a float32 output reused from merge to merge, as `to_model` reuses a model's tensors in
a search: a tensor in the middle of a checkpoint, whose buffers the ones before it made), in GB/s
of input read and as ratios to both, each the median over pairs run alternately with the read. Medians of --repeats, page cache warm. Goal (issue 32, on 2 cores, bf16): linear >= 0.5x the
read bandwidth, TIES and DARE-TIES >= 0.2x. Also printed: what mapping the files' pages costs by
itself (faulting them in and releasing them, which every merge does: the engine drops a tensor's
pages once merged), and each ratio were that cost taken away: on a virtual machine the mapping can
cost as much as a pass of arithmetic.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from merge_bench import METHOD_PARAMS, input_bytes, median_time, paired_times, sum_baseline  # noqa: E402

from glue_bench.merge import get_method  # noqa: E402
from glue_bench.merge.engine import Merger, TensorSource, release_pages  # noqa: E402

KEY = "model.layers.0.mlp.up_proj.weight"


def write_models(root: Path, n: int, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[list[Path], Path]:
    """The base, and n fine-tunes of it (base + N(0, 0.01^2) noise), each rounded to `dtype`."""
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(shape, generator=generator)
    dirs = []
    for i in range(n + 1):
        weights = base if i == 0 else base + 0.01 * torch.randn(shape, generator=generator)
        directory = root / ("base" if i == 0 else f"model{i}")
        directory.mkdir()
        save_file({KEY: weights.to(dtype).contiguous()}, str(directory / "model.safetensors"))
        (directory / "config.json").write_text(json.dumps({"num_hidden_layers": 1}))
        dirs.append(directory)
    return dirs[1:], dirs[0]


def map_pages(sources: list[TensorSource], pool: ThreadPoolExecutor, threads: int) -> None:
    """The engine's file access by itself: every input's tensor faulted in (a byte read per page,
    the sources split over `threads` of the pool, as the kernels' passes split the entries) and its
    pages released again (release_pages), as each merge does."""
    def touch(share: list[TensorSource]) -> None:
        for source in share:
            source.get(KEY).view(-1).view(torch.uint8)[::4096].sum()
    list(pool.map(touch, [sources[i::threads] for i in range(threads)]))
    release_pages(sources, KEY)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--shape", default="11008x4096")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--methods", nargs="+", default=list(METHOD_PARAMS),
                        help="registered merge methods (default: %(default)s); others run at their defaults")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.split("x"))
    with tempfile.TemporaryDirectory() as scratch:
        dirs, base_dir = write_models(Path(scratch), args.models, shape, getattr(torch, args.dtype))
        sources = [TensorSource(d.name, d) for d in dirs]
        base = TensorSource("base", base_dir)
        read = input_bytes(sources)
        memory = torch.ones(max(read, 1 << 20) // 8, dtype=torch.int64)  # in memory, not in files: a floor for reading them
        stream = lambda: memory.sum()  # noqa: E731
        print(f"# layer_merge_bench: {args.models} models + base, one {args.shape} {args.dtype} tensor each "
              f"({input_bytes([base]) / 1e6:.0f} MB), torch threads {torch.get_num_threads()}, "
              f"medians of {args.repeats}")
        stream_s = median_time(stream, args.repeats)
        print(f"read bandwidth: torch sum of {memory.nbytes / 1e6:.0f} MB of int64 in memory: "
              f"{memory.nbytes / stream_s / 1e9:.2f} GB/s")
        threads = torch.get_num_threads()
        with ThreadPoolExecutor(threads) as pool:
            map_s = median_time(lambda: map_pages([*sources, base], pool, threads), args.repeats)
        print(f"page mapping: faulting in the {len(sources) + 1} files' pages and releasing them, as each merge "
              f"does: {map_s * 1e3:.0f} ms ({threads} threads)")
        sum_s = median_time(lambda: sum_baseline(sources), args.repeats)
        print(f"baseline: torch sum over {args.models} models: {read / sum_s / 1e9:.2f} GB/s ({sum_s * 1e3:.0f} ms), "
              f"{(read / sum_s) / (memory.nbytes / stream_s):.2f}x the read bandwidth")
        outputs = {KEY: torch.empty(shape, dtype=torch.float32)}
        for method in args.methods:
            bytes_read = read + (input_bytes([base]) if get_method(method).base == "required" else 0)
            merger = Merger(sources, method, base)  # its buffers reused, as from one tensor of a checkpoint to the next

            def streamed():
                for _ in merger.tensors(METHOD_PARAMS.get(method, {}), outputs):
                    pass

            pairs = paired_times(stream, streamed, args.repeats)
            merge_s = statistics.median(m for _, m in pairs)
            to_read = statistics.median((bytes_read / m) / (memory.nbytes / r) for r, m in pairs)
            unmapped = statistics.median((bytes_read / max(m - map_s, 1e-9)) / (memory.nbytes / r) for r, m in pairs)
            print(f"{method}: {bytes_read / merge_s / 1e9:.2f} GB/s ({merge_s * 1e3:.0f} ms), "
                  f"{to_read:.2f}x the read bandwidth (median ratio of pairs run alternately; {unmapped:.2f}x "
                  f"less the page mapping), {(bytes_read / merge_s) / (read / sum_s):.2f}x the sum baseline")

if __name__ == "__main__":
    main()
