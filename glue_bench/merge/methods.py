"""The merge methods, one function each. Inputs: one tensor per model (float32), the base's tensor
for the methods that use one, and the parameters resolved for this tensor (see params.py).

Definitions follow the papers and, where they agree, mergekit (the parity tests compare the two on
the mini zoo). The one deliberate difference: DARE and DELLA rescale kept entries by 1/(keep
probability) as their papers do; mergekit rescales to the same L1 norm. `rescale: l1` gives
mergekit's behaviour (see sparsify.py).

mergekit 0.1.5's newer methods follow mergekit's code, including where it departs from its papers:
- sce (arXiv 2408.07990; compared with the authors' code, FuseChat's sce_merging.py): mergekit
  zeroes the entries outside the top-k variance in the task vectors it merges, where the authors'
  code uses the selection only to compute the weights and merges every entry; mergekit falls back
  to equal weights where the models' mean squares sum below 1e-6, an absolute floor (task vectors
  of RMS under ~1e-3 get equal weights), the authors' code only where that sum is 0; and mergekit
  floors each entry's divisor (the weights of its agreeing terms) at 1e-6 where the authors' code
  replaces a 0 by 1. `select_topk: 1` (the default) makes the first difference moot.
- ramplus_tl (arXiv 2601.13572; compared with the authors' code, ram-main.py of
  xiangchi-yuan/mrl): each model's shared / unique ratio rho is counted within the tensor being
  merged (mergekit's "tensor-local" variant), where the authors' RAM+ counts it over the model's
  whole task vector; the boost is 1 + r min(alpha, rho) (r = 0.1, alpha = 0.2: at most 1.02)
  where the authors' is 1 + (r' - 1) min(1, rho) (r' = 1.1), the same at alpha = 1, r = r' - 1;
  and epsilon is both the threshold an entry's change must exceed and the floor of the unique
  count that divides rho. `ram` is the authors' RAM.
- arcee_fusion: mergekit estimates the quartiles of tensors above a million entries from an
  unseeded random sample; here they are exact at every size, so merges stay deterministic (and
  equal mergekit's wherever mergekit's are exact).
- nearswap and arcee_fusion take exactly two models; the first plays mergekit's `base_model`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from glue_bench.merge import kernels
from glue_bench.merge.params import MergeError, NonFiniteResult, Param
from glue_bench.merge.registry import register
from glue_bench.merge.sparsify import (RESCALES, _kth_largest_magnitude_on_device, magnitude_band, random_keep,
                                      random_keep_rows, rank_keep, top_magnitude_cuts,
                                      top_magnitude_rows)

# parameters several methods share, declared once
WEIGHTS = Param("weights", 1.0, "one per model (or one for all)", per_model=True)
POSITIVE_WEIGHTS = Param("weights", 1.0, "one per model (or one for all), >= 0", per_model=True, low=0)
NORMALIZE = Param("normalize", True, "divide by the sum of the weights", kind=bool)
LAMBDA = Param("lambda", 1.0, "scale of the combined task vector")
DENSITY = Param("density", 0.5, "fraction of each task vector kept", per_model=True, low=0,
                high=1, low_open=True)
SEED = Param("seed", 0, "seed of the random masks (same seed, same merge)", kind=int, low=0)
RESCALE = Param("rescale", "inverse_density", "rescaling of kept entries: " + ", ".join(RESCALES),
                kind=str, choices=RESCALES)
GAMMA = Param("gamma", 0.01, "fraction of largest-magnitude entries dropped as outliers",
              per_model=True, low=0, high=1)
EPSILON = Param("epsilon", 0.15, "keep probabilities span density +- epsilon by magnitude rank",
                per_model=True, low=0, high=1)
_NO_NORMALIZE = Param("normalize", False, "divide by the sum of the weights", kind=bool)
USE_BASE = Param("use_base", False, "interpolate task vectors from the zoo's base instead of weights",
                 kind=bool)


def _check_weights_not_all_zero(resolved):
    if resolved.get("normalize", True) and sum(resolved["weights"]) == 0:
        raise MergeError(f"weights are all zero ({resolved['weights']}): nothing to average")


def _check_normalized_signs(resolved):
    """A sign-electing merge with normalize divides each entry by the sum of its agreeing terms'
    weights: a negative weight there cancels its own sign ([-1, -1] merges as [1, 1]). Subtracting a
    task vector needs normalize=false."""
    if resolved.get("normalize") and any(w < 0 for w in resolved["weights"]):
        raise MergeError(f"weights {resolved['weights']} with normalize=true: the divisor (the agreeing weights' "
                         "sum) cancels a negative weight's sign; use weights >= 0, or normalize=false to subtract")


def _check_normalized_sum(resolved):
    """A linear combination of task vectors with normalize divides by the weights' sum: it must be > 0."""
    if resolved.get("normalize") and sum(resolved["weights"]) <= 0:
        raise MergeError(f"weights {resolved['weights']} with normalize=true: their sum {sum(resolved['weights']):g} "
                         "is the divisor and must be > 0; or normalize=false")


def _check_weight_sum(resolved):
    if resolved.get("normalize_weights", True) and sum(resolved["weights"]) == 0:
        raise MergeError(f"weights {resolved['weights']} sum to 0 with normalize_weights=true: nothing to "
                         "normalise by")


