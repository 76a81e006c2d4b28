"""The synthetic benchmarks: disjoint splits, correct answers (checked independently), determinism."""

import json
import re

import pytest

from glue_bench.evaluate.tasks import TASKS, TEST_ITEMS
from glue_bench.zoo.mini import data

SPLITS = data.build_splits()


def _key(task, item):
    return {"mini_arc": lambda d: (d["question"].split(":")[0], frozenset(d["choices"]["text"])), "mini_winogrande": lambda d: d["sentence"],
            "mini_mmlu": lambda d: d["question"], "mini_gsm8k": lambda d: d["question"],
            "mini_mbpp": lambda d: d["text"], "mini_humaneval": lambda d: d["prompt"]}[task](item)


def test_every_task_has_disjoint_nonempty_splits():
    assert set(SPLITS) == set(TASKS)
    for task, splits in SPLITS.items():
        test = {_key(task, d) for d in splits["test"]}
        assert len(test) == len(splits["test"]) >= 30, task
        if "train" in splits:
            train = {_key(task, d) for d in splits["train"]}
            assert not test & train, f"{task}: {len(test & train)} test items also in train"


def test_code_test_functions_are_unseen_in_training_text():
    corpora = data.domain_corpora(SPLITS)
    text = "\n".join(corpora["code"] + corpora["chat"])
    for item in SPLITS["mini_humaneval"]["test"]:
        assert f"def {item['entry_point']}(" not in text


def test_arc_answers_are_the_extreme_of_the_hidden_ranking():
    ranks = data.thing_ranks()
    words = {"largest": ("size", max), "smallest": ("size", min), "heaviest": ("weight", max),
             "lightest": ("weight", min), "fastest": ("speed", max), "slowest": ("speed", min)}
    for item in SPLITS["mini_arc"]["test"]:
        scale, pick = words[re.search(r"Which is the (\w+):", item["question"]).group(1)]
        things = [t.removeprefix("the ") for t in item["choices"]["text"]]
        assert all(f"the {t}" in item["question"] for t in things)
        answer = item["choices"]["text"]["ABCD".index(item["answerKey"])]
        assert answer == "the " + pick(things, key=ranks[scale].get)


def test_gsm8k_answers_are_the_arithmetic_of_the_question():
    for item in SPLITS["mini_gsm8k"]["test"]:
        q, final = item["question"], int(item["answer"].split("#### ")[1])
        n = [int(x) for x in re.findall(r"\d+", q)]
        if "bags with" in q:
            expected = n[0] * n[1]
        elif "gives away" in q and "buys" in q:
            expected = n[0] + n[1] - n[2]
        elif "gives away" in q:
            expected = n[0] - n[1]
        else:
            expected = n[0] + n[1]
        assert final == expected, item
        for a, op, b, c in re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)", item["answer"]):
            assert eval(f"{a}{op}{b}") == int(c)


def test_validation_problems_are_fresh_and_read_as_training_documents():
    pairs = data.validation_pairs("mini_gsm8k", SPLITS, n=50)
    seen = {d["question"] for split in SPLITS["mini_gsm8k"].values() for d in split}
    questions = [prompt.removeprefix("Question: ").removesuffix("\nAnswer:") for prompt, _ in pairs]
    assert len(set(questions)) == 50 and not set(questions) & seen
    assert pairs == data.validation_pairs("mini_gsm8k", data.build_splits(), n=50)
    item = {"question": questions[0], "answer": pairs[0][1].removeprefix(" ")}
    assert pairs[0][0] + pairs[0][1] == data.task_document("mini_gsm8k", item)
    with pytest.raises(KeyError, match="mini_arc: no validation items"):
        data.validation_pairs("mini_arc", SPLITS)


def test_mmlu_answers_are_the_creature_facts():
    world = data.creatures()
    for item in SPLITS["mini_mmlu"]["test"]:
        creature = re.search(r"the (\w+)", item["question"]).group(1)
        assert item["choices"][item["answer"]] in world[creature].values()
        assert len(set(item["choices"])) == 4


def test_winogrande_answer_is_the_option_the_rest_of_the_sentence_fits():
    ranks, world = data.thing_ranks(), data.creatures()
    words = {"larger": ("size", max), "smaller": ("size", min), "heavier": ("weight", max),
             "lighter": ("weight", min), "faster": ("speed", max), "slower": ("speed", min)}
    for item in SPLITS["mini_winogrande"]["test"]:
        assert item["sentence"].count("_") == 1 and item["answer"] in ("1", "2")
        options = (item["option1"], item["option2"])
        right, wrong = options[int(item["answer"]) - 1], options[2 - int(item["answer"])]
        rest = item["sentence"].split("_ ")[1].rstrip(".")
        if rest.startswith("is ") and rest[3:] in words:
            scale, pick = words[rest[3:]]
            assert right == pick(options, key=ranks[scale].get)
        else:
            claim = re.sub(r"^(is|lives in|eats) ", "", rest)  # "is red" / "lives in the marsh" / "eats moss"
            assert claim in world[right].values() and claim not in world[wrong].values(), item


