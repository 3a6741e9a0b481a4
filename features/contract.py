"""The data contract, compiled: one `Rule` per record field, from params.yaml's `data` section
(training) or from a registered model's `contract.json` (serving, monitoring, retraining).
Every validator is built from these rules: the frame checks here (prepare, the MLflow pyfunc,
the monitor's and retrain's readers) and serving's pydantic, msgspec and Arrow codecs.

Protected attributes are optional everywhere: a record, a file or a logged window may leave
them out (many lenders do not collect them); the model never reads them."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from riskloop.errors import DataContractError
from riskloop.settings import DataSettings

MAX_EXAMPLES = 3
CONTRACT_SCHEMA = 1  # version of contract.json's layout


@dataclass(frozen=True)
class Rule:
    """What one record field may hold."""

    name: str
    kind: Literal["numeric", "categorical", "onehot"]
    integer: bool = False
    nullable: bool = False
    low: float | None = None
    high: float | None = None
    levels: tuple[int | str, ...] = ()
    protected: bool = False

    @property
    def text(self) -> bool:
        """A categorical whose levels are strings (JSON strings, Arrow string columns)."""
        return any(isinstance(v, str) for v in self.levels)


class Contract:
    """The compiled contract: `rules` for every record field in declaration order,
    `model_inputs` in the order the model reads them, and the categorical codes (a level's
    position in its list) the model was trained with."""

    def __init__(self, data: DataSettings) -> None:
        self.data = data
        protected = set(data.protected_columns)
        rules: dict[str, Rule] = {}
        for col, r in data.numeric.items():
            rules[col] = Rule(col, "numeric", r.integer, r.nullable or col in protected, r.min,
                              r.max, protected=col in protected)  # fmt: skip
        for col, levels in data.levels.items():
            rules[col] = Rule(col, "categorical", nullable=col in protected or data.nullable_categorical(col),
                              levels=tuple(levels), protected=col in protected)  # fmt: skip
        for members in data.onehot.values():
            for col in members:
                rules[col] = Rule(col, "onehot", True, col in protected, 0, 1, protected=col in protected)  # fmt: skip
        self.rules = rules
        self.fields = tuple(rules)
        self.model_inputs = tuple(c for c in self.fields if not rules[c].protected)
        self.protected_columns = tuple(c for c in self.fields if rules[c].protected)
        self.codes = {c: {v: float(i) for i, v in enumerate(levels)}
                      for c, levels in data.levels.items()}  # fmt: skip

    # ------------------------------------------------------------------ identity
    def to_json(self) -> dict[str, Any]:
        """What a registered model carries (contract.json)."""
        return {"schema": CONTRACT_SCHEMA, "data": self.data.model_dump(mode="json"),
                "model_inputs": list(self.model_inputs), "fingerprint": self.fingerprint}  # fmt: skip

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Contract:
        contract = cls(DataSettings.model_validate(doc["data"]))
        if list(contract.model_inputs) != list(doc["model_inputs"]):
            raise DataContractError(
                "contract.json: the declared columns do not give the recorded model input order"
            )
        return contract

    @property
    def fingerprint(self) -> str:
        """Equal for two contracts that accept the same records and code them the same way."""
        rules = [[r.name, r.kind, r.integer, r.nullable, r.low, r.high, list(r.levels), r.protected]
                 for r in self.rules.values()]  # fmt: skip
        key = json.dumps({"rules": rules, "inputs": self.model_inputs, "onehot": self.data.onehot},
                         sort_keys=True)  # fmt: skip
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        # by fingerprint, not class: a model loaded with its own code has its own Contract class
        return getattr(other, "fingerprint", None) == self.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    # ------------------------------------------------------------------ coding
    def coded(self, frame: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """`columns` (default: the model inputs) as float64, categorical levels as codes."""
        out = {}
        for col in columns or self.model_inputs:
            values = frame[col]
            if col in self.codes:
                out[col] = values.map(self.codes[col]).astype("float64")
            else:
                out[col] = pd.to_numeric(values, errors="coerce").astype("float64")
        return pd.DataFrame(out, index=frame.index)

    def row_encoder(self) -> Callable[[Sequence[Sequence[Any]]], np.ndarray]:
        """Rows of model-input values (validated: levels are exact) -> float64 matrix with
        categorical codes; None is NaN (XGBoost's missing)."""
        cats = [(j, self.codes[c]) for j, c in enumerate(self.model_inputs) if c in self.codes]
        if not cats:
            return lambda rows: np.array(rows, dtype="float64")

        def encode(rows: Sequence[Sequence[Any]]) -> np.ndarray:
            out = []
            for row in rows:
                row = list(row)
                for j, codes in cats:
                    v = row[j]
                    row[j] = math.nan if v is None else codes[v]
                out.append(row)
            return np.array(out, dtype="float64")

        return encode

    def input_frame(self, raw: pd.DataFrame) -> pd.DataFrame:
        """The model inputs of `raw` typed as the MLflow model's signature declares them:
        float64 for numbers and integer levels, str for text levels."""
        out = {}
        for col in self.model_inputs:
            if self.rules[col].text:
                out[col] = raw[col].astype(object).where(raw[col].notna(), None)
            else:
                out[col] = pd.to_numeric(raw[col], errors="coerce").astype("float64")
        return pd.DataFrame(out, index=raw.index)


def onehot_error(group: str, values: Sequence[Any], optional: bool) -> str | None:
    """The one-hot rule on one record's members (each 0, 1 or None): exactly one 1, or, for
    a group that may be left out (a protected attribute), no member at all."""
    given = [v for v in values if v is not None]
    if not given and optional:
        return None
    if len(given) != len(values):
        return f"one-hot group {group!r}: give every member or none"
    if sum(given) != 1:
        return f"one-hot group {group!r} must have exactly one 1"
    return None


# ------------------------------------------------------------------------ checking frames
@dataclass(frozen=True)
class Violation:
    column: str
    rule: str
    count: int
    examples: tuple[str, ...] = ()  # the first offending rows, as `id=…: value`
    rows: tuple[int, ...] = ()  # positions of the first offending rows
    # which check found it, in the order the checks run: the same on every partition of a
    # dataset (same columns), so per-partition findings merge into the whole frame's order
    slot: tuple[int, int] = (0, 0)

    def __str__(self) -> str:
        tail = f"; e.g. {', '.join(self.examples)}" if self.examples else ""
        return f"column {self.column!r}: {self.rule} ({self.count} row(s){tail})"


def _check(out: list[Violation], df: pd.DataFrame, mask: pd.Series, column: str, rule: str,
           id_column: str | None, slot: tuple[int, int] = (0, 0)) -> None:  # fmt: skip
    mask = np.asarray(mask, dtype=bool)
    n = int(mask.sum())
    if not n:
        return
    pos = np.flatnonzero(mask)[:MAX_EXAMPLES]
    rows = df.iloc[pos]
    if id_column and id_column in df.columns:
        examples = tuple(f"{id_column}={i}: {v!r}"
                         for i, v in zip(rows[id_column], rows[column], strict=True))  # fmt: skip
    else:
        examples = tuple(f"row {p}: {v!r}" for p, v in zip(pos, rows[column], strict=True))
    out.append(Violation(column, rule, n, examples, tuple(int(p) for p in pos), slot))


def _is_number(values: pd.Series) -> pd.Series:
    """True where a value is a real number (bools and numeric strings are not)."""
    if pd.api.types.is_bool_dtype(values.dtype):
        return pd.Series(False, index=values.index)
    if pd.api.types.is_numeric_dtype(values.dtype):
        return pd.Series(True, index=values.index)
    return values.map(lambda v: isinstance(v, int | float | np.integer | np.floating)
                      and not isinstance(v, bool | np.bool_))  # fmt: skip


def check_values(raw: pd.DataFrame, contract: Contract, columns: Sequence[str],
                 id_column: str | None = None, from_text: bool = False) -> list[Violation]:  # fmt: skip
    """Row rules for `columns` (present in `raw`). `from_text`: values came from a CSV, where
    a number may arrive as text; otherwise a string or a boolean in a numeric column is a
    violation. A one-hot group is checked on the rows where every member passed its own rule
    (as serving does), and named at its last member."""
    out: list[Violation] = []
    refused: dict[str, np.ndarray] = {}  # rows where a column broke its own rule
    slots = itertools.count()

    def flag(col: str, mask: pd.Series | np.ndarray, rule_text: str) -> None:
        mask = np.asarray(mask, dtype=bool)
        refused[col] = refused.get(col, np.zeros(len(raw), dtype=bool)) | mask
        _check(out, raw, mask, col, rule_text, id_column, (0, next(slots)))

    for col in columns:
        rule, values = contract.rules[col], raw[col]
        missing = values.isna().to_numpy()
        if not rule.nullable:
            flag(col, missing, "missing value")
        if rule.kind == "categorical":
            levels = list(rule.levels)
            ok = values.map(lambda v, lv=levels: _is_level(v, lv)).to_numpy(dtype=bool)
            flag(col, ~ok & ~missing, f"not one of {levels}")
            continue
        numbers = pd.to_numeric(values, errors="coerce") if from_text else \
            pd.to_numeric(values.where(_is_number(values)), errors="coerce")  # fmt: skip
        x = numbers.to_numpy(dtype="float64", na_value=np.nan)
        flag(col, np.isnan(x) & ~missing, "not a number")
        finite = np.isfinite(x)
        flag(col, ~np.isnan(x) & ~finite, "not a finite number")
        with np.errstate(invalid="ignore"):
            if rule.integer:
                flag(col, finite & (x != np.floor(x)), "not an integer")
            if rule.low is not None:
                flag(col, finite & (x < rule.low), f"below minimum {rule.low:g}")
            if rule.high is not None:
                flag(col, finite & (x > rule.high), f"above maximum {rule.high:g}")
    for group, members in contract.data.onehot.items():
        if not all(m in columns for m in members):
            continue  # absent members are reported as missing columns
        block = raw[members].apply(pd.to_numeric, errors="coerce")
        checked = ~np.any([refused.get(m, np.zeros(len(raw), dtype=bool)) for m in members], axis=0)
        # all members missing is a group not collected (protected attributes may be)
        skipped = block.isna().all(axis=1) & all(contract.rules[m].nullable for m in members)
        one = block.notna().all(axis=1) & (block.sum(axis=1) == 1)
        _check(out, raw, checked & ~skipped & ~one, members[-1],
               f"one-hot group {group!r} must have exactly one 1 per row", id_column, (0, next(slots)))  # fmt: skip
    return out


def _is_level(value: Any, levels: list) -> bool:
    if isinstance(value, bool | np.bool_):
        return False
    if isinstance(value, float | np.floating) and not float(value).is_integer():
        return False
    try:
        return value in levels
    except TypeError:
        return False


def compiled(data: DataSettings | Contract) -> Contract:
    return data if isinstance(data, Contract) else Contract(data)


def find_violations(raw: pd.DataFrame, data: DataSettings | Contract, require_target: bool = True,
                    from_text: bool = True, whole: bool = True) -> list[Violation]:  # fmt: skip
    """All contract violations of a raw data file (id, target and every record field);
    an empty list means the frame is valid. Protected columns may be absent. `whole=False`:
    `raw` is one partition of a dataset, checked row by row only; the checks across rows
    (duplicate ids, a one-class target, no rows) are the caller's, over all partitions."""
    contract = compiled(data)
    data = contract.data
    out: list[Violation] = []
    required = [data.id_column, *([data.target] if require_target else []),
                *(c for c in contract.fields if not contract.rules[c].protected)]  # fmt: skip
    for col in required:
        if col not in raw.columns:
            out.append(Violation(col, "missing column", len(raw)))
    allowed = {data.id_column, data.target, *contract.fields, *data.ignore}
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
    present = [c for c in contract.fields if c in raw.columns]
    out += check_values(raw, contract, present, idc, from_text=from_text)
    _check(out, raw, raw[idc].isna(), idc, "missing id", idc, (1, 0))
    if whole:
        _check(out, raw, raw[idc].duplicated(keep=False) & raw[idc].notna(), idc, "duplicate id", idc,
               DUPLICATE_ID_SLOT)  # fmt: skip
    if require_target:
        target = target_codes(raw[data.target], data)
        allowed_values = (f"one of {list(data.target_labels)} (data.target_labels)"
                          if data.target_labels else "0 or 1")  # fmt: skip
        _check(
            out, raw, target.isna(), data.target, f"target must be {allowed_values}", idc, (1, 2)
        )
        if whole:
            out += class_violations({int(v) for v in target.dropna().unique()}, len(raw), data)
    if whole and len(raw) == 0:
        out.append(Violation(idc, "no rows", 0, slot=(1, 4)))
    return out


DUPLICATE_ID_SLOT = (1, 1)


def class_violations(present: set[int], rows: int, data: DataSettings) -> list[Violation]:
    """A target with fewer than two classes among `rows` rows (none for no rows)."""
    if rows and len(present) < 2:
        return [Violation(data.target, f"one-class target (only {sorted(present)})", rows,
                          slot=(1, 3))]  # fmt: skip
    return []


def merge_violations(parts: Sequence[tuple[int, list[Violation]]]) -> list[Violation]:
    """The findings of a dataset's partitions (each given with the position of its first row
    in the whole) as one finding per check, in the order a whole-frame check lists them:
    counts summed, the first rows and examples kept. Pure."""
    merged: dict[tuple, Violation] = {}
    for offset, found in parts:
        for v in found:
            key = (v.slot, v.column, v.rule)
            rows = tuple(offset + r for r in v.rows)
            seen = merged.get(key)
            if seen is None:
                merged[key] = dataclasses.replace(v, rows=rows)
                continue
            room = MAX_EXAMPLES - len(seen.rows)
            merged[key] = dataclasses.replace(seen, count=seen.count + v.count,
                                              examples=seen.examples + v.examples[:max(room, 0)],
                                              rows=seen.rows + rows[:max(room, 0)])  # fmt: skip
    return sorted(merged.values(), key=lambda v: v.slot)  # stable: schema findings keep their order


def as_label(value: Any) -> str | None:
    """A target value as data.target_labels writes it (a CSV's 2 and a Parquet's 2.0 are '2')."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def target_codes(values: pd.Series, data: DataSettings) -> pd.Series:
    """The target as 1 (default) / 0 (repaid), float with NaN where a value is neither: a
    0/1 column as it is, any other coding through data.target_labels."""
    if not data.target_labels:
        numbers = pd.to_numeric(values, errors="coerce")
        return numbers.where(numbers.isin([0, 1])).astype("float64")
    return values.map(lambda v: data.target_labels.get(as_label(v))).astype("float64")


def target_values(codes: pd.Series, data: DataSettings) -> pd.Series:
    """1/0 outcomes written as the data writes its target (the inverse of target_codes)."""
    if not data.target_labels:
        return codes.astype(int)
    label = {code: value for value, code in data.target_labels.items()}
    return codes.astype(int).map(label)


def raise_violations(violations: list[Violation], source: str) -> None:
    if violations:
        listing = "\n".join(f"  - {v}" for v in violations)
        raise DataContractError(f"{source} violates the data contract:\n{listing}")


def typed(raw: pd.DataFrame, contract: Contract) -> pd.DataFrame:
    """A checked frame with the contract's dtypes: integers as int64 where no value may be
    missing, float64 otherwise; levels as given; absent protected columns as missing."""
    clean = raw.drop(columns=[c for c in contract.data.ignore if c in raw.columns])
    for col in contract.fields:
        rule = contract.rules[col]
        if col not in clean.columns:
            clean[col] = np.nan if not rule.text else None
            continue
        if rule.kind == "categorical":
            if not rule.text:
                numbers = pd.to_numeric(clean[col])
                clean[col] = numbers.astype("int64" if numbers.notna().all() else "float64")
            continue
        numbers = pd.to_numeric(clean[col])
        clean[col] = numbers.astype("int64" if rule.integer and not rule.nullable else "float64")
    data = contract.data
    if data.target in clean.columns:
        clean[data.target] = target_codes(clean[data.target], data).astype("int64")
    return clean.reset_index(drop=True)


def validate_raw(raw: pd.DataFrame, data: DataSettings | Contract,
                 source: str = "raw data") -> pd.DataFrame:  # fmt: skip
    """Check a raw data file against the contract; return a typed frame or raise naming every
    violation."""
    contract = compiled(data)
    raise_violations(find_violations(raw, contract), source)
    return typed(raw, contract)