def _finite(merged: torch.Tensor, finite: bool | None = None) -> torch.Tensor:
    """`merged`, refused (NonFiniteResult) if it holds NaN or inf: `finite` as the kernel that
    wrote it found it, or checked here (a pass: what the engine would otherwise spend)."""
    from glue_bench.zoo.files import is_finite

    if not (is_finite(merged) if finite is None else finite):
        raise NonFiniteResult("the merged tensor holds NaN or inf")
    return merged


def _widened(base):
    """The base as a float32 tensor: the one given, or, from an engine that left it unwidened for a
    method registered with `stored_base`, widened now (engine._Base)."""
    return base.widened() if hasattr(base, "widened") else base


def _base_for_kernels(base, stored, *outputs):
    """The base as the streamed kernels read it, as its file holds it where they take that (the
    inputs' dtype) and else widened; None where they take neither."""
    if hasattr(base, "stored") and kernels.can_stream_task_vectors(stored, base.stored(), *outputs):
        return base.stored()
    widened = _widened(base)
    return widened if kernels.can_stream_task_vectors(stored, widened, *outputs) else None


def _stored(tensors) -> list[torch.Tensor] | None:
    """The engine's inputs as the files hold them (`_Inputs.stored`: zero-copy views, not checked
    for NaN or inf, which `_Inputs.check` then names); None off the CPU, or for a plain list of
    tensors (a caller outside the engine). Duck-typed: the engine imports this module."""
    return tensors.stored() if hasattr(tensors, "stored") else None


@register("linear", (POSITIVE_WEIGHTS, NORMALIZE), check=_check_weights_not_all_zero, writes_out=True,
          checks_result=True)
def linear(tensors, weights, normalize, out=None):
    """Weighted average (model soup): sum_i w_i theta_i / sum_i w_i."""
    total = sum(weights) if normalize else 1.0
    stored = tensors if isinstance(tensors, list) else _stored(tensors)
    if stored is not None and kernels.can_sum(stored):  # one pass over the inputs, the same sums as below
        return _finite(*kernels.weighted_sum(stored, [weight / total for weight in weights], out))
    for i, (tensor, weight) in enumerate(zip(tensors, weights)):  # one model at a time: the engine streams them
        if i == 0:
            out = torch.mul(tensor, weight / total, out=out)
        else:
            out.add_(tensor, alpha=weight / total)
    return _finite(out)


# ---- task arithmetic and its sparsified / sign-elected variants ------------------------------

def _task_vectors(tensors, base, sparsify):
    """Yields, model by model, (delta_i, factor_i): the task vector theta_i - base sparsified by
    sparsify(i, delta), which returns it with the factor its kept entries are to be scaled by.
    Every delta is computed into one buffer, so each is valid only until the next is asked for
    (one buffer, not one allocation per model: less memory, and none left fragmented)."""
    buffer = None
    for i, tensor in enumerate(tensors):
        buffer = tensor - base if buffer is None else torch.sub(tensor, base, out=buffer)
        yield sparsify(i, buffer)


def _dense(tensors, base):
    return _task_vectors(tensors, base, lambda i, delta: (delta, 1.0))


@dataclass
class _Stack:
    """Every model's sparsified task vector for one tensor, as the rows of one matrix: what TIES's
    sign election reads, and what the engine's cache keeps across the candidates of a search (a
    new weight vector then costs a few passes over the matrix, not a re-sparsification)."""
    deltas: torch.Tensor    # [N, numel]
    factors: list[float]
    shared: bool            # kept for later candidates: never overwritten
    scratch: torch.Tensor | None = None  # [numel], the election's to overwrite (else it allocates)

    @property
    def nbytes(self) -> int:
        return self.deltas.numel() * self.deltas.element_size()


def _stack(tensors, base, sparsify=None, sparsify_rows=None, workspace=None, shared=False) -> _Stack:
    """The task vectors in the rows of one matrix (inputs still read one at a time), sparsified
    in place row by row by `sparsify` (as in `_task_vectors`), or, when given, all at once by
    `sparsify_rows(deltas) -> factors`. Holds N x the tensor: the memory the engine allows a merge
    beyond its output. Made in the `workspace`'s buffer when given (to be overwritten by the next
    tensor's), with one row more as the election's scratch; `shared` when kept for the next
    candidates of a search."""
    size = len(tensors) * base.numel()
    scratch = None
    if workspace is None:
        buffer = torch.empty(size, dtype=base.dtype, device=base.device)
    else:  # one buffer for all of a merge's tensors: no allocation per tensor, none left fragmented
        buffer = workspace.get("stack")
        if buffer is None or buffer.numel() < size + base.numel() or buffer.device != base.device:
            buffer = workspace["stack"] = torch.empty(size + base.numel(), dtype=base.dtype, device=base.device)
        scratch = buffer[size:size + base.numel()]
    deltas = buffer[:size].view(len(tensors), base.numel())
    factors = []
    each_stored = tensors.each_stored() if hasattr(tensors, "each_stored") else None  # the engine's inputs
    for i, tensor in enumerate(each_stored or tensors):
        row = deltas[i].view_as(base)
        if each_stored is not None and kernels.can_subtract(tensor, base):  # read once, as the file holds it
            if kernels.subtract(tensor, base, row):
                tensors.check()  # names the input that holds NaN or inf
        else:
            torch.sub(tensor if each_stored is None else tensors[i], base, out=row)  # tensors[i]: float32, checked
        if sparsify is not None and sparsify_rows is None:
            kept, factor = sparsify(i, row)
            if kept.data_ptr() != row.data_ptr():
                row.copy_(kept)
            factors.append(factor)
    if sparsify_rows is not None:
        factors = sparsify_rows(deltas)
    return _Stack(deltas, factors, shared, scratch)


