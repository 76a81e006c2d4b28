"""What refusing non-finite weights costs: the engine's isfinite pass over every tensor it reads and
every tensor it merges, at the paper's tensor scale, and the up-front check of a zoo's weight files.

    python benchmarks/finite_check_bench.py [--models 8] [--shape 11008x4096] [--zoo mini8] [--repeats 7]

1. 7B-sized tensors (layer_merge_bench's files: n fine-tunes of one Llama-2-7B MLP tensor, bf16):
   a linear and a TIES merge streamed through Merger.tensors with the checks, and with them
   switched off, run alternately (paired medians: the load of a shared machine drifts).
2. The zoo (mini size): the up-front check of every member's and the base's files (headers, then
   every tensor finite; uncached), beside what a job does with those models anyway: loading each
   (`load_model`) and a linear merge of the members with and without the engine's checks.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from layer_merge_bench import write_models  # noqa: E402
from merge_bench import METHOD_PARAMS, paired_times  # noqa: E402

from glue_bench.merge import engine  # noqa: E402
from glue_bench.merge.engine import Merger, TensorSource  # noqa: E402


@contextmanager
def unchecked():
    """The engine with its finiteness checks switched off: the baseline."""
    finite = engine.is_finite
    engine.is_finite = lambda tensor: True
    try:
        yield
    finally:
        engine.is_finite = finite


def merge_once(sources, method, base, params) -> None:
    for _ in Merger(sources, method, base).tensors(params):
        pass


def paired(fn, repeats: int) -> tuple[float, float]:
    """Medians of (checked, unchecked) run alternately."""
    def without():
        with unchecked():
            fn()
    pairs = paired_times(fn, without, repeats)
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def report(what: str, checked: float, baseline: float) -> None:
    print(f"  {what:<44} {checked * 1e3:9.1f} ms  vs {baseline * 1e3:9.1f} ms without: "
          f"+{(checked - baseline) * 1e3:7.1f} ms ({(checked / baseline - 1) * 100:+.1f} %)")


def big_tensors(args) -> None:
    shape = tuple(int(s) for s in args.shape.split("x"))
    print(f"{args.models} models + base, one {args.shape} bf16 tensor each (Llama-2-7B MLP), medians of {args.repeats}:")
    with tempfile.TemporaryDirectory() as scratch:
        dirs, base_dir = write_models(Path(scratch), args.models, shape, torch.bfloat16)
        sources = [TensorSource(d.name, d) for d in dirs]
        base = TensorSource("base", base_dir)
        for method in ("linear", "ties"):
            checked, baseline = paired(lambda: merge_once(sources, method, base, METHOD_PARAMS[method]), args.repeats)
            report(f"{method} merge (Merger.tensors)", checked, baseline)
        one = torch.randn(shape)
        for what, check in (("is_finite (a sum)", engine.is_finite), ("isfinite(...).all()", lambda t: torch.isfinite(t).all())):
            alone = statistics.median(_time(lambda: check(one)) for _ in range(args.repeats))
            print(f"  {what} on one float32 {args.shape} tensor alone: {alone * 1e3:.1f} ms")


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def zoo(args) -> None:
    from glue_bench.zoo import ensure_available, load_model, resolve_zoo, zoo_config
    from glue_bench.zoo.files import _non_finite_tensor, check_directory

    refs, base = resolve_zoo(zoo_config(args.zoo), "mini")
    ensure_available(refs + [base], "mini")
    everyone = [base] + refs

    def check_all():
        for ref in everyone:
            for path in check_directory(Path(ref.location)):
                stat = path.stat()
                _non_finite_tensor.__wrapped__(str(path), stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def load_all():
        for ref in everyone:
            load_model(ref)

    pairs = paired_times(check_all, load_all, args.repeats)
    check, load = (statistics.median(p[i] for p in pairs) for i in (0, 1))
    print(f"zoo {args.zoo} (mini size, {len(everyone)} models with the base), medians of {args.repeats}:")
    print(f"  up-front check of every model's files (headers + isfinite): {check * 1e3:.1f} ms, "
          f"{check / len(everyone) * 1e3:.2f} ms per model; loading them all (load_model): {load * 1e3:.1f} ms "
          f"({check / load * 100:.1f} % of that)")
    sources = [TensorSource(r.name, r.location) for r in refs]
    base_source = TensorSource(base.name, base.location)
    checked, baseline = paired(lambda: merge_once(sources, "linear", base_source, METHOD_PARAMS["linear"]),
                               args.repeats)
    report(f"linear merge of {len(refs)} members (Merger.tensors)", checked, baseline)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--shape", default="11008x4096")
    parser.add_argument("--zoo", default="mini8")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    zoo(args)
    big_tensors(args)


if __name__ == "__main__":
    main()
