"""Stage `prepare`: check the raw data is the version data.dvc pins and satisfies the
contract, then split it (stratified, or out-of-time when data.time_column is set)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from sklearn.model_selection import train_test_split

from features.contract import validate_raw
from features.transform import missing_reason_texts, unknown_references
from pipelines import lineage, paths
from riskloop.cli import run_main
from riskloop.errors import DataContractError, DataVersionError, SettingsError
from riskloop.settings import Params, load_params
from riskloop.tables import read_table
from training.tracking import dvc_data_hash, file_md5

log = logging.getLogger("prepare")


def check_data_version(raw_dir: Path, dvc_file: Path = Path("data.dvc")) -> None:
    """Compare data/raw with the manifest data.dvc pins (DVC's cache layout, files/md5).
    Catches data edited in place without `dvc add`, which would break lineage."""
    if not dvc_file.exists():
        log.warning("%s not found: data is not versioned", dvc_file)
        return
    digest = dvc_data_hash(dvc_file)
    manifest = Path(".dvc/cache/files/md5") / digest[:2] / f"{digest[2:]}.dir"
    if not manifest.exists():
        log.warning("DVC cache has no manifest for %s; skipping the per-file check", digest)
        return
    entries = {e["relpath"]: e["md5"] for e in yaml.safe_load(manifest.read_text())}
    on_disk = {p.relative_to(raw_dir).as_posix(): p for p in raw_dir.rglob("*") if p.is_file()}
    problems = [f"{rel}: missing" for rel in entries if rel not in on_disk]
    problems += [f"{rel}: not in data.dvc" for rel in on_disk if rel not in entries]
    problems += [f"{rel}: md5 {file_md5(p)} != pinned {entries[rel]}"
                 for rel, p in on_disk.items() if rel in entries and file_md5(p) != entries[rel]]  # fmt: skip
    if problems:
        raise DataVersionError(
            f"{raw_dir} is not the version data.dvc pins ({digest}):\n  "
            + "\n  ".join(problems)
            + "\nrun `dvc checkout data.dvc` to restore it, or `dvc add data/raw` to version the new data"
        )


def read_raw(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataContractError(f"{path} not found: run `make data` (or `dvc pull`)")
    return read_table(path)


def hash_shares(ids: pd.Series, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) for each id, from a seeded hash of the id alone: a row's
    split never depends on which other rows (or which partition) it is read with."""
    seed &= 0xFFFFFFFFFFFFFFFF
    key = f"{seed:016x}"  # the 16 bytes pandas' hash takes (it keys only text, not numbers)
    h = pd.util.hash_pandas_object(ids, index=False, hash_key=key).to_numpy()
    # hashed again with the seed: numbers too
    return pd.util.hash_array(h ^ np.uint64(seed)) / 2.0**64


def hash_split(df: pd.DataFrame, params: Params) -> dict[str, pd.DataFrame]:
    """split.method hash: test, then valid, by each row's share (classes in their shares in
    expectation); rows keep their order. The same on a whole frame and partition by partition."""
    s = params.split
    u = hash_shares(df[params.data.id_column], s.seed)
    test, valid = u < s.test_size, (u >= s.test_size) & (u < s.test_size + s.valid_size)
    return {"train": df[~test & ~valid], "valid": df[valid], "test": df[test]}


def split(df: pd.DataFrame, params: Params) -> dict[str, pd.DataFrame]:
    s, target = params.split, params.data.target
    if s.method == "hash" and not params.data.time_column:
        return hash_split(df, params)
    if params.data.time_column:
        ordered = df.sort_values(params.data.time_column, kind="stable").reset_index(drop=True)
        n = len(ordered)
        n_test, n_valid = round(n * s.test_size), round(n * s.valid_size)
        return {"train": ordered.iloc[: n - n_test - n_valid], "valid": ordered.iloc[n - n_test - n_valid : n - n_test],
                "test": ordered.iloc[n - n_test :]}  # fmt: skip
    dev, test = train_test_split(
        df, test_size=s.test_size, stratify=df[target], random_state=s.seed
    )
    train, valid = train_test_split(dev, test_size=s.valid_size / (1 - s.test_size), stratify=dev[target],
                                    random_state=s.seed)  # fmt: skip
    return {"train": train, "valid": valid, "test": test}


def read_production(params: Params) -> pd.DataFrame | None:
    """Labelled production batches a retrain added (data/raw/production/<batch>/records.csv,
    oldest batch first, rows in prediction order), checked against the same contract."""
    files = lineage.batch_files(params, "records.csv")
    frames = [validate_raw(read_raw(f), params.data, source=str(f)) for f in files]
    return pd.concat(frames, ignore_index=True) if frames else None


def split_production(prod: pd.DataFrame, params: Params) -> dict[str, pd.DataFrame]:
    """The newest `holdout_share` of production rows is the recent window (never trained on,
    so challenger and champion are compared on it); the rest joins train and valid in the
    base split's proportion. The original test split is untouched."""
    n_recent = round(len(prod) * params.monitoring.retrain.holdout_share)
    older, recent = prod.iloc[: len(prod) - n_recent], prod.iloc[len(prod) - n_recent :]
    s, target = params.split, params.data.target
    valid_share = s.valid_size / (1 - s.test_size)
    if s.method == "hash":
        u = hash_shares(older[params.data.id_column], s.seed)
        return {"train": older[u >= valid_share], "valid": older[u < valid_share], "recent": recent}
    stratify = older[target] if older[target].value_counts().min() >= 2 else None
    train, valid = train_test_split(older, test_size=valid_share, stratify=stratify,
                                    random_state=s.seed)  # fmt: skip
    return {"train": train, "valid": valid, "recent": recent}


def check_references(params: Params) -> None:
    """Settings that name features or columns, checked before any work is done (a dataset
    swapped under an old params.yaml fails here, not after the tuning study)."""
    problems = unknown_references(params.data, params.features, {
        "train.monotone_constraints": list(params.train.monotone_constraints),
        "monitoring.psi.key_features": params.monitoring.psi.key_features,
        "serving.reason_texts": [k for k in params.serving.reason_texts if k not in params.data.onehot],
    })  # fmt: skip
    missing = missing_reason_texts(params.data, params.features, params.serving.reason_texts)
    if missing:
        problems.append(f"serving.reason_texts has no text for {missing}: a declined applicant is "
                        "told each principal reason (`riskloop init-data` drafts them)")  # fmt: skip
    if problems:
        raise SettingsError(
            "params.yaml does not fit the declared data:\n  " + "\n  ".join(problems)
        )


def main() -> None:
    params = load_params()
    check_references(params)
    raw_dir = Path(params.data.raw_dir)
    check_data_version(raw_dir)
    if params.compute.engine == "dask":
        from pipelines import prepare_dask

        prepare_dask.prepare(params)
        return
    clean = validate_raw(
        read_raw(params.data.raw_path), params.data, source=str(params.data.raw_path)
    )
    parts = split(clean, params)
    prod = read_production(params)
    parts["recent"] = clean.iloc[:0]
    if prod is not None:
        duplicated = set(prod[params.data.id_column]) & set(clean[params.data.id_column])
        if duplicated:
            raise DataContractError(f"production batches reuse ids of {params.data.raw_file}: "
                                    f"{sorted(duplicated)[:5]}")  # fmt: skip
        extra = split_production(prod, params)
        parts = {"train": pd.concat([parts["train"], extra["train"]]),
                 "valid": pd.concat([parts["valid"], extra["valid"]]),
                 "test": parts["test"], "recent": extra["recent"]}  # fmt: skip
        clean = pd.concat([clean, prod], ignore_index=True)
    paths.PREPARED.mkdir(parents=True, exist_ok=True)
    for name, frame in parts.items():
        paths.clear(paths.PREPARED / f"{name}.parquet")  # a Dask run's dataset, say
        frame.reset_index(drop=True).to_parquet(paths.PREPARED / f"{name}.parquet", index=False)
    target = params.data.target
    paths.write_json(paths.PREPARE_REPORT, {
        "rows": len(clean), "raw_md5": file_md5(params.data.raw_path), "data_hash": dvc_data_hash(),
        **{f"{k}_rows": len(v) for k, v in parts.items()},
        **{f"{k}_default_rate": round(float(v[target].mean()), 5) for k, v in parts.items() if len(v)},
    })  # fmt: skip
    log.info("prepared %d rows: %s", len(clean), {k: len(v) for k, v in parts.items()})


if __name__ == "__main__":
    run_main(main)
