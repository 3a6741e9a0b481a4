"""The compute engine a stage runs on (params.yaml `compute`): `local` — this process, whole
frames — or `dask` — partition by partition on a Dask cluster. A real cluster is named by
DASK_SCHEDULER_ADDRESS; without one the stage starts a LocalCluster of `compute.workers`
processes with `compute.memory_limit` each and stops it when done, so `dvc repro` needs no
server either way."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from riskloop.settings import ComputeSettings

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)
SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"


@contextlib.contextmanager
def dask_client(settings: ComputeSettings) -> Iterator[Client]:
    """A client of the cluster the settings and environment name (started here if local)."""
    from distributed import Client, LocalCluster

    address = os.environ.get(SCHEDULER_ENV)
    if address:
        log.info("dask: the cluster at %s", address)
        with Client(address) as client:
            yield client
        return
    log.info("dask: a LocalCluster of %d workers, %s each", settings.workers, settings.memory_limit)
    with (
        LocalCluster(
            n_workers=settings.workers,
            threads_per_worker=settings.threads_per_worker,
            memory_limit=settings.memory_limit,
            processes=True,
            host="127.0.0.1",  # a local cluster listens on loopback only
            dashboard_address=None,
        ) as cluster,  # fmt: skip
        Client(cluster) as client,
    ):
        yield client


def read_parquet(path: Path, partition_rows: int):
    """A Parquet file or dataset as a Dask frame in partitions of about `partition_rows` rows,
    whatever its row groups: compute.partition_rows bounds what one task holds."""
    import math

    import dask.dataframe as dd
    import pyarrow.dataset as pads

    total = pads.dataset(path, format="parquet").count_rows()  # from the files' metadata
    frame = dd.read_parquet(path, split_row_groups=True)
    return frame.repartition(npartitions=max(1, math.ceil(total / partition_rows)))
