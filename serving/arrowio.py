"""`POST /predict` in Apache Arrow's IPC stream format (`application/vnd.apache.arrow.stream`):
the I/O format for large batches. A 10k-row JSON body costs ~46 ms to decode and ~30 ms to
turn into a matrix on one core here; an Arrow body is columns already, validated with
vectorized checks and answered with columns (bench/RESULTS.md).

Request: one record batch stream whose columns are the record fields of the JSON API (the
raw dataset's columns, optional `customer_id`), one row per record. `explain` and
`request_id` travel in the query string. The same data contract as the JSON path (compiled
from the same `features.contract.Contract`): numbers in numeric columns (an integer column
takes an integer type or whole floats), every value within its bounds and levels, text levels
as strings, non-nullable columns without nulls, one-hot groups with exactly one 1, no unknown
columns, at most `max_records` rows. A violation is a 422 whose body names the column and
the first offending rows (`records.<row>.<column>`).

Response: an Arrow stream with one row per record: prediction_id, customer_id,
probability_of_default, risk_score, risk_band, decision, reasons (list of {feature, value,
contribution}), model_name, model_version; with `explain=all` also base_value and one
`contribution.<feature>` column per feature.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, get_args
from urllib.parse import parse_qsl

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.contract import Contract, Rule
from riskloop.settings import ServingSettings
from serving.schemas import ID_CHARS, MAX_ID_LENGTH, REQUEST_ID_CHARS, Explain

CONTENT_TYPE = "application/vnd.apache.arrow.stream"
MAX_ROW_ERRORS = 10  # offending rows named per column; the count says how many in all
_CUSTOMER_ID = rf"^[{ID_CHARS}]{{1,{MAX_ID_LENGTH}}}$"  # RE2: `$` is the end of the text
_EXPLAIN = get_args(Explain)
_REQUEST_ID = re.compile(f"[{REQUEST_ID_CHARS}]*")
REASONS = pa.list_(
    pa.struct(
        [
            ("feature", pa.string()),
            ("value", pa.float64()),
            ("level", pa.string()),
            ("contribution", pa.float64()),
            ("text", pa.string()),
        ]
    )
)


class ArrowRequestError(ValueError):
    """A request the contract refuses: `status` (400 unreadable, 422 invalid) and `errors`
    in the JSON API's shape ({field, message, type})."""

    def __init__(self, status: int, errors: list[dict[str, str]]) -> None:
        super().__init__(errors[0]["message"] if errors else "invalid request")
        self.status, self.errors = status, errors


@dataclass(frozen=True)
class ColumnarRequest:
    values: np.ndarray  # (rows, model inputs) float64, categoricals coded, NaN = missing
    customers: list[str | None]
    inputs_json: list[str]  # per row: the JSON object the prediction log keeps
    explain: str
    request_id: str | None

    def __len__(self) -> int:
        return len(self.customers)


def _error(field: str, message: str, kind: str) -> dict[str, str]:
    return {"field": field, "message": message, "type": kind}


