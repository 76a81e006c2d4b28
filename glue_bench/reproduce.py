"""Reproduce the study: every table's preset sweep, then the tables and the figures, in one command.

    python -m glue_bench.reproduce                     # the mini zoo: hours on 2 CPU cores
    GLUE_BENCH_MINI_SIZE=micro python -m glue_bench.reproduce --quick   # CI: minutes
    python -m glue_bench.reproduce --replicates 3      # every sweep on replicate zoos 0, 1, 2
    python -m glue_bench.reproduce --plan --replicates 5   # what that would cost here; runs nothing
    python -m glue_bench.reproduce --replicates 1 --first-replicate 5   # one more replicate zoo, built here
    python -m glue_bench.reproduce --lanes 1           # one sweep at a time (default: two where there are two cores)

Each preset runs as its own `python -m glue_bench experiment=<preset>` sweep into one results store
(jobs already in it are skipped, so an interrupted run resumes), each sweep a process forked from
one that has imported torch, transformers and lm-eval already (`glue_bench.preloaded`). Then
`glue_bench.tables` writes the study tables to <out>/tables while notebooks/study_figures.ipynb
draws the figures into <out>/figures. --quick trades the study's settings for speed (smaller zoos, 4 CMA-ES trials, short
router training): it checks that everything builds, not what the study found. --replicates N
sweeps every preset over the mini zoo's replicates 0..N-1, or K..K+N-1 with --first-replicate K
(independent builds: the findings are then pooled over them and say on how many they hold). Every run first prints its plan (the
jobs, evaluations and items of each preset and the minutes they take here, from the per-item costs
this machine measured: glue_bench.plan), shows one progress bar over every job of every sweep (its
ETA from the jobs' pace so far), and keeps each preset's measured time beside those costs.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from glue_bench.cores import usable_cores
from glue_bench.costs import record_preset
from glue_bench.preloaded import Sweeper

REPO = Path(__file__).resolve().parents[1]
PRESETS = ("merge_methods", "failure_case", "strategies", "method_evolution", "heuristic_evolution",
           "mixture_levels", "mixture_routers", "mixture_routing", "mixture_hybrid", "merge_vs_mixture", "recipe")
# --quick: per preset, the sweeps to run instead (each a list of overrides of the preset's own), all
# with QUICK_EVAL; a selective job's final items are the first eval.limit items outside its proxy set
QUICK_EVAL = ["eval.limit=20"]
_FEW_TRIALS = "++strategy.search.n_trials=4"  # ++: the key exists only once the swept strategy is chosen
_SMALL_PROXY = "++strategy.proxy.size=5"
_SHORT_GRID = "++strategy.search.grid=[0.3,0.7]"  # the heuristics' shares tried: 2, not 9
# Every sweep on the zoos of failure_case and the mixtures (mini3_far, mini2), which share all but
# code_far: mini4's and mini8's other models were 67 of the 105 s the micro zoo's training took here,
# and scoring them most of the searches' time (docs/results.md, "--quick").
_QUICK_ZOO = "zoo=mini3_far"
QUICK = {
    # the study's six methods (the paper's table): the newer ones are each tested on their own
    "merge_methods": [["method=linear,slerp,model_stock,task_arithmetic,ties,dare_ties"]],
    "strategies": [[_QUICK_ZOO, "strategy=heuristic_average,heuristic_coefficient,heuristic_similarity", _SMALL_PROXY,
                    _SHORT_GRID],
                   [_QUICK_ZOO, "strategy=evolutionary", _FEW_TRIALS, _SMALL_PROXY]],
    "method_evolution": [[_QUICK_ZOO, "method=linear,ties", _FEW_TRIALS, _SMALL_PROXY]],
    # CMA-ES alone as strategies runs it (the same job: found stored, and linked to this preset too), for
    # the heuristic-then-CMA-ES finding to compare with
    "heuristic_evolution": [[_QUICK_ZOO, "strategy=heuristic_evolutionary", "++strategy.search.evolutionary.n_trials=3",
                             _SMALL_PROXY], [_QUICK_ZOO, "strategy=evolutionary", _FEW_TRIALS, _SMALL_PROXY]],
    "failure_case": [["zoo=mini3_far"]],
    "mixture_levels": [["zoo=mini2"]],
    "mixture_routers": [["zoo=mini2", "router=mlp", "router.steps=10", "router.documents=32"]],
    "mixture_routing": [["zoo=mini2"]],
    "mixture_hybrid": [["zoo=mini2", "mixture.dense_layers=0,1"]],   # the micro models have 2 layers
    "merge_vs_mixture": [["zoo=mini2"]],
    # its families: code_far, far from the chat models, is one apart
    "recipe": [[_QUICK_ZOO, "++strategy.search.kind=average", _SMALL_PROXY]],
}


# A preset's sweep as the mini zoo's size allows: the micro and micro_full models have two layers,
# so mixture_hybrid's third setting (two dense layers) would leave none mixed and is refused.
_TWO_LAYERS = {"mixture_hybrid": ["mixture.dense_layers=0,1"]}
SIZE_OVERRIDES = {"micro": _TWO_LAYERS, "micro_full": _TWO_LAYERS}

# The presets whose work overlaps: CMA-ES on mini8 with linear is in three, and the four share a
# zoo's final-item singles and merge of all. With two lanes, each lane takes the next sweep when its
# last ends (`queue_of`): the first search preset first (the longest), the presets that share no work
# next, the other search presets last, so that by the time a lane reaches them the first has done
# most of what they share. A job two lanes reach at once is computed by both and stored once (the
# first to end; a job's scores do not depend on its lane). Lanes also share the zoo's build (under a
# lock) and the whole-split singles (a job that finds one stored skips it).
SEARCH_PRESETS = ("strategies", "method_evolution", "heuristic_evolution", "recipe")


def queue_of(sweeps: list[tuple[str, list[str]]], lanes: int) -> list[tuple[str, list[str]]]:
    """The order the lanes take the sweeps in: the presets' order for one lane; for two, the first
    search preset's sweeps, then the other presets', then the other search presets'."""
    searches = [s for s in sweeps if s[0] in SEARCH_PRESETS]
    if lanes == 1 or not searches:
        return sweeps
    first = [s for s in searches if s[0] == searches[0][0]]
    return first + [s for s in sweeps if s[0] not in SEARCH_PRESETS] + [s for s in searches if s[0] != searches[0][0]]


