"""Stage `online_features`: materialize each customer's latest raw record into the online
feature table of the prediction store (DATABASE_URL), so /predict_customer can score by id.
The record holds the model inputs and protected attributes; features are computed at
scoring time by the model itself, so the table cannot drift from the feature code.

The splits are streamed batch by batch, so a portfolio larger than memory materializes in
bounded memory on either engine: the store's upsert never lets an earlier `as_of` replace a
later one, so the latest record of a customer wins across batches as it does within one."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from pipelines import lineage, paths, samples
from riskloop.cli import run_main
from riskloop.settings import Params, load_params
from serving.config import load_env
from serving.store import PredictionStore, make_engine, upgrade
from training.tracking import dvc_data_hash

log = logging.getLogger("online-features")

BATCH_ROWS = 50_000  # rows read and upserted at a time: bounds the stage's memory


class Materialized(NamedTuple):
    rows: int  # customer records read from the splits
    customers: int  # distinct customers among them


def online_rows(
    frame: pd.DataFrame, params: Params, data_version: str, now: datetime | None = None
) -> list[dict]:
    """Store rows of `frame`'s customers; without a time column every record is as of `now`."""
    data = params.data
    if data.time_column:  # keep the latest record of each customer
        frame = frame.sort_values(data.time_column).drop_duplicates(data.id_column, keep="last")
    as_of = (pd.to_datetime(frame[data.time_column]).dt.to_pydatetime() if data.time_column
             else [now or datetime.now(UTC)] * len(frame))  # fmt: skip
    records = frame[data.feature_columns].to_dict(orient="records")
    return [{"customer_id": str(cid), "record": rec, "as_of": at, "data_version": data_version}
            for cid, rec, at in zip(frame[data.id_column], records, as_of, strict=True)]  # fmt: skip


def materialize(
    url: str,
    params: Params,
    data_version: str,
    prepared: Path = paths.PREPARED,
    batch_rows: int = BATCH_ROWS,
) -> Materialized:
    upgrade(url)
    store = PredictionStore(make_engine(url))
    # Production rows a retrain added carry fresh row ids, not customer ids: not customers.
    production = lineage.production_row_ids(params)
    data, now = params.data, datetime.now(UTC)
    time = [data.time_column] if data.time_column else []
    columns = list(dict.fromkeys([data.id_column, *data.feature_columns, *time]))
    rows, ids = 0, []  # ids as 64-bit hashes: 8 bytes a row, not the records
    for split in paths.SPLITS:
        for batch in samples.batches(prepared / f"{split}.parquet", batch_rows, columns):
            customer = batch[data.id_column].astype(str)
            batch = batch[~customer.isin(production)]
            store.upsert_online_features(online_rows(batch, params, data_version, now))
            rows += len(batch)
            ids.append(pd.util.hash_pandas_object(customer[batch.index], index=False).to_numpy())
    customers = len(np.unique(np.concatenate(ids))) if ids else 0
    return Materialized(rows, customers)


def main() -> None:
    params = load_params()
    data_hash = dvc_data_hash()
    done = materialize(load_env().store_url(), params, data_hash)
    paths.write_json(
        paths.REPORTS / "online_features.json",
        {"customers": done.customers, "rows": done.rows, "data_hash": data_hash},
    )
    log.info("materialized %d customers (%d records) into the online feature table",
             done.customers, done.rows)  # fmt: skip


if __name__ == "__main__":
    run_main(main)
