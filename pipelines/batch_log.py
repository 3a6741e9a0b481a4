"""`score-batch --log`: every scored row into the prediction log, in bulk, so the monitor sees
a scored portfolio as it sees served traffic (inputs, probability, score, band, decision and
reasons, the model version). One run is one `request_id` (its token); each row's
prediction_id is derived from the token and the row's place (partition, row), so a partition
the engine retries (a worker lost) inserts nothing twice (ON CONFLICT DO NOTHING)."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import orjson
import pandas as pd

from serving.logbatch import PredictionColumns

CHUNK_ROWS = 10_000  # rows a transaction: a failure loses no more than one to a retry


@dataclass(frozen=True)
class BatchLog:
    """Where and as what a score-batch run logs its rows."""

    store_url: str
    model_name: str
    model_version: str
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())


MAX_PARTS, MAX_ROWS = 16**5, 16**7  # what an id's partition and row fields hold


def prediction_ids(token: str, part: int, first_row: int, rows: int) -> list[str]:
    """32 hex characters: the run's prefix, the partition and the row in it, then a hash of
    the three. A run's ids rise with its rows, so the store's indexes take them in order, not
    at random places (2M rows into SQLite 6x faster than whole-hash ids: bench/batch_log_ids.py); characters
    20-24 are the hash's, the random part the window sample reads (monitoring.records)."""
    if not (0 <= part < MAX_PARTS and first_row >= 0 and first_row + rows <= MAX_ROWS):
        raise ValueError(f"partition {part}, rows {first_row}-{first_row + rows}: ids hold "
                         f"{MAX_PARTS:,} partitions of {MAX_ROWS:,} rows")  # fmt: skip
    run = hashlib.sha1(token.encode()).hexdigest()[:8]
    return [f"{run}{part:05x}{row:07x}" + hashlib.sha1(f"{token}:{part}:{row}".encode()).hexdigest()[:12]
            for row in range(first_row, first_row + rows)]  # fmt: skip


def columns(log: BatchLog, raw: pd.DataFrame, out: pd.DataFrame, reasons: list[list[dict]],
            id_column: str, fields: list[str], part: int = 0, first_row: int = 0) -> PredictionColumns:  # fmt: skip
    """The prediction-log rows of one scored frame (pure): rows first_row... of partition
    `part` of the run's input (the whole input is partition 0)."""
    records = raw[[c for c in fields if c in raw.columns]].reset_index(drop=True)
    inputs = [orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY).decode()
              for r in records.astype(object).where(records.notna(), None).to_dict(orient="records")]  # fmt: skip
    ids = raw[id_column].reset_index(drop=True)
    return PredictionColumns(
        created_at=log.created_at, model_name=log.model_name, model_version=log.model_version,
        prediction_id=prediction_ids(log.token, part, first_row, len(raw)), request_id=[log.token] * len(raw),
        customer_id=ids.astype(str).tolist(), inputs=inputs,
        probability=np.asarray(out["probability_of_default"], dtype=float).tolist(),
        risk_score=[int(s) for s in out["risk_score"]], risk_band=out["risk_band"].astype(str).tolist(),
        decision=out["decision"].astype(str).tolist(),
        reasons=[orjson.dumps(r).decode() if r else None for r in reasons],
    )  # fmt: skip


def write(log: BatchLog, cols: PredictionColumns) -> int:
    """Insert the rows in transactions of CHUNK_ROWS; returns the rows given."""
    from serving import store

    engine = store.make_engine(log.store_url)
    try:
        for start in range(0, len(cols), CHUNK_ROWS):
            part = slice(start, start + CHUNK_ROWS)
            block = PredictionColumns(**{
                k: (v[part] if isinstance(v, list) and k != "interventions" else v)
                for k, v in cols.__dict__.items()
            })  # fmt: skip
            with engine.begin() as conn:
                store.insert_columns(conn, block)
    finally:
        engine.dispose()
    return len(cols)
