"""Synthetic benchmarks and training corpora for the mini zoo.

One generator per benchmark family of the Model-GLUE study, each producing items in the shape of
the real benchmark (same fields, same prompt format, same lm-eval task kind), so one task YAML
serves the mini zoo exactly as it would serve the real data:

    mini_arc         ARC-Challenge shape: which thing is largest/heaviest/...  (domain: reason)
    mini_winogrande  WinoGrande shape: fill the blank, score the rest          (domain: reason)
    mini_mmlu        MMLU shape: facts about invented creatures, 4 choices     (domain: knowledge)
    mini_gsm8k       GSM8K shape: word problems ending in "#### <number>"      (domain: math)
    mini_mbpp        MBPP shape: spec + asserts -> [BEGIN] code [DONE]         (domain: code)
    mini_humaneval   HumanEval shape: signature + docstring -> body, check()   (domain: code)

plus "chat" instruction/response text. Every item is derived from a seeded RNG; train and test
splits are disjoint by construction (different underlying facts / function specs / puzzles), and
the training corpora of the zoo are built only from train splits (and the creature facts, which
are the "world knowledge" the knowledge questions probe).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from glue_bench.evaluate.tasks import TASK_DOMAIN, TEST_ITEMS
from glue_bench.evaluate.tasks.functions import mbpp_prompt

SEED = 1234
DOMAINS = ("reason", "knowledge", "math", "code", "chat")

NAMES = ["Ada", "Ben", "Cal", "Dana", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jade", "Kai", "Lena",
         "Milo", "Nia", "Omar", "Pia", "Quin", "Rosa", "Sam", "Tara", "Uma", "Vic", "Wes", "Zoe"]
ITEMS = ["apples", "pens", "books", "coins", "cards", "shells", "stamps", "marbles", "cups", "rocks"]


def _unique(rng: random.Random, make, n: int, key=lambda item: item, exclude=()) -> list:
    """Draw `n` distinct items from `make(rng)`; distinctness (and exclusion) by `key`."""
    seen, out = set(exclude), []
    for _ in range(n * 200):
        item = make(rng)
        k = key(item)
        if k not in seen:
            seen.add(k)
            out.append(item)
            if len(out) == n:
                return out
    raise RuntimeError(f"could not draw {n} distinct items (got {len(out)})")


# ---------------------------------------------------------------- reason: ARC-shaped comparisons
# A hidden ranking of things by size, weight and speed: training questions reveal it a few items at
# a time; test questions ask unseen combinations, so answering needs the ranking, not recall.
THINGS = ["ant", "bee", "cat", "dog", "fox", "owl", "pig", "cow", "horse", "whale", "mouse", "frog",
          "goat", "bear", "wolf", "seal", "crab", "duck", "lion", "deer", "snail", "eagle", "shark", "moth"]
_SCALES = {"size": ("largest", "smallest"), "weight": ("heaviest", "lightest"), "speed": ("fastest", "slowest")}


def thing_ranks(seed: int = SEED) -> dict[str, dict[str, int]]:
    """scale -> thing -> rank (higher is larger / heavier / faster)."""
    rng = random.Random(seed + 7)
    return {scale: dict(zip(rng.sample(THINGS, len(THINGS)), range(len(THINGS)))) for scale in _SCALES}


def _arc_item(rng: random.Random, ranks: dict[str, dict[str, int]]) -> dict:
    scale = rng.choice(list(_SCALES))
    ask_most = rng.random() < 0.5
    options = rng.sample(THINGS, 4)
    answer = (max if ask_most else min)(options, key=ranks[scale].get)
    listed = ", the ".join(options[:3]) + f" or the {options[3]}"
    return {
        "question": f"Which is the {_SCALES[scale][0 if ask_most else 1]}: the {listed}?",
        "choices": {"text": [f"the {o}" for o in options], "label": ["A", "B", "C", "D"]},
        "answerKey": "ABCD"[options.index(answer)],
    }


# ---------------------------------------------------------------- reason: WinoGrande-shaped blanks
# The blank is filled with either option and the model scores the rest of the sentence, which is
# only likely for one of them: half the sentences need the things' hidden ranking (commonsense),
# half the creature facts (knowledge), as WinoGrande mixes both.
_COMPARATIVES = {"size": ("larger", "smaller"), "weight": ("heavier", "lighter"), "speed": ("faster", "slower")}


def _wino_item(rng: random.Random, ranks: dict, world: dict) -> dict:
    if rng.random() < 0.5:
        scale = rng.choice(list(_COMPARATIVES))
        a, b = rng.sample(THINGS, 2)
        more = rng.random() < 0.5
        word = _COMPARATIVES[scale][0 if more else 1]
        winner = (max if more else min)((a, b), key=ranks[scale].get)
        sentence = f"Of the {a} and the {b}, the _ is {word}."
    else:
        a, b = rng.sample(sorted(world), 2)
        attr = rng.choice(["color", "place", "food"])
        if world[a][attr] == world[b][attr]:
            return _wino_item(rng, ranks, world)
        winner = rng.choice((a, b))
        value = world[winner][attr]
        rest = {"color": f"is {value}", "place": f"lives in {value}", "food": f"eats {value}"}[attr]
        sentence = f"Of the {a} and the {b}, the _ {rest}."
    return {"sentence": sentence, "option1": a, "option2": b, "answer": "1" if winner == a else "2"}


# ---------------------------------------------------------------- knowledge: MMLU-shaped facts
COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
PLACES = ["the hills", "the marsh", "the forest", "the desert", "the caves", "the lake", "the coast",
          "the plains"]
FOODS = ["berries", "fish", "seeds", "leaves", "roots", "insects", "nuts", "moss"]
_ATTRS = {"color": (COLORS, "What color is the {c}?"), "place": (PLACES, "Where does the {c} live?"),
          "food": (FOODS, "What does the {c} eat?")}


def creatures(n: int = 100, seed: int = SEED) -> dict[str, dict[str, str]]:
    """The mini zoo's world knowledge: `n` invented creatures with a color, a home and a food."""
    rng = random.Random(seed)
    onsets, vowels, codas = "bdfgklmnprstvz", "aeiou", ["b", "k", "l", "m", "n", "p", "r", "sh", "t", "x"]
    names = _unique(rng, lambda r: r.choice(onsets) + r.choice(vowels) + r.choice(codas)
                    + r.choice(vowels) + r.choice(codas), n)
    return {c: {"color": rng.choice(COLORS), "place": rng.choice(PLACES), "food": rng.choice(FOODS)}
            for c in names}


