"""Merge-method parameters: declared once per method, validated where they enter, resolved per tensor.

A parameter is either shared (one value for the merge, e.g. `t`, `lambda`) or per model (e.g.
`weights`, `density`: one value for every model, or a list with one entry per model). Any numeric
value may instead be a list over depth, interpolated linearly across the decoder layers: layer i
of L gets position i / (L - 1) along the list. Tensors outside the layers (embeddings, final norm,
lm_head) take the list's first value. This is mergekit's gradient rule, so the same config gives
the same merge in both.

    density: 0.5                    # every model, every tensor
    density: [0.3, 0.7]             # per model (2 models)
    density: [[0.2, 0.8], 0.5]      # model 0: 0.2 at the first layer .. 0.8 at the last
    t: [0, 0.5, 1]                  # shared, over depth
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from glue_bench.errors import UserError


class MergeError(UserError):
    """A merge cannot be done as asked; one line naming the model, tensor or parameter at fault."""


class NonFiniteResult(MergeError):
    """A method's result holds NaN or inf, found in the pass that wrote it (methods registered with
    `checks_result`); the engine then names the input at fault, if one is."""


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    doc: str
    per_model: bool = False
    kind: type = float                 # float, int, bool or str
    low: float | None = None           # numeric bounds, inclusive unless low_open / high_open
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    search: tuple[float, float] | None = None  # a shared coefficient CMA-ES searches in these bounds

    def check_scalar(self, value: Any, where: str) -> Any:
        if self.kind is bool:
            if not isinstance(value, bool):
                raise MergeError(f"{where} = {value!r}: must be true or false")
            return value
        if self.kind is str:
            if value not in self.choices:
                raise MergeError(f"{where} = {value!r}: must be one of {', '.join(self.choices)}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise MergeError(f"{where} = {value!r}: must be a finite number")
        if abs(value) > _FLOAT32_MAX:  # the merge computes in float32: such a value is inf there
            raise MergeError(f"{where} = {value!r}: must be within float32's range (|x| <= {_FLOAT32_MAX:.3g})")
        if self.kind is int and value != int(value):
            raise MergeError(f"{where} = {value!r}: must be a whole number")
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            raise MergeError(f"{where} = {value!r}: must be {'>' if self.low_open else '>='} {self.low}")
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            raise MergeError(f"{where} = {value!r}: must be {'<' if self.high_open else '<='} {self.high}")
        return self.kind(value)

    def check_value(self, value: Any, where: str) -> Any:
        """A scalar, or (numeric parameters) a non-empty list over depth."""
        if isinstance(value, (list, tuple)):
            if self.kind not in (int, float):
                raise MergeError(f"{where}: a list over depth needs a numeric parameter")
            if not value:
                raise MergeError(f"{where}: an empty list over depth")
            return [self.check_scalar(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return self.check_scalar(value, where)


_FLOAT32_MAX = 3.4028234663852886e38


def validate_params(method: str, declared: tuple[Param, ...], params: dict, n_models: int) -> dict:
    """Check `params` against the declaration; return every parameter with defaults filled in.

    Per-model parameters come back as a list of n_models values (each a scalar or a depth list).
    """
    by_name = {p.name: p for p in declared}
    unknown = sorted(set(params) - set(by_name))
    if unknown:
        raise MergeError(f"{method}: unknown parameter(s) {', '.join(unknown)} "
                         f"(known: {', '.join(by_name) or 'none'})")
    checked = {}
    for p in declared:
        value = params.get(p.name)
        if value is None:
            value = p.default
        where = f"{method}.{p.name}"
        if not p.per_model:
            checked[p.name] = p.check_value(value, where)
        elif isinstance(value, (list, tuple)):
            if len(value) != n_models:
                raise MergeError(f"{where}: {len(value)} values given for {n_models} models "
                                 f"(give one value, or one per model)")
            checked[p.name] = [p.check_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
        else:
            checked[p.name] = [p.check_value(value, where)] * n_models
    return checked


def at_depth(value: Any, t: float) -> Any:
    """A depth list's value at position t in [0, 1] (linear interpolation); scalars pass through."""
    if not isinstance(value, list):
        return value
    scaled = t * (len(value) - 1)
    i0 = int(scaled)
    i1 = min(len(value) - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * value[i0] + frac * value[i1]


def resolve(checked: dict, declared: tuple[Param, ...], t: float) -> dict:
    """The scalar parameters for one tensor at depth position t."""
    out = {}
    for p in declared:
        value = checked[p.name]
        if p.per_model:
            out[p.name] = [_typed(p, at_depth(v, t)) for v in value]
        else:
            out[p.name] = _typed(p, at_depth(value, t))
    return out


def _typed(p: Param, value: Any) -> Any:
    return int(round(value)) if p.kind is int else value

