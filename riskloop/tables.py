"""Reading a raw data file: one reader for every stage and command that takes one."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from riskloop.errors import DataContractError

# in a CSV only an empty cell is missing; every reader of raw CSV text uses these
CSV_OPTIONS = {"low_memory": False, "keep_default_na": False, "na_values": [""]}


def read_table(path: Path) -> pd.DataFrame:
    """A raw data file, CSV or Parquet, as every stage reads it: in a CSV only an empty cell
    is missing ("n/a" or "NULL" in a numeric column is a violation, not a gap)."""
    if not path.exists():
        raise DataContractError(f"{path} not found")
    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path)
    try:
        return pd.read_csv(path, **CSV_OPTIONS)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataContractError(f"{path} is not a readable CSV: {exc}") from exc
