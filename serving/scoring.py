"""Pure scoring logic: probability -> 0-100 risk score, band, decision and reason codes.

risk_score = round(100 * probability_of_default): the PD in percent, so it is monotone in
the probability and reads directly as "expected defaults per 100 such customers".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import xgboost as xgb

from riskloop.settings import DataSettings, DecisionSettings, Riskiest, texts_for


def inputs_matrix(builder, records: list) -> np.ndarray:
    """Validated records (pydantic models) -> the builder's input columns as floats."""
    cols = builder.input_columns
    if any(c in builder.data.categorical for c in cols):
        rows = [[builder.encode(c, getattr(r, c)) for c in cols] for r in records]
    else:
        rows = [[getattr(r, c) for c in cols] for r in records]
    return np.array(
        rows, dtype="float64"
    )  # a None (nullable column) becomes NaN: XGBoost's missing


def probabilities(booster: xgb.Booster, feats: np.ndarray) -> np.ndarray:
    """Feature matrix -> probabilities of default (XGBoost's own predictor)."""
    return booster.inplace_predict(feats, predict_type="value", validate_features=False)


def contributions(booster: xgb.Booster, feats: np.ndarray) -> np.ndarray:
    """XGBoost's exact TreeSHAP per row (`pred_contribs`); the last column is the base value."""
    # a one-thread DMatrix: with the default (all cores) a single row costs 3-5x more on 2 cores
    return booster.predict(
        xgb.DMatrix(feats, nthread=1), pred_contribs=True, validate_features=False
    )


def sigmoid(margin: np.ndarray) -> np.ndarray:
    """binary:logistic's link, in float32 like XGBoost's."""
    m = np.asarray(margin, dtype=np.float32)
    return np.float32(1) / (np.float32(1) + np.exp(-m))


def risk_scores(p: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(p, 0.0, 1.0) * 100).astype(int)


def risk_bands(scores: np.ndarray, bands: dict[str, int]) -> list[str]:
    ordered = sorted(bands.items(), key=lambda kv: kv[1])  # YAML mappings carry no order
    names = [name for name, _ in ordered]
    lows = np.array([low for _, low in ordered])
    idx = np.searchsorted(lows, scores, side="right") - 1
    return [names[i] for i in idx]


@dataclass(frozen=True)
class Cutoffs:
    """The decision thresholds one model version is served with, as risk_scores."""

    review_from: int
    decline_from: int


def cut_at(reference_scores: np.ndarray, share: float) -> int:
    """The lowest risk_score at or above which at most `share` of the reference falls
    (scores are integers: ties make the share at most, not exactly, the one asked)."""
    s = np.sort(np.asarray(reference_scores, dtype=int))
    at_or_above = len(s) - np.searchsorted(s, np.arange(102), side="left")  # for cut 0..101
    return int(np.argmax(at_or_above <= share * len(s)))


def cutoffs(settings: DecisionSettings, reference_p: Callable[[], np.ndarray]) -> Cutoffs:
    """Resolve the decision settings for one model; `reference_p` gives its test-split
    probabilities and is called only when a cut is relative."""
    ref = risk_scores(reference_p()) if settings.relative else None

    def resolve(cut: int | Riskiest) -> int:
        if isinstance(cut, int):
            return cut
        if ref is None or len(ref) == 0:
            raise ValueError("a relative decision cut needs the model's reference scores")
        return cut_at(ref, cut.riskiest)

    review, decline = resolve(settings.review_from), resolve(settings.decline_from)
    return Cutoffs(min(review, decline), decline)  # a mixed pair may cross: review never above


APPROVE, REVIEW, DECLINE = DECISIONS = ("approve", "review", "decline")  # least risky first


def decisions(scores: np.ndarray, cut: Cutoffs) -> list[str]:
    return [
        DECLINE if s >= cut.decline_from else REVIEW if s >= cut.review_from else APPROVE
        for s in scores
    ]


def reason_labels(names: list[str], data: DataSettings,
                  reason_texts: dict[str, str]) -> tuple[dict[int, list], list[str | None]]:  # fmt: skip
    """What `reasons` shows for each feature: a categorical's levels (by feature index) and
    each feature's adverse-action text (serving.reason_texts)."""
    levels = {i: data.levels[n] for i, n in enumerate(names) if n in data.levels}
    return levels, texts_for(names, reason_texts, data.onehot)


def reasons(contrib: np.ndarray, feats: np.ndarray, names: list[str], top_k: int,
            levels: dict[int, list] | None = None,
            texts: list[str | None] | None = None) -> list[list[dict]]:  # fmt: skip
    """Up to k features that raise each row's risk the most (exact TreeSHAP, log-odds; only
    positive contributions: a feature that lowers the risk is no reason to decline), each
    with its adverse-action text (`texts`, by feature index: serving.reason_texts).
    All contributions plus the base value (last column) sum to the row's margin. A
    categorical feature (`levels`: feature index -> its levels, a code being a position)
    is shown by its level, never by the code the model reads."""
    if top_k == 0:
        return [[] for _ in range(len(contrib))]
    levels = levels or {}
    texts = texts or [None] * len(names)
    values = contrib[:, :-1]
    order = np.argsort(-values, axis=1, kind="stable")[:, :top_k]
    out = []
    for r, cols in enumerate(order):
        row = []
        for c in cols:
            if values[r, c] <= 0:
                break  # ordered: the rest lower the risk or leave it; they are no reason
            v, coded = feats[r, c], c in levels
            given = not np.isnan(v)
            row.append({"feature": names[c], "value": float(v) if given and not coded else None,
                        "level": str(levels[c][int(v)]) if given and coded else None,
                        "contribution": float(values[r, c]), "text": texts[c]})  # fmt: skip
        out.append(row)
    return out
