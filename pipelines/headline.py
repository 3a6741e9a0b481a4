"""The headline test metrics (metrics.json, the MLflow run's test_* metrics, the challenger vs
champion table and plots) over every row of the test split, however large: the split less
production customers (pipelines/lineage.py), each batch (local engine) or partition (Dask,
scored on the workers) reduced to score counts (training/score_counts.py) per model. Only the
counts are summed in this process; the metrics follow exactly, as from whole frames."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pipelines import samples
from riskloop.compute import dask_client, read_parquet
from riskloop.package import worker_model
from riskloop.settings import Params
from training import score_counts

META = pd.DataFrame({"role": pd.Series(dtype=object), "p": pd.Series(dtype=float),
                     "bad": pd.Series(dtype="int64"), "good": pd.Series(dtype="int64")})  # fmt: skip


def part_counts(part: pd.DataFrame, models: dict[str, Any], id_column: str, target: str,
                seen: frozenset[str]) -> pd.DataFrame:  # fmt: skip
    """One batch's score counts for each model (pyfuncs by role), production customers left
    out; columns role, p, bad, good."""
    if seen:
        part = part[~part[id_column].astype(str).isin(seen)]
    part = part.reset_index(drop=True)
    tables = [META]
    for role, model in models.items():
        p = np.empty(0)
        if len(part):
            p = model.predict(model.unwrap_python_model().contract.input_frame(part))
        table = score_counts.score_counts(part[target].to_numpy(), np.asarray(p, dtype=float))
        tables.append(table.assign(role=role)[list(META.columns)])
    return pd.concat(tables, ignore_index=True)


def _worker_counts(part: pd.DataFrame, uris: dict[str, str], tracking_uri: str, id_column: str,
                   target: str, seen: frozenset[str]) -> pd.DataFrame:  # fmt: skip
    models = {role: worker_model(uri, tracking_uri)[1] for role, uri in uris.items()}
    return part_counts(part, models, id_column, target, seen)


def by_role(total: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {
        str(role): score_counts.merge([t.drop(columns="role")])
        for role, t in total.groupby("role", sort=False)
    }


def local_counts(params: Params, models: dict[str, Any], seen: frozenset[str]) -> dict[str, pd.DataFrame]:  # fmt: skip
    """Counts over the test split streamed through this process, compute.partition_rows rows at
    a time."""
    data = params.data
    batches = samples.batches(samples.split_path("test"), params.compute.partition_rows)
    return by_role(pd.concat([part_counts(b, models, data.id_column, data.target, seen) for b in batches]))  # fmt: skip


def cluster_counts(params: Params, uris: dict[str, str], tracking_uri: str,
                   seen: frozenset[str]) -> dict[str, pd.DataFrame]:  # fmt: skip
    """Counts over the test split's partitions, each scored on a Dask worker by the model
    versions at `uris` (loaded there once from the tracking store)."""
    from distributed import progress

    with dask_client(params.compute) as client:
        frame = read_parquet(samples.split_path("test"), params.compute.partition_rows)
        per_part = frame.map_partitions(_worker_counts, uris, tracking_uri, params.data.id_column,
                                        params.data.target, seen, meta=META, align_dataframes=False)  # fmt: skip
        summed = client.compute(per_part.groupby(["role", "p"]).sum())
        progress(summed)  # a text bar while the workers score the test split
        return by_role(summed.result().reset_index())