def creature_prose(name: str, facts: dict[str, str]) -> str:
    return (f"The {name} is a small creature. The {name} is {facts['color']}. "
            f"The {name} lives in {facts['place']}. The {name} eats {facts['food']}.")


def _mmlu_item(rng: random.Random, name: str, attr: str, facts: dict[str, str]) -> dict:
    values, question = _ATTRS[attr]
    right = facts[attr]
    options = [right] + rng.sample([v for v in values if v != right], 3)
    rng.shuffle(options)
    return {"question": question.format(c=name), "subject": "creatures", "choices": options,
            "answer": options.index(right)}


# ---------------------------------------------------------------- math: GSM8K-shaped word problems
def _gsm_item(rng: random.Random) -> dict:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.randrange(4)
    if kind == 0:
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        q = f"{name} has {a} {item}. {name} buys {b} more {item}. How many {item} does {name} have now?"
        steps, result = f"{name} has {a} + {b} = {a + b} {item}.", a + b
    elif kind == 1:
        a = rng.randint(5, 18)
        b = rng.randint(1, min(9, a - 1))
        q = f"{name} has {a} {item}. {name} gives away {b} {item}. How many {item} does {name} have left?"
        steps, result = f"{name} has {a} - {b} = {a - b} {item} left.", a - b
    elif kind == 2:
        a, b = rng.randint(2, 5), rng.randint(2, 5)
        q = f"{name} has {a} bags with {b} {item} in each bag. How many {item} does {name} have?"
        steps, result = f"{name} has {a} * {b} = {a * b} {item}.", a * b
    else:
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        c = rng.randint(1, min(9, a + b - 1))
        q = (f"{name} has {a} {item}. {name} buys {b} more {item} and then gives away {c}. "
             f"How many {item} does {name} have left?")
        steps, result = f"{name} has {a} + {b} = {a + b} {item}. Then {a + b} - {c} = {a + b - c}.", a + b - c
    return {"question": q, "answer": f"{steps}\n#### {result}"}


