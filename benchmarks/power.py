"""How many test items the whole-split tables need: the paired minimum detectable effect (MDE) of
the 6-task average, measured on the store's own pairs of candidates, and the item counts that
would bring it to a target.

    python benchmarks/power.py --results results/store/results.sqlite [--target 0.03]

For every zoo (and replicate), every pair of whole-split jobs of that zoo (singles and candidates)
with per-item outcomes is a pair the tables could compare. For each, per task t: v_t, the variance of the
per-item differences, and n_t, the items. The paired SE of the mean of T task means is
sqrt(sum_t v_t / n_t) / T, the MDE 2.8 x that (80 % power, alpha 0.05; glue_bench.stats). Printed:
the median and 90th percentile of the MDE over pairs, on the first release's items (each task's
first documents, the same pairs) and on today's splits, and the items per task that bring the
median pair to the target, (a) scaling every task by one factor, (b) allocating items where
their variance is (n_t proportional to sqrt(v_t), the fewest items in all for the same SE).
"""

from __future__ import annotations

import argparse
import itertools
import math

import numpy as np

from glue_bench.evidence import Evidence
from glue_bench.results import read_results
from glue_bench.stats import min_detectable_effect
from glue_bench.zoo.mini.data import FIRST_TEST_ITEMS


def pair_variances(results: str, first_items: dict[str, int] | None = None) -> tuple[list[dict[str, float]], dict[str, int]]:
    """Per pair of whole-split jobs of one zoo: task -> variance of the per-item differences; and
    the items per task. `first_items`: only each task's first n documents (the first release's)."""
    df = read_results(results)
    ev = Evidence.of(results)
    whole = df[df["items"].isna()]
    pairs, sizes = [], {}
    # pairs within one replicate zoo: another replicate's documents are other items under the same ids
    for _, rows in whole.groupby(["zoo", whole["replicate"].fillna(0)]):
        keys = [k for k in rows["job_key"].unique() if ev.outcomes(k)]
        for a, b in itertools.combinations(keys, 2):
            oa, ob = ev.outcomes(a), ev.outcomes(b)
            if set(oa) != set(ob) or any(not np.array_equal(oa[t][0], ob[t][0]) for t in oa):
                continue
            kept = {t: oa[t][0] < (first_items or {}).get(t, np.inf) for t in oa}
            pairs.append({t: float(np.var((oa[t][1] - ob[t][1])[kept[t]], ddof=1)) for t in oa})
            sizes.update({t: int(kept[t].sum()) for t in oa})
    return pairs, sizes


def mde(variances: dict[str, float], sizes: dict[str, float]) -> float:
    se = math.sqrt(sum(v / sizes[t] for t, v in variances.items())) / len(variances)
    return min_detectable_effect(se)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="results/store/results.sqlite")
    parser.add_argument("--target", type=float, default=0.03, help="the MDE wanted (default: %(default)s)")
    args = parser.parse_args(argv)
    pairs, sizes = pair_variances(args.results)
    if not pairs:
        raise SystemExit(f"{args.results}: no two whole-split jobs of one zoo with per-item outcomes")
    first_pairs, first_sizes = pair_variances(args.results, FIRST_TEST_ITEMS)
    first = np.array([mde(p, first_sizes) for p in first_pairs])
    print(f"on the first release's items ({first_sizes}): paired MDE median {np.median(first):.3f}, "
          f"90th percentile {np.percentile(first, 90):.3f}")
    mdes = np.array([mde(p, sizes) for p in pairs])
    median_pair = pairs[int(np.argsort(mdes)[len(mdes) // 2])]
    print(f"{len(pairs)} pairs of whole-split jobs; items per task: {sizes}")
    print(f"paired MDE of the {len(sizes)}-task average: median {np.median(mdes):.3f}, "
          f"90th percentile {np.percentile(mdes, 90):.3f}, range {mdes.min():.3f}-{mdes.max():.3f}")
    print("median pair, variance of the per-item differences per task: "
          + ", ".join(f"{t} {v:.3f}" for t, v in sorted(median_pair.items())))
    factor = (mde(median_pair, sizes) / args.target) ** 2
    print(f"(a) one factor for every task: x{factor:.2f} -> "
          + ", ".join(f"{t} {math.ceil(n * factor)}" for t, n in sorted(sizes.items())))
    # n_t = sqrt(v_t) * sum_s sqrt(v_s) / (T^2 * (target / 2.8...)^2): the Lagrange optimum of sum n_t
    se_target = args.target / min_detectable_effect(1.0)
    total = sum(math.sqrt(v) for v in median_pair.values())
    allocation = {t: math.ceil(math.sqrt(v) * total / (len(median_pair) ** 2 * se_target ** 2))
                  for t, v in median_pair.items()}
    print(f"(b) items where the variance is: {sum(allocation.values())} in all -> "
          + ", ".join(f"{t} {n}" for t, n in sorted(allocation.items()))
          + f" (MDE {mde(median_pair, allocation):.3f})")


if __name__ == "__main__":
    main()
