"""The raw-data contract: every rule names its column, the rule and a few offending rows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from riskloop.errors import DataContractError
from riskloop.settings import DataSettings

MAX_EXAMPLES = 3


@dataclass(frozen=True)
class Violation:
    column: str
    rule: str
    count: int
    examples: str = ""

    def __str__(self) -> str:
        tail = f"; e.g. {self.examples}" if self.examples else ""
        return f"column {self.column!r}: {self.rule} ({self.count} row(s){tail})"


def _examples(df: pd.DataFrame, mask: pd.Series, column: str, id_column: str) -> str:
    rows = df.loc[mask].head(MAX_EXAMPLES)
    ids = rows.get(id_column, rows.index)
    return ", ".join(f"{id_column}={i}: {v!r}" for i, v in zip(ids, rows[column], strict=True))


def _check(out: list[Violation], df: pd.DataFrame, mask: pd.Series, column: str, rule: str,
           id_column: str) -> None:  # fmt: skip
    n = int(mask.sum())
    if n:
        out.append(Violation(column, rule, n, _examples(df, mask, column, id_column)))


def find_violations(
    raw: pd.DataFrame, data: DataSettings, require_target: bool = True
) -> list[Violation]:
    """All contract violations in `raw`; an empty list means the frame is valid."""
    out: list[Violation] = []
    required = [data.id_column, *([data.target] if require_target else []), *data.feature_columns]
    for col in required:
        if col not in raw.columns:
            out.append(Violation(col, "missing column", len(raw)))
    allowed = {data.id_column, data.target, *data.feature_columns}
    if data.time_column:
        allowed.add(data.time_column)
    for col in raw.columns:
        if col not in allowed:
            out.append(
                Violation(str(col), "column not declared in params.yaml data section", len(raw))
            )
    if out:
        return out  # row-level rules are meaningless on the wrong columns
    idc = data.id_column

    for col, rule in data.numeric.items():
        values = pd.to_numeric(raw[col], errors="coerce")
        _check(out, raw, values.isna() & raw[col].notna(), col, "not a number", idc)
        if not rule.nullable:
            _check(out, raw, raw[col].isna(), col, "missing value", idc)
        if rule.integer:
            _check(
                out, raw, values.notna() & (values != np.floor(values)), col, "not an integer", idc
            )
        if rule.min is not None:
            _check(out, raw, values < rule.min, col, f"below minimum {rule.min:g}", idc)
        if rule.max is not None:
            _check(out, raw, values > rule.max, col, f"above maximum {rule.max:g}", idc)

    for col, levels in data.categorical.items():
        _check(out, raw, ~raw[col].isin(levels), col, f"not one of {levels}", idc)

    for group, members in data.onehot.items():
        block = raw[members].apply(pd.to_numeric, errors="coerce")
        not_binary = ~block.isin([0, 1]).all(axis=1)
        _check(
            out,
            raw,
            not_binary,
            members[0],
            f"one-hot group {group!r} has a value other than 0/1",
            idc,
        )
        _check(out, raw, ~not_binary & (block.sum(axis=1) != 1), members[0],
               f"one-hot group {group!r} must have exactly one 1 per row", idc)  # fmt: skip

    _check(out, raw, raw[idc].isna(), idc, "missing id", idc)
    _check(out, raw, raw[idc].duplicated(keep=False) & raw[idc].notna(), idc, "duplicate id", idc)

    if require_target:
        target = pd.to_numeric(raw[data.target], errors="coerce")
        _check(out, raw, ~target.isin([0, 1]), data.target, "target must be 0 or 1", idc)
        present = {int(v) for v in target.dropna().unique() if v in (0, 1)}
        if len(raw) and len(present) < 2:
            out.append(
                Violation(data.target, f"one-class target (only {sorted(present)})", len(raw))
            )
    if len(raw) == 0:
        out.append(Violation(idc, "no rows", 0))
    return out


def validate_raw(raw: pd.DataFrame, data: DataSettings, source: str = "raw data") -> pd.DataFrame:
    """Check `raw` against the contract; return a typed frame or raise naming every violation."""
    violations = find_violations(raw, data)
    if violations:
        listing = "\n".join(f"  - {v}" for v in violations)
        raise DataContractError(f"{source} violates the data contract:\n{listing}")
    clean = raw.copy()
    for col, rule in data.numeric.items():
        clean[col] = pd.to_numeric(clean[col]).astype(
            "float64" if not rule.integer or rule.nullable else "int64"
        )
    for members in data.onehot.values():
        clean[members] = clean[members].astype("int64")
    clean[data.target] = clean[data.target].astype("int64")
    return clean.reset_index(drop=True)