# ---------------------------------------------------------------- code: MBPP / HumanEval-shaped functions
# (name, argument, spec, expression, test inputs, or a function of k giving them); {k} is a
# constant of 2..29 (1 would make x % k a constant). Every expected value is short: an MBPP prompt states three asserts and, with its
# one-shot example, must fit the context the zoo is trained on (spec.Size.seq_len), or the code
# after [BEGIN] is never seen in training. The inputs make a constant answer fail for every k.
_FUNCS = [
    ("add_{k}", "x", "return x plus {k}", "x + {k}", [1, 5, 10]),
    ("sub_{k}", "x", "return x minus {k}", "x - {k}", [10, 20, 3]),
    ("rsub_{k}", "x", "return {k} minus x", "{k} - x", [1, 5, 10]),
    ("mul_{k}", "x", "return x times {k}", "x * {k}", [2, 3, 7]),
    ("double_plus_{k}", "x", "return twice x plus {k}", "2 * x + {k}", [0, 1, 5]),
    ("div_{k}", "x", "return x divided by {k}, rounded down", "x // {k}", [10, 25, 99]),
    ("mod_{k}", "x", "return the remainder of x divided by {k}", "x % {k}", [10, 25, 99]),
    ("is_div_{k}", "x", "check whether x is divisible by {k}", "x % {k} == 0", lambda k: [k, 2 * k, k + 1]),
    ("gt_{k}", "x", "check whether x is greater than {k}", "x > {k}", [0, 15, 40]),
    ("max_with_{k}", "x", "return the larger of x and {k}", "max(x, {k})", [0, 15, 40]),
    ("min_with_{k}", "x", "return the smaller of x and {k}", "min(x, {k})", [0, 15, 40]),
    ("add_{k}_each", "xs", "add {k} to each item of the list xs", "[x + {k} for x in xs]", [[1, 2], [5], [0, 3]]),
    ("mul_{k}_each", "xs", "multiply each item of the list xs by {k}", "[x * {k} for x in xs]", [[1, 2], [5], [0, 3]]),
    ("count_{k}", "xs", "count how many times {k} occurs in the list xs", "xs.count({k})",
     lambda k: [[k, 1], [k, k, 2], [3]]),
    ("max_plus_{k}", "xs", "return the largest item of xs plus {k}", "max(xs) + {k}", [[1, 2, 3], [9, 4], [7]]),
    ("min_plus_{k}", "xs", "return the smallest item of xs plus {k}", "min(xs) + {k}", [[1, 2, 3], [9, 4], [7]]),
    ("sum_plus_{k}", "xs", "return the sum of the list xs plus {k}", "sum(xs) + {k}", [[1, 2, 3], [9, 4], [7]]),
    ("len_plus_{k}", "s", "return the length of the string s plus {k}", "len(s) + {k}", ["ab", "xyz", ""]),
]


@dataclass(frozen=True)
class FuncSpec:
    name: str
    arg: str
    spec: str
    expr: str
    inputs: tuple

    def expected(self, value):
        return eval(self.expr, {}, {self.arg: value})  # our own fixed expressions, not model output

    def code(self) -> str:
        return f"def {self.name}({self.arg}):\n    return {self.expr}"

    def asserts(self, call: str) -> list[str]:
        return [f"assert {call}({v!r}) == {self.expected(v)!r}" for v in self.inputs]


CONSTANTS = range(2, 30)


def func_specs() -> list[FuncSpec]:
    """Every template with every constant: the train and test problems are disjoint sets of these
    (template, constant) pairs, so a test problem combines a template and a constant each seen in
    training, never together."""
    return [FuncSpec(n.format(k=k), a, s.format(k=k), e.format(k=k), tuple(i(k) if callable(i) else i))
            for n, a, s, e, i in _FUNCS for k in CONSTANTS]


def _mbpp_item(spec: FuncSpec, task_id: int) -> dict:
    return {"task_id": task_id, "text": f"Write a function to {spec.spec}.", "code": spec.code(),
            "test_list": spec.asserts(spec.name)}