def test_reference_solutions_pass_their_own_tests():
    for item in SPLITS["mini_mbpp"]["test"]:
        scope = {}
        exec(item["code"] + "\n" + "\n".join(item["test_list"]), scope)  # our own code, not a model's
    for item in SPLITS["mini_humaneval"]["test"]:
        scope = {}
        exec(item["prompt"] + item["canonical_solution"] + item["test"], scope)
        scope["check"](scope[item["entry_point"]])


def test_generation_is_deterministic():
    again = data.build_splits()
    assert json.dumps(again, sort_keys=True) == json.dumps(SPLITS, sort_keys=True)
    assert data.domain_corpora(again) == data.domain_corpora(SPLITS)


def _digest(items) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()[:16]


# computed from glue_bench/zoo/mini/data.py at 2cd3f01, before the test splits grew
FIRST_RELEASE = {  # task: (train split, test split)
    "mini_arc": ("e7ffc8536c9cbe71", "f8a99eca84c4f616"), "mini_winogrande": ("d4162f59d0ae0fa5", "b49785ffa2602305"),
    "mini_mmlu": ("1484e6cc146757d3", "65e70b83bfb6889a"), "mini_gsm8k": ("7fc14c0bdd804d82", "b6e53e33007b87bd"),
}
# the code problems of zoo v3 (constants 2..29 in train and test, short asserts), computed when made
CODE_V3 = {"mini_mbpp": ("450608e5f9645eea", "a82372bbf7dca51a"),
           "mini_humaneval": ("4927c31df39d5523", "f812a351f5fec86c")}


def test_grown_test_splits_keep_every_train_item_and_the_first_test_items():
    """The first release's train items and first test items stay what they were, in order (document
    ids 0..n-1), for every task but code, whose problems zoo v3 made learnable (pinned from then)."""
    assert data.domain_corpora(SPLITS) == data.domain_corpora(data.build_splits())  # and what it is made of:
    for task, (train, test) in FIRST_RELEASE.items():
        first = data.FIRST_TEST_ITEMS[task]
        assert _digest(SPLITS[task]["train"]) == train, task
        assert _digest(SPLITS[task]["test"][:first]) == test, task
        assert len(SPLITS[task]["test"]) == TEST_ITEMS[task] >= first
    for task, (train, test) in CODE_V3.items():
        assert (_digest(SPLITS[task]["train"]), _digest(SPLITS[task]["test"])) == (train, test), task
        assert len(SPLITS[task]["test"]) == TEST_ITEMS[task]
    ids = [item["task_id"] for item in SPLITS["mini_humaneval"]["test"] + SPLITS["mini_humaneval"]["train"]]
    assert len(set(ids)) == len(ids)
    names = [item["entry_point"] for item in SPLITS["mini_humaneval"]["test"]]
    assert len(set(names)) == len(names) > 40  # distinct problems, not repeats


def test_code_problems_combine_seen_parts_and_no_constant_answer_passes():
    """A test problem is a (template, constant) pair never trained on, each part seen in training;
    its three asserts expect at least two values, so a function returning a constant fails them."""
    train = {item["code"] for item in SPLITS["mini_mbpp"]["train"]}
    test = {item["code"] for item in SPLITS["mini_mbpp"]["test"]}
    assert not train & test
    for spec in data.func_specs():
        expected = [spec.expected(v) for v in spec.inputs]
        assert len({repr(e) for e in expected}) >= 2, spec.name


def test_the_longest_one_shot_prompt_fits_the_trained_context(micro_cache):
    """MBPP's prompt with its one-shot example and answer, and GSM8K's two-shot one, fit in the
    sequence length the zoo trains on (else the answer's tokens sit where no model was trained)."""
    from transformers import AutoTokenizer

    from glue_bench.zoo.mini.build import size_dir
    from glue_bench.zoo.mini.spec import SIZES

    tok = AutoTokenizer.from_pretrained(size_dir("micro") / "tokenizer")  # the smallest vocabulary: the longest
    longest = {task: max(len(tok(data.task_document(task, it))["input_ids"]) for split in ("train", "test")
                         for it in SPLITS[task][split]) for task in ("mini_mbpp", "mini_gsm8k")}
    assert 2 * longest["mini_mbpp"] <= SIZES["micro"].seq_len == SIZES["mini"].seq_len
    assert 3 * longest["mini_gsm8k"] <= SIZES["micro"].seq_len
