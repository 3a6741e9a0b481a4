"""Stage `prepare` on Dask (compute.engine dask): the raw file is read and checked partition by
partition on the cluster and split by a seeded hash of each row's id (split.method hash), so
no process ever holds the whole dataset. The verdict is the local engine's: per-partition
findings merge into the whole frame's list (features.contract.merge_violations) and the
checks across rows — duplicate ids, a one-class target — run over all partitions. Each split
is written as a Parquet dataset (data/prepared/<split>.parquet/part.N.parquet) by the workers.

Production batches a retrain added are small labelled files: they are read here, checked and
split as the local engine does (pipelines.prepare.split_production) and added as one more
part of each split."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from features.contract import (
    DUPLICATE_ID_SLOT,
    Contract,
    _check,
    class_violations,
    find_violations,
    merge_violations,
    raise_violations,
    target_codes,
    typed,
)
from pipelines import paths
from pipelines.prepare import hash_split, read_production, split_production
from riskloop.compute import dask_client
from riskloop.errors import DataContractError, SettingsError
from riskloop.settings import Params
from riskloop.tables import CSV_OPTIONS
from training.tracking import dvc_data_hash, file_md5

log = logging.getLogger("prepare")
SPLIT_NAMES = ("train", "valid", "test")


def read_partitions(path: Path, partition_rows: int):
    """The raw file as a Dask frame: Parquet by its row groups, CSV in blocks of about
    `partition_rows` rows, each read by the local engine's own reader
    (riskloop.tables.read_table's pandas.read_csv), so the checks see the same values. A
    block's column types are pandas' for that block (a gap makes an integer column float);
    the checks and the typing (features.contract.typed) take either."""
    import dask
    import dask.dataframe as dd
    from dask.bytes import read_bytes

    if not path.exists():
        raise DataContractError(f"{path} not found: run `make data` (or `dvc pull`)")
    if path.suffix.lower() in (".parquet", ".pq") or path.is_dir():
        return dd.read_parquet(path, split_row_groups=True)
    with path.open("rb") as fh:  # the header, and bytes a row from the head, to size blocks
        head = fh.read(1 << 20)
    header = head[: head.index(b"\n") + 1] if b"\n" in head else head
    per_row = max(1, len(head) // max(1, head.count(b"\n")))
    _, blocks = read_bytes(str(path), delimiter=b"\n", blocksize=max(1 << 16, per_row * partition_rows),
                           sample=False)  # fmt: skip
    parts = [
        dask.delayed(_read_block)(block, header, i == 0, str(path))
        for i, block in enumerate(blocks[0])
    ]
    meta = _read_block(head[: head.rindex(b"\n") + 1], header, True, str(path)).iloc[:0]
    with dask.config.set({"dataframe.convert-string": False}):  # cells as read_csv gives them
        return dd.from_delayed(parts, meta=meta, verify_meta=False)


def _read_block(block: bytes, header: bytes, first: bool, source: str) -> pd.DataFrame:
    import io

    try:
        return pd.read_csv(io.BytesIO(block if first else header + block), **CSV_OPTIONS)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataContractError(f"{source} is not a readable CSV: {exc}") from exc


def _findings(
    part: pd.DataFrame, contract_doc: dict
) -> tuple[int, list, set[int], set[str], pd.Series | None]:
    """One partition's row findings, its rows, the target classes it holds, its numeric
    level columns with a gap and its rows per time value (data.time_column)."""
    contract = Contract.from_json(contract_doc)
    found = find_violations(part, contract, whole=False)
    target = contract.data.target
    classes = set()
    if target in part.columns:
        classes = {int(v) for v in target_codes(part[target], contract.data).dropna().unique()}
    gaps = {c for c in _level_columns(contract) if c in part.columns and part[c].isna().any()}
    time = contract.data.time_column
    times = (
        part[time].value_counts(dropna=False, sort=False) if time and time in part.columns else None
    )
    return len(part), found, classes, gaps, times


def _level_columns(contract: Contract) -> list[str]:
    """Numeric level columns typed() gives int64 or float64 by whether the whole column has
    a gap: a partition cannot tell alone."""
    return [c for c, r in contract.rules.items() if r.kind == "categorical" and not r.text]


def _duplicates(part: pd.DataFrame, ids: list, id_column: str) -> list:
    out: list = []
    _check(out, part, part[id_column].isin(ids), id_column, "duplicate id", id_column,
           DUPLICATE_ID_SLOT)  # fmt: skip
    return out


@dataclass(frozen=True)
class Checked:
    rows: int
    gaps: set[str]  # numeric level columns with a gap somewhere
    times: list[pd.Series | None]  # each partition's rows per time value


def check(frame, contract: Contract, source: str) -> Checked:
    """Raise naming every violation in the dataset, as the local engine names them."""
    import dask

    idc = contract.data.id_column
    doc = contract.to_json()
    parts = frame.to_delayed()
    summaries = [dask.delayed(_findings)(p, doc) for p in parts]
    if idc in frame.columns:
        counts = frame[idc].value_counts()  # a tree reduction: only duplicated ids come back
        summaries_v, counts_v = dask.compute(summaries, counts[counts > 1].index.to_series())
        duplicated = list(counts_v)
    else:
        (summaries_v,) = dask.compute(summaries)
        duplicated = []
    offsets = np.concatenate([[0], np.cumsum([s[0] for s in summaries_v])]).astype(int)
    findings = [(int(o), found) for o, (_, found, *_) in zip(offsets, summaries_v, strict=False)]
    schema_ok = not any(v.rule.endswith("column") or "not declared" in v.rule
                        for _, f in findings for v in f)  # fmt: skip
    if duplicated and schema_ok:
        dups = dask.compute([dask.delayed(_duplicates)(p, duplicated, idc) for p in parts])[0]
        findings += [(int(o), d) for o, d in zip(offsets, dups, strict=False)]
    rows = int(offsets[-1])
    if schema_ok:
        classes = set().union(*(s[2] for s in summaries_v))
        findings.append((0, class_violations(classes, rows, contract.data)))
    violations = merge_violations(findings)
    if rows == 0:
        violations.append(find_violations(frame._meta, contract)[-1])  # "no rows"
    raise_violations(violations, source)
    return Checked(rows, set().union(*(s[3] for s in summaries_v)), [s[4] for s in summaries_v])


def time_starts(times: list[pd.Series]) -> list[pd.Series]:
    """For each partition, the rank (0-based) its first row of each time value has in the
    whole dataset stably sorted by time — the local engine's order: earlier times first, ties
    in file order, missing times last. Pure."""
    table = pd.concat(times, axis=1, sort=False).fillna(0).astype("int64")
    table = table.loc[table.index.sort_values(na_position="last")]
    below = table.sum(axis=1).cumsum() - table.sum(axis=1)  # rows of earlier times
    earlier = table.cumsum(axis=1) - table  # rows of the same time in earlier partitions
    return [below + earlier.iloc[:, i] for i in range(table.shape[1])]


def time_split(part: pd.DataFrame, time: str, start: pd.Series, rows: int,
               params: Params) -> dict[str, pd.DataFrame]:  # fmt: skip
    """pipelines.prepare.split's out-of-time split of one partition, from each row's rank in
    the whole dataset's time order."""
    key = part[time]
    first = start.reindex(key).to_numpy()
    if key.isna().any():  # reindex cannot look up a missing time: its start is the NaN entry
        first = np.where(key.isna(), start[start.index.isna()].iloc[0], first)
    rank = first + key.groupby(key, dropna=False, sort=False).cumcount().to_numpy()
    n_test, n_valid = round(rows * params.split.test_size), round(rows * params.split.valid_size)
    valid_from, test_from = rows - n_test - n_valid, rows - n_test
    return {"train": part[rank < valid_from], "valid": part[(rank >= valid_from) & (rank < test_from)],
            "test": part[rank >= test_from]}  # fmt: skip


def _write_part(part: pd.DataFrame, number: int, contract_doc: dict, params: Params, out: Path,
                checked: Checked, start: pd.Series | None) -> dict[str, tuple[int, int]]:  # fmt: skip
    """Type one checked partition as the whole frame is typed, split it (by time, else by
    hash) and write its share of each split; returns each split's (rows, defaults)."""
    contract = Contract.from_json(contract_doc)
    clean = typed(part, contract)
    for col in _level_columns(contract):
        clean[col] = clean[col].astype("float64" if col in checked.gaps else "int64")
    time = params.data.time_column
    if time:
        shares = time_split(clean, time, start, checked.rows, params)
    else:
        shares = hash_split(clean, params)
    target = contract.data.target
    for name, rows in shares.items():
        rows.reset_index(drop=True).to_parquet(out / f"{name}.parquet" / f"part.{number:05d}.parquet",
                                               index=False)  # fmt: skip
    return {name: (len(rows), int(rows[target].sum())) for name, rows in shares.items()}


def prepare(params: Params) -> None:
    if params.split.method != "hash" and not params.data.time_column:
        raise SettingsError("compute.engine dask splits each partition alone: set split.method: "
                            "hash (a stratified split needs the whole frame in one process)")  # fmt: skip
    import dask

    contract = Contract(params.data)
    raw_path = params.data.raw_path
    with dask_client(params.compute):
        frame = read_partitions(raw_path, params.compute.partition_rows)
        checked = check(frame, contract, str(raw_path))
        rows = checked.rows
        prod = read_production(params)
        if prod is not None:
            ids = frame[params.data.id_column]
            reused = ids[ids.isin(list(prod[params.data.id_column]))].head(5, npartitions=-1)
            if len(reused):
                raise DataContractError(f"production batches reuse ids of {params.data.raw_file}: "
                                        f"{sorted(reused)}")  # fmt: skip
        out = paths.PREPARED
        for name in (*SPLIT_NAMES, "recent"):
            paths.clear(out / f"{name}.parquet")
            if name != "recent":
                (out / f"{name}.parquet").mkdir(parents=True)
        doc = contract.to_json()
        parts = frame.to_delayed()
        starts = time_starts(checked.times) if params.data.time_column else [None] * len(parts)
        written = dask.compute([dask.delayed(_write_part)(p, i, doc, params, out, checked, starts[i])
                                for i, p in enumerate(parts)])[0]  # fmt: skip
    totals = {
        n: [sum(w[n][0] for w in written), sum(w[n][1] for w in written)] for n in SPLIT_NAMES
    }
    target = params.data.target
    recent = pd.read_parquet(out / "train.parquet" / "part.00000.parquet").iloc[:0]
    if prod is not None:  # a retrain's labelled batches: small, split as the local engine does
        extra = split_production(prod, params)
        for name in ("train", "valid"):
            extra[name].reset_index(drop=True).to_parquet(out / f"{name}.parquet" / "part.production.parquet",
                                                          index=False)  # fmt: skip
            totals[name] = [
                totals[name][0] + len(extra[name]),
                totals[name][1] + int(extra[name][target].sum()),
            ]
        recent = extra["recent"]
        rows += len(prod)
    recent.reset_index(drop=True).to_parquet(out / "recent.parquet", index=False)
    totals["recent"] = [len(recent), int(recent[target].sum()) if len(recent) else 0]
    paths.write_json(paths.PREPARE_REPORT, {
        "rows": rows, "raw_md5": file_md5(raw_path), "data_hash": dvc_data_hash(),
        **{f"{k}_rows": n for k, (n, _) in totals.items()},
        **{f"{k}_default_rate": round(bad / n, 5) for k, (n, bad) in totals.items() if n},
    })  # fmt: skip
    log.info("prepared %d rows on Dask, %d partitions: %s", rows, len(written),
             {k: n for k, (n, _) in totals.items()})  # fmt: skip
