"""Evaluation report pieces built from a scored split (pure: frames in, frames out)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from riskloop.settings import DataSettings
from training.gates import group_table


def protected_groups(raw: pd.DataFrame, data: DataSettings) -> dict[str, pd.Series]:
    """One grouping per protected attribute: levels, the active one-hot member, or quartiles,
    named by `data.group_labels` where it names them; missing (None) where a row does not carry
    the attribute (many lenders do not collect it)."""
    out: dict[str, pd.Series] = {}
    for name in data.protected:
        if name in data.onehot:
            block = raw.reindex(columns=data.onehot[name]).astype("float64")
            active = block.fillna(-1).idxmax(axis=1)
            groups = active.where(block.notna().any(axis=1), None)
        else:
            values = raw[name] if name in raw.columns else pd.Series(None, index=raw.index)
            if name not in data.categorical:
                values = pd.qcut(pd.to_numeric(values), 4, duplicates="drop")
            groups = values.astype(object).where(values.notna(), None)
        out[name] = groups.map(lambda v, n=name: None if v is None else group_name(data, n, v))
    return out


def group_name(data: DataSettings, attribute: str, value: object) -> str:
    """A group as people read it: its label, else its level (a float-typed column's 1.0 is
    level 1: a missing value elsewhere in the column made it float)."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        value = int(value)
    labels = {str(k): v for k, v in data.group_labels.get(attribute, {}).items()}
    return labels.get(str(value), str(value))


def fairness_table(raw: pd.DataFrame, y: np.ndarray, p: np.ndarray, data: DataSettings,
                   approved: np.ndarray) -> pd.DataFrame:  # fmt: skip
    """Per protected group on the rows that carry the attribute (gates.group_table, with
    `approved` the served decision per row); `collected_share` says how many rows that is."""
    parts = []
    for name, groups in protected_groups(raw, data).items():
        table = group_table(groups, y, p, approved)
        table.insert(0, "attribute", name)
        table["default_rate"] = table["defaults"] / table["n"]
        table["collected_share"] = float(groups.notna().mean()) if len(groups) else 0.0
        parts.append(table)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def importance(contributions: pd.DataFrame, top: int) -> pd.DataFrame:
    """Global importance: mean |TreeSHAP contribution| per feature (log-odds)."""
    mean_abs = contributions.drop(columns="bias").abs().mean().sort_values(ascending=False)
    return mean_abs.head(top).rename("mean_abs_contribution").rename_axis("feature").reset_index()


def comparison(challenger: dict[str, float], champion: dict[str, float] | None,
               keys: tuple[str, ...] = ("roc_auc", "gini", "ks", "brier", "log_loss", "ece")) -> pd.DataFrame:  # fmt: skip
    rows = []
    for k in keys:
        row = {"metric": k, "challenger": challenger[k]}
        if champion is not None:
            row |= {"champion": champion[k], "delta": challenger[k] - champion[k]}
        rows.append(row)
    return pd.DataFrame(rows)