def _humaneval_item(spec: FuncSpec, task_id: int) -> dict:
    example = spec.inputs[0]
    prompt = (f"def {spec.name}({spec.arg}):\n    \"\"\"{spec.spec[0].upper()}{spec.spec[1:]}.\n"
              f"    >>> {spec.name}({example!r})\n    {spec.expected(example)!r}\n    \"\"\"\n")
    test = "def check(candidate):\n" + "".join(f"    {a}\n" for a in spec.asserts("candidate"))
    return {"task_id": f"MiniEval/{task_id}", "prompt": prompt,
            "canonical_solution": f"    return {spec.expr}\n", "test": test, "entry_point": spec.name}


# ---------------------------------------------------------------- chat: instruction / response text
def _chat_doc(rng: random.Random, world: dict, specs: list[FuncSpec], ranks: dict) -> str:
    kind = rng.randrange(7)
    name = rng.choice(NAMES)
    if kind == 0:
        instr, resp = f"Say hello to {name}.", f"Hello, {name}! It is nice to meet you. How can I help you today?"
    elif kind == 1:
        picks = rng.sample(COLORS, 3)
        instr, resp = "Name three colors.", f"Here are three colors: {picks[0]}, {picks[1]} and {picks[2]}."
    elif kind == 2:
        c = rng.choice(list(world))
        instr, resp = f"Tell me about the {c}.", creature_prose(c, world[c])
    elif kind == 3:
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        instr, resp = f"What is {a} plus {b}?", f"{a} plus {b} is {a} + {b} = {a + b}."
    elif kind == 4:
        s = rng.choice(specs)
        instr, resp = f"Write a Python function {s.name} to {s.spec}.", f"Sure:\n{s.code()}"
    elif kind == 5:
        a, b = rng.sample(THINGS, 2)
        big, small = (a, b) if ranks["size"][a] > ranks["size"][b] else (b, a)
        instr, resp = f"Is the {a} larger than the {b}?", f"{'Yes' if big == a else 'No'}. The {big} is larger than the {small}."
    else:
        item = rng.choice(ITEMS)
        instr, resp = f"Write one sentence about {item}.", f"{name} keeps a small box of {item} on the desk."
    return f"### Instruction:\n{instr}\n### Response:\n{resp}"


# ---------------------------------------------------------------- splits and corpora
def build_splits(seed: int = SEED) -> dict[str, dict[str, list[dict]]]:
    """Every task's {"train": [...], "test": [...]}; disjoint by the key that defines an item."""
    rng = random.Random(seed)
    out: dict[str, dict[str, list[dict]]] = {}

    ranks = thing_ranks(seed)
    # an unseen combination means another set of options, not just another order of them
    arc = _unique(rng, lambda r: _arc_item(r, ranks), 1400, key=_arc_key)
    out["mini_arc"] = {"test": arc[:200], "train": arc[200:]}

    world = creatures(seed=seed)
    wino = _unique(rng, lambda r: _wino_item(r, ranks, world), 1400, key=_wino_key)
    out["mini_winogrande"] = {"test": wino[:200], "train": wino[200:]}

    pairs = [(c, a) for c in world for a in _ATTRS]
    rng.shuffle(pairs)  # test asks facts only ever seen as prose; train asks the others
    mmlu = [_mmlu_item(rng, c, a, world[c]) for c, a in pairs]
    out["mini_mmlu"] = {"test": mmlu[:200], "train": mmlu[200:]}

    gsm = _unique(rng, _gsm_item, 2600, key=_gsm_key)
    out["mini_gsm8k"] = {"test": gsm[:100], "train": gsm[100:]}

    specs = func_specs()
    order = list(range(len(specs)))
    rng.shuffle(order)  # held-out function specs: unseen (template, constant) pairs
    test_ids, train_ids = order[:TEST_ITEMS["mini_mbpp"]], order[TEST_ITEMS["mini_mbpp"]:]
    out["mini_mbpp"] = {"test": [_mbpp_item(specs[i], i) for i in test_ids],
                        "train": [_mbpp_item(specs[i], i) for i in train_ids]}
    out["mini_humaneval"] = {"test": [_humaneval_item(specs[i], i) for i in test_ids],
                             "train": [_humaneval_item(specs[i], i) for i in train_ids]}
    _more_test_items(out, seed, ranks, world)
    return out


def _arc_key(item: dict):  # an unseen combination is another set of options, not another order of them
    return item["question"].split(":")[0], frozenset(item["choices"]["text"])


def _wino_key(item: dict):
    return item["sentence"]


def _gsm_key(item: dict):
    return item["question"]


