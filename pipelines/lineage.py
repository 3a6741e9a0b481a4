"""Production batches a retrain added to the raw data (data/raw/production/<batch>/) and the
customer-level guard they need: a customer of the test split who comes back as production
traffic must not be trained on and then scored in that test split, or the challenger's test
metrics are flattered by leakage. Evaluation and promotion drop such customers from the
test split (both models scored on the same rows); the test split file itself never changes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from pipelines import paths
from riskloop.errors import DataContractError
from riskloop.settings import Params

log = logging.getLogger("lineage")


def production_dir(params: Params) -> Path:
    return Path(params.data.raw_dir) / paths.PRODUCTION_SUBDIR


def batch_files(params: Params, name: str) -> list[Path]:
    """One file per production batch (records.csv or lineage.csv), oldest batch first."""
    return sorted(production_dir(params).glob(f"*/{name}"))


def _lineage(params: Params, column: str) -> set[str]:
    values: set[str] = set()
    for f in batch_files(params, "lineage.csv"):
        values.update(pd.read_csv(f, usecols=[column], dtype=str)[column].dropna())
    return values


def collected_predictions(params: Params) -> set[str]:
    """Prediction ids already in a data version."""
    return _lineage(params, "prediction_id")


def production_customers(params: Params) -> set[str]:
    return _lineage(params, "customer_id")


def production_row_ids(params: Params) -> set[str]:
    """The fresh raw-data ids a retrain gave production rows (not customer ids)."""
    return _lineage(params, params.data.id_column)


class TestRows(NamedTuple):
    frame: pd.DataFrame  # the test sample (pipelines/samples.py) less production customers
    excluded: int  # rows of the sample left out as production customers
    rows: int  # the whole test split's rows

    @property
    def sampled(self) -> bool:
        return len(self.frame) + self.excluded < self.rows


def test_split(params: Params) -> TestRows:
    """The test split's sample (all of it up to evaluate.sample_rows) without customers that
    production batches brought into training."""
    from pipelines import samples

    sample = samples.read(params, "test")
    test = sample.frame
    seen = production_customers(params)
    if not seen:
        return TestRows(test, 0, sample.rows)
    keep = ~test[params.data.id_column].astype(str).isin(seen)
    dropped = int((~keep).sum())
    if not keep.any():
        raise DataContractError(
            f"every one of the {len(test)} test-split customers came back in production batches "
            "(traffic replayed them all): nothing is left to test on; collect traffic from other "
            "customers or add data"
        )
    if dropped:
        log.info("test split: %d rows of customers seen in production batches left out", dropped)
    return TestRows(test[keep].reset_index(drop=True), dropped, sample.rows)
