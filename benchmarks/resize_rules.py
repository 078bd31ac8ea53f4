"""How often the nearest-neighbour rules of common.py disagree (the figures in docs/metrics.md).

For every size pair (n → N) with 1 ≤ n, N ≤ MAX (default 512) it compares the source indices the
rules pick and counts the pairs on which two rules pick a different input pixel for at least one
output pixel, and the share of output pixels that differ over all pairs. Pure index arithmetic,
about 30 s on one core at --max 512.

    python benchmarks/resize_rules.py [--max 512]
"""

from __future__ import annotations

import argparse
import itertools

from resail.benchmarks._common import emit
from resail.common import source_indices

RULES = ("torch_legacy", "floor", "floor_f64", "pil", "cv2")


def disagreements(max_side: int) -> dict:
    indices = source_indices.__wrapped__  # uncached: each of the n·N pairs is seen once
    combos = list(itertools.combinations(RULES, 2))
    n_pairs, n_samples, total, count = dict.fromkeys(combos, 0), dict.fromkeys(combos, 0), 0, 0
    for n in range(1, max_side + 1):
        for m in range(1, max_side + 1):
            idx = {rule: indices(rule, n, m) for rule in RULES}
            for a, b in combos:
                differ = int((idx[a] != idx[b]).sum())
                n_pairs[a, b] += differ > 0
                n_samples[a, b] += differ
            total += m
            count += 1
    return {f"{a} vs {b}": {"pairs": n_pairs[a, b], "of_pairs": count,
                            "output_samples_pct": round(100 * n_samples[a, b] / total, 3)} for a, b in combos}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max", type=int, default=512, help="largest side n and N")
    args = ap.parse_args()
    emit(disagreements(args.max))


if __name__ == "__main__":
    main()
