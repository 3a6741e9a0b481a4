"""features.quantiles, the exact two-pass quantile over partitions, equals pandas'
Series.quantile on the whole column to the last bit: long tails, heavy ties, missing values,
partitions of any size (empty ones too), and a band far smaller than the data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features import quantiles as qt


def distributed_quantile(parts: list[np.ndarray], qs: list[float], grid: int) -> list[float]:
    summaries = [qt.summarize(p, grid) for p in parts]
    rows = sum(s.rows for s in summaries)
    out = []
    for lo_rank, hi_rank, weight in qt.order_statistics(rows, qs):
        picked = []
        for rank in (lo_rank, hi_rank):
            low, high = qt.band(summaries, rank)
            found = [qt.in_band(p, low, high) for p in parts]
            below = sum(b for b, _, _ in found)
            distinct, inverse = np.unique(
                np.concatenate([d for _, d, _ in found]), return_inverse=True
            )
            counts = np.bincount(inverse, weights=np.concatenate([c for _, _, c in found])).astype(
                int
            )
            assert (
                counts.sum() <= max(64, 8 * rows / grid * 2) or len(distinct) < 50
            )  # a band, not the data
            picked.append(qt.select(below, distinct, counts, rank))
        out.append(qt.interpolate(*picked, weight))
    return out


def columns() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    n = 60_000
    tail = rng.lognormal(0, 2.5, n)
    ties = np.where(rng.random(n) < 0.4, 0.0, rng.normal(size=n).round(2))
    gaps = np.where(rng.random(n) < 0.1, np.nan, rng.standard_t(2, n))
    return {"tail": tail, "ties": ties, "gaps": gaps, "constant": np.full(n, 3.5)}


@pytest.mark.parametrize("name", ["tail", "ties", "gaps", "constant"])
@pytest.mark.parametrize("sizes", [[60_000], [7, 0, 29_993, 30_000], [1000] * 60])
def test_equals_pandas_to_the_last_bit(name, sizes):
    values = columns()[name]
    parts = np.split(values, np.cumsum(sizes)[:-1])
    qs = [0.0, 0.001, 0.01, 0.25, 0.5, 0.99, 0.999, 1.0]
    want = [float(pd.Series(values).quantile(q)) for q in qs]
    got = distributed_quantile(parts, qs, grid=256)
    assert got == want


def test_few_rows_in_many_partitions():
    values = np.array([5.0, np.nan, 1.0, 1.0, 9.0, 2.5])
    parts = [values[:1], values[1:2], values[2:5], values[5:]]
    for q in (0.0, 0.1, 0.5, 0.9, 1.0):
        assert distributed_quantile(parts, [q], grid=2) == [float(pd.Series(values).quantile(q))]
