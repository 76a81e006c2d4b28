"""The proxy set: seeded, disjoint from the final items, and scored on exactly its documents."""

import pytest

from glue_bench.evaluate import EvalConfig, EvalError, evaluate_model, render_tasks
from glue_bench.select.proxy import ProxySet, primary_mean


@pytest.fixture(scope="module")
def tasks_dir(micro_cache, tmp_path_factory):
    from glue_bench.zoo.mini.build import ensure_data

    return render_tasks(ensure_data("micro"), tmp_path_factory.mktemp("tasks"))


def test_draw_is_seeded_sized_and_disjoint_from_the_final_items(tasks_dir):
    tasks = ["mini_arc", "mini_gsm8k", "mini_humaneval"]
    proxy = ProxySet.draw(tasks_dir, tasks, size=30, seed=1)
    assert proxy == ProxySet.draw(tasks_dir, tasks, size=30, seed=1)
    assert proxy.items != ProxySet.draw(tasks_dir, tasks, size=30, seed=2).items
    for task in tasks:
        chosen, final = set(proxy.items[task]), set(proxy.final[task])
        assert len(chosen) == 30 and not chosen & final
        assert chosen | final == set(range(proxy.sizes[task]))
    # one task's items do not depend on which other tasks are drawn
    assert ProxySet.draw(tasks_dir, ["mini_gsm8k"], size=30, seed=1).items["mini_gsm8k"] == proxy.items["mini_gsm8k"]
    with pytest.raises(EvalError, match="proxy size must be >= 1"):
        ProxySet.draw(tasks_dir, tasks, size=0)
    with pytest.raises(EvalError, match=r"would leave no final test items for mini_mmlu \(200 items\)"):
        ProxySet.draw(tasks_dir, ["mini_arc", "mini_mmlu"], size=200)  # arc has 400: mmlu is named


def test_score_is_the_mean_primary_metric_on_exactly_the_proxy_documents(tasks_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from glue_bench.zoo.mini.build import model_dir

    path = model_dir("chat_a", "micro")
    model, tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    cfg = EvalConfig(tasks=["mini_arc", "mini_winogrande"], batch_size=8)
    # the first 10 documents as a proxy set, against lm-eval's own `limit=10` on the same model
    proxy = ProxySet({"mini_arc": tuple(range(10)), "mini_winogrande": tuple(range(10))},
                     {"mini_arc": 10, "mini_winogrande": 10}, seed=0)
    score, per_task = proxy.score(model, tok, tasks_dir, cfg)
    limited, _ = evaluate_model(model, tok, tasks_dir, EvalConfig(**{**cfg.__dict__, "limit": 10}))
    expected_score, expected = primary_mean(limited)
    assert per_task == expected and score == pytest.approx(expected_score)
    assert score == pytest.approx((expected["mini_arc"] + expected["mini_winogrande"]) / 2)


class _CountingProxy:
    """Stands in for a ProxySet: scores a 'model' (here the candidate itself) by its 'x'."""
    key, items = "k", {"mini_arc": (0,), "mini_winogrande": (1,)}

    def __init__(self):
        self.scored = 0

    def evaluate(self, model, tokenizer, tasks_dir, cfg):
        """Four items per task, the first 4x of them right: their mean is x."""
        self.scored += 1
        x, tasks = model["x"], (("mini_arc", "acc_norm"), ("mini_winogrande", "acc"))
        rows = [{"task": t, "metric": m, "value": x, "stderr": None} for t, m in tasks]
        outcomes = [{"task": t, "metric": m, "doc_id": i, "value": float(i < round(4 * x))}
                    for t, m in tasks for i in range(4)]
        return rows, outcomes


def test_an_identical_candidate_is_evaluated_once_and_a_store_cache_outlives_the_search(tmp_path):
    from glue_bench.results import ResultStore
    from glue_bench.kinds.search import ProxyCache
    from glue_bench.select.proxy import ProxyFitness

    store = ResultStore(tmp_path / "results.sqlite")
    cache = ProxyCache(store, {"zoo": "z", "candidate": "proxy", "items": "proxy (test)"})
    proxy = _CountingProxy()
    fitness = ProxyFitness(dict, {"members": ["a", "b"], "method": "linear"}, proxy, None, None, EvalConfig(),
                           cache=cache)
    assert fitness({"x": 0.25}) == 0.25 and fitness({"x": 0.5}) == 0.5
    assert fitness.evaluate({"x": 0.25}).cached and proxy.scored == 2 and fitness.builds == 2
    # a new search over the same members and method reads the store; another method does not
    again = ProxyFitness(dict, {"members": ["a", "b"], "method": "linear"}, proxy, None, None, EvalConfig(), cache=cache)
    assert again.evaluate({"x": 0.5}).score == 0.5 and proxy.scored == 2
    other = ProxyFitness(dict, {"members": ["a", "b"], "method": "ties"}, proxy, None, None, EvalConfig(), cache=cache)
    assert not other.evaluate({"x": 0.5}).cached and proxy.scored == 3
    rows = store.to_dataframe()
    assert set(rows["items"]) == {"proxy (test)"} and set(rows["metric"]) == {"acc_norm", "acc"}
    # every proxy score kept with its per-item outcomes, and its stderr from them
    for key in set(rows["job_key"]):
        outcomes = store.job_outcomes(key)
        assert len(outcomes) == 8
        for (task, metric), values in outcomes.groupby(["task", "metric"])["value"]:
            row = rows[(rows["job_key"] == key) & (rows["task"] == task)].iloc[0]
            assert values.mean() == pytest.approx(row["value"])
            assert row["stderr"] == pytest.approx(values.std(ddof=1) / 2)


def test_eval_limit_bounds_the_proxy_draw_and_the_final_items(tasks_dir):
    proxy = ProxySet.draw(tasks_dir, ["mini_arc", "mini_mmlu"], size=5, seed=0, limit=20)
    for task in ("mini_arc", "mini_mmlu"):  # lm-eval's limit reads the first 20 documents: so do both sets
        assert proxy.sizes[task] == 20 and set(proxy.items[task]) | set(proxy.final[task]) == set(range(20))
        assert len(proxy.items[task]) == 5 and len(proxy.final[task]) == 15
    assert ProxySet.draw(tasks_dir, ["mini_arc", "mini_mmlu"], size=5, seed=0).key != proxy.key
    with pytest.raises(EvalError, match=r"no final test items for mini_arc \(20 items, eval.limit=20\)"):
        ProxySet.draw(tasks_dir, ["mini_arc"], size=20, limit=20)
