"""What the mini zoo is made of: sizes, and one recipe per model (mirroring Which16 in role)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from glue_bench.zoo.refs import ZooError

# Bump when a recipe, the data or the training code changes what gets built: caches are keyed by it.
VERSION = "v10"  # v3: code problems a model can learn (spec.py, data.py), a 384-token context; v4: built reproducibly (build.REPRODUCIBLE); v5: fine-tunes twice as long, base_alt pretrained as long as base, instruct_reason on reasoning alone (at v4's, micro_full's math, wiki and instruct_reason experts did not beat the base on replicate 12); v6: the code, wiki and instruct_reason experts trained as long as math, wiki on knowledge alone (at v5, on micro_full's replicates 12-16, code beat the base on 4 of 5 with an items-only interval excluding 0, wiki on 4, instruct_reason on 3; at v6's recipes, on the same builds, 5 of 5 each); v7: stem trained as long too, so that every domain expert trains 640 steps (v6's first held-out replicate, 17, had stem at +0.030 with an interval holding 0; 12-16 +0.049 to +0.123); v8: the math expert is the best of three data orders on fresh validation problems (v7's replicate 18 trained one that answered every problem "10": +0.010 over the base, its interval holding 0); v9: both math experts train 1,280 steps, each again on another data order, up to three times, until one beats its parent on the validation problems by LEARNT_MARGIN (at v8, math_altinit was below the base on replicate 23, all three of its 640-step orders near 0 on validation); v10: every domain expert trains 1,280 steps (v9's replicate 24 had wiki at +0.075 over the base on MMLU, its interval holding 0; wiki, instruct_reason and stem trained 1,280 steps there: +0.145, +0.275, +0.187, from +0.075, +0.100, +0.132)


@dataclass(frozen=True)
class Size:
    arch: dict                 # the Llama family's shapes
    foreign_arch: dict         # the CrystalChat-like model: other width and depth
    step_scale: float          # multiplies every recipe's steps
    # 416 tokens hold the longest prompt the tasks ask, MBPP's with its one-shot example (388 with
    # micro's tokenizer, 268 with mini's); v2 trained on 128, so its models never saw MBPP's code.
    # 3 sequences a step cost about what v2's 8 of 128 did
    batch_size: int = 3
    seq_len: int = 416
    vocab_size: int = 1024
    foreign_vocab_size: int = 768
    # whether an expert with restarts trains again when a run learnt nothing (`Recipe.restarts`);
    # off where no run learns whatever its data order, so that a retry would only cost
    retries: bool = True


SIZES = {
    # ~1.1M parameters; ~0.14 s per step of 8x128 tokens on 2 CPU cores
    "mini": Size(arch=dict(hidden=128, intermediate=384, layers=4, heads=4),
                 foreign_arch=dict(hidden=96, intermediate=256, layers=6, heads=4), step_scale=1.0),
    # the study's replicates: micro's shapes trained the whole recipe, ~0.12 s a step, ~17 min a zoo on
    # 2 cores (v10's replicate 25: 1,022 s); its domain experts beat the base on their domains
    # (glue_bench.phenomena), micro's do not
    "micro_full": Size(arch=dict(hidden=64, intermediate=160, layers=2, heads=2),
                       foreign_arch=dict(hidden=48, intermediate=128, layers=3, heads=2), step_scale=1.0,
                       vocab_size=512, foreign_vocab_size=384),
    # for the tests: the same zoo, a tenth as long (under a minute on 2 cores; its base as at v4, on
    # which the tests' thresholds were measured); its models sit near chance, so it shows that
    # everything runs, never what the study finds (and its math experts never retry)
    "micro": Size(arch=dict(hidden=64, intermediate=160, layers=2, heads=2),
                  foreign_arch=dict(hidden=48, intermediate=128, layers=3, heads=2), step_scale=0.1,
                  vocab_size=512, foreign_vocab_size=384, retries=False),
}

CHAT = {"chat": 1.0}
# pretraining is mostly general text, as for real LLMs: domain skill comes mainly from fine-tuning
MIX = {"reason": 0.5, "knowledge": 0.5, "math": 0.5, "code": 0.5, "chat": 2.0}


@dataclass(frozen=True)
class Recipe:
    name: str
    parent: str | None         # None: pretrained from scratch
    weights: dict              # domain -> sampling weight of the training mixture
    steps: int                 # at step_scale 1
    lr: float
    seed: int
    analogue: str = ""         # the Which16 model whose role this one plays
    foreign: bool = False      # own tokenizer and architecture
    # at most this many trainings from the parent, each its own data order (seed + RESTART_STRIDE * k),
    # until one beats the parent on fresh validation items of its domain by LEARNT_MARGIN; kept: that
    # one, else the best (build.py), as a fine-tuner trains again when a run learnt nothing
    restarts: int = 1
    notes: str = field(default="", compare=False)


RESTART_STRIDE = 100  # above every recipe's seed, below the replicates' stride (`replicated`): no seed shared
# A run has learnt when its share of the 200 validation problems answered exactly (the whole worked
# answer, token by token) beats its parent's by this much. The parents score 0.00 there (the bases of
# replicates 22 and 23); runs kept because they beat the base on the test split scored 0.115-0.13 at
# 640 steps and 0.51-0.83 at 1,280; the run that answered every problem "10" scored 0.07
LEARNT_MARGIN = 0.10


def _ft(name, weights, analogue, seed, *, lr=2e-3, steps=320, parent="base", restarts=1):
    # experts keep a fifth of the pretraining mixture so that they stay general, like real fine-tunes
    mixed = {d: 0.2 * w / sum(MIX.values()) for d, w in MIX.items()}
    total = sum(weights.values())
    for d, w in weights.items():
        mixed[d] += 0.8 * w / total
    return Recipe(name, parent, mixed, steps, lr, seed, analogue, restarts=restarts)


RECIPES = {r.name: r for r in [
    Recipe("base", None, MIX, 600, 3e-3, 0, "meta-llama/Llama-2-7b-hf"),
    Recipe("base_alt", None, MIX, 600, 3e-3, 1, "(another pretraining run: the Llemma / CodeLlama init)"),
    # reasoning instructions only: with a third (v5 at cff082b) or half (v4) of chat it did not beat
    # the base on ARC and WinoGrande at micro_full on every replicate (13: -0.001; pure: +0.04); at
    # 320 steps (v5) pure reasoning beat it on 3 of 5 replicates, at 640 on 5 of 5 (smallest +0.10)
    _ft("instruct_reason", {"reason": 1}, "migtissera/Synthia-7B-v1.2", 11, steps=1280),
    _ft("instruct_code", {"chat": 1, "code": 0.6, "reason": 0.4}, "teknium/OpenHermes-7B", 12),
    _ft("chat_a", {"chat": 0.7, "math": 0.15, "knowledge": 0.15}, "meta-llama/Llama-2-7b-chat-hf", 13),
    # near-duplicate of chat_a: same data and recipe, other seed only (Vicuna vs Llama-2-chat)
    _ft("chat_b", {"chat": 0.7, "math": 0.15, "knowledge": 0.15}, "lmsys/vicuna-7b-v1.5", 14),
    # code, like arithmetic, needs the longer fine-tune: at 320 steps (v5) the code expert beat the
    # base on 4 of 5 replicates (smallest +0.015), at 640 on 5 of 5 (smallest +0.13)
    _ft("code", {"code": 1}, "neuralmagic/Llama-2-7b-evolcodealpaca", 15, steps=1280),
    _ft("story", {"chat": 0.6, "reason": 0.4}, "PygmalionAI/pygmalion-2-7b", 16),
    _ft("wellness", {"chat": 0.8, "math": 0.2}, "Severus27/BeingWell_llama2_7b", 17),
    # arithmetic is the slowest skill to learn: the math experts train longest (as MetaMath's data is
    # large), and at micro_full whether a run learns it depends on the data order. At 640 steps one
    # run in eight answered every problem "10" on builds 12-19 (v7's replicate 18: +0.010 over the
    # base), and at v8 (the best of three orders) all three of math_altinit's orders scored 0.00-0.02
    # on validation on replicate 23, below its init on the test split. At 1,280 steps one order learnt
    # on 22 and 23 for both (validation 0.51-0.83; math's 640-step kept runs 0.2075 and 0.295 on the
    # test split), though on v7's 18 it did not (-0.005): so each trains again on another order when a
    # run learnt nothing (`Recipe.restarts`), at the cost of one run when the first learns
    _ft("math", {"math": 1}, "meta-math/MetaMath-7B-V1.0", 18, steps=1280, restarts=3),
    # every domain expert trains as long as math, a rule rather than a choice per model: at 320 steps
    # stem beat the base on v6's held-out replicate 17 by +0.030 only, its interval holding 0; at 640
    # wiki on v9's replicate 24 by +0.075 only (at 1,280 there +0.145; instruct_reason +0.275 from
    # +0.100, stem +0.187 from +0.132: Δ over the base, mean of its domain's tasks)
    _ft("stem", {"reason": 0.5, "knowledge": 0.5}, "garage-bAInd/Platypus2-7B", 19, steps=1280),
    _ft("goat", {"chat": 0.6, "knowledge": 0.2, "reason": 0.2}, "GOAT-AI/GOAT-7B-Community", 20),
    # knowledge alone and the longer fine-tune: with a fifth of chat at 320 steps (v5) it beat the base
    # on MMLU on 4 of 5 replicates, at 640 with it on 4, without it on 5 (smallest +0.14)
    _ft("wiki", {"knowledge": 1}, "stanford-oval/Llama-2-7b-WikiChat-fused", 21, steps=1280),
    _ft("dolphin", {"chat": 0.7, "code": 0.15, "math": 0.15}, "cognitivecomputations/dolphin-llama2-7b", 22),
    # same shapes, another init: merging it with the family mixes unrelated weights
    _ft("math_altinit", {"math": 1}, "meta-math/MetaMath-Llemma-7B", 23, steps=1280, parent="base_alt", restarts=3),
    # same init, trained much longer with a high learning rate on one domain: weights far away.
    # ||theta - base|| / ||base|| = 2.7 (chat_a: 0.23; another init: 1.1-1.2). At lr 5e-3 it moved
    # 0.7-1.45 and still merged well with the chat models (docs/zoos.md: the failure case of merging)
    _ft("code_far", {"code": 1}, "codellama/CodeLlama-7b-Instruct-hf", 24, lr=1e-2, steps=1200),
    _ft("code_far_instruct", {"code": 0.6, "chat": 0.4}, "ise-uiuc/Magicoder-S-CL-7B", 25, parent="code_far"),
    # other architecture and tokenizer: not mergeable at all
    Recipe("foreign_chat", None, {**MIX, "chat": 3.0}, 300, 3e-3, 26, "LLM360/CrystalChat", foreign=True),
]}

def finetune_shares(name: str) -> dict[str, float]:
    """The share of each domain in `name`'s own training data: what `_ft` added to a fifth of the
    pretraining mix (for a model pretrained from scratch, its pretraining mixture), summing to 1."""
    made = RECIPES[name] if name in RECIPES else recipe(name)  # an unknown name fails there, naming it
    weights = dict(made.weights)
    if made.parent is not None:
        weights = {d: max(0.0, w - 0.2 * MIX.get(d, 0.0) / sum(MIX.values())) for d, w in weights.items()}
    total = sum(weights.values())
    return {d: w / total for d, w in weights.items()}


# The domain experts: fine-tunes with at least half their own data in one benchmark domain (chat
# has no benchmark). Each must beat the base on its domain's tasks (glue_bench.phenomena).
DOMAIN_EXPERTS = {name: tuple(d for d, share in finetune_shares(name).items() if share >= 0.5 and d != "chat")
                  for name, r in RECIPES.items() if r.parent is not None}
DOMAIN_EXPERTS = {name: domains for name, domains in DOMAIN_EXPERTS.items() if domains}
FAR_TRAINED = ("code_far", "code_far_instruct")  # the base's init, trained far away (CodeLlama's case)
OTHER_INIT = ("math_altinit",)                    # same shapes, another pretraining run
OTHER_ARCHITECTURE = ("foreign_chat",)            # other shapes and tokenizer


@dataclass(frozen=True)
class Design:
    version: str
    domain_experts: dict[str, tuple[str, ...]]  # fine-tune -> the benchmark domains it must beat the base on
    far_trained: tuple[str, ...]
    other_init: tuple[str, ...]
    other_architecture: tuple[str, ...]


def design() -> Design:
    return Design(VERSION, DOMAIN_EXPERTS, FAR_TRAINED, OTHER_INIT, OTHER_ARCHITECTURE)


def replicated(seed: int, replicate: int) -> int:
    """Replicate r's seed for what replicate 0 seeds with `seed`: replicate 0 is the zoo as first
    built; the stride keeps replicates' seeds apart from every seed a recipe or the data uses."""
    return seed + 1000 * replicate


def recipe(name: str, replicate: int = 0) -> Recipe:
    """`name`'s recipe in replicate `replicate`: the same but for its seed (init, data order, training)."""
    lineage(name)  # an unknown name fails here, naming it
    return RECIPES[name] if replicate == 0 else replace(RECIPES[name], seed=replicated(RECIPES[name].seed, replicate))


def lineage(name: str) -> list[str]:
    """`name` and everything it is trained from, root first."""
    if name not in RECIPES:
        raise ZooError(f"unknown mini-zoo model {name!r}; known: {', '.join(RECIPES)}")
    chain = [name]
    while RECIPES[chain[-1]].parent:
        chain.append(RECIPES[chain[-1]].parent)
    return chain[::-1]


def fingerprint(name: str, size: str, replicate: int = 0) -> str:
    """Short hash of everything `name` is built from (its lineage's recipes, at the replicate's
    seeds, and the size), so a changed recipe rebuilds that model and its descendants instead of
    reusing a stale cache."""
    import hashlib
    import json
    from dataclasses import asdict

    payload = [VERSION, asdict(SIZES[size])] + [
        {k: v for k, v in asdict(recipe(n, replicate)).items() if k != "notes"} for n in lineage(name)]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:8]
