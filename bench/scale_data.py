"""A seeded synthetic dataset shaped like the shipped Taiwan file (params.yaml `data`: the same
columns in the same order, types and bounds), for the scale-out bench (bench/scale.py).

Each row has a latent risk that drives its repayment statuses (a month-to-month chain, oldest
month first: late months tend to stay late and grow), its utilization, its payments (small
or none while late) and the target, so a model learns something (the statuses carry most of
it, as in the real file). Rows are written in chunks of CHUNK_ROWS, never all at once: a CSV
(the raw file `prepare` reads) and/or a Parquet file with one row group a chunk (score-batch
input, without the target). Chunk k draws from numpy's generator seeded with (seed, k), so
the file is the same for a given seed and row count. Ids are 1..N; every row satisfies the
data contract (one 1 in each one-hot group).

    python -m bench.scale_data --rows 1000000 --csv /tmp/x.csv --parquet /tmp/x.parquet
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

CHUNK_ROWS = 500_000
TARGET = "default-payment-next-month"
STATUS = ["PAY_0", "PAY_2", "PAY_3", "PAY_4", "PAY_5", "PAY_6"]  # latest month first
BILLS = [f"BILL_AMT{k}" for k in range(1, 7)]
PAYS = [f"PAY_AMT{k}" for k in range(1, 7)]
EDUCATION = [f"EDUCATION_{k}" for k in range(7)]
MARRIAGE = [f"MARRIAGE_{k}" for k in range(4)]
# the shipped file's column order
COLUMNS = ["ID", "LIMIT_BAL", "SEX", "AGE", *STATUS, *BILLS, *PAYS, TARGET, *EDUCATION, *MARRIAGE]
# shares of the shipped file (UCI_Credit_Card.csv)
EDUCATION_P = [0.0005, 0.3528, 0.4677, 0.1639, 0.0041, 0.0093, 0.0017]
MARRIAGE_P = [0.0018, 0.4553, 0.5321, 0.0108]


def _onehot(rng: np.random.Generator, n: int, p: list[float]) -> np.ndarray:
    p = np.asarray(p) / np.sum(p)
    level = np.searchsorted(np.cumsum(p), rng.random(n), side="right").clip(0, len(p) - 1)
    out = np.zeros((n, len(p)), dtype=np.int64)
    out[np.arange(n), level] = 1
    return out


def chunk(seed: int, number: int, start_id: int, n: int) -> pd.DataFrame:
    """Rows start_id .. start_id + n - 1 (chunk `number`), in the shipped file's columns."""
    rng = np.random.default_rng([seed, number])
    risk = rng.standard_normal(n)  # latent: higher is riskier
    limit = np.round(np.exp(rng.normal(11.7, 0.75, n) - 0.25 * risk) / 10_000) * 10_000
    limit = limit.clip(10_000, 1_000_000)
    sex = (rng.random(n) < 0.6).astype(np.int64)
    age = np.round(21 + rng.gamma(3.0, 4.8, n)).clip(21, 79).astype(np.int64)

    # statuses, oldest month (PAY_6) first: -2 no use, -1 paid duly, 0 revolving, k months late
    p_late = 1 / (1 + np.exp(-(-2.6 + 1.1 * risk)))  # a clean month turning late
    p_stay = 1 / (1 + np.exp(-(0.2 + 0.9 * risk)))  # a late month staying late
    status = np.empty((n, 6), dtype=np.int64)
    prev = np.full(n, 0, dtype=np.int64)
    for j in range(6):  # j = 0: oldest
        clean = np.array([-2, -1, 0])[np.searchsorted([0.14, 0.33], rng.random(n), side="right")]
        late_prev = prev >= 1
        stays = late_prev & (rng.random(n) < p_stay)
        grows = stays & (rng.random(n) < 0.35)
        new_late = ~late_prev & (rng.random(n) < p_late)
        start = 1 + (rng.random(n) < 0.55) + (rng.random(n) < 0.08)
        cur = np.where(new_late, start, clean)
        cur = np.where(stays, np.minimum(prev + grows, 8), cur)
        status[:, 5 - j] = cur
        prev = cur

    # balances: utilization rises with risk; months of no use have no balance
    util = 1 / (1 + np.exp(-(rng.normal(-0.9, 1.2, n) + 0.6 * risk)))
    bills = np.empty((n, 6))
    level = limit * util
    for j in range(6):
        level = level * rng.lognormal(0.0, 0.12, n)
        bills[:, 5 - j] = level
    bills = np.where(status == -2, 0.0, bills)
    refund = rng.random((n, 6)) < 0.02  # an overpaid month: a small credit balance
    bills = np.where(refund, -rng.exponential(800, (n, 6)), bills)
    bills = np.round(bills).clip(-10_000_000, 10_000_000)

    # PAY_AMTk settles BILL_AMT(k+1): a share of it, small or none while late
    share = rng.beta(1.2, 3.0, (n, 6)) * np.where(status >= 1, 0.3, 1.0)
    settled = np.concatenate([bills[:, 1:], bills[:, -1:]], axis=1).clip(0, None)
    pays = settled * share + rng.exponential(600, (n, 6)) * (status < 1)
    pays = np.where(rng.random((n, 6)) < 0.12, 0.0, pays)
    pays = np.round(pays).clip(0, 10_000_000)

    months_late = (status >= 1).sum(axis=1)
    logit = (-2.05 + 0.75 * np.clip(status[:, 0], 0, 4) + 0.18 * months_late + 0.45 * risk
             + 0.5 * util - 0.15 * np.log(limit / 100_000))  # fmt: skip
    target = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)

    frame = {"ID": np.arange(start_id, start_id + n, dtype=np.int64), "LIMIT_BAL": limit,
             "SEX": sex, "AGE": age}  # fmt: skip
    frame |= {c: status[:, i] for i, c in enumerate(STATUS)}
    frame |= {c: bills[:, i] for i, c in enumerate(BILLS)}
    frame |= {c: pays[:, i] for i, c in enumerate(PAYS)}
    frame[TARGET] = target
    edu, mar = _onehot(rng, n, EDUCATION_P), _onehot(rng, n, MARRIAGE_P)
    frame |= {c: edu[:, i] for i, c in enumerate(EDUCATION)}
    frame |= {c: mar[:, i] for i, c in enumerate(MARRIAGE)}
    return pd.DataFrame(frame, columns=COLUMNS)


