"""The greedy selective merges against hand-worked cases with a known fitness."""

import pytest

from glue_bench.select.heuristic import GRID, greedy_merge

OWN = {"a": 0.50, "b": 0.60, "c": 0.40, "far": 0.55}


def fitness(weights):
    """Singles score OWN; a merge scores the weighted mean of its members' scores, plus a bonus
    peaking when b holds 0.7 of a two-model merge, and any weight on `far` is a heavy penalty."""
    if len(weights) == 1:
        return OWN[next(iter(weights))]
    score = sum(w * OWN[n] for n, w in weights.items()) - 0.5 * weights.get("far", 0.0)
    if set(weights) == {"a", "b"}:
        score += 0.2 - abs(weights["b"] - 0.7)
    return score


def test_coefficient_keeps_the_best_share_not_the_last_and_excludes_what_hurts():
    result = greedy_merge(["a", "b", "c", "far"], fitness, "coefficient")
    assert [s.candidate for s in result.trace] == ["b", "far", "a", "c"]  # by own score
    assert [s.kept for s in result.trace] == [True, False, True, False]
    assert set(result.trace[1].tried) == set(GRID)
    # b's share 0.7 is the best: 0.77 (the last share of the grid, 0.9, scores 0.59)
    assert result.weights == pytest.approx({"b": 0.7, "a": 0.3})
    assert result.score == pytest.approx(0.7 * 0.6 + 0.3 * 0.5 + 0.2)
    assert max(result.trace[2].tried.values()) == result.trace[2].score == pytest.approx(result.score)


def test_average_gives_the_new_model_one_over_k_plus_one():
    result = greedy_merge(["a", "b", "c", "far"], fitness, "average")
    # b alone; far at 1/2 drops, so k stays 1; a at 1/2 scores 0.55 + 0.2 - 0.2 = 0.55 < 0.6: dropped
    assert [list(s.tried) for s in result.trace[1:]] == [[0.5], [0.5], [0.5]]
    assert result.weights == {"b": 1.0} and result.score == 0.6
    assert [s.kept for s in result.trace] == [True, False, False, False]


def test_similarity_picks_the_most_or_least_similar_to_the_running_merge_each_step():
    asked = []

    def similarity(weights, name):
        asked.append((tuple(sorted(weights)), name))
        return {"a": 0.3, "c": 0.5, "far": 0.0}[name]

    most = greedy_merge(["a", "b", "c", "far"], fitness, "similarity", similarity=similarity)
    # b first (best own score); c is the most similar but its best merge (0.58) drops below 0.6
    assert [s.candidate for s in most.trace] == ["b", "c", "a", "far"]
    assert [s.similarity for s in most.trace] == [None, 0.5, 0.3, 0.0]
    assert [s.kept for s in most.trace] == [True, False, True, False]
    assert set(most.trace[1].tried) == set(GRID)
    assert most.weights == pytest.approx({"b": 0.7, "a": 0.3})
    # the similarities are recomputed against the running merge of each step
    assert set(asked[:3]) == {(("b",), "a"), (("b",), "c"), (("b",), "far")}
    assert asked[-1] == (("a", "b"), "far")
    least = greedy_merge(["a", "b", "c", "far"], fitness, "similarity", similarity=similarity,
                         most_similar=False)
    assert [s.candidate for s in least.trace] == ["b", "far", "a", "c"]
    assert [s.kept for s in least.trace] == [True, False, True, False]


def test_a_kind_that_is_not_implemented_says_so():
    with pytest.raises(ValueError, match="heuristic kind 'nearest' is not implemented"):
        greedy_merge(["a"], fitness, "nearest")


@pytest.mark.slow
def test_the_final_table_compares_on_items_outside_the_proxy_set(micro_cache, tmp_path):
    from glue_bench.select.report import ZooSearch

    zs = ZooSearch.prepare("mini2", "micro", proxy_size=5, seed=0, allow_code_execution=False,
                           tasks_dir=tmp_path / "tasks")
    assert all(len(i) == 5 for i in zs.proxy.items.values())
    table = zs.compare("linear", {"chosen": {"weights": [1.0, 0.0]}})
    assert set(table.index) == {"chat_a", "chat_b", "linear(all)", "chosen"}
    # weights [1, 0] is chat_a itself: the same final scores
    assert table.loc["chosen"].to_dict() == pytest.approx(table.loc["chat_a"].to_dict())
    assert list(table["avg"]) == sorted(table["avg"], reverse=True)
