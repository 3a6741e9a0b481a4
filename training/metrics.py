"""Pure evaluation metrics for probability-of-default models (no I/O)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import (
    brier_score_loss,
    log_loss,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)


def ks_statistic(y: np.ndarray, p: np.ndarray, weight: np.ndarray | None = None) -> float:
    """Kolmogorov-Smirnov: the largest gap between the score CDFs of defaulters and payers."""
    fpr, tpr, _ = roc_curve(y, p, sample_weight=weight)
    return float(np.max(tpr - fpr))


def calibration_table(
    y: np.ndarray, p: np.ndarray, bins: int, weight: np.ndarray | None = None
) -> pd.DataFrame:
    """Equal-width probability bins: mean predicted vs observed default rate and count."""
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    w = np.ones(len(p)) if weight is None else np.asarray(weight, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(idx, weights=w, minlength=bins)
    predicted = np.bincount(idx, weights=w * p, minlength=bins)
    observed = np.bincount(idx, weights=w * y, minlength=bins)
    rows = [{"bin": b, "lower": edges[b], "upper": edges[b + 1], "count": round(float(count[b])),
             "mean_predicted": float(predicted[b] / count[b]), "observed_rate": float(observed[b] / count[b])}
            for b in range(bins) if count[b] > 0]  # fmt: skip
    return pd.DataFrame(rows)


def expected_calibration_error(
    y: np.ndarray, p: np.ndarray, bins: int, weight: np.ndarray | None = None
) -> float:
    table = calibration_table(y, p, bins, weight)
    weights = table["count"] / table["count"].sum()
    return float((weights * (table["mean_predicted"] - table["observed_rate"]).abs()).sum())


def classification_metrics(y: np.ndarray, p: np.ndarray, threshold: float, bins: int,
                           weight: np.ndarray | None = None) -> dict[str, float]:  # fmt: skip
    """Everything the evaluate stage reports for one scored split. `weight`: rows repeated
    that many times (training/score_counts.py's score counts as rows)."""
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=float)
    w = np.ones(len(p)) if weight is None else np.asarray(weight, dtype=float)
    auc = float(roc_auc_score(y, p, sample_weight=weight))
    decline = (p >= threshold).astype(int)
    return {
        "roc_auc": auc,
        "gini": 2 * auc - 1,
        "ks": ks_statistic(y, p, weight),
        "brier": float(brier_score_loss(y, p, sample_weight=weight)),
        "log_loss": float(log_loss(y, p, labels=[0, 1], sample_weight=weight)),
        "ece": expected_calibration_error(y, p, bins, weight),
        "precision_at_threshold": float(precision_score(y, decline, zero_division=0, sample_weight=weight)),
        "recall_at_threshold": float(recall_score(y, decline, zero_division=0, sample_weight=weight)),
        "approval_rate": float(1 - np.average(decline, weights=w)),
        "default_rate": float(np.average(y, weights=w)),
        "mean_pd": float(np.average(p, weights=w)),
        "n": round(float(w.sum())),
    }  # fmt: skip


def roc_points(y: np.ndarray, p: np.ndarray, weight: np.ndarray | None = None) -> pd.DataFrame:
    fpr, tpr, thr = roc_curve(y, p, sample_weight=weight)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": np.minimum(thr, 1.0)})


def pr_points(y: np.ndarray, p: np.ndarray, weight: np.ndarray | None = None) -> pd.DataFrame:
    precision, recall, _ = precision_recall_curve(y, p, sample_weight=weight)
    return pd.DataFrame({"recall": recall, "precision": precision})


def score_distribution(
    y: np.ndarray, p: np.ndarray, bins: int = 20, weight: np.ndarray | None = None
) -> pd.DataFrame:
    """Histogram of predicted PD by outcome: share of each class per bin (wide)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    y = np.asarray(y, dtype=int)
    p = np.asarray(p)
    w = np.ones(len(p)) if weight is None else np.asarray(weight, dtype=float)
    out = pd.DataFrame({"bin_center": np.round((edges[:-1] + edges[1:]) / 2, 4)})
    for label, name in ((0, "non_default"), (1, "default")):
        counts, _ = np.histogram(p[y == label], bins=edges, weights=w[y == label])
        out[name] = counts / max(counts.sum(), 1)
    return out
