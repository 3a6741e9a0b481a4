"""Evaluation metrics from score counts: for each distinct predicted probability, how many
defaulters and payers got it. Counts add up across partitions, so a scored dataset no
process holds is evaluated exactly: each partition counts its own rows, the counts are
summed, and every metric of training.metrics.classification_metrics follows: scikit-learn's
own, with each distinct score a weighted row. Pure; a test holds it equal to the whole-frame
metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from training.metrics import classification_metrics


def score_counts(y: np.ndarray, p: np.ndarray) -> pd.DataFrame:
    """One partition's counts: columns p, bad, good (p distinct, sorted)."""
    y = np.asarray(y, dtype=int)
    frame = pd.DataFrame({"p": np.asarray(p, dtype=float), "bad": y, "good": 1 - y})
    return frame.groupby("p", sort=True).sum().reset_index()


def merge(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Partitions' counts as one table."""
    both = pd.concat(tables, ignore_index=True)
    return both.groupby("p", sort=True)[["bad", "good"]].sum().reset_index()


def as_rows(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y, p, weight): each distinct score once as a defaulter and once as a payer, weighted
    by how many had it; training.metrics takes these as the rows they stand for."""
    p = table["p"].to_numpy(dtype=float)
    y = np.concatenate([np.ones(len(p), dtype=int), np.zeros(len(p), dtype=int)])
    w = np.concatenate([table["bad"].to_numpy(dtype=float), table["good"].to_numpy(dtype=float)])
    used = w > 0
    return y[used], np.concatenate([p, p])[used], w[used]


def roc_auc(table: pd.DataFrame) -> float:
    y, p, w = as_rows(table)
    return float(roc_auc_score(y, p, sample_weight=w))


def metrics(table: pd.DataFrame, threshold: float, bins: int) -> dict[str, float]:
    """training.metrics.classification_metrics, from merged counts."""
    y, p, w = as_rows(table)
    return classification_metrics(y, p, threshold, bins, w)
