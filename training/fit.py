"""Final model: refit the best trial's parameters, and cross-validate that configuration."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from riskloop.errors import SettingsError
from riskloop.settings import TrainSettings


def check_device(train: TrainSettings) -> None:
    if train.device == "cuda" and not xgb.build_info().get("USE_CUDA", False):
        raise SettingsError(
            "train.device is 'cuda' but the installed XGBoost has no CUDA support "
            "(riskloop locks xgboost-cpu); install the `xgboost` wheel on a GPU machine"
        )


def monotone_vector(train: TrainSettings, feature_names: list[str]) -> tuple[int, ...]:
    unknown = sorted(set(train.monotone_constraints) - set(feature_names))
    if unknown:
        raise SettingsError(
            f"train.monotone_constraints names unknown feature(s) {unknown}; features are {feature_names}"
        )
    return tuple(train.monotone_constraints.get(f, 0) for f in feature_names)


def refit_rounds(best_iteration: int, n_train: int, n_total: int) -> int:
    """Early stopping found `best_iteration` on the train split; scale for more data."""
    return max(1, round((best_iteration + 1) * n_total / n_train))


def fit_booster(x: pd.DataFrame, y: np.ndarray, params: dict, rounds: int) -> xgb.Booster:
    return xgb.train(params, xgb.DMatrix(x, label=y), num_boost_round=rounds)


def cross_validate(x: pd.DataFrame, y: np.ndarray, params: dict, rounds: int, folds: int,
                   seed: int) -> tuple[float, float]:  # fmt: skip
    """Mean and std ROC AUC of the final configuration over stratified folds."""
    aucs = []
    for tr, va in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        booster = fit_booster(x.iloc[tr], y[tr], params, rounds)
        aucs.append(roc_auc_score(y[va], booster.inplace_predict(x.iloc[va])))
    return float(np.mean(aucs)), float(np.std(aucs))
