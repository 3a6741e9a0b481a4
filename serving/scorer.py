"""Which engine turns feature rows into probabilities and exact contributions: XGBoost's own,
or riskloop's flattened trees (serving/treeshap.py), chosen once at load by checking the
flattened trees against XGBoost on probe rows.

Where the checks pass, the flattened trees explain (exact TreeSHAP, ~8x cheaper a row than
`pred_contribs`), score the rows they explain in the same pass, and score small batches by
walking the trees: ~11 µs a row, where one `inplace_predict` call costs ~280 µs for a single
row. From ~50 rows up XGBoost's predictor is the faster (~4-9 µs a row) and scores them.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import xgboost as xgb

from serving.scoring import contributions, probabilities, sigmoid
from serving.treeshap import BLOCK_FROM, TreeShap

log = logging.getLogger(__name__)
SMALL_BATCH = 32  # rows below which walking the flattened trees beats inplace_predict


class Scorer:
    """`probabilities(feats)` and `explain(feats)` for one booster. `tolerance` bounds the
    contributions' gap to XGBoost's; probabilities must agree within 1e-6."""

    def __init__(self, booster: xgb.Booster, probe: np.ndarray, tolerance: float = 1e-4,
                 use_table: bool = True) -> None:  # fmt: skip
        self.booster = booster
        self.table = _checked_table(booster, probe, tolerance) if use_table else None
        self.scores = self.table is not None and _scores_like_xgboost(self.table, booster, probe)

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


def _probe_rows(probe: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One row (the per-row kernel) and a batch (the block kernel): each check runs both, so
    both are compiled before the first request."""
    return probe[:1], np.tile(probe, (BLOCK_FROM, 1))


def _checked_table(booster: xgb.Booster, probe: np.ndarray, tolerance: float) -> TreeShap | None:
    table = TreeShap.from_booster(booster)
    if table is None:
        log.info("reason codes from XGBoost's pred_contribs: the trees need its general TreeSHAP")
        return None
    gap = max(float(np.abs(table.contributions(rows) - contributions(booster, rows)).max())
              for rows in _probe_rows(probe))  # fmt: skip
    if gap > tolerance:
        log.warning("table TreeSHAP differs from XGBoost by %.2g: using XGBoost's", gap)
        return None
    return table


def _scores_like_xgboost(table: TreeShap, booster: xgb.Booster, probe: np.ndarray) -> bool:
    """binary:logistic (whose link riskloop applies), and both margin computations (the
    contribution pass and the tree walk) give XGBoost's probabilities within 1e-6."""
    objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
    if objective != "binary:logistic":
        return False
    gap = 0.0
    for rows in _probe_rows(probe):
        expected = probabilities(booster, rows)
        for margin in (table.explain(rows)[1], table.margins(rows)):
            gap = max(gap, float(np.abs(sigmoid(margin) - expected).max()))
    if gap > 1e-6:
        log.warning("flattened trees miss XGBoost's probabilities by %.2g: XGBoost scores", gap)
    return gap <= 1e-6
