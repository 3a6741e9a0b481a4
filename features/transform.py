"""Feature transformations: pure pandas, fitted on the training split only.

`FeatureBuilder` turns raw model inputs (the contract's columns minus id, target and
protected attributes) into the model's feature frame. It is pickled inside the one MLflow
model, so training, evaluation and serving compute features with the same code.

Every feature derived from the repayment statuses is non-decreasing in each status, so a
monotone constraint on them makes risk non-decreasing in months past due.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from features.contract import Contract
from riskloop.settings import DataSettings, FeatureSettings, texts_for

# Status features that must carry a +1 monotone constraint (see params.yaml train section).
STATUS_FEATURES = (
    "months_delinquent", "recent_months_delinquent", "worst_status", "latest_delinquency",
    "consecutive_delinquent", "delinquency_load",
)  # fmt: skip


# Serving calls these on one-row arrays, where each numpy call's fixed cost (µs) is the whole
# cost: hence single ufunc calls with `where=` rather than boolean indexing or nan-functions.


def _safe_div(num: pd.Series | np.ndarray, den: pd.Series | np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype="float64")
    den = np.asarray(den, dtype="float64")
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)


def _row_nanmean(a: np.ndarray) -> np.ndarray:
    """Row mean ignoring NaN; NaN (XGBoost's missing) where a row has no value."""
    missing = np.isnan(a)
    n = a.shape[1] - missing.sum(axis=1)
    total = np.where(missing, 0.0, a).sum(axis=1)
    return np.divide(total, n, out=np.full(len(a), np.nan), where=n > 0)


def _row_nanmax(a: np.ndarray) -> np.ndarray:
    filled = np.where(np.isnan(a), -np.inf, a).max(axis=1)
    return np.where(np.isinf(filled), np.nan, filled)


def feature_names(data: DataSettings, settings: FeatureSettings) -> list[str]:
    """The model's features for these settings, before any data: inputs, then derived."""
    derived = repayment_arrays(lambda cols: np.zeros((1, len(cols))), settings)
    return [*data.model_input_columns, *derived]


def missing_reason_texts(data: DataSettings, settings: FeatureSettings,
                         texts: dict[str, str]) -> list[str]:  # fmt: skip
    """Model features for which serving.reason_texts has no text."""
    names = feature_names(data, settings)
    return [n for n, t in zip(names, texts_for(names, texts, data.onehot), strict=True) if not t]


def unknown_references(data: DataSettings, settings: FeatureSettings,
                       named: dict[str, list[str]]) -> list[str]:  # fmt: skip
    """For each setting (dotted key -> the names it lists), the names that are neither a
    feature nor a declared column: one line per setting, empty when all is well."""
    known = {*feature_names(data, settings), *data.feature_columns}
    return [f"{key} names {sorted(set(cols) - known)}, not a feature or column of this data "
            f"(features: {sorted(known)})" for key, cols in named.items() if set(cols) - known]  # fmt: skip


def repayment_features(x: pd.DataFrame, settings: FeatureSettings) -> pd.DataFrame:
    """Repayment-history features (unclipped). Columns are listed latest month first."""
    arrays = repayment_arrays(lambda cols: x[cols].to_numpy(dtype="float64"), settings)
    return pd.DataFrame(arrays, index=x.index)


def repayment_arrays(
    columns: Callable[[list[str]], np.ndarray], settings: FeatureSettings
) -> dict[str, np.ndarray]:
    """The feature arithmetic on plain arrays; `columns(names)` returns those columns as a
    float 2-D array. Shared by the DataFrame path (training) and the array path (serving).
    Nothing without a `features.repayment` block (data without monthly history)."""
    rep = settings.repayment
    if rep is None:
        return {}
    status = columns(rep.status_columns)
    late = status >= rep.delinquent_from
    out: dict[str, np.ndarray] = {
        "months_delinquent": late.sum(axis=1),
        "recent_months_delinquent": late[:, : rep.recent_months].sum(axis=1),
        "worst_status": status.max(axis=1),
        "latest_delinquency": np.clip(status[:, 0], 0, None),
        # run of late months ending at the latest month
        "consecutive_delinquent": np.cumprod(late, axis=1).sum(axis=1),
        "delinquency_load": np.clip(status, 0, None).sum(axis=1),
    }
    bills = columns(rep.bill_columns) if rep.bill_columns else None
    limit = columns([rep.limit_column]) if rep.limit_column else None  # (rows, 1)
    if bills is not None and limit is not None:
        util = _safe_div(bills, limit)
        out["utilization_latest"] = util[:, 0]
        out["utilization_mean"] = _row_nanmean(util)
        out["utilization_max"] = _row_nanmax(util)
        out["bill_growth"] = _safe_div(bills[:, 0] - bills[:, -1], limit[:, 0])
    if rep.payment_columns and bills is not None:
        pays = columns(rep.payment_columns)
        lag = rep.payment_lag
        n = bills.shape[1] - lag
        ratios = _safe_div(pays[:, :n], bills[:, lag : lag + n])
        for i in range(n):
            out[f"pay_ratio_{i + 1}"] = ratios[:, i]
        out["pay_ratio_mean"] = _row_nanmean(ratios)
        out["pay_ratio_min"] = -_row_nanmax(-ratios)
        out["months_no_payment"] = (pays == 0).sum(axis=1)
        out["months_paid_in_full"] = (
            (pays[:, :n] >= bills[:, lag : lag + n]) & (bills[:, lag : lag + n] > 0)
        ).sum(axis=1)
        if limit is not None:
            out["payment_to_limit"] = _safe_div(pays.mean(axis=1), limit[:, 0])
            out["outstanding_to_limit"] = _safe_div(bills[:, 0] - pays[:, 0], limit[:, 0])
    return out


class FeatureBuilder:
    """Raw model inputs -> model features. `fit` learns only clip caps for the ratio
    features (long tails from tiny bills); categorical levels are coded by the contract.

    Pickled inside the one MLflow model with the settings as plain JSON, so a model loads
    under later versions of riskloop's settings classes."""

    def __init__(self, data: DataSettings | Contract, features: FeatureSettings) -> None:
        self.contract = data if isinstance(data, Contract) else Contract(data)
        self.features = features
        self.input_columns: list[str] = list(self.contract.model_inputs)
        self.caps_: dict[str, tuple[float, float]] = {}
        self.feature_names_: list[str] = []

    @property
    def data(self) -> DataSettings:
        return self.contract.data

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["contract"] = self.contract.to_json()
        state["features"] = self.features.model_dump(mode="json")
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        state["contract"] = Contract.from_json(state["contract"])
        state["features"] = FeatureSettings.model_validate(state["features"])
        self.__dict__.update(state)

    def build(self, x: pd.DataFrame) -> pd.DataFrame:
        """Every feature, unclipped (row by row: a partition builds alone)."""
        missing = [c for c in self.input_columns if c not in x.columns]
        if missing:
            raise KeyError(f"input is missing model columns {missing}")
        base = self.contract.coded(x, self.input_columns)
        return pd.concat([base, repayment_features(base, self.features)], axis=1)

    def capped_columns(self) -> list[str]:
        """The derived ratio features whose long tails `fit` caps."""
        derived = repayment_arrays(lambda cols: np.zeros((1, len(cols))), self.features)
        return [c for c in derived if c not in STATUS_FEATURES and not c.startswith("months_")]

    def cap_quantiles(self) -> tuple[float, float]:
        q = self.features.ratio_clip_quantile
        return 1 - q, q

    def fit(self, x: pd.DataFrame) -> FeatureBuilder:
        frame = self.build(x)
        low, high = self.cap_quantiles()
        caps = {c: (float(frame[c].quantile(low)), float(frame[c].quantile(high)))
                for c in self.capped_columns() if frame[c].notna().any()}  # fmt: skip
        return self.fitted(caps, list(frame.columns))

    def fitted(self, caps: dict[str, tuple[float, float]], names: list[str]) -> FeatureBuilder:
        """Set what fit learns, from statistics computed elsewhere (on a cluster)."""
        self.caps_ = dict(caps)
        self.feature_names_ = list(names)
        return self

    def transform(self, x: pd.DataFrame) -> pd.DataFrame:
        if not self.feature_names_:
            raise RuntimeError("FeatureBuilder.transform called before fit")
        frame = self.build(x)
        for col, (low, high) in self.caps_.items():
            frame[col] = frame[col].clip(lower=low, upper=high)
        return frame[self.feature_names_]

    def transform_array(self, values: np.ndarray) -> np.ndarray:
        """Serving's fast path (no pandas): `values` holds `input_columns` in order as
        floats (categoricals coded by the contract); returns features in `feature_names_`
        order. Same arithmetic as `transform` (repayment_arrays), ~100x less overhead a row."""
        if not self.feature_names_:
            raise RuntimeError("FeatureBuilder.transform_array called before fit")
        index = {c: i for i, c in enumerate(self.input_columns)}
        derived = repayment_arrays(lambda cols: values[:, [index[c] for c in cols]], self.features)
        n_in = len(self.input_columns)
        out = np.empty((len(values), len(self.feature_names_)))
        out[:, :n_in] = values
        position = {name: i for i, name in enumerate(self.feature_names_)}
        for name, column in derived.items():
            out[:, position[name]] = column
        if self.caps_:  # one clip for all capped columns (a call per column cost ~3 µs each)
            capped = [position[name] for name in self.caps_]
            low, high = np.array(list(self.caps_.values())).T
            out[:, capped] = np.clip(out[:, capped], low, high)
        return out

    def fit_transform(self, x: pd.DataFrame) -> pd.DataFrame:
        return self.fit(x).transform(x)
