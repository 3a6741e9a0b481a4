"""Evaluation metrics from score counts: for each distinct predicted probability, how many
defaulters and payers got it. Counts add up across partitions, so a scored dataset no
process holds is evaluated exactly: each partition counts its own rows, the counts are
summed, and every metric of training.metrics.classification_metrics follows (ties handled as
scikit-learn handles them). Pure; a test holds it equal to the whole-frame metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd


def score_counts(y: np.ndarray, p: np.ndarray) -> pd.DataFrame:
    """One partition's counts: columns p, bad, good (p distinct, sorted)."""
    y = np.asarray(y, dtype=int)
    frame = pd.DataFrame({"p": np.asarray(p, dtype=float), "bad": y, "good": 1 - y})
    return frame.groupby("p", sort=True).sum().reset_index()


def merge(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Partitions' counts as one table."""
    both = pd.concat(tables, ignore_index=True)
    return both.groupby("p", sort=True)[["bad", "good"]].sum().reset_index()


def roc(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(tpr, fpr) over the distinct scores, highest first (scikit-learn's thresholds)."""
    bad = table["bad"].to_numpy(dtype=float)[::-1]
    good = table["good"].to_numpy(dtype=float)[::-1]
    return (np.concatenate([[0.0], np.cumsum(bad) / bad.sum()]),
            np.concatenate([[0.0], np.cumsum(good) / good.sum()]))  # fmt: skip


def roc_auc(table: pd.DataFrame) -> float:
    tpr, fpr = roc(table)
    return float(np.trapezoid(tpr, fpr))


def metrics(table: pd.DataFrame, threshold: float, bins: int) -> dict[str, float]:
    """training.metrics.classification_metrics, from merged counts."""
    p = table["p"].to_numpy(dtype=float)
    bad = table["bad"].to_numpy(dtype=float)
    good = table["good"].to_numpy(dtype=float)
    n_bad, n_good = bad.sum(), good.sum()
    n = n_bad + n_good
    tpr, fpr = roc(table)
    auc = float(np.trapezoid(tpr, fpr))
    clipped = np.clip(p, np.finfo(float).eps, 1 - np.finfo(float).eps)  # sklearn's log_loss
    decline = p >= threshold
    tp, fp = bad[decline].sum(), good[decline].sum()
    return {
        "roc_auc": auc,
        "gini": 2 * auc - 1,
        "ks": float(np.max(tpr - fpr)),
        "brier": float((bad * (1 - p) ** 2 + good * p**2).sum() / n),
        "log_loss": float(-(bad * np.log(clipped) + good * np.log1p(-clipped)).sum() / n),
        "ece": calibration_error(p, bad, good, bins),
        "precision_at_threshold": float(tp / (tp + fp)) if tp + fp else 0.0,
        "recall_at_threshold": float(tp / n_bad) if n_bad else 0.0,
        "approval_rate": float(1 - (tp + fp) / n),
        "default_rate": float(n_bad / n),
        "mean_pd": float((p * (bad + good)).sum() / n),
        "n": int(n),
    }


def calibration_error(p: np.ndarray, bad: np.ndarray, good: np.ndarray, bins: int) -> float:
    """training.metrics.expected_calibration_error from counts (the same equal-width bins)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(idx, weights=bad + good, minlength=bins)
    predicted = np.bincount(idx, weights=p * (bad + good), minlength=bins)
    observed = np.bincount(idx, weights=bad, minlength=bins)
    used = count > 0
    gaps = np.abs(predicted[used] / count[used] - observed[used] / count[used])
    return float((count[used] / count.sum() * gaps).sum())
