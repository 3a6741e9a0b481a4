"""Stage `features` on Dask (compute.engine dask): the feature builder is fitted on the train
split's partitions — its clip caps are exact quantiles computed in two passes over them
(features.quantiles), equal to what the local engine's pandas gives — and every split is
transformed partition by partition by the workers into a Parquet dataset."""

from __future__ import annotations

import logging
from pathlib import Path

import dask
import numpy as np
import pandas as pd

from features import quantiles as qt
from features.transform import FeatureBuilder
from pipelines import paths
from riskloop.compute import dask_client
from riskloop.settings import Params

log = logging.getLogger("features")


def _columns(part: Path, builder: FeatureBuilder, columns: list[str]) -> dict[str, np.ndarray]:
    frame = builder.build(pd.read_parquet(part))
    return {c: frame[c].to_numpy(dtype="float64") for c in columns}


def _summaries(part: Path, builder: FeatureBuilder, columns: list[str]) -> dict[str, qt.Summary]:
    return {c: qt.summarize(v) for c, v in _columns(part, builder, columns).items()}


def _bands(
    part: Path, builder: FeatureBuilder, bands: dict[tuple[str, int], tuple[float, float]]
) -> dict:
    values = _columns(part, builder, sorted({c for c, _ in bands}))
    return {key: qt.in_band(values[key[0]], low, high) for key, (low, high) in bands.items()}


def fit_caps(builder: FeatureBuilder, parts: list[Path]) -> dict[str, tuple[float, float]]:
    """The builder's clip caps over all `parts`, exactly as FeatureBuilder.fit computes them
    on the whole frame, in two passes over the partitions."""
    columns = builder.capped_columns()
    summaries = dask.compute([dask.delayed(_summaries)(p, builder, columns) for p in parts])[0]
    stats: dict[str, list] = {}
    bands: dict[tuple[str, int], tuple[float, float]] = {}
    for col in columns:
        per_part = [s[col] for s in summaries]
        rows = sum(s.rows for s in per_part)
        if not rows:
            continue  # no value anywhere: not capped (as fit leaves it)
        stats[col] = qt.order_statistics(rows, builder.cap_quantiles())
        for lo_rank, hi_rank, _ in stats[col]:
            for rank in (lo_rank, hi_rank):
                bands[(col, rank)] = qt.band(per_part, rank)
    found = dask.compute([dask.delayed(_bands)(p, builder, bands) for p in parts])[0]
    value: dict[tuple[str, int], float] = {}
    for key in bands:
        below = sum(f[key][0] for f in found)
        distinct, inverse = np.unique(
            np.concatenate([f[key][1] for f in found]), return_inverse=True
        )
        counts = np.bincount(inverse, weights=np.concatenate([f[key][2] for f in found]))
        value[key] = qt.select(below, distinct, counts.astype(np.int64), key[1])
    return {col: tuple(qt.interpolate(value[(col, lo)], value[(col, hi)], w) for lo, hi, w in qs)
            for col, qs in stats.items()}  # fmt: skip


def _transform(part: Path, builder: FeatureBuilder, target: str, out: Path) -> int:
    frame = pd.read_parquet(part)
    feats = builder.transform(frame)
    feats[target] = frame[target].to_numpy()
    feats.to_parquet(out / part.name if part.parent.suffix == ".parquet" else out / "part.00000.parquet",
                     index=False)  # fmt: skip
    return len(feats)


def build(params: Params) -> FeatureBuilder:
    """Fit on train, transform every split; returns the fitted builder."""
    builder = FeatureBuilder(params.data, params.features)
    with dask_client(params.compute):
        train = paths.parts(paths.PREPARED / "train.parquet")
        caps = fit_caps(builder, train)
        names = list(builder.build(pd.read_parquet(train[0]).head(1)).columns)
        builder.fitted(caps, names)
        tasks = []
        for split in paths.SPLITS:
            out = paths.FEATURES / f"{split}.parquet"
            paths.clear(out)
            out.mkdir(parents=True)
            tasks += [
                dask.delayed(_transform)(p, builder, params.data.target, out)
                for p in paths.parts(paths.PREPARED / f"{split}.parquet")
            ]
        rows = sum(dask.compute(tasks)[0])
    log.info("features on Dask: %d rows in %d partitions, %d caps", rows, len(tasks), len(caps))
    return builder
