"""Merge methods: one small function each, registered by name with its parameters declared once.

A method receives, for one tensor name, that tensor from every input model (float32, on the merge
device), the base model's tensor when it uses one, and its parameters resolved for that tensor
(see params.py). It returns the merged tensor and never modifies its inputs. Randomised methods
also receive `generator(i)`, a seeded numpy Generator for model i and this tensor, so a merge is
reproducible whatever the order tensors are visited in. Methods registered with `writes_out` also
receive `out`: the output model's own tensor, to write the result into instead of a new one (saves
the engine a copy), or None. Methods registered with `checks_result` refuse a result that holds
NaN or inf themselves (`NonFiniteResult`), found in the pass that writes it, so that the engine
does not spend a pass of its own on the check. Methods registered with `stored_base` receive the
base unwidened, to read as its file holds it (`base.stored()`) or widened when they need it
(`base.widened()`: float32, checked), where the engine streams from files on the CPU without a
cache; elsewhere a tensor, as every other method gets. Methods registered with `needs` (e.g. ("fisher",)) also receive, under
each statistic's name, that statistic of every model for this tensor (statistics.py computes
them; None for a tensor they do not cover). `engine.Merger` streams every tensor of the models
through it.
"""

from __future__ import annotations

from glue_bench.merge.params import MergeError, NonFiniteResult, Param
from glue_bench.merge.registry import METHODS, MergeMethod, register

__all__ = ["MergeError", "MergeMethod", "NonFiniteResult", "Param", "get_method", "register", "METHODS"]


def get_method(name: str) -> MergeMethod:
    from glue_bench.merge import data_methods, interference, methods, subspace  # noqa: F401  (registers the methods)

    if name not in METHODS:
        raise MergeError(f"unknown merge method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]