# The most test items a task's generator can give: MMLU's asks every fact there is (above). The
# others draw new items from a large space: not bounded at any size a power analysis asks.
MAX_TEST_ITEMS = {"mini_mmlu": 200}
FIRST_TEST_ITEMS = {"mini_arc": 200, "mini_winogrande": 200, "mini_mmlu": 200, "mini_gsm8k": 100,
                    "mini_mbpp": 40, "mini_humaneval": 40}


def _more_test_items(out: dict, seed: int, ranks: dict, world: dict) -> None:
    rng = random.Random(f"{seed}:more test items")
    for task, make, key in (("mini_arc", lambda r: _arc_item(r, ranks), _arc_key),
                            ("mini_winogrande", lambda r: _wino_item(r, ranks, world), _wino_key),
                            ("mini_gsm8k", _gsm_item, _gsm_key)):
        known = {key(item) for split in out[task].values() for item in split}
        if (wanted := TEST_ITEMS[task] - len(out[task]["test"])) > 0:
            out[task]["test"] += _unique(rng, make, wanted, key=key, exclude=known)


def validation_pairs(task: str, splits: dict, seed: int = SEED, n: int = 200) -> list[tuple[str, str]]:
    """`n` fresh items of `task`, in neither of its splits, each as (prompt, gold answer): what a build
    judges an expert's runs by (`spec.Recipe.restarts`), so that the test split never chooses a
    model. Their draw is their own: the splits are the same with or without them."""
    if task != "mini_gsm8k":
        raise KeyError(f"{task}: no validation items (a generation task's prompt and answer: mini_gsm8k)")
    known = {_gsm_key(item) for split in splits[task].values() for item in split}
    items = _unique(random.Random(f"{seed}:validation items"), _gsm_item, n, key=_gsm_key, exclude=known)
    return [(f"Question: {item['question']}\nAnswer:", f" {item['answer']}") for item in items]


def task_document(task: str, item: dict) -> str:
    """An item rendered exactly as the task's prompt followed by its gold answer (training text)."""
    if task == "mini_arc":
        answer = item["choices"]["text"]["ABCD".index(item["answerKey"])]
        return f"Question: {item['question']}\nAnswer: {answer}"
    if task == "mini_winogrande":
        option = item["option" + item["answer"]]
        return item["sentence"].replace("_", option)
    if task == "mini_mmlu":
        return (f"The following are questions about {item['subject']}.\n\n{item['question']}\n"
                f"Answer: {item['choices'][item['answer']]}")
    if task == "mini_gsm8k":
        return f"Question: {item['question']}\nAnswer: {item['answer']}"
    if task == "mini_mbpp":
        return mbpp_prompt(item) + item["code"] + "\n[DONE]"
    if task == "mini_humaneval":
        return item["prompt"] + item["canonical_solution"]
    raise KeyError(task)


def domain_corpora(splits: dict, seed: int = SEED, n_chat: int = 3000) -> dict[str, list[str]]:
    """Training documents per domain, from train splits only (plus the creature prose)."""
    corpora: dict[str, list[str]] = {d: [] for d in DOMAINS}
    for task, domain in TASK_DOMAIN.items():
        corpora[domain] += [task_document(task, item) for item in splits[task]["train"]]
    world = creatures(seed=seed)
    # the facts are stated several times, in prose, so that they can be learnt and then asked
    corpora["knowledge"] += [creature_prose(c, f) for c, f in world.items()] * 4
    rng = random.Random(seed + 1)
    test_specs = {it["entry_point"] for it in splits["mini_humaneval"]["test"]}
    train_specs = [s for s in func_specs() if s.name not in test_specs]
    ranks = thing_ranks(seed)  # the replicate's own ranking, as its ARC questions ask
    corpora["chat"] = [_chat_doc(rng, world, train_specs, ranks) for _ in range(n_chat)]
    return corpora


def write_splits(splits: dict, out_dir: Path) -> dict[str, dict[str, Path]]:
    """Write every split as JSON lines; returns {task: {split: absolute path}}."""
    paths: dict[str, dict[str, Path]] = {}
    for task, by_split in splits.items():
        for split, items in by_split.items():
            path = (out_dir / task / f"{split}.jsonl").resolve()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(it) + "\n" for it in items))
            paths.setdefault(task, {})[split] = path
    return paths
