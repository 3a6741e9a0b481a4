"""The one artifact that ships: feature builder + XGBoost booster as an MLflow pyfunc that
returns probabilities of default (MLflow's own XGBClassifier flavour would return labels).
It checks its input against the data contract it was trained on, as serving does."""

from __future__ import annotations

import hashlib
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import xgboost as xgb

from features.contract import Contract, Violation, check_values, raise_violations
from features.transform import FeatureBuilder


class CreditRiskModel(mlflow.pyfunc.PythonModel):
    def __init__(self, builder: FeatureBuilder, booster: xgb.Booster) -> None:
        self.builder = builder
        self.booster = booster

    @property
    def contract(self) -> Contract:
        return self.builder.contract

    @property
    def input_columns(self) -> list[str]:
        return list(self.builder.input_columns)

    @property
    def feature_names(self) -> list[str]:
        return list(self.builder.feature_names_)

    @property
    def fingerprint(self) -> str:
        """sha256 of the booster and the fitted feature builder: equal models, equal prints."""
        h = hashlib.sha256(bytes(self.booster.save_raw("ubj")))
        h.update(repr((self.builder.caps_, self.builder.feature_names_)).encode())
        h.update(self.contract.fingerprint.encode())
        return h.hexdigest()

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

    def violations(self, frame: pd.DataFrame) -> list[Violation]:
        """The contract's rules for the model inputs (what serving checks on a record)."""
        present = [c for c in self.input_columns if c in frame.columns]
        missing = [Violation(c, "missing column", len(frame)) for c in self.input_columns
                   if c not in present]  # fmt: skip
        return missing + check_values(frame, self.contract, present)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict | None = None
    ) -> np.ndarray:
        frame = pd.DataFrame(model_input).reset_index(drop=True)
        raise_violations(self.violations(frame), "model input")
        return self.predict_proba(frame)
