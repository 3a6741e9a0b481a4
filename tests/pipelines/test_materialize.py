"""The online_features stage streams the splits batch by batch into a real SQLite store: the
table ends as the whole-frame rule says (each customer's latest record, production row ids
left out), however the records fall across splits, parts and batches."""

from __future__ import annotations

from datetime import UTC

import numpy as np
import pandas as pd

from pipelines import paths
from pipelines.materialize import materialize
from serving.store import PredictionStore, make_engine
from tests.pipelines.test_samples import write_split


def test_the_latest_record_of_each_customer_wins_across_batches(tmp_path, monkeypatch, raw, params):
    data = params.data.model_copy(update={"time_column": "month"})
    monthly = params.model_copy(update={"data": data})
    id_column = data.id_column
    customers = raw.head(2000)
    rng = np.random.default_rng(3)
    # Each customer three times, months 1-3 with a different limit, shuffled so that a
    # customer's latest record is often read before an older one, in another split or batch.
    frame = pd.concat(
        [customers.assign(month=pd.Timestamp(2026, m, 1), LIMIT_BAL=customers["LIMIT_BAL"] + m)
         for m in (1, 2, 3)], ignore_index=True,
    ).sample(frac=1.0, random_state=3)  # fmt: skip
    production = raw.iloc[2000:2050].assign(month=pd.Timestamp(2026, 4, 1))
    production[id_column] = np.arange(len(production)) + 10_000_000  # fresh row ids
    frame = pd.concat([frame, production], ignore_index=True)
    split_of = rng.integers(0, len(paths.SPLITS), len(frame))
    for k, name in enumerate(paths.SPLITS):
        write_split(tmp_path, name, frame[split_of == k], parts=3)
    lineage = tmp_path / data.raw_dir / paths.PRODUCTION_SUBDIR / "b1" / "lineage.csv"
    lineage.parent.mkdir(parents=True)
    production[[id_column]].to_csv(lineage, index=False)
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'store.db'}"

    done = materialize(url, monthly, "v1", batch_rows=700)

    assert done == (6000, 2000)
    engine = make_engine(url)
    got = PredictionStore(engine).get_online_features(
        [str(i) for i in (*customers[id_column], *production[id_column])]
    )
    engine.dispose()
    assert len(got) == 2000  # every customer, no production row id
    for cid, limit in zip(customers[id_column], customers["LIMIT_BAL"], strict=True):
        row = got[str(cid)]
        assert row["as_of"] == pd.Timestamp(2026, 3, 1, tz=UTC)
        assert row["record"]["LIMIT_BAL"] == limit + 3 and row["data_version"] == "v1"
        assert set(row["record"]) == set(data.feature_columns)