def _sparsified(tensors, base, sparsify, sign_consensus, memo=None, key=None, sparsify_rows=None,
                workspace=None):
    """The sparsified task vectors: stacked when the sign election needs them all at once, or when
    a memo (the engine's cache for this tensor) keeps them for the next candidates, under the
    sparsification's `key` (method and parameters, which the weights are not); else streamed."""
    if memo is not None:
        if key not in memo:
            memo[key] = _stack(tensors, base, sparsify, sparsify_rows, shared=True)
        return memo[key]
    if sign_consensus or sparsify is None:
        return _stack(tensors, base, sparsify, sparsify_rows, workspace)
    return _task_vectors(tensors, base, sparsify)


def _combine(task_vectors, base, weights, lambda_, normalize, sign_consensus, out=None):
    """base + lambda * (sum_i w_i f_i delta_i) / divisor, from (delta_i, f_i) pairs taken one at a
    time or a `_Stack` of them, into `out` when given. The divisor is sum_i w_i when normalize
    (else 1); with sign_consensus (TIES) only the agreeing terms count, see `_elect_signs`."""
    if sign_consensus:
        return _elect_signs(task_vectors, base, weights, lambda_, normalize, out)
    total = torch.empty_like(base) if out is None else out
    if isinstance(task_vectors, _Stack):
        coefficients = _vector([w * f for w, f in zip(weights, task_vectors.factors)], base)
        torch.mv(task_vectors.deltas.T, coefficients, out=total.view(-1))
    else:
        total.zero_()
        for (delta, factor), weight in zip(task_vectors, weights):
            if weight * factor != 0:
                total.add_(delta, alpha=weight * factor)
    divisor = sum(weights) if normalize else 1.0
    if abs(divisor) < 1e-8:
        divisor = 1.0
    return torch.add(base, total, alpha=lambda_ / divisor, out=total)


def _elect_signs(stack: _Stack, base, weights, lambda_, normalize, out=None):
    """TIES: each entry keeps only the terms c_i delta_i (c_i = w_i f_i) whose sign agrees with
    the sign s of their sum (a zero sum elects +, as mergekit does; zero terms never agree), and
    divides by the sum of those terms' weights w_i. With g_i = sign(c_i) and
    P_i = max(g_i delta_i s, 0), term i agrees where P_i > 0, so
        sum of agreeing terms = s * sum_i |c_i| P_i,    their weights = sum_i w_i [P_i > 0]:
    on the CPU, one pass of the C kernel (kernels.c); else three matrix-vector products and three
    passes over the stack, in place unless it is shared, all float ops (torch's comparisons and
    boolean masks are about four times slower)."""
    coefficients, vectors = _election_vectors(weights, stack.factors)
    if kernels.usable(stack.deltas, base, *([] if out is None else [out])):  # all of it in one pass
        return kernels.ties_combine(stack.deltas, *vectors, base, lambda_, normalize,
                                    torch.empty_like(base) if out is None else out)[0]
    signed, absolute, active = _vector(vectors, base)  # made in one call
    elected = torch.mv(stack.deltas.T, signed, out=stack.scratch)
    elected.sign_().add_(0.5).sign_()                    # +1 where the sum is >= 0, else -1
    agreeing = torch.mul(stack.deltas, elected, out=None if stack.shared else stack.deltas)
    for i, coefficient in enumerate(coefficients):
        if coefficient < 0:
            agreeing[i].neg_()
    agreeing.clamp_(min=0)
    merged = torch.mv(agreeing.T, absolute, out=None if out is None else out.view(-1)).mul_(elected)
    if normalize:
        agreeing.sign_()                                  # 1 where term i agrees, else 0
        divisor = torch.mv(agreeing.T, active, out=elected)
        merged.div_(_ones_for_zeros(divisor))  # no agreeing term (or weights that cancel)
    merged = merged.view_as(base) if out is None else out
    return torch.add(base, merged, alpha=lambda_, out=merged)


def _election_vectors(weights, factors) -> tuple[list[float], list[list[float]]]:
    """The election's coefficients c_i = w_i f_i, and its three weight vectors: c, |c| and the
    weights of nonzero terms."""
    coefficients = [w * f for w, f in zip(weights, factors)]
    return coefficients, [coefficients, [abs(c) for c in coefficients],
                          [w if c != 0 else 0.0 for w, c in zip(weights, coefficients)]]


