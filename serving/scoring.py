"""Pure scoring logic: probability -> 0-100 risk score, band, decision and reason codes.

risk_score = round(100 * probability_of_default): the PD in percent, so it is monotone in
the probability and reads directly as "expected defaults per 100 such customers".
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xgboost as xgb

from riskloop.settings import ServingSettings


def predict(
    model, raw: pd.DataFrame, explain: bool
) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame | None]:
    """Features, probabilities and (when asked) exact contributions, computing features once.
    Uses only the model's `builder` and `booster`: a model carries the code it was logged
    with (MLflow code_paths), so serving must not rely on methods added since."""
    feats = model.builder.transform(raw)
    p = model.booster.inplace_predict(feats, predict_type="value")
    if not explain:
        return feats, p, None
    names = list(model.builder.feature_names_)
    contrib = model.booster.predict(xgb.DMatrix(feats, feature_names=names), pred_contribs=True)
    return feats, p, pd.DataFrame(contrib, columns=[*names, "bias"], index=raw.index)


def risk_scores(p: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(p, 0.0, 1.0) * 100).astype(int)


def risk_bands(scores: np.ndarray, bands: dict[str, int]) -> list[str]:
    names = list(bands)
    lows = np.array(list(bands.values()))
    idx = np.searchsorted(lows, scores, side="right") - 1
    return [names[i] for i in idx]


def decisions(scores: np.ndarray, settings: ServingSettings) -> list[str]:
    d = settings.decisions
    return [
        "decline" if s >= d.decline_from else "review" if s >= d.review_from else "approve"
        for s in scores
    ]


def reasons(contrib: pd.DataFrame, features: pd.DataFrame, top_k: int) -> list[list[dict]]:
    """Top-k features that raise each row's risk the most (exact TreeSHAP, log-odds).
    Contributions with the base value (`bias`) sum to the row's margin."""
    if top_k == 0:
        return [[] for _ in range(len(contrib))]
    values = contrib.drop(columns="bias").to_numpy()
    names = np.array(contrib.columns[:-1])
    order = np.argsort(-values, axis=1)[:, :top_k]
    feats = features.to_numpy()
    col_index = {n: i for i, n in enumerate(features.columns)}
    out = []
    for r, cols in enumerate(order):
        row = []
        for c in cols:
            value = feats[r, col_index[names[c]]]
            row.append({"feature": str(names[c]), "value": None if np.isnan(value) else float(value),
                        "contribution": float(values[r, c])})  # fmt: skip
        out.append(row)
    return out
