"""What the grown test splits cost per evaluation: one model on the first release's test items
against the same model on today's whole test splits, alternately, in one run.

    python benchmarks/eval_cost.py [--size mini] [--model base] [--repeats 3]

The first release's items are the first 200 / 200 / 200 / 100 / 40 / 40 documents of today's
splits (glue_bench/zoo/mini/data.py FIRST_TEST_ITEMS), so both runs share the tasks, the model and
the prepared evaluator; only the item counts differ. Generated programs run in the sandbox (code
tasks on). Printed: the median wall time of each, per task-set, and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="mini")
    parser.add_argument("--model", default="base")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from glue_bench.evaluate import EvalConfig, evaluate_model, render_tasks
    from glue_bench.evaluate.tasks import TEST_ITEMS
    from glue_bench.zoo import load_model, load_tokenizer, model_ref
    from glue_bench.zoo.mini import data
    from glue_bench.zoo.mini.build import ensure_data, ensure_models

    ensure_models([args.model], args.size)
    ref = model_ref(args.model, "mini", args.size)
    model, tok = load_model(ref), load_tokenizer(ref)
    tasks_dir = render_tasks(ensure_data(args.size), tempfile.mkdtemp(prefix="eval_cost_tasks"))
    cfg = EvalConfig(allow_code_execution=True)
    first = {task: list(range(n)) for task, n in data.FIRST_TEST_ITEMS.items()}
    runs = {"first release": first, "today": None}
    times: dict[str, list[float]] = {name: [] for name in runs}
    evaluate_model(model, tok, tasks_dir, cfg, samples=first)  # warm-up: tasks prepared, sandbox started
    evaluate_model(model, tok, tasks_dir, cfg)
    for _ in range(args.repeats):
        for name, samples in runs.items():
            start = time.perf_counter()
            evaluate_model(model, tok, tasks_dir, cfg, samples=samples)
            times[name].append(time.perf_counter() - start)
    items = {"first release": sum(data.FIRST_TEST_ITEMS.values()), "today": sum(TEST_ITEMS.values())}
    for name in runs:
        print(f"{name}: {items[name]} items, median {statistics.median(times[name]):.1f} s "
              f"over {args.repeats} ({', '.join(f'{t:.1f}' for t in times[name])})")
    ratio = statistics.median(times["today"]) / statistics.median(times["first release"])
    print(f"{args.size}/{args.model}: today's splits cost x{ratio:.2f} the first release's per evaluation "
          f"(items x{items['today'] / items['first release']:.2f})")


if __name__ == "__main__":
    main()
