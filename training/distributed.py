"""Training and evaluation on a Dask cluster (compute.engine dask): XGBoost's own distributed
training (`xgboost.dask`, each worker building histograms of its partitions) and metrics from
per-partition score counts (training.score_counts), exact without gathering the data."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb

from training import score_counts


def _frame(parts: Sequence[Path]):
    import dask.dataframe as dd

    return dd.read_parquet([str(p) for p in parts])


def fit_booster(client, parts: Sequence[Path], names: list[str], target: str, params: dict,
                rounds: int) -> xgb.Booster:  # fmt: skip
    """fit.fit_booster on a dataset spread over Parquet parts, trained by the workers."""
    from xgboost import dask as dxgb

    # persisted on the workers first (DaskDMatrix holds the data there anyway), so the features
    # and the label come from the same partitions: dask would read a narrow projection such
    # as the label alone in fewer, merged partitions
    frame = client.persist(_frame(parts)[[*names, target]])
    train = dxgb.DaskDMatrix(client, frame[names], frame[target])
    return dxgb.train(client, params, train, num_boost_round=rounds)["booster"]


def _counts(
    part: pd.DataFrame, booster: xgb.Booster, names: list[str], target: str
) -> pd.DataFrame:
    p = booster.inplace_predict(part[names]) if len(part) else np.empty(0)
    return score_counts.score_counts(part[target].to_numpy(), p)


def evaluate(parts: Sequence[Path], booster: xgb.Booster, names: list[str], target: str,
             threshold: float, bins: int) -> dict[str, float]:  # fmt: skip
    """training.metrics.classification_metrics of `booster` on the parts, each partition
    scored and counted by a worker; only the summed counts come back."""
    frame = _frame(parts)
    meta = pd.DataFrame({"p": pd.Series(dtype=float), "bad": pd.Series(dtype="int64"),
                         "good": pd.Series(dtype="int64")})  # fmt: skip
    counts = frame.map_partitions(_counts, booster, names, target, meta=meta)
    table = counts.groupby("p").sum().compute().reset_index()
    return score_counts.metrics(score_counts.merge([table]), threshold, bins)
