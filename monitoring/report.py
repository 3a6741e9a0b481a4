"""The Evidently reports of one monitoring run and the numbers the decision reads from them.

Two runs of the current Evidently API (not evidently.legacy):
- drift: the window against the training reference: per-column drift (Evidently's default
  test per column; DriftedColumnsCount gives the drifted share), PSI per column and of the score
  (monitoring/psi.py), drift of the predicted default rate, score quantiles, interventions;
- performance (only when enough outcomes arrived): realized ROC AUC on the labelled part of
  the window, against the reference scored by the same model.
`summarize_*` read a snapshot's JSON; nothing here touches the store or the filesystem."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from evidently import BinaryClassification, DataDefinition, Dataset, Report
from evidently.core.report import Snapshot
from evidently.metrics import (
    DriftedColumnsCount,
    LogLoss,
    MeanValue,
    MissingValueCount,
    QuantileValue,
    RocAuc,
    RowCount,
    SumValue,
    ValueDrift,
)

from monitoring import psi as _psi  # registers the stat test
from training import metrics as m

SCORE = "probability"
PREDICTED_DEFAULT = "predicted_default"
TARGET = "defaulted"
INTERVENED = "intervened"


@dataclass(frozen=True)
class Frames:
    """Both sides of a comparison: monitored columns plus score, predicted default flag,
    outcome (NaN when unknown) and intervention flag."""

    current: pd.DataFrame
    reference: pd.DataFrame
    columns: tuple[str, ...]  # the columns checked for drift: features + protected with data
    protected: tuple[str, ...] = ()  # every protected column (missing values counted)
    coverage: dict[str, float] = field(default_factory=dict)  # share of rows carrying each
    categorical: tuple[str, ...] = ()  # columns holding level text (the rest are numbers)


def _dataset(frame: pd.DataFrame, columns: Sequence[str], labelled: bool = False,
             extra: Sequence[str] = (), categorical: Sequence[str] = ()) -> Dataset:  # fmt: skip
    watched = [*columns, *(c for c in extra if c not in columns)]
    numeric = [*(c for c in watched if c not in categorical), SCORE, INTERVENED]
    levels = [c for c in watched if c in categorical]
    definition = DataDefinition(
        numerical_columns=numeric,
        categorical_columns=[*levels, PREDICTED_DEFAULT, *([TARGET] if labelled else [])],
        classification=[BinaryClassification(target=TARGET, prediction_probas=SCORE)]
        if labelled
        else None,
    )
    keep = [*numeric, *levels, PREDICTED_DEFAULT, *([TARGET] if labelled else [])]
    return Dataset.from_pandas(frame[keep], data_definition=definition)


def drift_report(frames: Frames, drift_share: float, psi_alert: float) -> Snapshot:
    cols = list(frames.columns)
    report = Report(
        [
            RowCount(),
            # What DataDriftPreset computes, without its legacy-rendered summary table, which
            # recomputes every column's drift a second time (~40% of the run at 100k rows).
            DriftedColumnsCount(columns=cols, drift_share=drift_share),
            *[ValueDrift(column=c) for c in cols],
            *[ValueDrift(column=c, method=_psi.NAME, threshold=psi_alert) for c in [*cols, SCORE]],
            ValueDrift(column=SCORE),
            ValueDrift(column=PREDICTED_DEFAULT),
            MeanValue(column=SCORE),
            MeanValue(column=PREDICTED_DEFAULT),
            *[QuantileValue(column=SCORE, quantile=q) for q in (0.1, 0.5, 0.9)],
            SumValue(column=INTERVENED),
            # protected attributes a lender did not collect: the share of rows without them
            *[MissingValueCount(column=c) for c in frames.protected],
        ]
    )
    return report.run(_dataset(frames.current, cols, extra=frames.protected, categorical=frames.categorical),
                      _dataset(frames.reference, cols, extra=frames.protected, categorical=frames.categorical))  # fmt: skip


def performance_report(frames: Frames) -> Snapshot:
    """Realized performance of the labelled rows of the window against the champion's
    out-of-sample reference (the rows it was evaluated on: its test AUC, not an in-sample one)."""
    current = frames.current[frames.current[TARGET].notna()].copy()
    current[TARGET] = current[TARGET].astype(int)
    reference = frames.reference.copy()
    reference[TARGET] = reference[TARGET].astype(int)
    report = Report([RowCount(), RocAuc(), LogLoss(), MeanValue(column=SCORE)])
    return report.run(
        _dataset(current, frames.columns, labelled=True, categorical=frames.categorical),
        _dataset(reference, frames.columns, labelled=True, categorical=frames.categorical),
    )


# --- reading snapshots -------------------------------------------------------------------


def _metrics(snapshot: Snapshot) -> list[tuple[str, dict[str, Any], Any]]:
    """(metric kind such as "ValueDrift", its config, its value) for each metric."""
    return [(item["config"]["type"].rsplit(":", 1)[-1], item["config"], item["value"])
            for item in snapshot.dict()["metrics"]]  # fmt: skip


def _is_p_value(method: str) -> bool:
    # Statistical tests report a p-value (drift when below the threshold); distances report a
    # distance (drift when at or above it).
    return "p_value" in method.lower()


def summarize_drift(
    snapshot: Snapshot, frames: Frames, psi_warn: float, psi_alert: float
) -> dict[str, Any]:
    cols = set(frames.columns)
    per_column: dict[str, dict[str, Any]] = {c: {} for c in frames.columns}
    out: dict[str, Any] = {"score": {}, "predicted_default_rate": {}}
    for kind, config, value in _metrics(snapshot):
        column = config.get("column")
        if kind == "DriftedColumnsCount":
            out["drifted_columns"] = int(value["count"])
            out["drift_share"] = float(value["share"])
        elif kind == "RowCount":
            out["rows"] = int(value)
        elif kind == "ValueDrift" and config.get("method") == _psi.NAME:
            target = per_column[column] if column in cols else out["score"]
            target["psi"] = float(value)
        elif kind == "ValueDrift":
            method, threshold = str(config.get("method")), float(config.get("threshold"))
            drifted = value < threshold if _is_p_value(method) else value >= threshold
            entry = {"method": method, "drift_score": float(value), "threshold": threshold,
                     "drifted": bool(drifted)}  # fmt: skip
            if column in cols:
                per_column[column].update(entry)
            elif column == SCORE:
                out["score"].update(entry)
            else:
                out["predicted_default_rate"].update(entry)
        elif kind == "MeanValue" and column == SCORE:
            out["score"]["mean_current"] = float(value)
        elif kind == "MeanValue" and column == PREDICTED_DEFAULT:
            out["predicted_default_rate"]["current"] = float(value)
        elif kind == "QuantileValue":
            out["score"][f"q{round(float(config['quantile']) * 100)}_current"] = float(value)
        elif kind == "SumValue" and column == INTERVENED:
            out["interventions"] = int(value)
        elif kind == "MissingValueCount":
            out.setdefault("protected_missing_share", {})[column] = float(value["share"])
    ref = frames.reference
    out["score"]["mean_reference"] = float(ref[SCORE].mean())
    out["predicted_default_rate"]["reference"] = float(ref[PREDICTED_DEFAULT].mean())
    for entry in per_column.values():
        p = entry.get("psi", float("nan"))
        entry["psi_level"] = "shifted" if p >= psi_alert else "watch" if p >= psi_warn else "stable"
    out["columns"] = per_column
    out["protected"] = {
        "collected_share": dict(frames.coverage),
        "drift_checked": [c for c in frames.columns if c in frames.protected],
    }
    return out


def realized_metrics(frames: Frames, bins: int, threshold: float) -> dict[str, float] | None:
    """Gini, KS, Brier, ECE and default rates of the labelled rows (pure, scikit-learn);
    None when they are all one class."""
    labelled = frames.current[frames.current[TARGET].notna()]
    y = labelled[TARGET].to_numpy(dtype=int)
    p = labelled[SCORE].to_numpy(dtype=float)
    if len(np.unique(y)) < 2:
        return None
    full = m.classification_metrics(y, p, threshold, bins)
    keep = ("roc_auc", "gini", "ks", "brier", "ece", "log_loss")
    return {**{k: float(full[k]) for k in keep}, "observed_default_rate": float(y.mean()),
            "mean_predicted": float(p.mean()), "labelled_rows": len(y)}  # fmt: skip


def summarize_performance(snapshot: Snapshot) -> dict[str, float]:
    out: dict[str, float] = {}
    for kind, _, value in _metrics(snapshot):
        if kind == "RocAuc":
            out["roc_auc"] = float(value)
        elif kind == "LogLoss":
            out["log_loss"] = float(value)
        elif kind == "RowCount":
            out["rows"] = int(value)
    return out