def chunks(rows: int, seed: int = 0, chunk_rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    for number, start in enumerate(range(0, rows, chunk_rows)):
        yield chunk(seed, number, start + 1, min(chunk_rows, rows - start))


def write(rows: int, seed: int = 0, csv: Path | None = None, parquet: Path | None = None,
          chunk_rows: int = CHUNK_ROWS) -> None:  # fmt: skip
    """`rows` rows to `csv` (with the target) and/or `parquet` (without it, one row group a
    chunk), one chunk in memory at a time."""
    csv_writer = pq_writer = None
    try:
        for frame in chunks(rows, seed, chunk_rows):
            if csv is not None:
                table = pa.Table.from_pandas(frame, preserve_index=False)
                if csv_writer is None:
                    csv.parent.mkdir(parents=True, exist_ok=True)
                    csv_writer = pacsv.CSVWriter(csv, table.schema,
                                                 write_options=pacsv.WriteOptions(quoting_style="none"))  # fmt: skip
                csv_writer.write_table(table)
            if parquet is not None:
                table = pa.Table.from_pandas(frame.drop(columns=[TARGET]), preserve_index=False)
                if pq_writer is None:
                    parquet.parent.mkdir(parents=True, exist_ok=True)
                    pq_writer = pq.ParquetWriter(parquet, table.schema)
                pq_writer.write_table(table, row_group_size=len(frame))
    finally:
        for w in (csv_writer, pq_writer):
            if w is not None:
                w.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--csv", type=Path)
    ap.add_argument("--parquet", type=Path)
    args = ap.parse_args()
    write(args.rows, args.seed, args.csv, args.parquet)


if __name__ == "__main__":
    main()
