"""Build the mini zoo lazily into a cache, atomically, under a lock.

    python -m glue_bench.zoo.mini.build mini16              # build a zoo ahead of time
    python -m glue_bench.zoo.mini.build --size micro mini4  # the tests' smaller zoo
    python -m glue_bench.zoo.mini.build --replicate 1 mini4 # another independent build of it

Layout: $GLUE_BENCH_CACHE (default ~/.cache/glue_bench)/mini-<VERSION>/<size>[-r<replicate>]/
    data/<task>/{train,test}.jsonl   tokenizer/   tokenizer_foreign/   models/<name>/
Replicate r (r > 0) draws its data, inits and training with other seeds (`spec.replicated`);
replicate 0 is the zoo as first built, in the directory it always had.
A directory appears under its final name only once complete (written beside it, then renamed),
so a killed build never leaves a half model that later loads.

Models are trained in a process of their own whose float arithmetic does not depend on the CPU
(`REPRODUCIBLE`: ATen's portable kernels, MKL's conditional numerical reproducibility, one
thread), so that one replicate is the same zoo on every x86-64 machine (docs/zoos.md, "The same
zoo on every machine"); each model's card records its weights' fingerprint to compare.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

from glue_bench.cores import usable_cores
from glue_bench.cache import cache_root
from glue_bench.evaluate.tasks import SPLITS_VERSION, TASK_DOMAIN
from glue_bench.zoo.files import atomic_dir
from glue_bench.zoo.mini import data
from glue_bench.zoo.mini.spec import (DOMAIN_EXPERTS, LEARNT_MARGIN, RECIPES, RESTART_STRIDE, SIZES, VERSION, Recipe, fingerprint,
                                      finetune_shares, lineage, recipe, replicated)
from glue_bench.zoo.refs import ZooError, check_replicate


def size_dir(size: str, replicate: int = 0) -> Path:
    if size not in SIZES:
        raise ZooError(f"unknown mini-zoo size {size!r}; known: {', '.join(SIZES)}")
    check_replicate(replicate, "mini-zoo replicate")
    return cache_root() / f"mini-{VERSION}" / (f"{size}-r{replicate}" if replicate else size)


def model_dir(name: str, size: str = "mini", replicate: int = 0) -> Path:
    """models/<name>-<fingerprint of its recipes>: a changed recipe means a new directory."""
    return size_dir(size, replicate) / "models" / f"{name}-{fingerprint(name, size, replicate)}"


def _splits(replicate: int) -> dict:
    return data.build_splits(replicated(data.SEED, replicate))


def _corpora_of(replicate: int) -> dict[str, list[str]]:
    return data.domain_corpora(_splits(replicate), replicated(data.SEED, replicate))


@contextlib.contextmanager
def _build_lock(root: Path, what: str = "build"):
    """One builder of `what` (the data and tokenizers: "build"; else a model's directory name) per
    cache at a time: parallel sweep jobs and build workers wait here instead of racing."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{what}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_data(size: str = "mini", replicate: int = 0) -> Path:
    """The six tasks' splits as JSON lines (same data for every size; a replicate's own), in a
    directory per version of the test splits (`evaluate.tasks.SPLITS_VERSION`; the first one's was `data`)."""
    final = size_dir(size, replicate) / f"data-splits{SPLITS_VERSION}"
    if not final.exists():
        with _build_lock(size_dir(size, replicate)):
            if not final.exists():
                with atomic_dir(final) as scratch:
                    data.write_splits(_splits(replicate), scratch)
    return final


class _Builder:
    """Holds what several models of one build share: corpora and tokenizers."""

    def __init__(self, size: str, replicate: int = 0):
        self.size, self.replicate, self.cfg, self.root = size, replicate, SIZES[size], size_dir(size, replicate)
        self.splits = _splits(replicate)
        self.corpora = data.domain_corpora(self.splits, replicated(data.SEED, replicate))
        self._tokenizers: dict[bool, object] = {}

    def tokenizer(self, foreign: bool):
        from transformers import AutoTokenizer

        if foreign not in self._tokenizers:
            path = self.root / ("tokenizer_foreign" if foreign else "tokenizer")
            with _build_lock(self.root):  # build workers share it: the first trains it
                if not path.exists():
                    self._train_tokenizer(path, foreign)
            self._tokenizers[foreign] = AutoTokenizer.from_pretrained(path)
        return self._tokenizers[foreign]

    def _train_tokenizer(self, path: Path, foreign: bool) -> None:
        from glue_bench.zoo.mini.train import train_tokenizer

        texts = [t for docs in self.corpora.values() for t in docs]
        vocab = self.cfg.foreign_vocab_size if foreign else self.cfg.vocab_size
        # the foreign tokenizer also differs in how it cuts numbers, as real ones do
        tok = train_tokenizer(texts, vocab, split_digits=not foreign)
        with atomic_dir(path) as scratch:
            tok.save_pretrained(scratch)

    def validation(self, name: str) -> list[tuple[str, str]]:
        """The validation pairs that judge whether a run of `name` learnt, and which is kept: fresh
        items of its domains' tasks."""
        tasks = [t for t, d in TASK_DOMAIN.items() if d in DOMAIN_EXPERTS.get(name, ())]
        if not tasks:
            raise ZooError(f"mini-zoo recipe {name!r} has restarts but no benchmark domain to judge its runs by")
        try:
            return [pair for t in tasks for pair in data.validation_pairs(t, self.splits, replicated(data.SEED, self.replicate))]
        except KeyError as e:
            raise ZooError(f"mini-zoo recipe {name!r} has restarts, but {e.args[0]}") from None

    def _parent(self, recipe: Recipe):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(model_dir(recipe.parent, self.size, self.replicate))

    def build(self, recipe: Recipe) -> None:
        from glue_bench.provenance import state_fingerprint
        from glue_bench.training import PackedStream, train
        from glue_bench.zoo.mini.train import answers_exact, new_model, save_model

        tok = self.tokenizer(recipe.foreign)
        steps = max(10, round(recipe.steps * self.cfg.step_scale))
        start = time.perf_counter()
        best, tried = None, []
        validation = self.validation(recipe.name) if recipe.restarts > 1 and self.cfg.retries else None
        if validation:  # a run has learnt when it beats where it started from
            parent_exact = answers_exact(self._parent(recipe), tok, validation)
        for k in range(recipe.restarts if validation else 1):
            if recipe.parent is None:
                arch = self.cfg.foreign_arch if recipe.foreign else self.cfg.arch
                model = new_model(arch, tok, seed=recipe.seed)
            else:
                model = self._parent(recipe)
            seed = recipe.seed + RESTART_STRIDE * k
            stream = PackedStream(self.corpora, recipe.weights, tok, self.cfg.seq_len, seed=seed)
            losses = train(model, stream, steps, recipe.lr, self.cfg.batch_size, seed,
                           desc=f"{self.size}/{recipe.name}" + (f" ({k + 1}/{recipe.restarts})" if validation else ""))
            run = {"seed": seed, "final_loss": sum(losses[-10:]) / len(losses[-10:])}
            if validation:
                run["validation_exact"] = answers_exact(model, tok, validation)
            tried.append(run)
            if best is None or run.get("validation_exact", 0) > best[1].get("validation_exact", 0):
                best = (model, run)  # a tie keeps the earlier run
            if validation and round(run["validation_exact"] - parent_exact, 9) >= LEARNT_MARGIN:  # shares of 200: exact to 1e-9
                break
        model, kept = best
        card = {"recipe": {k: v for k, v in vars(recipe).items() if k != "notes"}, "size": self.size,
                "replicate": self.replicate, "version": VERSION, "steps": steps, "train_seconds": round(time.perf_counter() - start, 1),
                "final_loss": kept["final_loss"], "weights": state_fingerprint(model)}
        if validation:
            card["restarts"], card["kept_seed"] = tried, kept["seed"]
            card["parent_validation_exact"] = parent_exact
        with atomic_dir(model_dir(recipe.name, self.size, self.replicate)) as scratch:
            save_model(model, tok, scratch)
            (scratch / "glue_bench_recipe.json").write_text(json.dumps(card, indent=2))


# The settings under which training's floats are the same on any x86-64 CPU (measured: with them a
# build is bit-identical whatever ATen's or MKL's instruction set or the thread count; without
# them, ATen's AVX2 and AVX-512 kernels and MKL's code paths train other weights). Read by torch
# and MKL when a process starts: models are built in a child process started with them.
REPRODUCIBLE = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1"}


def reproducible_here() -> bool:
    """Whether this process trains under `REPRODUCIBLE` (started with it)."""
    import torch

    return (all(os.environ.get(k) == v for k, v in REPRODUCIBLE.items())
            and torch.backends.cpu.get_cpu_capability() == "DEFAULT" and torch.get_num_threads() == 1)


def ensure_models(names: list[str], size: str = "mini", progress: bool = True, replicate: int = 0,
                  workers: int | None = None) -> dict[str, Path]:
    """Build whatever of `names` (and their parents) is missing, in `workers` processes (default:
    one per core); return their directories."""
    needed = list(dict.fromkeys(n for name in names for n in lineage(name)))
    missing = [n for n in needed if not model_dir(n, size, replicate).exists()]
    if missing and not reproducible_here():
        if progress:
            print(f"[glue_bench] building {len(missing)} mini-zoo model(s) ({size}) into "
                  f"{size_dir(size, replicate)}: {', '.join(missing)}", file=sys.stderr)
        _build_in_children(missing, size, replicate, progress, workers or usable_cores())
    elif missing:
        ensure_data(size, replicate)
        builder = _Builder(size, replicate)
        for name in missing:  # parents first: `lineage` lists them so
            target = model_dir(name, size, replicate)
            with _build_lock(target.parent.parent, target.name):  # another worker may be building it
                for leftover in target.parent.glob(f".{target.name}.partial-*"):
                    shutil.rmtree(leftover, ignore_errors=True)  # of a build killed mid-write: we hold its lock
                if not target.exists():
                    builder.build(recipe(name, replicate))
    return {n: model_dir(n, size, replicate) for n in names}


def build_shares(names: list[str], size: str, replicate: int, workers: int) -> list[list[str]]:
    """`names` (parents first) dealt to `workers` build processes, each share in build order
    (`schedule` on the steps each recipe trains once: a retry, when a run learnt nothing, is not foreseen)."""
    return schedule(names, size, replicate, workers, lambda name: RECIPES[name].steps)[0]


def schedule(names: list[str], size: str, replicate: int, workers: int, cost) -> tuple[list[list[str]], float]:
    """List scheduling of `names` (parents first) on `workers` processes: the longest chain of
    `cost(name)` first, each model to the worker that can start it soonest (once its parent is
    built, by whichever worker). Returns each worker's share in build order, and when the last ends."""
    chain: dict[str, float] = {}  # a model's cost plus its longest line of descendants among `names`
    for name in reversed(names):
        chain[name] = cost(name) + max((chain[c] for c in names if RECIPES[c].parent == name and c in chain), default=0)
    built_at = {n: 0.0 for n in RECIPES if n not in names and model_dir(n, size, replicate).exists()}
    free_at, shares = [0.0] * workers, [[] for _ in range(workers)]
    todo = sorted(names, key=lambda n: -chain[n])  # a parent's chain is longer than its child's
    while todo:
        worker = min(range(workers), key=free_at.__getitem__)
        startable = [n for n in todo if RECIPES[n].parent is None or RECIPES[n].parent in built_at]
        ready = [n for n in startable if built_at.get(RECIPES[n].parent, 0.0) <= free_at[worker]]
        name = ready[0] if ready else min(startable, key=lambda n: built_at[RECIPES[n].parent])
        start = max(free_at[worker], built_at.get(RECIPES[name].parent, 0.0))
        built_at[name] = free_at[worker] = start + cost(name)
        shares[worker].append(name)
        todo.remove(name)
    return [share for share in shares if share], max(free_at)


def _build_in_children(names: list[str], size: str, replicate: int, progress: bool, workers: int) -> None:
    """`ensure_models` in `workers` fresh processes started with `REPRODUCIBLE` (each trains on one
    thread), each building its share (`build_shares`); the first error as a ZooError. A worker
    that needs a parent another one is building waits for it on the parent's lock."""
    import subprocess
    import tempfile

    shares = build_shares(names, size, replicate, workers)
    children = []
    for share in shares:
        said = tempfile.TemporaryFile("w+")  # not a pipe: a child that says much never blocks on it
        command = [sys.executable, "-m", "glue_bench.zoo.mini.build", "--size", size, "--replicate", str(replicate),
                   "--models", *share, *([] if progress else ["--quiet"])]
        children.append((share, said, subprocess.Popen(command, env={**os.environ, **REPRODUCIBLE}, stdout=subprocess.DEVNULL,
                                                        stderr=None if progress else said, text=True)))
    failures = []
    for share, said, child in children:
        if child.wait():
            said.seek(0)
            lines = [line for line in said.read().splitlines() if line.strip()]
            failures.append(f"building {', '.join(share)} ({size}, replicate {replicate}) failed"
                            + (f": {lines[-1].removeprefix('glue_bench: error: ')}" if lines else f" (exit {child.returncode})"))
        said.close()
    if failures:
        raise ZooError(failures[0])


def main(argv: list[str] | None = None) -> None:
    from glue_bench.zoo.configs import zoo_members

    parser = argparse.ArgumentParser(description="Build mini-zoo models ahead of time.")
    parser.add_argument("zoos", nargs="*", default=["mini16"], help="zoo config names (default mini16)")
    parser.add_argument("--size", default="mini", choices=sorted(SIZES))
    parser.add_argument("--replicate", default=0, type=int, help="which independent build (default 0)")
    parser.add_argument("--models", nargs="+", metavar="NAME", help="these models (and their parents), not zoos")
    parser.add_argument("--quiet", action="store_true", help="no progress")
    parser.add_argument("--fingerprints", type=Path, metavar="CSV",
                        help="compare each model's weights with those recorded in CSV (results/zoo_weights.csv), "
                             "recording the ones it lacks; exit 1 if any differs")
    args = parser.parse_args(argv)
    names = args.models or ["base"] + [m for z in args.zoos for m in zoo_members(z)]
    start = time.perf_counter()
    try:
        dirs = ensure_models(list(dict.fromkeys(names)), args.size, progress=not args.quiet, replicate=args.replicate)
    except ZooError as err:
        parser.exit(2, f"glue_bench: error: {err}\n")
    print(f"{len(dirs)} models ready under {size_dir(args.size, args.replicate)} "
          f"({time.perf_counter() - start:.1f} s)")
    if args.fingerprints and compare_fingerprints(args.fingerprints, list(dirs), args.size, args.replicate):
        sys.exit(1)


def compare_fingerprints(path: Path, names: list[str], size: str, replicate: int) -> list[str]:
    """Each built model's weights fingerprint (its card's) against the row of `path` (CSV: version,
    size, replicate, model, weights) for the same zoo version, size, replicate and model; rows it
    lacks are appended. Prints one line a model; returns the models whose weights differ."""
    import csv

    columns = ["version", "size", "replicate", "model", "weights"]
    rows = list(csv.DictReader(path.open())) if path.exists() else []
    recorded = {(r["version"], r["size"], int(r["replicate"]), r["model"]): r["weights"] for r in rows}
    differ, new = [], []
    for name in sorted({n for name in names for n in lineage(name)}):
        card = json.loads((model_dir(name, size, replicate) / "glue_bench_recipe.json").read_text())
        key = (VERSION, size, replicate, name)
        if key not in recorded:
            new.append(dict(zip(columns, [*key[:3], name, card["weights"]])))
            print(f"{name}: {card['weights']} recorded")
        elif recorded[key] == card["weights"]:
            print(f"{name}: {card['weights']} same")
        else:
            differ.append(name)
            print(f"{name}: {card['weights']} DIFFERS from {recorded[key]} recorded")
    if new:
        with path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, columns, lineterminator="\n")
            if not rows:
                writer.writeheader()
            writer.writerows(new)
    print(f"{len(differ)} of the zoo's models differ from {path}" if differ else f"every model as in {path}")
    return differ


