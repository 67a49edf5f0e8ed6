"""The Duplicates view's threshold figures: the neighbour-score histogram and the suggested threshold."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

#: Bins are a multiple of this wide, and at most MAX_BINS of them cover the scores up to 1.0.
BIN_STEP = 0.005
MAX_BINS = 50


@dataclass(frozen=True)
class NeighbourScores:
    scores: list[float]
    """The best cosine similarity of each scored file to any other indexed file."""
    indexed: int
    """Files with a vector in the index: more than ``len(scores)`` when a sample was scored."""


def histogram(scores: Sequence[float], marks: Sequence[float] = ()) -> list[tuple[float, float, int]]:
    """``(low, high, count)`` bins of ``scores`` from just below the lowest score (or mark, so that
    every mark falls on the chart) up to 1.0; the last bin includes 1.0 (and float rounding above)."""
    if not scores:
        return []
    lowest = max(0.0, min([*scores, *marks]))
    width = BIN_STEP * max(1, math.ceil((1.0 - lowest) / BIN_STEP / MAX_BINS))
    low = math.floor(lowest / width) * width
    count = max(1, math.ceil(round((1.0 - low) / width, 9)))
    bins = [0] * count
    for score in scores:
        bins[min(count - 1, max(0, int((score - low) / width)))] += 1
    return [(round(low + i * width, 6), round(low + (i + 1) * width, 6), n) for i, n in enumerate(bins)]


def separating_threshold(distinct: Sequence[float], duplicates: Sequence[float]) -> float | None:
    """The threshold that best separates pairs judged not duplicates from pairs confirmed as
    duplicates: of the gaps between consecutive labelled scores (and 0 and 1 at the ends), those
    whose threshold misclassifies the fewest pairs (a distinct pair at or above it, a duplicate pair
    below it); of these the widest, and its middle. The widest gap is the largest margin either
    side, so a single new verdict moves the suggestion least. None without any labelled pair."""
    labelled = sorted({min(1.0, max(0.0, s)) for s in [*distinct, *duplicates]})
    if not labelled:
        return None
    edges = [0.0, *labelled, 1.0]
    best: tuple[int, float, float] | None = None  # (errors, -width, threshold)
    for low, high in itertools.pairwise(edges):
        if high <= low:
            continue
        t = (low + high) / 2
        errors = sum(s >= t for s in distinct) + sum(s < t for s in duplicates)
        candidate = (errors, -(high - low), t)
        if best is None or candidate < best:
            best = candidate
    return round(best[2], 6) if best is not None else None
