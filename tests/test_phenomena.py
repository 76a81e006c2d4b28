"""The zoo's phenomenon table (glue_bench.phenomena): which models are domain experts, the verdict
per expert from per-item outcomes, and what the micro zoo's weights show."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from glue_bench.evidence import Evidence
from glue_bench.evaluate import PRIMARY_METRIC
from glue_bench.phenomena import expert_rows, single_jobs, stored_locations, weight_checks
from glue_bench.results import ResultStore, read_results
from glue_bench.zoo.mini.spec import DOMAIN_EXPERTS, VERSION, finetune_shares


def test_the_domain_experts_are_the_fine_tunes_with_half_their_data_in_one_domain():
    assert DOMAIN_EXPERTS["code"] == ("code",) and DOMAIN_EXPERTS["math"] == ("math",)
    assert DOMAIN_EXPERTS["wiki"] == ("knowledge",) and DOMAIN_EXPERTS["stem"] == ("reason", "knowledge")
    for chat_model in ("chat_a", "chat_b", "story", "wellness", "goat", "dolphin"):
        assert chat_model not in DOMAIN_EXPERTS
    assert "base" not in DOMAIN_EXPERTS and "foreign_chat" not in DOMAIN_EXPERTS  # pretrained, not fine-tuned
    # instruct_code: 0.6 code, 0.4 reason of the non-chat half: 0.3 and 0.2 of its data, no domain reaches half
    assert finetune_shares("instruct_code") == pytest.approx({"chat": 0.5, "code": 0.3, "reason": 0.2,
                                                                 "knowledge": 0.0, "math": 0.0})
    assert "instruct_code" not in DOMAIN_EXPERTS


def _single(store: ResultStore, name: str, replicate: int, values: dict[str, list[float]], key: str | None = None,
            job: str | None = None, model: str | None = None) -> None:
    job = job or f"{name}-r{replicate}"
    rows = [dict(zoo="mini16", candidate=name, method="none", strategy="all", models=[name], task=task,
                 metric=PRIMARY_METRIC[task], value=float(np.mean(v)), replicate=replicate,
                 config=json.dumps({"key": key or f"mini-v3/micro{f'-r{replicate}' if replicate else ''}/{name}-0000",
                                    **({"model": model} if model else {})}))
            for task, v in values.items()]
    outcomes = [{"task": task, "metric": PRIMARY_METRIC[task], "doc_id": i, "value": x}
                for task, v in values.items() for i, x in enumerate(v)]
    store.append_job(job, rows, outcomes)


def test_an_expert_is_above_only_when_its_interval_excludes_zero_on_every_replicate(tmp_path):
    path = tmp_path / "r.sqlite"
    store = ResultStore(path)
    n = 200
    zeros, other = [0.0] * n, {"mini_arc": [1.0, 0.0] * (n // 2)}
    for r in (0, 1):
        _single(store, "base", r, {"mini_gsm8k": zeros, "mini_mbpp": zeros, "mini_humaneval": zeros, **other})
        # math: 60 of 200 more right on gsm8k on both replicates; its arc (not its domain) is worse
        _single(store, "math", r, {"mini_gsm8k": [1.0] * 60 + [0.0] * 140, "mini_mbpp": zeros,
                                   "mini_humaneval": zeros, "mini_arc": zeros})
    # code: far above on replicate 0, two items of 400 on replicate 1 (an interval that holds 0)
    _single(store, "code", 0, {"mini_gsm8k": zeros, "mini_mbpp": [1.0] * 100 + [0.0] * 100,
                               "mini_humaneval": [1.0] * 100 + [0.0] * 100, **other})
    _single(store, "code", 1, {"mini_gsm8k": zeros, "mini_mbpp": [1.0] + [0.0] * 199,
                               "mini_humaneval": [1.0] + [0.0] * 199, **other})
    jobs = single_jobs(read_results(path), "micro")
    assert jobs[("math", 1)] == "math-r1" and single_jobs(read_results(path), "mini") == {}
    assert single_jobs(read_results(path), "micro", "v3") == jobs and single_jobs(read_results(path), "micro", "v4") == {}
    rows = {r.model: r for r in expert_rows(Evidence.of(path), jobs)}
    assert set(rows) == {"math", "code"}
    assert rows["math"].tasks == ("mini_gsm8k",) and rows["math"].deltas == pytest.approx((0.3, 0.3))
    assert rows["math"].above_on_every_replicate
    # code's domain is both code tasks, averaged: 0.5 on replicate 0, 1/200 on replicate 1
    assert rows["code"].tasks == ("mini_mbpp", "mini_humaneval")
    assert rows["code"].deltas == pytest.approx((0.5, 0.005))
    assert rows["code"].lows[0] > 0 and rows["code"].lows[1] <= 0 and not rows["code"].above_on_every_replicate


@pytest.mark.slow
def test_the_micro_zoo_s_weights_show_the_far_model_and_set_the_unmergeable_apart(micro_cache):
    """What the micro size can show (it is too small and short to learn the tasks): the far-trained
    model is farther from the base than the other init, which is farther than an ordinary
    fine-tune; the recipe's clustering sets the other init and the other architecture apart."""
    from glue_bench.zoo import zoo_members
    from glue_bench.zoo.mini.build import ensure_models, model_dir

    names = ["base", *zoo_members("mini16")]
    ensure_models(names, "micro", progress=False)
    distances, clusters = weight_checks("micro", [0], {(n, 0): model_dir(n, "micro") for n in names})
    d = distances.set_index("model")["distance"]
    assert d["instruct_reason"] < d["math_altinit"] < d["code_far"]
    assert clusters.loc[0, "set apart"] == "2/2"
    families = [set(f.split(", ")) for f in clusters.loc[0, "families"].split(" | ")]
    assert {"foreign_chat"} in families and {"math_altinit"} in families
    assert any({"chat_a", "chat_b"} <= f for f in families)  # one recipe, two seeds


def test_of_two_builds_of_one_model_the_table_reads_today_s_recipe_s(tmp_path):
    from glue_bench.zoo import model_ref

    path = tmp_path / "r.sqlite"
    store = ResultStore(path)
    today = model_ref("stem", "mini", "micro", 2).key
    version, size_dir, name_fingerprint = today.split("/")
    older = f"{version}/{size_dir}/stem-00000000"  # the same version and size, an earlier recipe
    for job, key in (("a", older), ("today", today), ("z", older)):  # stored before and after it
        _single(store, "stem", 2, {"mini_arc": [1.0, 0.0]}, key=key, job=job)
    assert single_jobs(read_results(path), "micro")[("stem", 2)] == "today"


def test_the_weight_checks_read_the_weights_the_singles_were_evaluated_from(tmp_path):
    """Sections 2 and 3 read the folders the evidence's singles name (a zoo version today's code no
    longer builds included), and say where this machine lacks them, naming the version."""
    path = tmp_path / "r.sqlite"
    store = ResultStore(path)
    elsewhere = tmp_path / "another-machine" / "base-1234"
    _single(store, "base", 0, {"mini_arc": [1.0, 0.0]}, model=str(elsewhere))
    _single(store, "math", 0, {"mini_arc": [1.0, 0.0]})  # stored without its folder
    df = read_results(path)
    located = stored_locations(df, single_jobs(df, "micro"))
    assert located == {("base", 0): elsewhere}
    distances, clusters = weight_checks("micro", [0], located, version="v3")
    assert distances.empty
    assert clusters.loc[0, "families"] == f"(not built here: zoo v3's weights, which today's code ({VERSION}) no longer builds)"
