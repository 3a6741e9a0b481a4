"""The one artifact that ships: feature builder + XGBoost booster as an MLflow pyfunc that
returns probabilities of default (MLflow's own XGBClassifier flavour would return labels)."""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import xgboost as xgb

from features.transform import FeatureBuilder


class CreditRiskModel(mlflow.pyfunc.PythonModel):
    def __init__(self, builder: FeatureBuilder, booster: xgb.Booster) -> None:
        self.builder = builder
        self.booster = booster

    @property
    def input_columns(self) -> list[str]:
        return list(self.builder.input_columns)

    @property
    def feature_names(self) -> list[str]:
        return list(self.builder.feature_names_)

    def features(self, raw: pd.DataFrame) -> pd.DataFrame:
        return self.builder.transform(raw)

    def _dmatrix(self, raw: pd.DataFrame) -> xgb.DMatrix:
        return xgb.DMatrix(self.features(raw), feature_names=self.feature_names)

    def predict_proba(self, raw: pd.DataFrame) -> np.ndarray:
        return self.booster.inplace_predict(self.features(raw), predict_type="value")

    def margin(self, raw: pd.DataFrame) -> np.ndarray:
        return self.booster.inplace_predict(self.features(raw), predict_type="margin")

    def contributions(self, raw: pd.DataFrame) -> pd.DataFrame:
        """Exact per-row TreeSHAP contributions (log-odds); the `bias` column is the base value.
        Each row sums to the model's margin."""
        contrib = self.booster.predict(self._dmatrix(raw), pred_contribs=True)
        return pd.DataFrame(contrib, columns=[*self.feature_names, "bias"], index=raw.index)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict | None = None
    ) -> np.ndarray:
        return self.predict_proba(pd.DataFrame(model_input))