def _ones_for_zeros(divisor: torch.Tensor) -> torch.Tensor:
    """`divisor` with its zeros replaced by ones, in place (numpy's on CPU: a quarter of the time of
    torch's compare and masked_fill)."""
    if divisor.device.type == "cpu":
        values = divisor.numpy()
        np.copyto(values, 1, where=values == 0)
        return divisor
    return divisor.masked_fill_(divisor == 0, 1.0)


def _vector(values, like):
    """A float tensor of `values` (lists of Python floats) like `like`, by way of numpy: a third
    of the time of torch.tensor, paid once per tensor merged."""
    return torch.from_numpy(np.array(values, dtype=np.float32)).to(like.device, like.dtype)


@register("task_arithmetic", (WEIGHTS, LAMBDA, _NO_NORMALIZE), base="required", writes_out=True,
          check=_check_normalized_sum)
def task_arithmetic(tensors, base, weights, normalize, out=None, **params):
    """base + lambda * sum_i w_i (theta_i - base)."""
    return _combine(_dense(tensors, base), base, weights, params["lambda"], normalize, False, out)


@register("ties", (WEIGHTS, DENSITY, LAMBDA, NORMALIZE), base="required", memoizes=True, stacks=True,
          writes_out=True, check=_check_normalized_signs, checks_result=True, stored_base=True)
def ties(tensors, base, weights, density, normalize, memo=None, workspace=None, out=None, **params):
    """TIES: keep each task vector's top-density magnitudes, elect signs, average the agreeing."""
    if memo is None:
        merged = _ties_streamed(tensors, base, weights, density, normalize, params["lambda"], out)
        if merged is not None:
            return merged
    base = _widened(base)

    def sparsify_rows(deltas):  # every model's top-k at once: much faster on small tensors
        top_magnitude_rows(deltas, density)
        return [1.0] * len(density)

    deltas = _sparsified(tensors, base, None, True, memo, ("top", tuple(density)), sparsify_rows, workspace)
    return _finite(_combine(deltas, base, weights, params["lambda"], normalize, True, out))


# tensors from this size are merged by TIES without a stack of task vectors (on the CPU, with the
# C kernels): two passes over the inputs as stored instead of a stack N x the tensor in float32,
# written once and read five times. Below it, top_magnitude_rows's numpy selection costs less.
_STREAMED_MIN = 1 << 16


def _ties_streamed(tensors, base, weights, density, normalize, lambda_, out):
    """TIES from the engine's inputs as the files hold them, bit for bit what the stack gives
    (kernels.c: ties_streamed); None where that path does not apply (off the CPU, small tensors,
    inputs not one dtype of float32 or bfloat16, or no C kernels)."""
    stored = _stored(tensors) if base.numel() >= _STREAMED_MIN else None
    base = _base_for_kernels(base, stored, *([] if out is None else [out])) if stored is not None else None
    if base is None:
        return None
    kth, cut, special = top_magnitude_cuts(stored, base, density)
    if special:
        tensors.check()  # names the input that holds NaN or inf
    _, vectors = _election_vectors(weights, [1.0] * len(weights))
    return _finite(*kernels.ties_streamed(stored, base, kth, cut, *vectors, lambda_, normalize,
                                          torch.empty(base.shape) if out is None else out))


def _dare_ties_streamed(tensors, base, weights, density, normalize, rescale, generator, lambda_, out):
    """DARE-TIES from the engine's inputs as the files hold them, in one pass: bit for bit what the
    stack gives (kernels.c: dare_ties_streamed); None where that path does not apply (as TIES's,
    and the L1 rescale, which needs each task vector's norm before the drop)."""
    stored = _stored(tensors) if base.numel() >= _STREAMED_MIN and rescale != "l1" else None
    base = _base_for_kernels(base, stored, *([] if out is None else [out])) if stored is not None else None
    if base is None:
        return None
    states, cuts, factors = [], [], []
    for i, share in enumerate(density):
        if share >= 1:
            states.append(None)
            cuts.append(0)
            factors.append(1.0)
            continue
        state = generator(i).bit_generator.state  # read now: the next model's call resets the generator
        if state["bit_generator"] != "PCG64":
            return None
        levels = max(1, round(share * 65536))  # as random_keep draws them
        states.append(state["state"])
        cuts.append(levels - 32768)
        factors.append(65536 / levels if rescale == "inverse_density" else 1.0)
    _, vectors = _election_vectors(weights, factors)
    return _finite(*kernels.dare_ties_streamed(stored, base, states, cuts, *vectors, lambda_, normalize,
                                               torch.empty(base.shape) if out is None else out))


def _dare(tensors, base, weights, density, normalize, rescale, generator, lambda_, consensus, memo, seed,
          workspace=None, out=None):
    if consensus and memo is None:
        merged = _dare_ties_streamed(tensors, base, weights, density, normalize, rescale, generator, lambda_, out)
        if merged is not None:
            return merged
    base = _widened(base)
    deltas = _sparsified(tensors, base, lambda i, delta: random_keep(delta, density[i], rescale, generator(i)),
                         consensus, memo, ("random", tuple(density), rescale, seed),
                         lambda rows: random_keep_rows(rows, density, rescale, generator), workspace)
    return _finite(_combine(deltas, base, weights, lambda_, normalize, consensus, out))


