"""How many test items and how many replicate zoos the tables need: the paired minimum detectable
effect (MDE) of the 6-task average, measured on the store's own pairs of candidates, within one zoo
(items) and across replicate zoos, and the item counts and replicates that would bring it to a target.

    python benchmarks/power.py --results results/evidence.parquet [--target 0.03]

Items. For every zoo (and replicate), every pair of whole-split jobs of that zoo (singles and
candidates) with per-item outcomes is a pair the tables could compare. For each, per task t: v_t,
the variance of the per-item differences, and n_t, the items. The paired SE of the mean of T task
means is sqrt(sum_t v_t / n_t) / T, the MDE 2.8 x that (80 % power, alpha 0.05; glue_bench.stats).
Printed: the median and 90th percentile of the MDE over pairs, on the first release's items (each
task's first documents, the same pairs) and on today's splits, and the items per task that bring
the median pair to the target, (a) scaling every task by one factor, (b) allocating items where
their variance is (n_t proportional to sqrt(v_t), the fewest items in all for the same SE), no task
beyond the items its generator can give (MAX_TEST_ITEMS) and none below --min-items.

Replicates. Every pair of candidates held by two or more replicate zoos of one zoo (the same label
on the same items) gives one difference per replicate, pooled by random effects
(glue_bench.stats.random_effects): its between-zoo sd tau. Printed: the median tau and items-only
se over those pairs, the MDE at the replicates held, and the replicates that detect the target at
80 % power (glue_bench.stats.replicate_mde, replicates_needed): what a finding across zoos costs.
"""

from __future__ import annotations

import argparse
import itertools
import math

import numpy as np

from glue_bench.evidence import Evidence
from glue_bench.results import read_results
from glue_bench.stats import min_detectable_effect, paired_se, random_effects, replicate_mde, replicates_needed
from glue_bench.zoo.mini.data import FIRST_TEST_ITEMS, MAX_TEST_ITEMS


def _same_items(oa: dict, ob: dict) -> bool:
    return set(oa) == set(ob) and all(np.array_equal(oa[t][0], ob[t][0]) for t in oa)


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
            if not _same_items(oa, ob):
                continue
            kept = {t: oa[t][0] < (first_items or {}).get(t, np.inf) for t in oa}
            pairs.append({t: float(np.var((oa[t][1] - ob[t][1])[kept[t]], ddof=1)) for t in oa})
            sizes.update({t: int(kept[t].sum()) for t in oa})
    return pairs, sizes


def replicate_pairs(results: str) -> list[tuple[tuple[float, ...], tuple[float, ...]]]:
    """Per pair of candidates held by >= 2 replicate zoos of one zoo: (deltas, ses), one per replicate."""
    df = read_results(results)
    ev = Evidence.of(results)
    whole = df[df["items"].isna()]
    found = []
    for _, rows in whole.groupby("zoo"):
        job = {(c, int(r)): k for c, r, k in rows[["candidate", "replicate", "job_key"]].drop_duplicates().itertuples(index=False)}
        candidates = sorted({c for c, _ in job})
        for a, b in itertools.combinations(candidates, 2):
            deltas, ses = [], []
            for replicate in sorted({r for _, r in job}):
                if (a, replicate) not in job or (b, replicate) not in job:
                    continue
                oa, ob = ev.outcomes(job[a, replicate]), ev.outcomes(job[b, replicate])
                if not oa or not ob or not _same_items(oa, ob):
                    continue
                va, vb = ({t: v for t, (_, v) in o.items()} for o in (oa, ob))
                deltas.append(float(np.mean([np.mean(va[t] - vb[t]) for t in va])))
                ses.append(paired_se(va, vb))
            if len(deltas) >= 2:
                found.append((tuple(deltas), tuple(ses)))
    return found


def mde(variances: dict[str, float], sizes: dict[str, float]) -> float:
    """A task whose differences never vary adds nothing to the SE, whatever its items (even none)."""
    se = math.sqrt(sum(v / sizes[t] for t, v in variances.items() if v > 0)) / len(variances)
    return min_detectable_effect(se)


def allocate(variances: dict[str, float], target: float, most: dict[str, int], least: int) -> dict[str, int] | None:
    """The fewest items in all whose MDE is `target`: n_t = sqrt(v_t) sum_s sqrt(v_s) / B (the
    Lagrange optimum of sum n_t under sum v_t / n_t = B, B = (T se_target)^2), no task above its
    `most` (those capped are fixed there and the others solved again with what they leave of B) nor
    below `least`. None when even every task at its `most` cannot reach the target."""
    budget = (len(variances) * target / min_detectable_effect(1.0)) ** 2
    capped: dict[str, int] = {}
    while True:
        free = {t: v for t, v in variances.items() if t not in capped and v > 0}
        left = budget - sum(variances[t] / n for t, n in capped.items())
        if left <= 0:
            return None
        total = sum(math.sqrt(v) for v in free.values())
        wanted = {t: math.sqrt(v) * total / left for t, v in free.items()}
        over = {t for t, n in wanted.items() if t in most and n > most[t]}
        if not over:
            break
        capped.update({t: most[t] for t in over})
    allocation = {t: max(least, math.ceil(wanted.get(t, 0))) for t in variances if t not in capped}
    return {**allocation, **capped}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="results/evidence.parquet")
    parser.add_argument("--target", type=float, default=0.03, help="the MDE wanted (default: %(default)s)")
    parser.add_argument("--min-items", type=int, default=40, help="no task below this (default: %(default)s)")
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
    median_mde = mde(median_pair, sizes)
    if median_mde <= args.target:
        print(f"the median pair's MDE {median_mde:.3f} is at the target {args.target} already")
    else:
        factor = (median_mde / args.target) ** 2
        print(f"(a) one factor for every task: x{factor:.2f} -> "
              + ", ".join(f"{t} {math.ceil(n * factor)}" + (f" (its generator gives {MAX_TEST_ITEMS[t]})"
                                                            if math.ceil(n * factor) > MAX_TEST_ITEMS.get(t, math.inf) else "")
                          for t, n in sorted(sizes.items())))
    allocation = allocate(median_pair, args.target, MAX_TEST_ITEMS, args.min_items)
    if allocation is None:
        print(f"(b) no allocation reaches {args.target}: the tasks capped at {MAX_TEST_ITEMS} leave nothing to the others")
    else:
        print(f"(b) items where the variance is: {sum(allocation.values())} in all -> "
              + ", ".join(f"{t} {n}" for t, n in sorted(allocation.items()))
              + f" (MDE {mde(median_pair, allocation):.3f})")
    across = replicate_pairs(args.results)
    if not across:
        print("across zoos: no pair of candidates is held by two or more replicate zoos")
        return
    taus = np.array([random_effects(d, s).tau for d, s in across])
    ses = np.array([se for _, s in across for se in s])
    held = int(np.median([len(d) for d, _ in across]))
    tau, se = float(np.median(taus)), float(np.median(ses))
    needed = replicates_needed(args.target, [se], tau)
    print(f"across zoos: {len(across)} pairs held by {held} replicate zoos (median); between-zoo sd tau: median "
          f"{tau:.3f}, 90th percentile {np.percentile(taus, 90):.3f}; items-only se median {se:.3f}")
    print(f"  MDE across {held} zoos {replicate_mde([se], tau, held):.3f}; replicates that find {args.target} at "
          f"80 % power: {needed if needed else '> 1000'}")


if __name__ == "__main__":
    main()
