"""Fused CPU kernels (kernels.c) for TIES's trim and sign election, DARE's random drop and
linear's weighted sum; and TIES and DARE-TIES streamed from the inputs as stored, without the
stack of task vectors (task_vector_sample, ties_bracket and ties_streamed: two passes over the
inputs, see sparsify.top_magnitude_cuts; dare_ties_streamed: one pass).

On the CPU these steps are a dozen torch and numpy calls each, on tensors small enough that
per-call costs and temporaries outweigh the arithmetic; each kernel does its step in one or two
passes. They compute what the torch path computes (kept for CUDA, and for machines without a C
compiler): the same formulas, the same kept entries, the same random stream; only the election's
sums may add up in another order (a few ulp). The tests run both paths against direct formulas.

Built on first use with the system's C compiler ($CC, else cc) for this CPU (-march=native), into
$GLUE_BENCH_CACHE/kernels/ under a name hashed from the source, the flags and the CPU, and loaded
with ctypes (which releases the GIL during a call). If no compiler works, a warning says so once
and merges take the torch path. GLUE_BENCH_KERNELS=0 turns the kernels off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from glue_bench.cache import cache_root

_SOURCE = Path(__file__).with_name("kernels.c")
_FLAGS = ["-O3", "-march=native", "-fno-trapping-math", "-shared", "-fPIC"]
_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_SIGNATURES = {
    "ties_combine": [_P, _I64, _I64, _I64, _P, _P, _P, _P, ctypes.c_float, ctypes.c_int, _P],
    "keep_top": [_P, _I64, _P, _I64, _P, _P],
    "dare_keep": [_P, _I64, _P, _P, ctypes.c_int32],
    "dare_keep_rows": [_P, _I64, _P, _I64, _P, _P, _P],
    "weighted_sum": [_P, ctypes.c_int, _P, _I64, _I64, _P],
    "kth_magnitudes": [_P, _I64, _P, _I64, _P, _P],
    "subtract": [_P, ctypes.c_int, _P, _I64, _P],
    "widen": [_P, _I64, _P],
    "task_vector_sample": [_P, ctypes.c_int, _P, ctypes.c_int, _I64, _I64, _I64, _I64, _P, _I64],
    "ties_bracket": [_P, ctypes.c_int, _P, ctypes.c_int, _I64, _I64, _I64, _P, _P, _P, _P, _I64, _P, _P, _P, _I64, _P],
    "ties_streamed": [_P, ctypes.c_int, _P, ctypes.c_int, _I64, _I64, _I64, _P, _P, _P, _P, _P, ctypes.c_float,
                      ctypes.c_int, _P],
}
_SIGNATURES["dare_ties_streamed"] = [_P, ctypes.c_int, _P, ctypes.c_int, _I64, _I64, _I64, _P, _P, _P, _P, _P, _P,
                                     ctypes.c_float, ctypes.c_int, _P]
_RETURNS = {name: ctypes.c_int for name in ("subtract", "widen", "weighted_sum", "ties_bracket", "ties_streamed",
                                            "dare_ties_streamed", "ties_combine")}
_SHARE_MIN = 1 << 20  # entries a thread's share of a pass holds at least (a thread's start costs ~50 us)
_library: ctypes.CDLL | None = None
_tried = False
_loading = threading.Lock()


def library() -> ctypes.CDLL | None:
    """The compiled kernels, built on the first call; None when turned off or not buildable.
    Thread-safe: a kernel's threads may be the first to ask."""
    global _library, _tried
    if not _tried:
        with _loading:
            if not _tried:
                if os.environ.get("GLUE_BENCH_KERNELS", "1") != "0":
                    try:
                        _library = _load(_build())
                    except (OSError, subprocess.SubprocessError) as err:
                        warnings.warn(f"glue_bench: no C kernels ({err}); merging on the CPU with torch ops, "
                                      "1.5-2x slower for TIES and DARE on mini8", RuntimeWarning, stacklevel=2)
                _tried = True  # set last: a thread that sees it sees _library too
    return _library


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the kernels can take these tensors: float32, contiguous, in CPU memory."""
    for tensor in tensors:
        if tensor.dtype != torch.float32 or not tensor.is_cpu or not tensor.is_contiguous():
            return False
    return library() is not None


def _as_stored(tensors) -> bool:
    """Whether the kernels read these tensors as the files hold them: float32 or bfloat16, one dtype,
    contiguous, in CPU memory."""
    dtypes = {tensor.dtype for tensor in tensors}
    return (len(dtypes) == 1 and dtypes <= {torch.float32, torch.bfloat16}
            and all(tensor.is_cpu and tensor.is_contiguous() for tensor in tensors) and library() is not None)


def can_sum(tensors) -> bool:
    """Whether `weighted_sum` takes these inputs: `_as_stored`, and ATen's vector code fuses
    multiply-adds (else its add_ rounds twice, and the kernel's sums would not be torch's)."""
    return _as_stored(tensors) and torch.backends.cpu.get_cpu_capability() != "DEFAULT"


def can_subtract(stored: torch.Tensor, base: torch.Tensor) -> bool:
    """Whether `subtract` takes this input (as the file holds it) and base."""
    return _as_stored([stored]) and usable(base) and stored.shape == base.shape


def can_stream_task_vectors(stored, base: torch.Tensor, *outputs: torch.Tensor) -> bool:
    """Whether the streamed TIES and DARE-TIES kernels take these inputs as the files hold them
    (one dtype, float32 or bf16), this base (float32, or as stored in the inputs' dtype) and these
    float32 outputs."""
    base_ok = base.dtype in (torch.float32, stored[0].dtype) if stored else False
    return (_as_stored(stored) and base_ok and _as_stored([base]) and usable(*outputs)
            and all(tensor.shape == base.shape for tensor in [*stored, *outputs]))


def subtract(stored: torch.Tensor, base: torch.Tensor, out: torch.Tensor) -> bool:
    """out = stored (widened to float32) - base, bit for bit torch.sub's; whether `stored` holds
    NaN or inf. One pass over the input as the file holds it: no float32 copy of it is made."""
    bf16, size = int(stored.dtype == torch.bfloat16), stored.element_size()
    return any(_over_threads(base.numel(), lambda start, stop: library().subtract(
        stored.data_ptr() + start * size, bf16, base.data_ptr() + start * 4, stop - start, out.data_ptr() + start * 4)))


def widen(stored: torch.Tensor, out: torch.Tensor | None = None) -> tuple[torch.Tensor, bool]:
    """A bf16 tensor widened exactly to float32 (into `out` when given), and whether it is finite,
    in one pass over it. The caller checks `can_widen(stored)` first."""
    if out is None:
        out = torch.empty(stored.shape, dtype=torch.float32)
    return out, not any(_over_threads(stored.numel(), lambda start, stop: library().widen(
        stored.data_ptr() + 2 * start, stop - start, out.data_ptr() + 4 * start)))


def can_widen(stored: torch.Tensor) -> bool:
    """Whether `widen` takes this tensor: bf16, contiguous, in CPU memory."""
    return stored.dtype == torch.bfloat16 and _as_stored([stored])


def weighted_sum(tensors, coefficients, out: torch.Tensor | None = None) -> tuple[torch.Tensor, bool]:
    """sum_i c_i x_i as float32, bit for bit what `torch.mul(x_0, c_0)` then `add_(x_i, alpha=c_i)`
    gives (see kernels.c), reading each input once in its own dtype: no float32 copy of a bf16
    checkpoint's tensor is made; and whether the sum is finite. The caller checks
    `can_sum(tensors)` first."""
    if out is None:
        out = torch.empty(tensors[0].shape, dtype=torch.float32)
    c = np.array(coefficients, dtype=np.float32)
    bf16, size = int(tensors[0].dtype == torch.bfloat16), tensors[0].element_size()

    def part(start: int, stop: int) -> int:
        pointers = (ctypes.c_void_p * len(tensors))(*[t.data_ptr() + start * size for t in tensors])
        return library().weighted_sum(pointers, bf16, c.ctypes.data, len(tensors), stop - start,
                                      out.data_ptr() + start * 4)
    return out, not any(_over_threads(out.numel(), part))


def _over_threads(numel: int, part) -> list:
    """part(start, stop) over [0, numel) in shares, one per torch thread (ctypes releases the GIL),
    each starting on a cache line, each of _SHARE_MIN entries or more. Their results."""
    shares = max(1, min(torch.get_num_threads(), numel // _SHARE_MIN))
    step = -(-numel // shares)
    step = max(64, step + -step % 64)  # never 0: an empty tensor is one empty share
    starts = list(range(0, numel, step)) or [0]
    stops = [min(start + step, numel) for start in starts]
    if len(starts) == 1:
        return [part(starts[0], stops[0])]
    return list(_pool(len(starts)).map(part, starts, stops))


def _rows_over_threads(count: int, n: int, part) -> None:
    """part(start, stop) over rows [0, count) of n entries each, in shares, one per torch thread,
    where a row is long enough to pay for a thread (n >= _SHARE_MIN); else in one call."""
    workers = min(torch.get_num_threads(), count) if n >= _SHARE_MIN else 1
    if workers <= 1:
        part(0, count)
        return
    bounds = np.linspace(0, count, workers + 1).astype(int).tolist()
    list(_pool(workers).map(part, bounds[:-1], bounds[1:]))


@functools.lru_cache(maxsize=None)
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="glue_bench-kernels")


def ties_combine(deltas: torch.Tensor, signed, absolute, active, base: torch.Tensor, lambda_: float,
                 normalize: bool, out: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """TIES's election and average of the stacked task vectors `deltas` [N, numel] into `out`
    (see kernels.c), its entries split over torch's threads; signed, absolute, active: the
    election's N coefficients. Also whether the result is finite."""
    coefficients = np.array([signed, absolute, active], dtype=np.float32)
    n_models, numel = deltas.shape

    def part(start: int, stop: int) -> int:
        return library().ties_combine(deltas.data_ptr() + 4 * start, n_models, stop - start, numel,
                                      coefficients[0].ctypes.data, coefficients[1].ctypes.data,
                                      coefficients[2].ctypes.data, base.data_ptr() + 4 * start, lambda_,
                                      int(normalize), out.data_ptr() + 4 * start)
    return out, _finite(_over_threads(numel, part), "ties_combine")


def _finite(codes: list[int], kernel: str) -> bool:
    """Whether a kernel's shares wrote a finite result (code 0; 1: NaN or inf); -1: no memory."""
    if any(code < 0 for code in codes):
        raise MemoryError(f"{kernel}: no memory for its scratch")
    return not any(codes)


def _bf16(base: torch.Tensor) -> int:
    """The kernels' flag for a base read as stored (bf16) rather than widened (float32)."""
    return int(base.dtype == torch.bfloat16)


def _pointers(tensors) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])


