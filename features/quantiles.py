"""Exact quantiles of a column spread over partitions, in two passes over the data and never
more than a narrow band of values in one place: what pandas' `Series.quantile` (numpy's
linear interpolation, NaN skipped) gives on the whole column, for data no process holds.

Pass 1 (`summarize`, per partition): the partition's sorted values sampled at GRID ranks.
From all samples the driver bounds each wanted order statistic: `band` picks [low, high)
holding it. Pass 2 (`in_band`, per partition): how many values lie below `low`, and the
distinct values inside the band with their counts. `pick` then reads the order statistics
off the merged counts. The band holds about 2·rows/GRID values (fewer distinct ones).

Dask's own `Series.quantile` is approximate; this is exact, and a test holds it equal to
pandas (tests/features/test_quantiles.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

GRID = 1024


@dataclass(frozen=True)
class Summary:
    """One partition's column: non-missing count and its sorted values at `ranks`."""

    rows: int
    ranks: np.ndarray
    values: np.ndarray


def summarize(values: np.ndarray, grid: int = GRID) -> Summary:
    x = np.sort(values[~np.isnan(values)])
    if not len(x):
        return Summary(0, np.empty(0, dtype=int), np.empty(0))
    ranks = np.unique(np.linspace(0, len(x) - 1, min(grid, len(x))).round().astype(int))
    return Summary(len(x), ranks, x[ranks])


def order_statistics(rows: int, qs: Sequence[float]) -> list[tuple[int, int, float]]:
    """For each q: the two order statistics (0-based) numpy's linear method interpolates and
    the weight of the upper one, computed as numpy.quantile computes them."""
    out = []
    for q in qs:
        virtual = (rows - 1) * q  # numpy's linear virtual index
        lo = min(max(math.floor(virtual), 0), rows - 1)
        out.append((lo, min(lo + 1, rows - 1), virtual - math.floor(virtual)))
    return out


def band(parts: Sequence[Summary], rank: int) -> tuple[float, float]:
    """[low, high) sure to hold the `rank`-th smallest value (0-based) of all partitions."""
    candidates = np.unique(np.concatenate([p.values for p in parts if p.rows]))
    below_max = np.zeros(len(candidates))  # most values any candidate t can have below it
    below_min = np.zeros(len(candidates))  # fewest
    for p in parts:
        if not p.rows:
            continue
        j = np.searchsorted(p.values, candidates, side="left")  # first sample >= t
        below_max += np.where(j < len(p.ranks), p.ranks[np.minimum(j, len(p.ranks) - 1)], p.rows)
        below_min += np.where(j > 0, p.ranks[np.maximum(j - 1, 0)] + 1, 0)
    # the value is >= t when at most `rank` values can lie below t, and < t when at least
    # rank + 1 surely do
    low_ok = candidates[below_max <= rank]
    high_ok = candidates[below_min >= rank + 1]
    return (float(low_ok.max()) if len(low_ok) else -math.inf,
            float(high_ok.min()) if len(high_ok) else math.inf)  # fmt: skip


def in_band(values: np.ndarray, low: float, high: float) -> tuple[int, np.ndarray, np.ndarray]:
    """Pass 2 on one partition: values below `low`, and the distinct values in [low, high)
    with their counts."""
    x = values[~np.isnan(values)]
    inside = x[(x >= low) & (x < high)]
    distinct, counts = np.unique(inside, return_counts=True)
    return int((x < low).sum()), distinct, counts


def select(below: int, distinct: np.ndarray, counts: np.ndarray, rank: int) -> float:
    """The `rank`-th smallest value, given the values below the band and the band's counts."""
    position = np.searchsorted(np.cumsum(counts), rank - below, side="right")
    return float(distinct[position])


def interpolate(lower: float, upper: float, weight: float) -> float:
    """numpy's linear interpolation between two neighbouring order statistics (its _lerp,
    operation for operation, so the result is pandas' to the last bit)."""
    diff = upper - lower
    return upper - diff * (1 - weight) if weight >= 0.5 else lower + diff * weight
