"""Population Stability Index the way credit risk computes it, registered as an Evidently
stat test ("riskloop_psi") so it runs inside Evidently reports and dashboards.

Evidently's own "psi" bins by equal-width Sturges edges over both samples, which puts most of
a heavy-tailed amount (bills, limits) into one bin and hides shifts; the convention is
quantile bins of the reference (deciles), with each distinct value its own bin for a
low-cardinality column (statuses, indicators)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from evidently.legacy.calculations.stattests.registry import StatTest, register_stattest
from evidently.legacy.core import ColumnType

NAME = "riskloop_psi"
EPS = 1e-4  # floor on a bin's share: an empty bin would make PSI infinite
DEFAULT_BINS = 10


def bin_shares(
    reference: np.ndarray, current: np.ndarray, bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """Shares of each sample in bins fixed by the reference alone."""
    values = np.unique(reference)
    if len(values) <= bins:  # categorical-like: one bin per reference value, plus "other"
        ref_idx = np.searchsorted(values, reference)
        cur_idx = np.searchsorted(values, current)
        known = (cur_idx < len(values)) & (values[np.minimum(cur_idx, len(values) - 1)] == current)
        cur_idx = np.where(known, cur_idx, len(values))
        n = len(values) + 1
    else:
        edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
        ref_idx = np.searchsorted(edges, reference, side="right")
        cur_idx = np.searchsorted(edges, current, side="right")
        n = len(edges) + 1
    ref = np.bincount(ref_idx, minlength=n) / max(len(reference), 1)
    cur = np.bincount(cur_idx, minlength=n) / max(len(current), 1)
    return ref, cur


def psi(reference: np.ndarray, current: np.ndarray, bins: int = DEFAULT_BINS) -> float:
    """sum((cur - ref) * ln(cur / ref)) over reference-quantile bins; NaNs are left out."""
    reference = np.asarray(reference, dtype=float)
    current = np.asarray(current, dtype=float)
    reference, current = reference[~np.isnan(reference)], current[~np.isnan(current)]
    if len(reference) == 0 or len(current) == 0:
        return float("nan")
    ref, cur = bin_shares(reference, current, bins)
    ref, cur = np.maximum(ref, EPS), np.maximum(cur, EPS)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def psi_levels(reference: pd.Series, current: pd.Series) -> float:
    """PSI of a categorical column: one bin per reference level, plus "other"; missing left out."""
    reference, current = reference.dropna().astype(str), current.dropna().astype(str)
    if reference.empty or current.empty:
        return float("nan")
    levels = sorted(reference.unique())
    ref = reference.value_counts(normalize=True).reindex(levels, fill_value=0.0).to_numpy()
    cur_counts = current.value_counts(normalize=True)
    cur = np.append(cur_counts.reindex(levels, fill_value=0.0).to_numpy(),
                    cur_counts.drop(levels, errors="ignore").sum())  # fmt: skip
    ref, cur = np.maximum(np.append(ref, 0.0), EPS), np.maximum(cur, EPS)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def _evidently_psi(
    reference: pd.Series, current: pd.Series, feature_type: ColumnType, threshold: float
) -> tuple[float, bool]:
    if pd.api.types.is_numeric_dtype(reference) and pd.api.types.is_numeric_dtype(current):
        value = psi(pd.to_numeric(reference).to_numpy(), pd.to_numeric(current).to_numpy())
    else:
        value = psi_levels(reference, current)
    return value, bool(value >= threshold)


PSI_TEST = StatTest(
    name=NAME,
    display_name="PSI (reference deciles)",
    allowed_feature_types=[ColumnType.Numerical, ColumnType.Categorical],
    default_threshold=0.25,
)
register_stattest(PSI_TEST, default_impl=_evidently_psi)
