"""The evaluation of a large test split: the card's and gates' sample is the same rows from a
file or from a dataset of parts, a uniform share of the split's ids; the headline metrics
streamed batch by batch through a real registered model, as score counts, equal scikit-learn
on the whole frame (production customers left out alike), and so do the plots' points."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines import headline, paths, samples
from pipelines.prepare import hash_shares, hash_split
from riskloop.package import ModelPackage
from tests.modelling import fit_small_model, register
from training import metrics as m
from training import score_counts
from training.registry import version_uri


def with_limits(params, sample_rows: int, partition_rows: int):
    return params.model_copy(update={
        "evaluate": params.evaluate.model_copy(update={"sample_rows": sample_rows}),
        "compute": params.compute.model_copy(update={"partition_rows": partition_rows}),
    })  # fmt: skip


def write_split(root, name: str, frame: pd.DataFrame, parts: int) -> None:
    """`frame` as data/prepared/<name>.parquet: one file (parts=1) or a dataset of parts."""
    path = root / paths.PREPARED / f"{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    if parts == 1:
        frame.to_parquet(path, index=False)
        return
    path.mkdir()
    for k, chunk in enumerate(np.array_split(np.arange(len(frame)), parts)):
        frame.iloc[chunk].to_parquet(path / f"part.{k:05d}.parquet", index=False)


def test_the_sample_is_the_same_rows_from_a_file_or_from_parts(tmp_path, monkeypatch, raw, params):
    small = with_limits(params, sample_rows=3000, partition_rows=1000)
    monkeypatch.chdir(tmp_path)
    got = {}
    for parts in (1, 4):
        write_split(tmp_path / str(parts), "test", raw, parts)
        monkeypatch.chdir(tmp_path / str(parts))
        got[parts] = samples.read(small, "test")
    pd.testing.assert_frame_equal(got[4].frame, got[1].frame)
    sample = got[1]
    assert sample.rows == len(raw) and sample.sampled
    assert 2700 < len(sample.frame) < 3300  # a tenth of 30,000 ids, binomial spread
    # the rule on the whole frame, rows in the split's order, dtypes as read whole
    want = samples.pick(raw, params.data.id_column, params.split.seed, 3000 / len(raw))
    pd.testing.assert_frame_equal(sample.frame, want.reset_index(drop=True))
    # a hash split's train rows all have high split shares: the sample's own key still picks them
    train = hash_split(raw, params)["train"]
    picked = samples.pick(train, params.data.id_column, params.split.seed, 0.1)
    assert 0.08 < len(picked) / len(train) < 0.12
    # a split within the limit is read whole
    assert not samples.read(with_limits(params, 30_000, 1000), "test").sampled


@pytest.fixture(scope="module")
def registered(tmp_path_factory, raw, params):
    """A small model registered as the train stage registers one; its test split."""
    model, parts = fit_small_model(raw, params, 40, ("train",), max_depth=3)
    state = tmp_path_factory.mktemp("headline-state")
    version = register(state, model, params, parts["test"].head(500))
    return (
        f"sqlite:///{state / 'mlflow.db'}",
        version_uri(params.registry.model_name, version),
        parts["test"],
    )


def test_headline_counts_streamed_equal_the_whole_frame_metrics(
    tmp_path, monkeypatch, registered, params
):
    import mlflow

    store, uri, test = registered
    mlflow.set_tracking_uri(store)  # restored after each test (tests/conftest.py)
    mlflow.set_registry_uri(store)
    write_split(tmp_path, "test", test, parts=3)
    monkeypatch.chdir(tmp_path)
    small = with_limits(params, sample_rows=1000, partition_rows=1000)
    model = ModelPackage.download(uri).load_pyfunc()
    idc, target = params.data.id_column, params.data.target
    seen = frozenset(test[idc].astype(str).iloc[::7])  # production customers: left out
    counts = headline.local_counts(small, {"challenger": model}, seen)["challenger"]

    kept = test[~test[idc].astype(str).isin(seen)].reset_index(drop=True)
    y = kept[target].to_numpy()
    p = model.predict(model.unwrap_python_model().contract.input_frame(kept))
    want = m.classification_metrics(y, p, 0.5, 10)
    got = score_counts.metrics(counts, 0.5, 10)
    assert got["n"] == len(kept) < len(test)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=0, abs=1e-9), key
    rows = score_counts.as_rows(counts)
    for whole, weighted in [
        (m.roc_points(y, p), m.roc_points(*rows)),
        (m.pr_points(y, p), m.pr_points(*rows)),
        (m.calibration_table(y, p, 10), m.calibration_table(*rows[:2], 10, rows[2])),
        (m.score_distribution(y, p), m.score_distribution(*rows[:2], weight=rows[2])),
    ]:
        pd.testing.assert_frame_equal(weighted, whole, check_exact=False, rtol=0, atol=1e-9)


def test_the_id_hash_is_seeded_for_numeric_ids_too(raw, params):
    """pandas keys only text hashes: a numeric id's share must still move with the seed (or
    split.seed would not reshuffle a hash split, and the sample would follow the split)."""
    ids = raw[params.data.id_column]
    assert ids.dtype.kind == "i"
    one, two = hash_shares(ids, 1), hash_shares(ids, 2)
    assert np.corrcoef(one, two)[0, 1] == pytest.approx(0, abs=0.03)
    assert (one < 0.2).mean() == pytest.approx(0.2, abs=0.01)
    assert (hash_shares(ids.astype(str), 1) < 0.2).mean() == pytest.approx(0.2, abs=0.01)