def task_vector_sample(stored, base: torch.Tensor, run: int, every: int, per_model: int) -> np.ndarray:
    """|stored[i] - base| as uint32 bits on runs of `run` entries every `every` entries: [N, per_model],
    the models split over torch's threads (the first pass to touch the inputs' pages: faulting
    them in is most of its cost)."""
    out = np.empty((len(stored), per_model), dtype=np.uint32)
    pointers, bf16 = _pointers(stored), int(stored[0].dtype == torch.bfloat16)
    _rows_over_threads(len(stored), base.numel(), lambda start, stop: library().task_vector_sample(
        ctypes.addressof(pointers) + start * ctypes.sizeof(ctypes.c_void_p), bf16, base.data_ptr(), _bf16(base),
        stop - start, base.numel(), run, every, out[start:].ctypes.data, per_model))
    return out


HEAVY, TIE_BLOCK = 4, 4096  # as kernels.c defines them
NO_VALUE = np.uint32(0xFFFFFFFF)  # never a magnitude's bits: pads a model's heavy values


@dataclass
class Bracketed:
    """One model's task vector seen through its bracket [lo, hi] (ties_bracket)."""
    above: int                 # entries above hi
    bits: np.ndarray           # uint32: the listed entries' magnitudes' bits (in the bracket, not heavy)
    index: np.ndarray          # uint32: their indices, ascending
    heavy: np.ndarray          # uint32 [HEAVY]: the values counted instead of listed
    heavy_counts: np.ndarray   # int32 [HEAVY, blocks]: how many entries of each TIE_BLOCK equal each