if __name__ == "__main__":
    from glue_bench.errors import entry_point

    entry_point(main)()


@functools.lru_cache(maxsize=2)
def _corpora(replicate: int = 0) -> dict[str, list[str]]:
    check_replicate(replicate, "mini-zoo replicate")
    return _corpora_of(replicate)


def build_seconds(names: list[str], size: str, replicate: int) -> float | None:
    """Wall seconds to build the models (and their parents) not built at this replicate here, one
    build process per core (`build_shares`): per model the median of its training seconds in the
    builds here of this zoo version and size (any replicate); None when one was never built here."""
    import statistics

    missing = list(dict.fromkeys(m for name in names for m in lineage(name) if not model_dir(m, size, replicate).exists()))
    timed: dict[str, list[float]] = {}
    versioned = cache_root() / f"mini-{VERSION}"
    for card in [*versioned.glob(f"{size}/models/*/glue_bench_recipe.json"), *versioned.glob(f"{size}-r*/models/*/glue_bench_recipe.json")]:
        try:
            timed.setdefault(card.parent.name.rsplit("-", 1)[0], []).append(float(json.loads(card.read_text())["train_seconds"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if any(m not in timed for m in missing):
        return None
    median = {m: statistics.median(timed[m]) for m in missing}
    return schedule(missing, size, replicate, usable_cores(), median.__getitem__)[1]


def domain_texts(domain: str, replicate: int = 0) -> list[str]:
    """The mini zoo's training documents of one domain (reason, knowledge, math, code, chat), in
    replicate `replicate`'s data."""
    corpora = _corpora(replicate)
    if domain not in corpora:
        raise ZooError(f"unknown mini-zoo domain {domain!r}; known: {', '.join(corpora)}")
    return corpora[domain]


def expert_prompts(name: str, n: int = 16, seed: int = 0, replicate: int = 0) -> list[str]:
    """Prompts typical of a mini-zoo model, for prompt-initialised routers: `n` training documents
    (of replicate `replicate`'s data) of the domains it was fine-tuned on, in proportion to its
    fine-tuning weights (for a model pretrained from scratch, to its pretraining mixture); a domain
    with fewer documents than its share gives them all."""
    shares = {d: n * w for d, w in finetune_shares(name).items()}  # an unknown name fails there, naming it
    counts = {d: int(s) for d, s in shares.items()}
    for d in sorted(shares, key=lambda d: counts[d] - shares[d])[:n - sum(counts.values())]:
        counts[d] += 1  # largest remainders
    rng = random.Random(f"{seed}:{name}")
    corpora = _corpora(replicate)
    return [doc for d, k in counts.items() if k for doc in rng.sample(corpora[d], min(k, len(corpora[d])))]
