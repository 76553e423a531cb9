"""Mixing several datasets so that every shard holds the same share of each (paper section 4.1).

Each source's examples are shuffled, given evenly spaced positions in [0, 1), and merged by
position. Any contiguous slice, and so every shard that `shard` makes, then holds each source in
proportion to its weight (within one example for two sources, a little more with three or more).
A strided split `items[i::n]` does not: with equal weights the list runs a, b, a, b, ... so
`items[0::2]` is all `a`. Shard with `shard`, not by striding.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

from pseudocot.errors import DataError

T = TypeVar("T")


def allocate(available: dict[str, int], weights: dict[str, float], total: int | None) -> dict[str, int]:
    """How many to take from each source: shares proportional to weights (largest remainder).

    With `total=None` the total is the largest one every source can fill at its share.
    """
    wsum = sum(weights[name] for name in available)
    if wsum <= 0 or any(weights[n] < 0 for n in available):
        raise DataError("mixing weights must be non-negative with a positive sum.")
    shares = {n: weights[n] / wsum for n in available}
    if total is None:
        total = int(min(available[n] / s for n, s in shares.items() if s > 0))
    raw = {n: total * s for n, s in shares.items()}
    counts = {n: int(v) for n, v in raw.items()}
    for n in sorted(raw, key=lambda n: raw[n] - counts[n], reverse=True)[: total - sum(counts.values())]:
        counts[n] += 1
    short = [n for n in counts if counts[n] > available[n]]
    if short:
        n = short[0]
        raise DataError(f"source '{n}' has {available[n]} examples but its weight asks for {counts[n]} of {total}; "
                        "lower its weight, cap the total (data.max_train) or add data.")
    return counts


def mix(sources: dict[str, Sequence[T]], weights: dict[str, float] | None = None, total: int | None = None,
        seed: int = 0) -> list[T]:
    """Merge sources with the given weights (default: their sizes) into one evenly interleaved list."""
    if not sources:
        return []
    if weights is None:
        weights = {n: float(len(items)) for n, items in sources.items()}
        total = sum(len(items) for items in sources.values()) if total is None else total
    counts = allocate({n: len(items) for n, items in sources.items()}, weights, total)
    rng = random.Random(seed)
    keyed: list[tuple[float, int, T]] = []
    for order, (name, items) in enumerate(sources.items()):
        picked = list(items)
        rng.shuffle(picked)
        c = counts[name]
        keyed += [((j + 0.5) / c, order, item) for j, item in enumerate(picked[:c])]
    keyed.sort(key=lambda t: (t[0], t[1]))
    return [item for _, _, item in keyed]


def shard(items: Sequence[T], index: int, count: int) -> list[T]:
    """Shard `index` of `count`: a contiguous block (sizes differ by at most one), so a mixed list
    keeps its shares in every shard. (A strided shard `items[index::count]` would not.)"""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index}/{count} is not valid; use i/n with 0 <= i < n.")
    n = len(items)
    return list(items[index * n // count:(index + 1) * n // count])
