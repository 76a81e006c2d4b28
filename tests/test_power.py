"""benchmarks/power.py's arithmetic: the allocation of items to tasks, against the closed-form
optimum and its caps, and tasks whose differences never vary."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from power import allocate, mde  # noqa: E402

from glue_bench.stats import min_detectable_effect  # noqa: E402


def test_uncapped_allocation_is_the_lagrange_optimum_and_reaches_the_target():
    v = {"a": 0.10, "b": 0.02, "c": 0.05}
    n = allocate(v, 0.03, most={}, least=1)
    se = 0.03 / min_detectable_effect(1.0)
    total = sum(math.sqrt(x) for x in v.values())
    for t in v:  # n_t = sqrt(v_t) sum_s sqrt(v_s) / (T se)^2, rounded up
        assert n[t] == math.ceil(math.sqrt(v[t]) * total / (3 * se) ** 2)
    assert mde(v, n) <= 0.03


def test_a_capped_task_stays_at_its_cap_and_the_others_make_up_for_it():
    v = {"mini_mmlu": 0.05, "mini_arc": 0.05}
    free = allocate(v, 0.03, most={}, least=1)
    capped = allocate(v, 0.03, most={"mini_mmlu": 200}, least=1)
    assert free["mini_mmlu"] > 200 and capped["mini_mmlu"] == 200
    assert capped["mini_arc"] > free["mini_arc"]
    assert mde(v, capped) <= 0.03 + 1e-9


def test_a_target_out_of_reach_of_the_caps_is_none():
    assert allocate({"mini_mmlu": 0.2}, 0.01, most={"mini_mmlu": 200}, least=1) is None


def test_tasks_that_never_differ_cost_no_precision_and_get_the_floor():
    v = {"a": 0.1, "code": 0.0}
    assert mde(v, {"a": 100, "code": 0}) == pytest.approx(min_detectable_effect(math.sqrt(0.1 / 100) / 2))
    assert allocate(v, 0.03, most={}, least=40)["code"] == 40