@register("dare_linear", (WEIGHTS, DENSITY, LAMBDA, _NO_NORMALIZE, RESCALE, SEED), base="required",
          randomized=True, memoizes=True, writes_out=True, check=_check_normalized_sum, checks_result=True)
def dare_linear(tensors, base, weights, density, normalize, rescale, generator, seed, memo=None, out=None,
                **params):
    """DARE: drop each task-vector entry with probability 1 - density, rescale, add up."""
    return _dare(tensors, base, weights, density, normalize, rescale, generator, params["lambda"], False,
                 memo, seed, out=out)


@register("dare_ties", (WEIGHTS, DENSITY, LAMBDA, _NO_NORMALIZE, RESCALE, SEED), base="required",
          randomized=True, memoizes=True, stacks=True, writes_out=True, check=_check_normalized_signs,
          checks_result=True, stored_base=True)
def dare_ties(tensors, base, weights, density, normalize, rescale, generator, seed, memo=None, workspace=None,
              out=None, **params):
    """DARE's random drop, then TIES's sign election."""
    return _dare(tensors, base, weights, density, normalize, rescale, generator, params["lambda"], True,
                 memo, seed, workspace, out)


_BREADCRUMBS_DENSITY = Param("density", 0.9, "fraction of each task vector kept", per_model=True,
                             low=0, high=1, low_open=True)


def _breadcrumbs(tensors, base, density, gamma, sign_consensus, workspace=None):
    return _sparsified(tensors, base, lambda i, delta: magnitude_band(delta, density[i], gamma[i]),
                       sign_consensus, workspace=workspace)


@register("breadcrumbs", (WEIGHTS, _BREADCRUMBS_DENSITY, GAMMA, LAMBDA, _NO_NORMALIZE), base="required",
          writes_out=True, check=_check_normalized_sum)
def breadcrumbs(tensors, base, weights, density, gamma, normalize, out=None, **params):
    """Model Breadcrumbs: drop each task vector's largest (outliers) and smallest entries, add up."""
    return _combine(_breadcrumbs(tensors, base, density, gamma, False), base, weights, params["lambda"],
                    normalize, False, out)


@register("breadcrumbs_ties", (WEIGHTS, _BREADCRUMBS_DENSITY, GAMMA, LAMBDA, _NO_NORMALIZE),
          base="required", stacks=True, writes_out=True, check=_check_normalized_signs)
def breadcrumbs_ties(tensors, base, weights, density, gamma, normalize, workspace=None, out=None, **params):
    """Model Breadcrumbs' band, then TIES's sign election."""
    return _combine(_breadcrumbs(tensors, base, density, gamma, True, workspace), base, weights,
                    params["lambda"], normalize, True, out)


def _check_della(resolved):
    for i, (d, e) in enumerate(zip(resolved["density"], resolved["epsilon"])):
        if d < 1 and not (0 < d - e and d + e < 1):
            raise MergeError(f"density +- epsilon = {d:g} +- {e:g} must stay inside (0, 1) "
                             f"(model {i})")


_DELLA = (WEIGHTS, DENSITY, EPSILON, LAMBDA, NORMALIZE, RESCALE, SEED)


def _della(tensors, base, density, epsilon, rescale, generator, sign_consensus, workspace=None):
    return _sparsified(tensors, base, lambda i, delta: rank_keep(delta, density[i], epsilon[i], rescale,
                                                                 generator(i)), sign_consensus, workspace=workspace)


@register("della", _DELLA, base="required", randomized=True, check=lambda r: (_check_della(r), _check_normalized_signs(r)),
          stacks=True, writes_out=True)
def della(tensors, base, weights, density, epsilon, normalize, rescale, generator, workspace=None, out=None,
          **params):
    """DELLA: drop task-vector entries with probabilities by magnitude rank, elect signs, average."""
    return _combine(_della(tensors, base, density, epsilon, rescale, generator, True, workspace), base, weights,
                    params["lambda"], normalize, True, out)


@register("della_linear", _DELLA[:4] + (_NO_NORMALIZE,) + _DELLA[5:], base="required",
          randomized=True, check=lambda r: (_check_della(r), _check_normalized_sum(r)), writes_out=True)
def della_linear(tensors, base, weights, density, epsilon, normalize, rescale, generator, out=None, **params):
    """DELLA's rank-based drop, then a plain weighted sum (no sign election)."""
    return _combine(_della(tensors, base, density, epsilon, rescale, generator, False), base, weights,
                    params["lambda"], normalize, False, out)


# ---- geometric methods -----------------------------------------------------------------------

@register("slerp", (Param("t", 0.5, "0 gives the first model, 1 the second", low=0, high=1),),
          min_models=2, max_models=2)
def slerp(tensors, t, dot_threshold=0.9995, eps=1e-8):
    """Spherical interpolation between two models, tensor by tensor (linear when nearly parallel)."""
    v0, v1 = tensors[0], tensors[1]
    n0, n1 = v0.norm(), v1.norm()
    n0 = n0 if n0 > eps else torch.ones_like(n0)
    n1 = n1 if n1 > eps else torch.ones_like(n1)
    dot = ((v0 / n0) * (v1 / n1)).sum().clamp(-1, 1)
    if dot.abs() > dot_threshold:
        return v0 * (1 - t) + v1 * t
    theta = torch.acos(dot)
    return (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)