def lane_threads(lanes: int) -> int:
    """Torch threads for a job when `lanes` jobs run at once: each lane's share of the cores, less one
    for its generated programs' sandbox (at least 1), as `evaluate.eval_threads` does for one."""
    return max(1, usable_cores() // lanes - 1)


_LAUNCHED = re.compile(r"\[HYDRA\]\s+#(\d+) : ")  # Hydra's basic launcher, as it starts each job of a sweep


def run_preset(preset: str, overrides: list[str], results: Path, sweeper: Sweeper, hydra_dir: Path | None = None,
               bar: tqdm | None = None) -> None:
    """One preset's sweep in a process of its own, forked by `sweeper`; `bar` advances as each of its
    jobs ends (the next one starting, or the sweep ending)."""
    # --multirun: a preset's hydra.mode alone is not enough once an override reaches into a swept group
    args = ["--multirun", f"experiment={preset}", *overrides, f"results_path={results}", "print_table=false"]
    if hydra_dir is not None:  # else Hydra's own outputs/ and multirun/ folders
        args += [f"hydra.sweep.dir={hydra_dir}/{preset}/${{now:%H%M%S}}",
                 f"hydra.run.dir={hydra_dir}/{preset}/${{now:%H%M%S}}"]
    say = bar.write if bar is not None else print
    say(f"[reproduce] glue_bench {' '.join(args)}")
    start = time.perf_counter()
    launched = 0
    for line in sweeper.sweep(args):
        say(line)
        if _LAUNCHED.search(line):
            if launched and bar is not None:
                bar.update(1)  # the job before this one has ended
            launched += 1
    if launched and bar is not None:
        bar.update(1)  # and the last one, with the sweep
    if sweeper.returncode != 0:
        raise SystemExit(f"reproduce: preset {preset} failed (exit {sweeper.returncode}); its finished jobs are kept "
                         "in the store, rerun to resume")
    elapsed = time.perf_counter() - start
    say(f"[reproduce] {preset}: {elapsed:.0f} s")
    record_preset(preset, overrides, elapsed)


def _run_lanes(queue: list[tuple[str, list[str]]], sweepers: list, results: Path, hydra_dir: Path | None,
               bar: tqdm) -> None:
    """A lane per sweeper, each taking the queue's next sweep when its last one ends; after a failure
    no lane starts another, and the failure is raised once the running ones end."""
    waiting, lock, failed = collections.deque(queue), threading.Lock(), threading.Event()

    def lane(sweeper) -> None:
        while not failed.is_set():
            with lock:
                if not waiting:
                    return
                preset, overrides = waiting.popleft()
            try:
                run_preset(preset, overrides, results, sweeper, hydra_dir, bar)
            except BaseException:
                failed.set()
                raise

    with ThreadPoolExecutor(len(sweepers)) as pool:
        for done in [pool.submit(lane, sweeper) for sweeper in sweepers]:
            done.result()


QUICK_HEATMAP_ZOO = "mini3_far"  # the figures' similarity heatmap: a zoo --quick has built (the study's: mini16)


def run_notebook(results: Path, figures: Path, heatmap_zoo: str | None = None) -> None:
    try:
        import nbformat
        from nbclient import NotebookClient
    except ImportError:
        raise SystemExit("reproduce: the figures need the notebook extra: pip install -e '.[notebooks]'") from None
    path = REPO / "notebooks" / "study_figures.ipynb"
    # the kernel inherits this process's environment
    os.environ.update({"GLUE_BENCH_RESULTS": str(results), "GLUE_BENCH_FIGURES": str(figures),
                       **({"GLUE_BENCH_HEATMAP_ZOO": heatmap_zoo} if heatmap_zoo else {})})
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    print(f"[reproduce] figures in {figures}: {', '.join(sorted(p.name for p in figures.glob('*.png')))}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small zoos and searches (CI)")
    parser.add_argument("--presets", nargs="+", choices=PRESETS, default=list(PRESETS))
    parser.add_argument("--results", type=Path,
                        default=Path(os.environ.get("GLUE_BENCH_RESULTS", REPO / "results/store/results.sqlite")))
    parser.add_argument("--out", type=Path, default=REPO / "results", help="tables/ and figures/ go here")
    parser.add_argument("--hydra-dir", type=Path, help="the jobs' output folders (default: Hydra's)")
    parser.add_argument("--no-figures", action="store_true", help="skip the notebook")
    parser.add_argument("--replicates", type=int, default=1, metavar="N",
                        help="sweep N of the mini zoo's replicates (default: %(default)s)")
    parser.add_argument("--first-replicate", type=int, default=0, metavar="K",
                        help="the first of them: replicates K..K+N-1 (default: %(default)s). A replicate is one build "
                             "on one machine: another machine's build of replicate K is another zoo, so add new ones")
    parser.add_argument("--lanes", type=int, choices=(1, 2),
                        help="sweeps run at a time (default: 2 where there are 2 cores or more, else 1); 2: "
                             "each lane takes the next sweep when its last ends, each job on its lane's share of the cores")
    parser.add_argument("--plan", action="store_true",
                        help="print each preset's jobs, evaluations, items and estimated minutes here; run nothing")
    args = parser.parse_args(argv)
    if args.replicates < 1:
        parser.error(f"--replicates must be at least 1, got {args.replicates}")
    if args.first_replicate < 0:
        parser.error(f"--first-replicate must be at least 0, got {args.first_replicate}")
    if args.lanes is None:
        args.lanes = 2 if usable_cores() >= 2 else 1
    results = args.results.resolve()
    chosen = range(args.first_replicate, args.first_replicate + args.replicates)
    replicates = [f"zoo.replicate={','.join(map(str, chosen))}"] if list(chosen) != [0] else []
    threads = [f"eval.threads={lane_threads(args.lanes)}"] if args.lanes > 1 else []
    size = os.environ.get("GLUE_BENCH_MINI_SIZE", "mini")
    sweeps = [(preset, overrides + (QUICK_EVAL if args.quick else []) + replicates + threads) for preset in args.presets
              for overrides in (QUICK.get(preset, [[]]) if args.quick else [SIZE_OVERRIDES.get(size, {}).get(preset, [])])]
    queue = queue_of(sweeps, args.lanes)
    from glue_bench.plan import plan, print_plan

    with contextlib.ExitStack() as stack:
        # started first, so that their imports overlap the plan's composing of every job
        sweepers = [] if args.plan else [stack.enter_context(Sweeper(REPO)) for _ in range(args.lanes)]
        print(f"plan: mini size {size}, replicate(s) {chosen.start}..{chosen.stop - 1}, store {results}")
        seen: set = set()  # a job or evaluation two presets share is run (and counted) once
        plans = [p for preset, overrides in queue for p in plan([preset], overrides, results, seen)]
        planned = print_plan(plans, size, args.lanes)
        if args.plan:
            return
        with tqdm(total=sum(p.swept for p in plans), desc=f"reproduce (planned {planned / 60:.0f} min)",
                  unit="job") as bar:
            _run_lanes(queue, sweepers, results, args.hydra_dir, bar)

    from glue_bench.tables import main as tables

    # the notebook reads the store, not the tables: it runs in its own kernel process meanwhile
    with ThreadPoolExecutor(1) as pool:
        figures = None if args.no_figures else pool.submit(
            run_notebook, results, (args.out / "figures").resolve(), QUICK_HEATMAP_ZOO if args.quick else None)
        tables(["--results", str(results), "--out", str(args.out / "tables")])
        if figures is not None:
            figures.result()


if __name__ == "__main__":
    from glue_bench.errors import entry_point

    entry_point(main)()
