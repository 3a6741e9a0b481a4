"""Pure scoring logic: probability -> 0-100 risk score, band, decision and reason codes.

risk_score = round(100 * probability_of_default): the PD in percent, so it is monotone in
the probability and reads directly as "expected defaults per 100 such customers".
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import numpy as np
import xgboost as xgb

from riskloop.settings import ServingSettings
from serving.treeshap import BLOCK_FROM, TreeShap

log = logging.getLogger(__name__)
# features -> (contributions with the bias column last, probabilities of default when the
# explainer scores the rows in the same pass, else None)
Explainer = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]


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


def predict(
    model, values: np.ndarray, explain: Explainer | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Features, probabilities and (given an `explainer`) exact TreeSHAP contributions (last
    column: the base value), on arrays end to end. Uses only the model's `builder` and
    `booster` with riskloop's current feature code (features/ is shared with training)."""
    feats = model.builder.transform_array(values)
    contrib, p = explain(feats) if explain else (None, None)
    return feats, probabilities(model.booster, feats) if p is None else p, contrib


def probabilities(booster: xgb.Booster, feats: np.ndarray) -> np.ndarray:
    """Feature matrix -> probabilities of default (XGBoost's own predictor)."""
    return booster.inplace_predict(feats, predict_type="value", validate_features=False)


def contributions(booster: xgb.Booster, feats: np.ndarray) -> np.ndarray:
    """XGBoost's exact TreeSHAP per row (`pred_contribs`); the last column is the base value."""
    # a one-thread DMatrix: with the default (all cores) a single row costs 3-5x more on 2 cores
    return booster.predict(
        xgb.DMatrix(feats, nthread=1), pred_contribs=True, validate_features=False
    )


def explainer(booster: xgb.Booster, probe: np.ndarray, tolerance: float = 1e-4) -> Explainer:
    """The same exact contributions as `contributions`, from riskloop's table-driven TreeSHAP
    (serving/treeshap.py, ~8x cheaper a row) when the model's trees allow it and it reproduces
    XGBoost on `probe` rows (features) within `tolerance`; else XGBoost's own. The table
    TreeSHAP also scores the rows it explains (its pass over the nodes finds each tree's
    leaf), for a binary:logistic model whose probabilities it reproduces on `probe`."""
    fallback: Explainer = lambda feats: (contributions(booster, feats), None)  # noqa: E731
    fast = TreeShap.from_booster(booster)
    if fast is None:
        log.info("reason codes from XGBoost's pred_contribs: the trees need its general TreeSHAP")
        return fallback
    # one row (the per-row kernel) and a batch (the block kernel): both checked against
    # XGBoost, and both compiled before the first request
    rows = np.concatenate([probe[:1], np.tile(probe, (BLOCK_FROM, 1))])
    contrib, margin = (
        np.concatenate(parts)
        for parts in zip(fast.explain(rows[:1]), fast.explain(rows[1:]), strict=True)
    )
    gap = float(np.abs(contrib - contributions(booster, rows)).max())
    if gap > tolerance:
        log.warning("table TreeSHAP differs from XGBoost by %.2g: using XGBoost's", gap)
        return fallback
    if _logistic(booster):
        p_gap = float(np.abs(sigmoid(margin) - probabilities(booster, rows)).max())
        if p_gap <= 1e-6:
            return lambda feats: _scored(fast, feats)
        log.warning("table TreeSHAP's margins miss XGBoost's probabilities by %.2g", p_gap)
    return lambda feats: (fast.contributions(feats), None)


def _scored(fast: TreeShap, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    contrib, margin = fast.explain(feats)
    return contrib, sigmoid(margin)


def _logistic(booster: xgb.Booster) -> bool:
    return json.loads(booster.save_config())["learner"]["objective"]["name"] == "binary:logistic"


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


def decisions(scores: np.ndarray, settings: ServingSettings) -> list[str]:
    d = settings.decisions
    return [
        "decline" if s >= d.decline_from else "review" if s >= d.review_from else "approve"
        for s in scores
    ]


def reasons(
    contrib: np.ndarray, feats: np.ndarray, names: list[str], top_k: int
) -> list[list[dict]]:
    """Top-k features that raise each row's risk the most (exact TreeSHAP, log-odds).
    All contributions plus the base value (last column) sum to the row's margin."""
    if top_k == 0:
        return [[] for _ in range(len(contrib))]
    values = contrib[:, :-1]
    order = np.argsort(-values, axis=1, kind="stable")[:, :top_k]
    out = []
    for r, cols in enumerate(order):
        out.append([{"feature": names[c], "value": None if np.isnan(feats[r, c]) else float(feats[r, c]),
                     "contribution": float(values[r, c])} for c in cols])  # fmt: skip
    return out
