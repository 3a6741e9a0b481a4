"""The plain baseline a credit model must beat: a logistic regression on the same model
inputs (numeric: median-imputed and standardized; categorical: one-hot, missing as its own
level), fitted on the train split. Its test AUC is what "good enough" means for a dataset
whose attainable AUC nobody knows in advance (`promotion.min_auc_over_baseline`)."""

from __future__ import annotations

import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from riskloop.settings import DataSettings


def logistic_baseline(data: DataSettings) -> object:
    inputs = data.model_input_columns
    categorical = [c for c in inputs if c in data.categorical]
    numeric = [c for c in inputs if c not in data.categorical]
    prep = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
        ("cat", make_pipeline(SimpleImputer(strategy="constant", fill_value="(missing)"),
                              OneHotEncoder(handle_unknown="ignore")), categorical),
    ])  # fmt: skip
    return make_pipeline(prep, LogisticRegression(max_iter=2000))


def baseline_inputs(raw: pd.DataFrame, data: DataSettings) -> pd.DataFrame:
    """The model inputs as the baseline reads them: categorical levels as text, None missing."""
    out = raw[data.model_input_columns].copy()
    for col in data.categorical:
        if col in out:
            out[col] = out[col].astype(object).where(out[col].notna(), None).map(
                lambda v: None if v is None else str(v))  # fmt: skip
    return out


def baseline_auc(train: pd.DataFrame, test: pd.DataFrame, data: DataSettings) -> float:
    """Test ROC AUC of the logistic baseline fitted on `train`."""
    model = logistic_baseline(data).fit(
        baseline_inputs(train, data), train[data.target].astype(int)
    )
    return float(
        roc_auc_score(
            test[data.target].astype(int), model.predict_proba(baseline_inputs(test, data))[:, 1]
        )
    )
