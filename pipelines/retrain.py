"""`make retrain`: act on the newest retrain decision `make monitor` recorded (the monitor runs
this itself when monitoring.retrain.act is true).

Labelled production records (predictions joined with outcomes, not collected before) become
data/raw/production/<batch>/records.csv, with lineage.csv mapping each row back to its
prediction id; `dvc add data/raw` makes that a new data version; `dvc repro` trains and
registers a challenger evaluated against the champion on the original test split and on the
recent labelled window. Promotion stays gated (`make promote`) unless auto_promote is on."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from features.contract import Contract, target_values, validate_raw
from monitoring import records
from pipelines import lineage, paths
from riskloop.cli import run_main
from riskloop.errors import DataContractError, MonitoringError
from riskloop.settings import Params, load_params
from serving.config import ServingEnv
from training.tracking import connect, dvc_data_hash

log = logging.getLogger("retrain")
LINEAGE_COLUMNS = ["prediction_id", "customer_id", "model_version", "created_at", "observed_at"]


def next_ids(params: Params, n: int) -> list[int] | list[str]:
    """Fresh ids for n production rows, after every id in the raw data (base file and earlier
    batches): integers where the ids are integers, else `prod-<batch>-<row>` strings."""
    idc = params.data.id_column
    batches = lineage.batch_files(params, "records.csv")
    frames = [
        pd.read_csv(f, usecols=[idc], dtype={idc: str}) for f in [params.data.raw_path, *batches]
    ]
    ids = pd.concat(frames)[idc].dropna()
    numbers = pd.to_numeric(ids, errors="coerce")
    if numbers.notna().all() and (numbers == numbers.round()).all():
        start = int(numbers.max()) + 1 if len(numbers) else 1
        return list(range(start, start + n))
    taken = set(ids)
    out = [f"prod-{len(batches) + 1}-{i:07d}" for i in range(n)]
    if taken.intersection(out):
        raise DataContractError(f"generated production ids collide with {idc} values in the data")
    return out


def build_batch(
    labelled: pd.DataFrame, ids: list[int], params: Params
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(records in the raw file's layout under `ids`, lineage), in prediction order; the
    protected attributes left empty where applications did not send them. Pure."""
    data = params.data
    contract = Contract(data)
    records.require_columns(
        labelled, [c for c in contract.model_inputs if not contract.rules[c].nullable]
    )
    raw = labelled.reindex(columns=data.feature_columns)
    raw.insert(0, data.id_column, ids)
    raw[data.target] = target_values(labelled["defaulted"], data).to_numpy()
    if data.time_column:  # out-of-time data: a production row happened when it was scored
        raw[data.time_column] = pd.to_datetime(labelled["created_at"], utc=True, format="mixed").dt.strftime(
            "%Y-%m-%d %H:%M:%S").to_numpy()  # fmt: skip
    trace = labelled[LINEAGE_COLUMNS].copy()
    trace.insert(0, data.id_column, ids)
    return raw, trace


def _dvc(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], text=True)
    if proc.returncode:
        raise MonitoringError(f"`dvc {' '.join(args)}` failed (exit {proc.returncode})")


class TooFewLabels(MonitoringError):
    """Not yet enough labelled production rows for a new data version."""


def retrain(params: Params, run_id: int | None = None) -> dict[str, Any]:
    engine = records.open_store(ServingEnv().store_url())
    try:
        if run_id is None:
            pending = records.pending_retrain(engine)
            if pending is None:
                raise MonitoringError("no retrain decision is waiting: run `make monitor` first")
            run_id = int(pending["id"])
        labelled = records.labelled_rows(engine, exclude=lineage.collected_predictions(params))
        need = params.monitoring.retrain.min_labelled_rows
        if len(labelled) < need:
            raise TooFewLabels(
                f"only {len(labelled)} new labelled production rows; a retrain needs {need} "
                "(monitoring.retrain.min_labelled_rows): post outcomes, then `make retrain`"
            )
        raw, trace = build_batch(labelled, next_ids(params, len(labelled)), params)
        validate_raw(raw, params.data, source="labelled production records")
        if trace["customer_id"].isna().all():
            log.warning("production rows carry no customer ids: evaluation cannot leave their "
                        "customers out of the test split")  # fmt: skip
        batch = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        out = lineage.production_dir(params) / batch
        out.mkdir(parents=True, exist_ok=False)
        raw.to_csv(out / "records.csv", index=False)
        trace.to_csv(out / "lineage.csv", index=False)
        print(f"retrain: {len(raw)} labelled production rows -> {out} (monitoring run {run_id})")
        _dvc("add", "-q", params.data.raw_dir)
        data_hash = dvc_data_hash()
        # The default remote is local; a push failure must not lose the retrain itself.
        subprocess.run([sys.executable, "-m", "dvc", "push", "-q", "data.dvc"], check=False)
        _dvc("repro")
        trained = paths.read_json(paths.TRAIN_REPORT)
        challenger = connect(params.registry)[2].by_fingerprint(trained["model_sha256"])
        metrics = paths.read_json(paths.METRICS)
        action = {"batch": str(out), "rows": len(raw), "data_hash": data_hash,
                  "challenger_version": str(challenger.version),
                  "test_roc_auc": metrics["test"]["roc_auc"],
                  "recent": metrics.get("recent"), "promoted": False}  # fmt: skip
        if params.monitoring.retrain.auto_promote:
            reason = f"automatic: monitoring run {run_id} (monitoring.retrain.auto_promote)"
            promoted = subprocess.run(
                [sys.executable, "-m", "pipelines.promote", "--reason", reason]
            )
            action["promoted"] = promoted.returncode == 0
        records.mark_acted(engine, run_id, action)
    finally:
        engine.dispose()
    print(f"challenger v{action['challenger_version']} registered from data version {data_hash}"
          + ("; promoted" if action["promoted"] else "; review it, then `make promote`"))  # fmt: skip
    return action


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run", type=int, help="monitoring run id (default: newest pending retrain)")
    args = ap.parse_args()
    retrain(load_params(), args.run)


if __name__ == "__main__":
    run_main(main)
