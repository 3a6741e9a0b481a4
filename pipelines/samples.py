"""The rows of a prepared split that the model card, the promotion gates and the packaged
out-of-sample reference read (evaluate.sample_rows): every row of a split up to that size;
above it a seeded uniform sample, each row kept or not by a hash of its id alone, so it is
the same rows on either engine, read whole or part by part. A split is streamed in batches
of compute.partition_rows: a large one is never whole in this process. The headline test
metrics do not use the sample: they count every row (pipelines/headline.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipelines import paths
from pipelines.prepare import hash_shares
from riskloop.settings import Params

# The sample's hash key differs from the split's: under split.method hash every train row has
# a split share above test_size + valid_size, so the same hash would never sample one.
SAMPLE_KEY = 0x5EED5A3B1E


@dataclass(frozen=True)
class Sample:
    frame: pd.DataFrame  # the rows picked, in the split's order
    rows: int  # the split's rows

    @property
    def sampled(self) -> bool:
        return len(self.frame) < self.rows


def split_path(split: str) -> Path:
    return paths.PREPARED / f"{split}.parquet"


def split_rows(split: str) -> int:
    """From the files' metadata: a file (local engine) or a dataset of parts (Dask)."""
    return pads.dataset(split_path(split), format="parquet").count_rows()


def fraction(rows: int, limit: int) -> float:
    return 1.0 if rows <= limit else limit / rows


def pick(part: pd.DataFrame, id_column: str, seed: int, share: float) -> pd.DataFrame:
    """The rows of `part` in the sample of `share` of a split (all of them at share 1)."""
    if share >= 1.0:
        return part
    return part[hash_shares(part[id_column], seed ^ SAMPLE_KEY) < share]


def batches(
    path: Path, batch_rows: int, columns: list[str] | None = None
) -> Iterator[pd.DataFrame]:
    """A Parquet file or dataset as pandas frames of at most `batch_rows` rows, typed as
    pandas.read_parquet types the whole (the files' pandas metadata)."""
    for part in paths.parts(path):
        file = pq.ParquetFile(part)
        schema = file.schema_arrow if columns is None else None
        for batch in file.iter_batches(batch_size=batch_rows, columns=columns):
            table = pa.Table.from_batches([batch], schema=schema or batch.schema)
            yield table.to_pandas()


def read(params: Params, split: str) -> Sample:
    """The split's sample (the whole split when it holds at most evaluate.sample_rows)."""
    rows = split_rows(split)
    share = fraction(rows, params.evaluate.sample_rows)
    if share >= 1.0:
        return Sample(pd.read_parquet(split_path(split)), rows)
    picked = [
        pick(b, params.data.id_column, params.split.seed, share)
        for b in batches(split_path(split), params.compute.partition_rows)
    ]
    return Sample(pd.concat(picked, ignore_index=True), rows)
