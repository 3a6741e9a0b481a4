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


def ks_statistic(y: np.ndarray, p: np.ndarray) -> float:
    """Kolmogorov-Smirnov: the largest gap between the score CDFs of defaulters and payers."""
    fpr, tpr, _ = roc_curve(y, p)
    return float(np.max(tpr - fpr))


def calibration_table(y: np.ndarray, p: np.ndarray, bins: int) -> pd.DataFrame:
    """Equal-width probability bins: mean predicted vs observed default rate and count."""
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        m = idx == b
        if m.any():
            rows.append({"bin": b, "lower": edges[b], "upper": edges[b + 1], "count": int(m.sum()),
                         "mean_predicted": float(p[m].mean()), "observed_rate": float(y[m].mean())})  # fmt: skip
    return pd.DataFrame(rows)


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int) -> float:
    table = calibration_table(y, p, bins)
    weights = table["count"] / table["count"].sum()
    return float((weights * (table["mean_predicted"] - table["observed_rate"]).abs()).sum())


def classification_metrics(
    y: np.ndarray, p: np.ndarray, threshold: float, bins: int
) -> dict[str, float]:
    """Everything the evaluate stage reports for one scored split."""
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=float)
    auc = float(roc_auc_score(y, p))
    decline = (p >= threshold).astype(int)
    return {
        "roc_auc": auc,
        "gini": 2 * auc - 1,
        "ks": ks_statistic(y, p),
        "brier": float(brier_score_loss(y, p)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "ece": expected_calibration_error(y, p, bins),
        "precision_at_threshold": float(precision_score(y, decline, zero_division=0)),
        "recall_at_threshold": float(recall_score(y, decline, zero_division=0)),
        "approval_rate": float(1 - decline.mean()),
        "default_rate": float(y.mean()),
        "mean_pd": float(p.mean()),
        "n": len(y),
    }


def roc_points(y: np.ndarray, p: np.ndarray) -> pd.DataFrame:
    fpr, tpr, thr = roc_curve(y, p)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": np.minimum(thr, 1.0)})


def pr_points(y: np.ndarray, p: np.ndarray) -> pd.DataFrame:
    precision, recall, _ = precision_recall_curve(y, p)
    return pd.DataFrame({"recall": recall, "precision": precision})


def score_distribution(y: np.ndarray, p: np.ndarray, bins: int = 20) -> pd.DataFrame:
    """Histogram of predicted PD by outcome: share of each class per bin (wide)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    y = np.asarray(y, dtype=int)
    out = pd.DataFrame({"bin_center": np.round((edges[:-1] + edges[1:]) / 2, 4)})
    for label, name in ((0, "non_default"), (1, "default")):
        counts, _ = np.histogram(np.asarray(p)[y == label], bins=edges)
        out[name] = counts / max(counts.sum(), 1)
    return out