@register("multislerp", (WEIGHTS, Param("normalize_weights", True, "weights sum to 1", kind=bool),
                         USE_BASE), base="optional", check=_check_weight_sum)
def multislerp(tensors, weights, normalize_weights, use_base, base=None, eps=1e-8):
    """Barycentric interpolation of N models on the hypersphere (through the tangent space at
    their weighted mean direction), scaled to the weighted mean norm."""
    stacked = None
    for i, tensor in enumerate(tensors):  # one pass over the inputs: the engine streams them
        if stacked is None:
            stacked = torch.empty((len(tensors), *tensor.shape), dtype=tensor.dtype, device=tensor.device)
        stacked[i] = tensor - base if use_base else tensor
    flat = stacked.reshape(len(tensors), -1)
    w = torch.tensor(weights, dtype=flat.dtype, device=flat.device)
    if normalize_weights:
        w = w / w.sum()
    norms = flat.norm(dim=1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * w[:, None]).sum(0)
    if mean.norm() < eps:
        if len(tensors) == 2:
            merged = flat[0] * w[0] + flat[1] * w[1]
            return merged.view_as(stacked[0]) + (base if use_base else 0)
        raise MergeError("multislerp: the weighted directions cancel out (antipodal inputs)")
    mean = mean / mean.norm()
    tangents = units - (units * mean).sum(1, keepdim=True) * mean
    step = (tangents * w[:, None]).sum(0)
    step_norm = step.norm() + eps
    merged = (mean * torch.cos(step_norm) + step * (torch.sin(step_norm) / step_norm)) * (norms[:, 0] * w).sum()
    return merged.view_as(stacked[0]) + (base if use_base else 0)


@register("nuslerp", (WEIGHTS, Param("row_wise", False, "interpolate rows, not columns", kind=bool),
                      Param("flatten", True, "interpolate whole tensors", kind=bool), USE_BASE),
          base="optional", min_models=2, max_models=2)
def nuslerp(tensors, weights, row_wise, flatten, use_base, base=None, eps=1e-8):
    """SLERP of two models (or their task vectors) with t = w1 / (w0 + w1), by whole tensor, or by
    row or column vectors."""
    total = sum(weights)
    t = 0.5 if abs(total) < 1e-6 else weights[1] / total
    v0, v1 = (tensors[0] - base, tensors[1] - base) if use_base else (tensors[0], tensors[1])
    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:
        v0, v1 = v0.transpose(0, -1), v1.transpose(0, -1)
    u0 = v0 / v0.norm(dim=-1, keepdim=True).clamp(min=1e-7)
    u1 = v1 / v1.norm(dim=-1, keepdim=True).clamp(min=1e-7)
    cos = (u0 * u1).sum(-1, keepdim=True).clamp(-1, 1)
    parallel = (1 - cos.square()) <= eps ** 2
    theta = torch.acos(torch.where(parallel, 0, cos))
    spherical = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    merged = torch.where(parallel, (1 - t) * v0 + t * v1, spherical)
    if row_wise and not flatten:
        merged = merged.transpose(0, -1)
    merged = merged.reshape(shape)
    return merged + base if use_base else merged


@register("karcher", (POSITIVE_WEIGHTS, Param("max_iter", 10, "iterations", kind=int, low=1),
                      Param("tol", 1e-5, "stop when the step is smaller", low=0, low_open=True)),
          check=_check_weights_not_all_zero)
def karcher(tensors, weights, max_iter, tol):
    """Weighted Karcher (Riemannian) mean of the directions on the unit sphere, scaled by the
    weighted mean norm."""
    total = sum(weights)
    alphas = [w / total for w in weights]
    norms = [t.norm() for t in tensors]
    valid = [i for i, n in enumerate(norms) if n > tol]
    if not valid:
        return torch.zeros_like(tensors[0])
    valid_sum = sum(alphas[i] for i in valid)
    a = [alphas[i] / valid_sum for i in valid]
    units = [tensors[i] / norms[i] for i in valid]
    mean = sum(ai * u for ai, u in zip(a, units))
    mean = units[0].clone() if mean.norm() < tol else mean / mean.norm()
    for _ in range(max_iter):
        step = torch.zeros_like(mean)
        for ai, u in zip(a, units):
            cos = torch.dot(mean.flatten(), u.flatten()).clamp(-1, 1)
            angle = torch.arccos(cos)
            if angle < tol:
                continue
            step += ai * (angle / torch.sin(angle)) * (u - cos * mean)
        step_norm = step.norm()
        if step_norm < tol:
            break
        mean = torch.cos(step_norm) * mean + torch.sin(step_norm) * (step / step_norm)
        if mean.norm() > tol:
            mean = mean / mean.norm()
    return sum(alpha * n for alpha, n in zip(alphas, norms)) * mean


@register("model_stock", (Param("filter_wise", False, "one ratio per output row, not per tensor",
                                kind=bool),), base="required")
