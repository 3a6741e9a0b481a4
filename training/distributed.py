"""Training and evaluation on a Dask cluster (compute.engine dask): XGBoost's own distributed
training (`xgboost.dask`, each worker building histograms of its partitions, the data held
as a quantized DaskQuantileDMatrix: one byte a value) and metrics from per-partition score
counts (training.score_counts), exact without gathering the data. The train stage uses these
where the local engine uses training.fit and training.search's in-process DMatrix."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb

from riskloop.settings import TrainSettings
from training import score_counts

FOLD = "__fold"  # a column the CV folds are drawn into (never a feature)


def read(parts: Sequence[Path], names: list[str], target: str):
    """The Parquet parts as one Dask frame of the features `names` and the `target`, persisted
    on the workers, so the features and the label come from the same partitions: dask would
    read a narrow projection such as the label alone in fewer, merged partitions, which
    XGBoost refuses. The features are held as float32, the precision XGBoost casts every
    input to: the same trees from half the memory (xgboost.dask needs each worker's share in
    memory while it trains)."""
    import dask.dataframe as dd
    from distributed import get_client

    frame = dd.read_parquet([str(p) for p in parts], columns=[*names, target])
    return get_client().persist(frame.astype(dict.fromkeys(names, "float32")))


def matrix(client, frame, names: list[str], target: str, ref=None):
    from xgboost import dask as dxgb

    return dxgb.DaskQuantileDMatrix(client, frame[names], frame[target], ref=ref)


def fit_booster(
    client, frame, names: list[str], target: str, params: dict, rounds: int
) -> xgb.Booster:
    """fit.fit_booster on a Dask frame, trained by the workers."""
    from xgboost import dask as dxgb

    train = matrix(client, frame, names, target)
    return dxgb.train(client, params, train, num_boost_round=rounds, verbose_eval=False)["booster"]


def tuning_score(client, train, valid, params: dict, settings: TrainSettings) -> tuple[float, int]:
    """(valid AUC at the best round, best round) of one Optuna trial's parameters, trained by
    the workers and early-stopped on the valid split (search._score's valid-split mode).
    Pruning is off here: Optuna's callback holds the study's storage, and XGBoost runs its
    callbacks on the workers."""
    from xgboost import dask as dxgb

    out = dxgb.train(client, params, train, num_boost_round=settings.max_boost_rounds,
                     evals=[(valid, "valid")], early_stopping_rounds=settings.early_stopping_rounds,
                     verbose_eval=False)  # fmt: skip
    booster = out["booster"]
    best = booster.best_iteration
    return float(out["history"]["valid"]["auc"][best]), int(best)


def _counts(
    part: pd.DataFrame, booster: xgb.Booster, names: list[str], target: str
) -> pd.DataFrame:
    p = booster.inplace_predict(part[names]) if len(part) else np.empty(0)
    return score_counts.score_counts(part[target].to_numpy(), p)


def counts(frame, booster: xgb.Booster, names: list[str], target: str) -> pd.DataFrame:
    """The summed score counts of `booster` over a Dask frame, each partition scored and
    counted by a worker; only the counts come back."""
    meta = pd.DataFrame({"p": pd.Series(dtype=float), "bad": pd.Series(dtype="int64"),
                         "good": pd.Series(dtype="int64")})  # fmt: skip
    per_part = frame.map_partitions(_counts, booster, names, target, meta=meta)
    return score_counts.merge([per_part.groupby("p").sum().compute().reset_index()])


def evaluate(frame, booster: xgb.Booster, names: list[str], target: str, threshold: float,
             bins: int) -> dict[str, float]:  # fmt: skip
    """training.metrics.classification_metrics of `booster` on a Dask frame."""
    return score_counts.metrics(counts(frame, booster, names, target), threshold, bins)


def _folds(
    part: pd.DataFrame, k: int, seed: int, partition_info: dict | None = None
) -> pd.DataFrame:
    number = partition_info["number"] if partition_info else 0
    rng = np.random.default_rng([seed, number])
    return part.assign(**{FOLD: rng.integers(0, k, len(part))})


def with_folds(client, frame, folds: int, seed: int):
    """`frame` persisted on the workers with each row drawn into one of `folds` folds (seeded
    by partition, so the same data in the same partitions gives the same folds)."""
    return client.persist(
        frame.map_partitions(_folds, folds, seed, meta={**frame.dtypes.to_dict(), FOLD: "int64"})
    )


def cross_validate(client, drawn, names: list[str], target: str, params: dict, rounds: int,
                   folds: int) -> tuple[float, float]:  # fmt: skip
    """fit.cross_validate on the cluster over a frame `with_folds` drew: for each fold a
    booster trained by the workers on the others, its AUC from score counts on the fold."""
    aucs = []
    for k in range(folds):
        booster = fit_booster(client, drawn[drawn[FOLD] != k], names, target, params, rounds)
        aucs.append(score_counts.roc_auc(counts(drawn[drawn[FOLD] == k], booster, names, target)))
    return float(np.mean(aucs)), float(np.std(aucs))