class ArrowCodec:
    """Decodes and validates request streams against the data contract; encodes answers.
    Values come out in the model's input order (protected columns are optional)."""

    def __init__(self, contract: Contract, serving: ServingSettings) -> None:
        self.contract, self.serving = contract, serving
        self.inputs = list(contract.model_inputs)
        self.rules: dict[str, Rule] = dict(contract.rules)
        self.required = [c for c, r in self.rules.items() if not r.protected]

    # ------------------------------------------------------------------ decoding
    def decode(self, body: bytes, query: str) -> ColumnarRequest:
        explain, request_id = self._query(query)
        table = self._read(body)
        errors = self._check_columns(table)  # named with every value problem, as pydantic does
        n = table.num_rows
        coded: dict[str, np.ndarray] = {}
        refused: set[str] = set()
        texts: list[tuple[str, pa.Array]] = []  # (column, JSON text of each value)
        for col in table.column_names:
            if col == "customer_id" or col not in self.rules or table.column_names.count(col) > 1:
                continue
            column = table.column(col).combine_chunks()
            value, text, problems = self._column(col, column)
            errors += problems
            if problems:
                refused.add(col)
            coded[col] = value
            texts.append((col, text))
        self._onehot(table, refused, errors)
        customers = self._customers(table, errors)
        if errors:
            raise ArrowRequestError(422, errors)
        values = np.empty((n, len(self.inputs)))
        for j, col in enumerate(self.inputs):
            values[:, j] = coded[col]
        return ColumnarRequest(values, customers, _json_objects(texts, n), explain, request_id)

    def _query(self, query: str) -> tuple[str, str | None]:
        params = dict(parse_qsl(query, keep_blank_values=True))
        unknown = sorted(set(params) - {"explain", "request_id"})
        errors = [_error(k, "unknown query parameter", "extra_forbidden") for k in unknown]
        explain = params.get("explain", "top")
        if explain not in _EXPLAIN:
            errors.append(
                _error("explain", f"must be one of {', '.join(_EXPLAIN)}", "literal_error")
            )
        request_id = params.get("request_id")
        if request_id is not None and len(request_id) > MAX_ID_LENGTH:
            errors.append(
                _error("request_id", f"at most {MAX_ID_LENGTH} characters", "string_too_long")
            )
        elif request_id is not None and not _REQUEST_ID.fullmatch(request_id):
            errors.append(
                _error("request_id", "printable ASCII characters only", "string_pattern_mismatch")
            )
        if errors:
            raise ArrowRequestError(422, errors)
        return explain, request_id

    def _read(self, body: bytes) -> pa.Table:
        try:
            with pa.ipc.open_stream(pa.py_buffer(body)) as reader:
                table = reader.read_all()
            # IPC reading checks the framing, not the buffers: bad offsets in a string column
            # would send the compute kernels below out of bounds (a segfault). Full
            # validation is linear in the body and cheap next to scoring.
            table.validate(full=True)
        except (pa.ArrowException, ValueError, OSError) as exc:  # ValueError: names not UTF-8
            raise ArrowRequestError(400, [_error("body", f"not an Arrow IPC stream: {exc}", "arrow_invalid")]) from exc  # fmt: skip
        if not 1 <= table.num_rows <= self.serving.max_records:
            raise ArrowRequestError(422, [_error("records", f"1 to {self.serving.max_records} rows, got {table.num_rows}",
                                                 "too_long" if table.num_rows else "too_short")])  # fmt: skip
        return table

    def _check_columns(self, table: pa.Table) -> list[dict[str, str]]:
        names = table.column_names
        errors = [
            _error(c, "column given twice", "duplicate")
            for c in sorted({c for c in names if names.count(c) > 1})
        ]
        errors += [_error(c, "unknown column", "extra_forbidden") for c in names
                   if c not in self.rules and c != "customer_id"]  # fmt: skip
        errors += [
            _error(c, "required column missing", "missing") for c in self.required if c not in names
        ]
        return errors

    def _column(self, col: str, column: pa.Array) -> tuple[np.ndarray, pa.Array, list]:
        """(model-input values as float64, JSON text per value, errors) for one column."""
        rule, typ = self.rules[col], column.type
        if rule.kind == "categorical":
            return self._categorical(col, column, rule)
        if not (pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_null(typ)):
            want = "an integer type" if rule.integer else "a numeric type"
            return (
                np.zeros(len(column)),
                column,
                [_error(col, f"needs {want}, got {typ}", "type_error")],
            )
        values = column.to_numpy(zero_copy_only=False).astype("float64")  # nulls -> NaN
        nulls = column.is_null().to_numpy(zero_copy_only=False)
        problems: list[dict[str, str]] = []
        if not rule.nullable and nulls.any():
            problems += _rows(col, nulls, "a value is required", "missing")
        finite = np.isfinite(values) | nulls
        if not finite.all():
            problems += _rows(col, ~finite, "must be a finite number", "finite_number")
        valid = finite & ~nulls
        with np.errstate(invalid="ignore"):
            if rule.integer:
                fraction = valid & (values != np.trunc(values))
                problems += _rows(col, fraction, "must be an integer", "int_from_float")
            if rule.low is not None:
                below = values < rule.low
                problems += _rows(
                    col, below & valid, f"must be >= {rule.low:g}", "greater_than_equal"
                )
            if rule.high is not None:
                above = values > rule.high
                problems += _rows(
                    col, above & valid, f"must be <= {rule.high:g}", "less_than_equal"
                )
        if problems:  # the request is refused: no log text needed (nor castable, e.g. NaN)
            return values, column, problems
        shown = values[valid]
        if pa.types.is_null(typ):
            column = pa.nulls(len(column), pa.int64())
        elif (
            pa.types.is_floating(typ)
            and np.all(np.abs(shown) < 2**53)
            and np.all(shown == np.trunc(shown))
        ):
            column = column.cast(pa.int64())  # whole amounts: integer text costs ~1/3 of float text
        text = pc.cast(column, pa.string())
        return values, pc.fill_null(text, "null") if rule.nullable else text, problems

    def _categorical(
        self, col: str, column: pa.Array, rule: Rule
    ) -> tuple[np.ndarray, pa.Array, list]:
        levels = pa.array(list(rule.levels))
        typ = column.type
        if rule.text:
            fits = pa.types.is_string(typ) or pa.types.is_large_string(typ)
        else:
            fits = pa.types.is_integer(typ) or pa.types.is_floating(typ)
        if not (fits or pa.types.is_null(typ)):
            want = "a string type" if rule.text else "a numeric type"
            return (
                np.zeros(len(column)),
                column,
                [
                    _error(
                        col, f"needs {want} (levels {list(rule.levels)}), got {typ}", "type_error"
                    )
                ],
            )
        if pa.types.is_null(typ):
            index = pa.nulls(len(column), pa.int32())
        elif pa.types.is_floating(typ):  # whole floats name integer levels (3.0 is 3)
            values = column.to_numpy(zero_copy_only=False)
            whole = (np.abs(values) < 2**53) & (values == np.trunc(values))  # NaN and inf are not
            as_int = pa.array(np.where(whole, values, 0).astype("int64"), mask=~whole)
            index = pc.index_in(as_int, value_set=levels)
        else:
            index = _index_of_integers(column, levels)
        missing = index.is_null().to_numpy(zero_copy_only=False)
        nulls = column.is_null().to_numpy(zero_copy_only=False)
        problems: list[dict[str, str]] = []
        if not rule.nullable and nulls.any():
            problems += _rows(col, nulls, "a value is required", "missing")
        problems += _rows(
            col, missing & ~nulls, f"must be one of {list(rule.levels)}", "literal_error"
        )
        code = index.to_numpy(zero_copy_only=False).astype("float64")
        as_json = pa.array([json.dumps(v) for v in rule.levels])
        return code, pc.fill_null(as_json.take(index), "null"), problems

    def _onehot(self, table: pa.Table, refused: set[str], errors: list) -> None:
        """Exactly one 1 per row in each one-hot group (none at all where it may be left out:
        an absent optional member is missing), named at the group's last member as every
        path names it; rows are checked only where every member passed its own rule."""
        names = table.column_names
        for group, members in self.contract.data.onehot.items():
            if any(m in refused or names.count(m) > 1 or (m not in names and not self.rules[m].nullable)
                   for m in members):  # fmt: skip
                continue  # a refused, doubled or missing member is named by its own rule
            block = np.column_stack([
                table.column(m).combine_chunks().to_numpy(zero_copy_only=False).astype("float64")
                if m in names else np.full(table.num_rows, np.nan) for m in members
            ])  # fmt: skip
            given = ~np.isnan(block)
            optional = all(self.rules[m].nullable for m in members)
            ok = (given.all(axis=1) & (np.nansum(block, axis=1) == 1)) | (
                ~given.any(axis=1) & optional
            )
            errors += _rows(members[-1], ~ok, f"one-hot group {group!r} must have exactly one 1 "
                                              "(or, if optional, none)", "onehot")  # fmt: skip

    @staticmethod
    def _customers(table: pa.Table, errors: list) -> list[str | None]:
        if table.column_names.count("customer_id") != 1:  # absent, or named as a duplicate
            return [None] * table.num_rows
        column = table.column("customer_id").combine_chunks()
        if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
            errors.append(
                _error("customer_id", f"needs a string type, got {column.type}", "type_error")
            )
            return []
        ok = pc.fill_null(pc.match_substring_regex(column, _CUSTOMER_ID), True).to_numpy(
            zero_copy_only=False
        )
        errors += _rows("customer_id", ~ok, f"must match {_CUSTOMER_ID}", "string_pattern_mismatch")
        return column.to_pylist()

    # ------------------------------------------------------------------ encoding
    @staticmethod
    def encode(columns: dict[str, Any]) -> bytes:
        """One Arrow IPC stream from the result columns (see the module docstring)."""
        return stream_bytes(pa.table(columns))


