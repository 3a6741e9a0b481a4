"""Stage `online_features`: materialize each customer's latest raw record into the online
feature table of the prediction store (DATABASE_URL), so /predict_customer can score by id.
The record holds the model inputs and protected attributes; features are computed at
scoring time by the model itself, so the table cannot drift from the feature code."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pandas as pd

from pipelines import lineage, paths
from riskloop.cli import run_main
from riskloop.settings import Params, load_params
from serving.config import load_env
from serving.store import PredictionStore, make_engine, upgrade
from training.tracking import dvc_data_hash

log = logging.getLogger("online-features")


def online_rows(frame: pd.DataFrame, params: Params, data_version: str) -> list[dict]:
    data = params.data
    if data.time_column:  # keep the latest record of each customer
        frame = frame.sort_values(data.time_column).drop_duplicates(data.id_column, keep="last")
    as_of = (pd.to_datetime(frame[data.time_column]).dt.to_pydatetime() if data.time_column
             else [datetime.now(UTC)] * len(frame))  # fmt: skip
    records = frame[data.feature_columns].to_dict(orient="records")
    return [{"customer_id": str(cid), "record": rec, "as_of": at, "data_version": data_version}
            for cid, rec, at in zip(frame[data.id_column], records, as_of, strict=True)]  # fmt: skip


def materialize(url: str, params: Params, data_version: str) -> int:
    frame = pd.concat(
        [pd.read_parquet(paths.PREPARED / f"{n}.parquet") for n in paths.SPLITS], ignore_index=True
    )
    # Production rows a retrain added carry fresh row ids, not customer ids: not customers.
    frame = frame[
        ~frame[params.data.id_column].astype(str).isin(lineage.production_row_ids(params))
    ]
    upgrade(url)
    store = PredictionStore(make_engine(url))
    return store.upsert_online_features(online_rows(frame, params, data_version))


def main() -> None:
    params = load_params()
    data_hash = dvc_data_hash()
    n = materialize(load_env().store_url(), params, data_hash)
    paths.write_json(
        paths.REPORTS / "online_features.json", {"customers": n, "data_hash": data_hash}
    )
    log.info("materialized %d customers into the online feature table", n)


if __name__ == "__main__":
    run_main(main)
