"""Pure data shaping for a monitoring run: which columns are watched, and the current and
reference frames in one layout (features, score, predicted-default flag, outcome)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.transform import FeatureBuilder
from monitoring.report import INTERVENED, PREDICTED_DEFAULT, SCORE, TARGET, Frames
from riskloop.settings import DataSettings
from serving.scoring import risk_scores


def monitored_columns(builder: FeatureBuilder, data: DataSettings) -> list[str]:
    """The model's features plus the protected attributes: the model never sees those, but a
    shift in who applies (age, sex, marital status) is drift a lender must know about."""
    features = list(builder.feature_names_)
    return features + [c for c in data.protected_columns if c not in features]


def predicted_default(p: np.ndarray, decline_from: int) -> np.ndarray:
    """1 where the service's decision is decline (its risk_score >= decline_from)."""
    return (risk_scores(p) >= decline_from).astype(int)


def _frame(raw: pd.DataFrame, builder: FeatureBuilder, columns: list[str]) -> pd.DataFrame:
    feats = builder.transform(raw)
    extra = [c for c in columns if c not in feats.columns]
    return pd.concat(
        [feats.reset_index(drop=True), raw[extra].reset_index(drop=True).astype(float)], axis=1
    )[columns]


def build_frames(
    window: pd.DataFrame,
    reference: pd.DataFrame,
    reference_scores: np.ndarray,
    builder: FeatureBuilder,
    target: str,
    decline_from: int,
) -> Frames:
    """`window` from monitoring.records.load_window; `reference` is the features stage's
    reference set (raw inputs, features, target) scored by the champion."""
    columns = monitored_columns(builder, builder.data)
    current = _frame(window, builder, columns)
    p = window[SCORE].to_numpy(dtype=float)
    current[SCORE] = p
    current[PREDICTED_DEFAULT] = predicted_default(p, decline_from)
    current[TARGET] = window[TARGET].to_numpy(dtype=float)
    current[INTERVENED] = window[INTERVENED].to_numpy(dtype=int)
    ref = _frame(reference, builder, columns)
    ref[SCORE] = reference_scores
    ref[PREDICTED_DEFAULT] = predicted_default(reference_scores, decline_from)
    ref[TARGET] = reference[target].to_numpy(dtype=float)
    ref[INTERVENED] = 0
    return Frames(current=current, reference=ref, columns=tuple(columns))
