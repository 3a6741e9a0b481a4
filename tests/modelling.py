"""One way for tests to fit a small model through the project's own code (features, monotone
constraints, XGBoost params): the Optuna search itself is exercised by the integration tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.contract import validate_raw
from features.transform import FeatureBuilder
from pipelines.prepare import split
from riskloop.settings import Params
from training import fit, search
from training.model import CreditRiskModel


def fit_small_model(raw: pd.DataFrame, params: Params, rounds: int, fit_on: tuple[str, ...],
                    **xgb_overrides: float) -> tuple[CreditRiskModel, dict[str, pd.DataFrame]]:  # fmt: skip
    """Split as the pipeline does, fit the builder on train, the booster on `fit_on` splits."""
    parts = split(validate_raw(raw, params.data), params)
    builder = FeatureBuilder(params.data, params.features).fit(parts["train"])
    mono = fit.monotone_vector(params.train, builder.feature_names_)
    xgb_params = {
        **search.base_xgb_params(params.train, mono, params.train.seed),
        "nthread": 1,
        **xgb_overrides,
    }
    x = pd.concat([builder.transform(parts[k]) for k in fit_on])
    y = np.concatenate([parts[k][params.data.target].to_numpy() for k in fit_on])
    return CreditRiskModel(builder, fit.fit_booster(x, y, xgb_params, rounds)), parts
