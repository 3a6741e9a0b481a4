"""score-batch on Dask: a Parquet file scored partition by partition on the cluster, never
whole in one process. Each worker loads the model version once (from the tracking store),
checks its partition against the model's own contract and scores it exactly as the local
path does (pipelines.score_batch.scored); the output is a Parquet dataset, one file per
partition, written by the workers."""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as pads

from features.contract import Contract, find_violations, raise_violations
from pipelines import batch_log
from riskloop.compute import dask_client, read_parquet
from riskloop.errors import DataContractError
from riskloop.package import worker_model
from riskloop.settings import Params, ServingSettings
from serving import scoring

SCORE_CHUNK_ROWS = 25_000  # rows scored at once within a partition


@functools.lru_cache(maxsize=4)
def _explainer(uri: str, tracking_uri: str):
    """score_batch.explainer, built (its golden batch checked) once per worker process."""
    from pipelines.score_batch import explainer

    pkg, model = worker_model(uri, tracking_uri)
    return explainer(pkg, model.unwrap_python_model())


def score_partition(part: pd.DataFrame, uri: str, tracking_uri: str, contract_doc: dict,
                    serving: ServingSettings, cut: scoring.Cutoffs, source: str,
                    log: batch_log.BatchLog | None, partition_info: dict | None = None) -> pd.DataFrame:  # fmt: skip
    """One partition checked against the model's contract and scored as
    pipelines.evaluate.score scores a frame (Dask passes `partition_info`: which partition,
    the place of its rows in the log's ids)."""
    from pipelines.score_batch import explain, scored

    contract = Contract.from_json(contract_doc)
    if part.empty:
        return _empty(contract.data.id_column, serving.top_reasons)
    raise_violations(find_violations(part, contract, require_target=False), source)
    model = worker_model(uri, tracking_uri)[1]
    inner = model.unwrap_python_model()
    idc, outs, explainer = contract.data.id_column, [], _explainer(uri, tracking_uri)
    number = partition_info["number"] if partition_info else 0  # the rows' place in the log's ids
    # in chunks: a row's reason codes are Python dicts (~1.6 KB a row), which a whole
    # partition's worth would hold at once next to its frames
    for start in range(0, len(part), SCORE_CHUNK_ROWS):
        chunk = part.iloc[start : start + SCORE_CHUNK_ROWS].reset_index(drop=True)
        probability = model.predict(inner.contract.input_frame(chunk))
        reasons = explain(inner, chunk, serving, explainer)
        outs.append(scored(chunk, np.asarray(probability, dtype=float), idc, serving, cut, reasons))
        if log:  # the worker logs its own rows: nothing is gathered in one process
            batch_log.write(log, batch_log.columns(log, chunk, outs[-1], reasons, idc, list(contract.fields),
                                                   number, start))  # fmt: skip
    return pd.concat(outs, ignore_index=True)


def _empty(id_column: str, top_reasons: int) -> pd.DataFrame:
    reasons = {
        f"reason_{k + 1}{end}": pd.Series(dtype="str")
        for k in range(top_reasons)
        for end in ("", "_text")
    }
    return pd.DataFrame({id_column: pd.Series(dtype=object), "probability_of_default": pd.Series(dtype=float),
                         "risk_score": pd.Series(dtype="int64"), "risk_band": pd.Series(dtype="str"),
                         "decision": pd.Series(dtype="str"), **reasons})  # fmt: skip


def score_file(path: Path, out: Path, uri: str, tracking_uri: str, contract: Contract,
               params: Params, cut: scoring.Cutoffs, log: batch_log.BatchLog | None = None) -> int:  # fmt: skip
    """Score `path` (Parquet) into the Parquet dataset `out`; returns the rows scored."""
    from distributed import progress

    if path.suffix.lower() not in (".parquet", ".pq") and not path.is_dir():
        raise DataContractError(f"{path}: compute.engine dask scores Parquet (a file or a dataset "
                                "directory); convert the CSV first")  # fmt: skip
    with dask_client(params.compute) as client:
        frame = read_parquet(path, params.compute.partition_rows)
        id_column = contract.data.id_column
        meta = _empty(id_column, params.serving.top_reasons).astype(
            {id_column: frame[id_column].dtype}
        )
        result = frame.map_partitions(score_partition, uri, tracking_uri, contract.to_json(), params.serving,
                                      cut, str(path), log, meta=meta, align_dataframes=False)  # fmt: skip
        # written beside OUT and moved in place once every partition is scored: a partition
        # that fails (a bad row) leaves no partial dataset behind
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.parent / f".{out.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        try:
            written = client.compute(result.to_parquet(partial, write_index=False, compute=False))
            progress(written)  # a text bar on stdout while the partitions are scored
            written.result()
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    shutil.rmtree(out, ignore_errors=True)
    os.replace(partial, out)
    return pads.dataset(out, format="parquet").count_rows()  # from the files' metadata
