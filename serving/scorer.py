"""Which engine turns feature rows into probabilities and exact contributions: XGBoost's own,
or riskloop's flattened trees (serving/treeshap.py), chosen once at load by checking every
engine against the model's golden batch: the features, probabilities and contributions
XGBoost gave at training, real rows and edge cases (bounds, missing values) alike.

Where the checks pass, the flattened trees explain (exact TreeSHAP, ~8x cheaper a row than
`pred_contribs`), score the rows they explain in the same pass, and score small batches by
walking the trees: ~11 µs a row, where one `inplace_predict` call costs ~280 µs for a single
row. From ~50 rows up XGBoost's predictor is the faster (~4-9 µs a row) and scores them.
A failed check falls back to XGBoost for that job and says why in `status` (/readyz,
/metrics); XGBoost itself must reproduce the golden batch, or the model is refused.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xgboost as xgb

from serving.scoring import contributions, probabilities, sigmoid
from serving.treeshap import BLOCK_FROM, TreeShap

log = logging.getLogger(__name__)
SMALL_BATCH = 32  # rows below which walking the flattened trees beats inplace_predict
P_TOLERANCE = 1e-6  # probabilities: every engine against XGBoost's at training
CONTRIB_TOLERANCE = 1e-5  # contributions (log-odds; float32 sums in both engines)


class GoldenMismatch(RuntimeError):
    """XGBoost here does not reproduce the probabilities the model gave at training."""


@dataclass
class EngineStatus:
    contributions: str = "xgboost"  # table | xgboost
    scores: str = "xgboost"  # trees | xgboost
    checked_rows: int = 0
    fallbacks: list[str] = field(default_factory=list)  # why an engine fell back

    def as_dict(self) -> dict[str, Any]:
        return {"contributions": self.contributions, "scores": self.scores,
                "golden_rows_checked": self.checked_rows, "fallbacks": self.fallbacks}  # fmt: skip


def _gap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).max())


class Scorer:
    """`probabilities(feats)` and `explain(feats)` for one booster, with engines checked on
    `golden_feats` against the golden batch's `probability` and `contributions`."""

    def __init__(self, booster: xgb.Booster, golden_feats: np.ndarray, golden: dict[str, Any],
                 use_table: bool = True) -> None:  # fmt: skip
        self.booster = booster
        self.status = EngineStatus(checked_rows=len(golden_feats))
        expected_p = np.asarray(golden["probability"], dtype=float)
        gap = _gap(probabilities(booster, golden_feats), expected_p)
        if gap > P_TOLERANCE:
            raise GoldenMismatch(
                f"XGBoost {xgb.__version__} gives probabilities {gap:.2g} away from those the "
                f"model gave at training (XGBoost {golden.get('xgboost')}) on its golden batch"
            )
        self.table = self._checked_table(golden_feats, golden) if use_table else None
        self.scores = self.table is not None and self._scores_like_xgboost(golden_feats, expected_p)
        self.status.contributions = "table" if self.table is not None else "xgboost"
        self.status.scores = "trees" if self.scores else "xgboost"

    def probabilities(self, feats: np.ndarray) -> np.ndarray:
        if self.scores and len(feats) < SMALL_BATCH:
            return sigmoid(self.table.margins(feats))
        return probabilities(self.booster, feats)

    def explain(self, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(contributions, bias column last; the rows' probabilities when the same pass gave
        them, else None: the caller scores)."""
        if self.table is None:
            return contributions(self.booster, feats), None
        contrib, margin = self.table.explain(feats)
        return contrib, sigmoid(margin) if self.scores else None

    def _fallback(self, why: str) -> None:
        self.status.fallbacks.append(why)
        log.warning("%s: XGBoost's own engine takes over", why)

    def _checked_table(self, feats: np.ndarray, golden: dict[str, Any]) -> TreeShap | None:
        table = TreeShap.from_booster(self.booster)
        if table is None:
            self._fallback(
                "the trees need XGBoost's general TreeSHAP (deep, categorical or multi-output)"
            )
            return None
        expected = np.asarray(golden["contributions"], dtype=float)
        # one row (the per-row kernel) and the whole batch (the block kernel): both compiled now
        gap = max(_gap(table.contributions(feats[:1]), expected[:1]),
                  _gap(table.contributions(feats), expected))  # fmt: skip
        if gap > CONTRIB_TOLERANCE:
            self._fallback(f"table TreeSHAP differs from XGBoost's contributions by {gap:.2g}")
            return None
        return table

    def _scores_like_xgboost(self, feats: np.ndarray, expected: np.ndarray) -> bool:
        """binary:logistic (whose link riskloop applies), and both margin computations (the
        contribution pass and the tree walk) give XGBoost's probabilities."""
        objective = json.loads(self.booster.save_config())["learner"]["objective"]["name"]
        if objective != "binary:logistic":
            self._fallback(f"objective {objective}: scores come from XGBoost")
            return False
        rows = feats if len(feats) >= BLOCK_FROM else np.tile(feats, (BLOCK_FROM, 1))
        exp = expected if len(feats) >= BLOCK_FROM else np.tile(expected, BLOCK_FROM)
        gap = 0.0
        for batch, want in ((rows[:1], exp[:1]), (rows, exp)):
            for margin in (self.table.explain(batch)[1], self.table.margins(batch)):
                gap = max(gap, _gap(sigmoid(margin), want))
        if gap > P_TOLERANCE:
            self._fallback(f"flattened trees miss XGBoost's probabilities by {gap:.2g}")
        return gap <= P_TOLERANCE