def stream_bytes(table: pa.Table) -> bytes:
    """`table` as an Arrow IPC stream: the answer's body, and what a client sends."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _rows(col: str, mask: np.ndarray, message: str, kind: str) -> list[dict[str, str]]:
    """Errors for the first MAX_ROW_ERRORS rows in `mask`, and a count when there are more."""
    bad = np.flatnonzero(mask)
    out = [_error(f"records.{i}.{col}", message, kind) for i in bad[:MAX_ROW_ERRORS].tolist()]
    if len(bad) > MAX_ROW_ERRORS:
        out.append(_error(col, f"{len(bad)} rows: {message}", kind))
    return out


def _json_objects(texts: list[tuple[str, pa.Array]], n: int) -> list[str]:
    """One JSON object per row from each column's value texts, joined in Arrow's C++ kernels
    (~3x cheaper than building and dumping a dict per row)."""
    parts: list[Any] = []
    for i, (col, text) in enumerate(texts):
        parts += [("{" if i == 0 else ",") + json.dumps(col) + ":", text]
    if not parts:
        return ["{}"] * n
    return pc.binary_join_element_wise(*parts, "}", "").to_pylist()  # last arg: separator


def records_table(contract: Contract, records: list[dict[str, Any]]) -> pa.Table:
    """JSON-API records as the Arrow table a client would send: one typed column per field
    present in any record (integers as int64, text levels as strings, nulls where absent)."""
    present = [c for c in contract.fields if any(c in r for r in records)]
    extra = ["customer_id"] if any(r.get("customer_id") is not None for r in records) else []
    columns = {}
    for col in present:
        rule = contract.rules[col]
        typ = (pa.string() if rule.text else
               pa.int64() if rule.kind != "numeric" or rule.integer else pa.float64())  # fmt: skip
        columns[col] = pa.array([r.get(col) for r in records], typ)
    for col in extra:
        columns[col] = pa.array([r.get(col) for r in records], pa.string())
    return pa.table(columns)


def _index_of_integers(column: pa.Array, levels: pa.Array) -> pa.Array:
    """Each integer value's position among the levels (null: not a level). A uint64 beyond
    int64 cannot be cast to the levels' type (the fuzzer's crasher arrow-uint64-beyond-int64):
    no level is that large, so such a value is simply not one."""
    try:
        return pc.index_in(column.cast(levels.type), value_set=levels)
    except pa.ArrowInvalid:
        fits = pc.less_equal(column, pa.scalar(2**63 - 1, column.type))
        narrowed = pc.if_else(fits, column, pa.scalar(0, column.type)).cast(levels.type)
        return pc.if_else(
            fits, pc.index_in(narrowed, value_set=levels), pa.scalar(None, pa.int32())
        )