def ties_bracket(stored, base: torch.Tensor, lo: np.ndarray, hi: np.ndarray, heavy: np.ndarray,
                 capacity_fraction: float) -> tuple[list[Bracketed | None], bool]:
    """Per model i, over the task vector |stored[i] - base|'s bits: how many exceed hi[i], how many
    equal each of heavy[i] (per TIE_BLOCK of entries), and the (bits, index) of the other entries
    in [lo[i], hi[i]] in index order; None where more than about `capacity_fraction` of the
    entries would be listed. Also whether an input holds NaN or inf. The entries are split over
    torch's threads."""
    n_models, numel = len(stored), base.numel()
    pointers, bf16 = _pointers(stored), int(stored[0].dtype == torch.bfloat16)
    lo_, hi_ = np.ascontiguousarray(lo, dtype=np.uint32), np.ascontiguousarray(hi, dtype=np.uint32)
    heavy_ = np.ascontiguousarray(heavy, dtype=np.uint32)
    n_blocks = -(-numel // TIE_BLOCK)

    def part(start: int, stop: int):
        capacity = int((stop - start) * capacity_fraction) + 4096
        bits = np.empty((n_models, capacity), dtype=np.uint32)
        index = np.empty((n_models, capacity), dtype=np.uint32)
        counts = np.zeros((n_models, HEAVY, n_blocks), dtype=np.int32)
        above, found = np.empty(n_models, dtype=np.int64), np.empty(n_models, dtype=np.int64)
        special = library().ties_bracket(pointers, bf16, base.data_ptr(), _bf16(base), n_models, start,
                                         stop - start,
                                         lo_.ctypes.data, hi_.ctypes.data, heavy_.ctypes.data, counts.ctypes.data,
                                         n_blocks, above.ctypes.data, bits.ctypes.data, index.ctypes.data, capacity,
                                         found.ctypes.data)
        return above, bits, index, found, capacity, counts, special
    shares = _over_threads(numel, part)
    counts = shares[0][5] if len(shares) == 1 else sum(share[5] for share in shares)
    per_model = []
    for i in range(n_models):
        if any(share[3][i] > share[4] for share in shares):
            per_model.append(None)  # the list overflowed
            continue
        per_model.append(Bracketed(int(sum(share[0][i] for share in shares)),
                                   np.concatenate([share[1][i, :share[3][i]] for share in shares]),
                                   np.concatenate([share[2][i, :share[3][i]] for share in shares]),
                                   heavy_[i], counts[i]))
    return per_model, any(share[6] for share in shares)


def ties_streamed(stored, base: torch.Tensor, kth: np.ndarray, cut: np.ndarray, signed, absolute, active,
                  lambda_: float, normalize: bool, out: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """TIES from the inputs as the files hold them, trimmed at kth (bits) and cut (see kernels.c):
    what `ties_combine` gives on the trimmed stack, bit for bit, without the stack; and whether it
    is finite."""
    coefficients = np.array([signed, absolute, active], dtype=np.float32)
    kth_, cut_ = np.ascontiguousarray(kth, dtype=np.uint32), np.ascontiguousarray(cut, dtype=np.int64)
    pointers, bf16 = _pointers(stored), int(stored[0].dtype == torch.bfloat16)

    def part(start: int, stop: int) -> int:
        return library().ties_streamed(pointers, bf16, base.data_ptr(), _bf16(base), len(stored), start,
                                       stop - start,
                                       kth_.ctypes.data, cut_.ctypes.data, coefficients[0].ctypes.data,
                                       coefficients[1].ctypes.data, coefficients[2].ctypes.data, lambda_,
                                       int(normalize), out.data_ptr())
    return out, _finite(_over_threads(base.numel(), part), "ties_streamed")


def dare_ties_streamed(stored, base: torch.Tensor, states: list[dict | None], cuts: list[int], signed, absolute,
                       active, lambda_: float, normalize: bool, out: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """DARE-TIES from the inputs as the files hold them: model i's task vector dropped as
    `dare_keep` drops it from the PCG64 state states[i] (numpy's bit_generator.state["state"],
    its {"state", "inc"}; None: nothing dropped) with cut cuts[i], then elected as `ties_combine`
    elects the stack: the same merge bit for bit, without the stack (see kernels.c); and whether it
    is finite."""
    coefficients = np.array([signed, absolute, active], dtype=np.float32)
    keep_all = 1 << 15
    cuts_ = np.array([cut if state is not None else keep_all for state, cut in zip(states, cuts)], dtype=np.int32)
    incs = np.array([half for state in states for half in _halves(state["inc"] if state else 0)], dtype=np.uint64)
    pointers, bf16 = _pointers(stored), int(stored[0].dtype == torch.bfloat16)

    def part(start: int, stop: int) -> int:
        # each stream advanced to this share's first entry: 4 entries a draw (start is a multiple of 64)
        at_start = np.array([half for state in states for half in _halves(_advanced(state, start // 4))],
                            dtype=np.uint64)
        return library().dare_ties_streamed(pointers, bf16, base.data_ptr(), _bf16(base), len(stored), start,
                                            stop - start,
                                            at_start.ctypes.data, incs.ctypes.data, cuts_.ctypes.data,
                                            coefficients[0].ctypes.data, coefficients[1].ctypes.data,
                                            coefficients[2].ctypes.data, lambda_, int(normalize), out.data_ptr())
    return out, _finite(_over_threads(base.numel(), part), "dare_ties_streamed")


def _advanced(state: dict | None, draws: int) -> int:
    """The 128-bit PCG64 state `draws` steps after `state` (numpy's {"state", "inc"}); 0 for None."""
    if state is None:
        return 0
    generator = np.random.PCG64()
    generator.state = {"bit_generator": "PCG64", "state": dict(state), "has_uint32": 0, "uinteger": 0}
    generator.advance(draws)
    return generator.state["state"]["state"]


def kth_magnitudes(rows: torch.Tensor, todo: list[int], ks: list[int]) -> np.ndarray:
    """The ks[t]-th largest magnitude of row todo[t] of `rows` [N, n] as uint32 bits (see
    kernels.c), the rows split over torch's threads."""
    n = rows.shape[1]
    if n >= 1 << 32:
        raise ValueError(f"kth_magnitudes counts in 32 bits: a row of {n} entries is too long")
    kth = np.empty(len(todo), dtype=np.uint32)
    todo_, ks_ = np.array(todo, dtype=np.int64), np.array(ks, dtype=np.int64)

    def part(start: int, stop: int) -> None:
        library().kth_magnitudes(rows.data_ptr(), n, todo_[start:].ctypes.data, stop - start,
                                 ks_[start:].ctypes.data, kth[start:].ctypes.data)
    _rows_over_threads(len(todo), n, part)
    if (kth == np.iinfo(np.uint32).max).any():  # no magnitude's bits are all ones: malloc failed
        raise MemoryError("kth_magnitudes: no memory for its 256 KB histogram")
    return kth


def keep_top(rows: torch.Tensor, todo: list[int], kth_bits: np.ndarray, ks: list[int]) -> None:
    """Keep the ks[t] largest magnitudes of row todo[t] of `rows` [N, n], in place, given the k-th
    largest magnitude as int32 bits; the lowest indices of tied ones are kept."""
    todo_ = np.array(todo, dtype=np.int64)
    kth = np.ascontiguousarray(kth_bits, dtype=np.uint32)
    ks_ = np.array(ks, dtype=np.int64)
    _rows_over_threads(len(todo), rows.shape[1], lambda start, stop: library().keep_top(
        rows.data_ptr(), rows.shape[1], todo_[start:].ctypes.data, stop - start, kth[start:].ctypes.data,
        ks_[start:].ctypes.data))


def dare_keep(values: torch.Tensor, bit_generator: np.random.PCG64, cut: int) -> None:
    """Zero the entries of `values` whose 16-bit draw from `bit_generator` is not below `cut`:
    `values *= random_raw(ceil(n / 4)).view(int16)[:n] < cut`, without the draws' array. The
    generator is left advanced past those draws, as random_raw leaves it."""
    state = bit_generator.state
    words = _UINT64_PAIR(*_halves(state["state"]["state"]))
    library().dare_keep(values.data_ptr(), values.numel(), words, _UINT64_PAIR(*_halves(state["state"]["inc"])),
                        cut)
    state["state"]["state"] = words[0] << 64 | words[1]
    bit_generator.state = state


def dare_keep_rows(rows: torch.Tensor, todo: list[int], states: list[int], incs: list[int], cuts: list[int]) -> None:
    """`dare_keep` on rows todo[t] of `rows` [N, n], each from the PCG64 state states[t] (with
    increment incs[t]: numpy's 128-bit values) and with cut cuts[t], in one call."""
    todo_ = np.array(todo, dtype=np.int64)
    states_ = np.array([half for value in states for half in _halves(value)], dtype=np.uint64)
    incs_ = np.array([half for value in incs for half in _halves(value)], dtype=np.uint64)
    cuts_ = np.array(cuts, dtype=np.int32)
    _rows_over_threads(len(todo), rows.shape[1], lambda start, stop: library().dare_keep_rows(
        rows.data_ptr(), rows.shape[1], todo_[start:].ctypes.data, stop - start, states_[2 * start:].ctypes.data,
        incs_[2 * start:].ctypes.data, cuts_[start:].ctypes.data))


_UINT64_PAIR = ctypes.c_uint64 * 2


def _halves(value: int) -> tuple[int, int]:
    return value >> 64, value & (1 << 64) - 1


def _build() -> Path:
    compiler = os.environ.get("CC", "cc")
    source = _SOURCE.read_bytes()
    tag = hashlib.sha256(b"\0".join([source, " ".join(_FLAGS).encode(), compiler.encode(),
                                      _cpu_description().encode()])).hexdigest()[:16]
    target = cache_root() / "kernels" / f"kernels-{tag}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # built beside the target and renamed into place: concurrent builds (test workers) never
    # load a half-written library
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        result = subprocess.run([compiler, *_FLAGS, "-o", str(built), str(_SOURCE)], capture_output=True,
                                text=True, timeout=120)
        if result.returncode != 0:
            first = (result.stderr.strip().splitlines() or ["no message"])[0]
            raise OSError(f"{compiler} failed on {_SOURCE.name}: {first}")
        os.replace(built, target)
    return target


def _cpu_description() -> str:
    """What -march=native builds for: the CPU's model and flags (a cache shared by several
    machines keeps one library per kind of CPU)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        lines = [line for line in info.splitlines() if line.startswith(("model name", "flags", "Features"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.machine() + platform.processor()


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    for name, argtypes in _SIGNATURES.items():
        getattr(lib, name).argtypes = argtypes
        getattr(lib, name).restype = _RETURNS.get(name)
    return lib
