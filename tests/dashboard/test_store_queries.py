"""The dashboard's aggregate queries, on SQLite and PostgreSQL, against the same figures
computed by pandas and scikit-learn from the rows that were written."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import sqlalchemy as sa
from sklearn.metrics import roc_auc_score

from dashboard.store import Filters, Store, StoreUnavailable, read_only_engine
from tests.dashboard.portfolio import synthetic, write

END = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def seeded(request, tmp_path, records):
    url = (f"sqlite:///{tmp_path / 'predictions.db'}" if request.param == "sqlite"
           else request.getfixturevalue("pg_db")())  # fmt: skip
    portfolio = synthetic(records, 3000, days=20, seed=1, end=END)
    write(url, portfolio)
    engine = read_only_engine(url)
    yield Store(engine), portfolio
    engine.dispose()


def _period(ts: pd.Series, grain: str) -> pd.Series:
    ts = pd.to_datetime(ts, utc=True)
    if grain == "hour":
        return ts.dt.strftime("%Y-%m-%d %H")
    if grain == "week":
        return (ts.dt.normalize() - pd.to_timedelta(ts.dt.weekday, unit="D")).dt.strftime(
            "%Y-%m-%d"
        )
    return ts.dt.strftime("%Y-%m-%d")


@pytest.mark.parametrize("grain", ["hour", "day", "week"])
def test_mix_per_period_equals_pandas(seeded, grain):
    store, p = seeded
    since = END - timedelta(days=7)
    got = {(a, b): n for a, b, n in store.mix(Filters(since=since), "risk_band", grain)}
    rows = p.predictions[p.predictions["created_at"] >= since]
    want = rows.groupby([_period(rows["created_at"], grain), "risk_band"]).size().to_dict()
    assert got == want


def test_filters_version_and_segment_equal_pandas(seeded):
    store, p = seeded
    rows = p.predictions
    sex = rows["inputs"].map(lambda r: r.get("SEX"))
    edu = rows["inputs"].map(lambda r: r.get("EDUCATION_2"))
    for f, mask in [
        (Filters(model_version="1"), rows["model_version"] == "1"),
        (Filters(segment=("SEX", 1)), sex == 1),
        (
            Filters(segment=("EDUCATION_2", 1), model_version="2"),
            (edu == 1) & (rows["model_version"] == "2"),
        ),
    ]:
        want = rows[mask]
        assert store.overview(f)["predictions"] == len(want) > 0
        assert store.overview(f)["mean_pd"] == pytest.approx(want["probability"].mean(), rel=1e-9)
        assert dict(store.score_histogram(f)) == want["risk_score"].value_counts().to_dict()


def test_realized_auc_from_database_counts_equals_sklearn(seeded):
    from dashboard.stats import auc_from_counts

    store, p = seeded
    joined = p.predictions.merge(p.outcomes[["prediction_id", "defaulted"]], on="prediction_id")
    counts = store.labelled_scores(Filters(), "day")
    assert sum(n for *_, n in counts) == len(joined)
    assert auc_from_counts((s, d, n) for _, s, d, n in counts) == pytest.approx(
        roc_auc_score(joined["defaulted"], joined["risk_score"]), abs=1e-12
    )


def test_interventions_and_a_customer_history(seeded):
    store, p = seeded
    got = sum(n for *_, n in store.interventions_by_action(Filters(), "day"))
    assert got == len(p.interventions) > 0
    customer = p.predictions["customer_id"].dropna().value_counts().index[0]
    history = store.customer_predictions(customer)
    want = p.predictions[p.predictions["customer_id"] == customer].sort_values(
        "created_at", ascending=False
    )
    assert [h["prediction_id"] for h in history] == list(want["prediction_id"])
    labelled = set(p.outcomes.loc[p.outcomes["customer_id"] == customer, "prediction_id"])
    assert {h["prediction_id"] for h in history if h["defaulted"] is not None} == labelled
    assert len(store.customer_outcomes(customer)) == len(labelled)
    assert store.customer_predictions("nobody") == []


def test_the_dashboard_cannot_write(seeded):
    store, _ = seeded
    with pytest.raises(sa.exc.SQLAlchemyError), store.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM predictions"))
    assert store.rows_written()["predictions"] == 3000


def test_a_store_not_there_yet_is_a_message(tmp_path):
    missing = Store(read_only_engine(f"sqlite:///{tmp_path / 'none.db'}"))
    with pytest.raises(StoreUnavailable, match="does not exist yet"):
        missing.overview(Filters())
    assert not (tmp_path / "none.db").exists()  # looking did not create it
    sa.create_engine(f"sqlite:///{tmp_path / 'empty.db'}").connect().close()
    empty = Store(read_only_engine(f"sqlite:///{tmp_path / 'empty.db'}"))
    with pytest.raises(StoreUnavailable, match="no predictions yet"):
        empty.overview(Filters())
