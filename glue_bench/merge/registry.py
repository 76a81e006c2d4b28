"""The merge methods' registry: each method module registers its functions here by name, with
their parameters declared once (`params.Param`); `glue_bench.merge.get_method` finds them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from glue_bench.merge.params import MergeError, Param, resolve, validate_params


class CheckedParams(dict):
    """A method's parameters as `MergeMethod.validate` returned them (every one, defaults filled in),
    for that method and number of models: validating them again returns them as they are, so that a
    job checks its parameters once, before any model is read, and the engine takes them as checked."""

    def __init__(self, values: dict, method: str, n_models: int):
        super().__init__(values)
        self.checked_for = (method, n_models)


@dataclass(frozen=True)
class MergeMethod:
    name: str
    fn: Callable[..., torch.Tensor]
    params: tuple[Param, ...]
    base: str = "none"            # "required", "optional" (when params use_base is true) or "none"
    min_models: int = 2
    max_models: int | None = None
    randomized: bool = False
    check: Callable[[dict], None] | None = None   # checks of resolved values across parameters
    memoizes: bool = False    # takes `memo`: a dict kept across calls for the same tensor (cache=True)
    stacks: bool = False      # takes `workspace`: a dict of buffers reused across one merge's tensors
    writes_out: bool = False  # takes `out`: the tensor to write the result into (the model's own), or None
    needs: tuple[str, ...] = ()  # statistics of the models it takes, by name (see statistics.py)
    doc: str = ""
    checks_result: bool = False  # raises NonFiniteResult for a result with NaN or inf: the engine need not check
    stored_base: bool = False  # takes the base unwidened (engine._Base: .stored() as the file holds it, .widened())

    def validate(self, params: dict, n_models: int) -> CheckedParams:
        """Check the parameters and the number of models; defaults filled in."""
        if isinstance(params, CheckedParams) and params.checked_for == (self.name, n_models):
            return params
        if n_models < self.min_models:
            raise MergeError(f"{self.name}: needs at least {self.min_models} model(s), got {n_models}")
        if self.max_models is not None and n_models > self.max_models:
            raise MergeError(f"{self.name}: takes at most {self.max_models} model(s), got {n_models}")
        return CheckedParams(validate_params(self.name, self.params, dict(params or {}), n_models), self.name, n_models)

    def check_at(self, checked: dict, depths) -> None:
        """The cross-parameter checks on the values resolved at each depth position in [0, 1]."""
        if self.check is None:
            return
        for t in sorted(depths):
            try:
                self.check(resolve(checked, self.params, t))
            except MergeError as err:
                raise MergeError(f"{self.name}: {err}") from None

    def validate_early(self, params: dict, n_models: int) -> CheckedParams:
        """`validate`, and the cross-parameter checks before the models are read: at depth 0, 1 and
        every anchor of a depth list. Values between anchors are interpolated, so these bound them."""
        checked = self.validate(params, n_models)
        self.check_at(checked, _anchors(checked))
        return checked

    def uses_base(self, checked: dict) -> bool:
        return self.base == "required" or (self.base == "optional" and bool(checked.get("use_base")))


def _anchors(checked: dict) -> set[float]:
    lengths = {len(v) for value in checked.values() for v in (value, *(value if isinstance(value, list) else ()))
               if isinstance(v, list) and len(v) > 1}
    return {0.0, 1.0} | {i / (n - 1) for n in lengths for i in range(n)}


METHODS: dict[str, MergeMethod] = {}


def register(name: str, params: tuple[Param, ...] = (), *, base: str = "none", min_models: int = 2,
             max_models: int | None = None, randomized: bool = False,
             check: Callable[[dict], None] | None = None, memoizes: bool = False, stacks: bool = False,
             writes_out: bool = False, needs: tuple[str, ...] = (), checks_result: bool = False,
             stored_base: bool = False):
    def wrap(fn):
        doc = (fn.__doc__ or "").strip().split("\n")[0]
        METHODS[name] = MergeMethod(name, fn, tuple(params), base, min_models, max_models, randomized,
                                    check, memoizes, stacks, writes_out, tuple(needs), doc, checks_result,
                                    stored_base)
        return fn
    return wrap