def model_stock(tensors, base, filter_wise):
    """Model Stock: move from the base towards the models' average by t = N cos / (1 + (N-1) cos),
    cos being the mean pairwise cosine of the task vectors."""
    shape = base.shape
    if filter_wise:
        rows = (lambda x: x.reshape(1, -1)) if base.dim() < 2 else (lambda x: x.reshape(x.shape[0], -1))
    else:
        rows = lambda x: x.reshape(1, -1)  # noqa: E731
    w0 = rows(base)
    deltas = [rows(t) - w0 for t in tensors]  # one pass over the inputs: the engine streams them
    cosines = []
    for i, a in enumerate(deltas):
        for b in deltas[i + 1:]:
            cosines.append(((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(0).unsqueeze(-1)
    n = len(tensors)
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < 1e-6  # no finite estimate: keep the base
    ratio = torch.where(singular, 0.0, n * cos / torch.where(singular, 1.0, denominator))
    average = w0 + sum(deltas) / n
    return (ratio * average + (1 - ratio) * w0).reshape(shape)


@register("passthrough", (Param("scale", 1.0, "multiplies the tensor", per_model=True),),
          min_models=1, max_models=1)
def passthrough(tensors, scale):
    """One model's tensors, optionally scaled (per layer group with a depth list)."""
    return tensors[0] * scale[0] if scale[0] != 1.0 else tensors[0].clone()



# ---- mergekit 0.1.5's newer methods ----------------------------------------------------------

@register("sce", (Param("select_topk", 1.0, "fraction of the entries that vary across models kept, those "
                        "that vary most (1 keeps all)", low=0, high=1, low_open=True, search=(0.1, 1.0)),),
          base="required", stacks=True)
def sce(tensors, base, select_topk, workspace=None):
    """SCE: keep the most varying entries, elect signs, average the agreeing by mean-square weights.

    Select: the entries whose task vectors vary most across the models (`_keep_most_varying`).
    Calculate: model i's weight, the mean square of its (selected) task vector over their sum.
    Erase: each entry keeps the terms with the sign of the task vectors' (unweighted) sum and is
    their weighted mean (mergekit's; the divisor floored at 1e-6)."""
    deltas = _stack(tensors, base, workspace=workspace).deltas
    if select_topk < 1:
        _keep_most_varying(deltas, select_topk)
    weights = _mean_square_shares(deltas)
    elected = deltas.sum(0)
    elected.sign_().add_(0.5).sign_()            # +1 where the sum is >= 0, else -1
    agreeing = deltas.mul_(elected).clamp_(min=0)   # |delta| where it has the elected sign, else 0
    merged = torch.mv(agreeing.T, weights).mul_(elected)
    divisor = torch.mv(agreeing.sign_().T, weights).clamp_(min=1e-6)  # mergekit's floor
    return torch.add(base, merged.div_(divisor).view_as(base))


def _keep_most_varying(deltas, select_topk):
    """Zero every row's entries outside the k whose task vectors vary most across the rows (by
    population variance), in place; k = select_topk x the number of entries that vary at all. Among
    variances tied with the k-th, the lowest indices stay (as in TIES's trim)."""
    variance = deltas.var(0, unbiased=False)
    # in float32, as mergekit computes it: the same k at every boundary
    k = int(np.float32(int(torch.count_nonzero(variance))) * np.float32(select_topk))
    if k == 0:
        deltas.zero_()
        return
    threshold, above = _kth_largest_magnitude_on_device(variance, k)
    keep = variance >= threshold
    if above is not None:  # more than k reach the threshold: only the first tied ones stay
        keep[(variance == threshold).nonzero().view(-1)[k - above:]] = False
    deltas.mul_(keep)


def _mean_square_shares(deltas):
    """Each row's mean square over their sum; equal shares where that sum is below mergekit's
    absolute floor of 1e-6 (so task vectors of RMS ~1e-3 or less get equal shares)."""
    squares = torch.linalg.vector_norm(deltas, dim=1).square_().div_(deltas.shape[1])  # no squared copy
    total = float(squares.sum())
    if abs(total) < 1e-6:
        return torch.full_like(squares, 1 / len(squares))
    return squares / total


@register("nearswap", (Param("t", 1e-4, "entries closer than t take the second model's value; "
                             "farther ones move towards it by t / |difference| (0 keeps the first)",
                             low=0),),
          min_models=2, max_models=2)
def nearswap(tensors, t):
    """NearSwap: the first model, moved towards the second by min(1, t / |difference|) entry by entry.

    Where the two are within t of each other it takes the second's value; the first plays
    mergekit's base_model."""
    first, second = tensors[0], tensors[1]
    step = t / torch.sub(second, first).abs_().clamp_(min=1e-6)   # mergekit's floor
    return torch.lerp(first, second, step.clamp_(max=1))


@register("arcee_fusion", (), min_models=2, max_models=2)
def arcee_fusion(tensors):
    """Arcee Fusion: the first model, with the second's entries where the change is an outlier.

    An entry's importance is |second - first| x the KL divergence between the softmaxes of its
    row (last dim) in the two; it is an outlier at >= median + 1.5 IQR of the tensor's
    importances. The first plays mergekit's base_model."""
    first, second = tensors[0], tensors[1]
    importance = _fusion_importance(first, second)
    lower, median, upper = _exact_quartiles(importance.view(-1))
    return torch.where(importance >= median + 1.5 * (upper - lower), second, first)


def _fusion_importance(first, second, eps=1e-8):
    """|second - first| x KL(softmax(second) || softmax(first)) of its row (along the last dim),
    both softmaxes offset by eps as mergekit's are. Two tensor-sized buffers."""
    p = torch.softmax(second, dim=-1).add_(eps)
    q = torch.softmax(first, dim=-1).add_(eps)
    kl = torch.div(p, q, out=q).log_().mul_(p).sum(-1, keepdim=True)
    return torch.sub(second, first, out=p).abs_().mul_(kl)


def _exact_quartiles(flat):
    """The entries at sorted positions floor(q (n - 1)), q = 1/4, 1/2, 3/4 (0-d float32 tensors):
    mergekit's quartiles up to a million entries. Above, mergekit estimates them from a random
    sample; these stay exact, so the merge stays deterministic. By selection, not a sort."""
    n = flat.numel()
    return [flat.kthvalue((n - 1) * quarter // 4 + 1).values for quarter in (1, 2, 3)]


_EPSILON_RAM = Param("epsilon", 1e-5, "task-vector entries of magnitude <= epsilon count as unchanged", low=0)


@register("ram", (_EPSILON_RAM,), base="required", stacks=True)
def ram(tensors, base, epsilon, workspace=None):
    """RAM: each entry's mean over the task vectors that changed it (|delta| > epsilon).

    An update only one model made is kept whole, not diluted by the others' zeros."""
    deltas = _stack(tensors, base, workspace=workspace).deltas
    merged, _ = _mean_of_changed(deltas, epsilon)
    return torch.add(base, merged.view_as(base))


@register("ramplus_tl", (Param("r", 0.1, "strength of the boost of a model's unique updates", low=0, search=(0.0, 1.0)),
                         Param("alpha", 0.2, "cap on the shared / unique ratio the boost grows with", low=0,
                               search=(0.0, 1.0)),
                         _EPSILON_RAM),
          base="required", stacks=True)
def ramplus_tl(tensors, base, r, alpha, epsilon, workspace=None):
    """RAM+ (tensor-local): RAM, with each model's unique updates scaled up by its overlap.

    Model i's entries that no other model changed are scaled by 1 + r min(alpha, rho_i), rho_i
    = its changed entries that others changed too / those only it changed, counted in this
    tensor (mergekit's tensor-local variant)."""
    deltas = _stack(tensors, base, workspace=workspace).deltas
    merged, unique = _mean_of_changed(deltas, epsilon)
    scales = []
    for row in deltas:
        changed = row != 0
        n_unique = int((changed & unique).sum())
        n_shared = int(changed.sum()) - n_unique
        floor = max(n_unique, epsilon)  # mergekit's; at 0 the model has no unique entry to scale
        rho = n_shared / floor if floor > 0 else 0.0
        scales.append(1 + r * min(rho, alpha))
    boosted = torch.mv(deltas.T, _vector(scales, deltas))  # on a unique entry, its one model's term
    return torch.add(base, torch.where(unique, boosted, merged).view_as(base))


def _mean_of_changed(deltas, epsilon):
    """Zero the rows' entries of magnitude <= epsilon in place; return each column's mean over its
    nonzero entries (0 where none) and where exactly one row is nonzero."""
    torch.hardshrink(deltas, epsilon, out=deltas)
    counts = torch.zeros(deltas.shape[1], dtype=deltas.dtype, device=deltas.device)
    for row in deltas:  # row by row: a [numel] mask at a time, not [N, numel]
        counts.add_(row != 0)
    merged = deltas.sum(0).div_(counts.clamp(min=1))
    return merged, counts == 1


@register("magmax", (LAMBDA,), base="required", stacks=True)
def magmax(tensors, base, workspace=None, **params):
    """MagMax (arXiv 2407.06322): each entry from the task vector of largest magnitude there.

    base + lambda * tau_k[i], k = argmax_k |tau_k[i]| (the first model among equals)."""
    deltas = _stack(tensors, base, workspace=workspace).deltas
    picked, largest = deltas[0].clone(), deltas[0].abs()
    for row in deltas[1:]:  # row by row, not argmax over dim 0: a strided reduction, 100x slower on CPU
        larger = row.abs() > largest  # strictly: the first model keeps an equal magnitude
        picked = torch.where(larger, row, picked)
        largest = torch.maximum(largest, row.abs())
    return torch.add(base, picked.view_as(base), alpha=params["lambda"])


@register("expo", (POSITIVE_WEIGHTS, Param("alpha", 0.3, "how far past the model, away from the base", low=0,
                                           search=(0.0, 1.0))),
          base="required", min_models=1, check=_check_weights_not_all_zero)
def expo(tensors, base, weights, alpha):
    """ExPO, model extrapolation (arXiv 2404.16792): theta + alpha (theta - base).

    theta is the model, or the weighted mean of several (the paper extrapolates one aligned
    model from its SFT base; with more models, their average is extrapolated)."""
    mean = linear(tensors, weights, True)
    return mean.add_(torch.sub(mean, base), alpha=alpha)
