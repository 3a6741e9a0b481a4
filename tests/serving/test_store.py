"""The prediction store on real SQLite and PostgreSQL: migrations, outcome labels,
intervention cooldown, manual interventions, online features."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext

from riskloop.errors import SettingsError
from serving.store import (
    MIGRATIONS,
    VERSION_TABLE,
    PredictionStore,
    insert_interventions,
    insert_predictions,
    make_engine,
    metadata,
    outcomes,
    prediction_row,
    upgrade,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'predictions.db'}"
    return request.getfixturevalue("pg_db")()


@pytest.fixture
def store(db_url):
    upgrade(db_url)
    engine = make_engine(db_url)
    yield PredictionStore(engine)
    engine.dispose()


def prediction(pid: str, customer: str | None, at: datetime = T0) -> dict:
    return {"prediction_id": pid, "created_at": at, "request_id": f"r-{pid}",
            "model_name": "credit-risk", "model_version": "3", "customer_id": customer,
            "inputs": {"LIMIT_BAL": 20000.0, "PAY_0": 2}, "probability": 0.42, "risk_score": 640,
            "risk_band": "high", "decision": "review", "reasons": ["PAY_0"]}  # fmt: skip


def add_predictions(store: PredictionStore, *rows: dict) -> None:
    with store.engine.begin() as conn:
        insert_predictions(conn, [prediction_row(r) for r in rows])


def test_upgrade_creates_the_schema_from_any_cwd(db_url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    upgrade(db_url)
    upgrade(db_url)  # at head already: nothing to do
    engine = make_engine(db_url)
    try:
        assert {
            "predictions",
            "outcomes",
            "interventions",
            "online_features",
            "monitoring_runs",
            "job_locks",
            "scheduled_runs",
            VERSION_TABLE,
        } <= set(sa.inspect(engine).get_table_names())
        with engine.connect() as conn:
            assert conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).all() == [
                ("0007",)
            ]
            # The migrations and the tables the code uses describe the same schema.
            ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            assert compare_metadata(ctx, metadata) == []
            # ...including what autogenerate does not compare: the customer index is partial
            index = next(i for i in sa.inspect(conn).get_indexes("predictions")
                         if i["name"] == "ix_predictions_customer_created")  # fmt: skip
            where = index.get("dialect_options", {}).get(f"{conn.dialect.name}_where")
            assert "customer_id IS NOT NULL" in str(where)
    finally:
        engine.dispose()


def test_sqlite_engine_makes_its_directory_and_uses_wal(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'new' / 'dir' / 'p.db'}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
        assert (tmp_path / "new" / "dir" / "p.db").exists()
    finally:
        engine.dispose()


@pytest.mark.parametrize("url", ["mysql://u@h/db", "not-a-url", "http://example.com"])
def test_make_engine_rejects_other_stores(url):
    with pytest.raises(SettingsError, match="DATABASE_URL"):
        make_engine(url)


def test_outcomes_are_idempotent_and_never_overwritten(store):
    add_predictions(
        store,
        prediction("p1", "c1"),
        prediction("p2", "c1", T0 + timedelta(minutes=1)),
        prediction("p3", "c2"),
    )
    first = store.record_outcomes(
        [
            {"prediction_id": "p1", "defaulted": 1, "observed_at": "2025-04-01T00:00:00+02:00"},
            {"customer_id": "c1", "defaulted": 0},  # → c1's latest prediction, p2
            {"prediction_id": "nope", "defaulted": 1},
            {"customer_id": "ghost", "defaulted": 0},
            {"prediction_id": "p3", "defaulted": 2},
            {"prediction_id": "p3", "defaulted": 1, "observed_at": "yesterday"},
            {"defaulted": 1},
            {"prediction_id": "p3", "defaulted": True},
            {"prediction_id": "p3", "defaulted": 1},  # same label twice in one call
        ]
    )
    assert [r["status"] for r in first] == [
        "recorded", "recorded", "unknown_prediction", "unknown_customer",
        "invalid", "invalid", "invalid", "recorded", "duplicate",
    ]  # fmt: skip
    assert first[1]["prediction_id"] == "p2"

    again = store.record_outcomes(
        [{"prediction_id": "p1", "defaulted": 1}, {"prediction_id": "p1", "defaulted": 0}]
    )
    assert [r["status"] for r in again] == ["duplicate", "conflict"]
    assert again[1]["existing_defaulted"] == 1

    with store.engine.connect() as conn:
        rows = {r.prediction_id: r for r in conn.execute(sa.select(outcomes))}
    assert set(rows) == {"p1", "p2", "p3"}
    assert rows["p1"].defaulted == 1  # the conflicting 0 did not overwrite it
    assert rows["p2"].customer_id == "c1"
    observed = rows["p1"].observed_at
    observed = observed if observed.tzinfo else observed.replace(tzinfo=UTC)
    assert observed == datetime(2025, 4, 1, tzinfo=timezone(timedelta(hours=2)))


def test_intervention_cooldown(store):
    args = {"risk_score": 700, "risk_band": "high", "action": "call"}
    assert store.record_intervention("c1", "p1", cooldown_s=60, **args)
    assert not store.record_intervention("c1", "p2", cooldown_s=60, **args)
    assert store.record_intervention("c2", "p3", cooldown_s=60, **args)
    assert not store.record_intervention("c2", "p3", cooldown_s=0, **args)  # once per prediction
    time.sleep(0.05)
    assert store.record_intervention("c1", "p4", cooldown_s=0.01, **args)  # window has passed

    c1 = store.list_interventions(customer_id="c1")
    assert len(c1) == 2 and c1[0]["id"] > c1[1]["id"]  # newest first
    assert c1[0]["created_at"].tzinfo is not None
    assert [i["customer_id"] for i in store.list_interventions(limit=2)] == ["c1", "c2"]
    with pytest.raises(ValueError, match="cooldown_s"):
        store.record_intervention("c3", "p5", cooldown_s=-1, **args)


def test_intervention_cooldown_holds_whatever_the_write_order(store):
    """Replays and other workers write late: an intervention is refused when another of the
    customer's lies within the cooldown before *or after* it, and a replay adds nothing."""
    rows = [{"customer_id": "c7", "prediction_id": f"q{i}", "risk_score": 90, "risk_band": "very_high",
             "action": "call", "created_at": T0 + timedelta(hours=h)} for i, h in enumerate((10, 0, 5, 40))]  # fmt: skip
    with store.engine.begin() as conn:
        assert (
            insert_interventions(conn, rows, cooldown_s=24 * 3600) == 2
        )  # 10h and 40h; 0h and 5h lie within 24h of 10h
        assert insert_interventions(conn, rows, cooldown_s=0) == 2  # q1 and q2 were refused
        assert insert_interventions(conn, rows, cooldown_s=0) == 0  # a replay: nothing twice
    recorded = sorted(i["prediction_id"] for i in store.list_interventions(customer_id="c7"))
    assert recorded == ["q0", "q1", "q2", "q3"]


def test_intervention_cooldown_holds_under_concurrency(store):
    barrier = threading.Barrier(8)
    results: list[bool] = []

    def attempt() -> None:
        barrier.wait()
        results.append(store.record_intervention("c9", None, 800, "very_high", "call", 3600))

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert len(store.list_interventions(customer_id="c9")) == 1


def test_manual_interventions_are_never_refused(store):
    """A person's decision is recorded at once, every time (no cooldown), with the customer's
    newest stored score and band; it counts toward the cooldown of triggered ones."""
    later = prediction("p2", "c1", T0 + timedelta(hours=1)) | {
        "risk_score": 71,
        "risk_band": "very_high",
    }
    add_predictions(store, prediction("p1", "c1"), later)
    assert store.record_intervention("c1", "p1", 640, "high", "payment_reminder", cooldown_s=3600)
    first = store.record_manual_intervention("c1", "restructuring_offer", "agreed a plan\nby phone")
    second = store.record_manual_intervention("c1", "restructuring_offer")
    assert second["id"] > first["id"]
    assert {k: v for k, v in first.items() if k not in ("id", "created_at")} == {
        "customer_id": "c1", "prediction_id": None, "risk_score": 71, "risk_band": "very_high",
        "action": "restructuring_offer", "source": "manual", "note": "agreed a plan\nby phone",
    }  # fmt: skip
    assert first["created_at"].tzinfo is not None and second["note"] is None
    unknown = store.record_manual_intervention("nobody", "payment_reminder")
    assert (unknown["risk_score"], unknown["risk_band"]) == (None, None)

    listed = store.list_interventions(customer_id="c1")
    assert [(i["source"], i["note"]) for i in listed] == [
        ("manual", None), ("manual", "agreed a plan\nby phone"), ("policy", None),
    ]  # fmt: skip
    assert listed[0] == second
    # a triggered one within the cooldown of a manual one is not recorded
    assert not store.record_intervention("nobody", "p3", 710, "very_high", "call", 3600)
    assert store.record_intervention("nobody", "p4", 710, "very_high", "call", 0)


def _raw_intervention(conn: sa.Connection, customer: str, pid: str | None) -> None:
    conn.execute(
        sa.text("INSERT INTO interventions (customer_id, prediction_id, risk_score, risk_band, "
                "action, created_at) VALUES (:c, :p, 70, 'high', 'call', :at)"),
        {"c": customer, "p": pid, "at": T0},
    )  # fmt: skip


def test_migration_0006_keeps_the_interventions_of_a_0005_store(db_url):
    upgrade(db_url, "0005")
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            _raw_intervention(conn, "c1", "p1")
            _raw_intervention(conn, "c2", None)
        upgrade(db_url)
        store = PredictionStore(engine)
        old = sorted(store.list_interventions(), key=lambda i: i["id"])
        assert [(i["customer_id"], i["prediction_id"], i["source"], i["note"]) for i in old] == [
            ("c1", "p1", "policy", None), ("c2", None, "policy", None),
        ]  # fmt: skip
        assert old[0]["created_at"] == T0
        store.record_manual_intervention("c1", "call", "x")
        with engine.connect() as conn, pytest.raises(sa.exc.IntegrityError):
            conn.execute(sa.text("UPDATE interventions SET source = 'robot'"))  # the CHECK
        # and back: the rows stay, without the new columns
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0005")
        with engine.connect() as conn:
            columns = {c["name"] for c in sa.inspect(conn).get_columns("interventions")}
            assert len(conn.execute(sa.text("SELECT id FROM interventions")).all()) == 3
        assert not {"source", "note"} & columns
        upgrade(db_url)
    finally:
        engine.dispose()


def test_online_features_upsert_and_get(store):
    day = T0.replace(hour=0)
    sent = store.upsert_online_features(
        [
            {"customer_id": "c1", "record": {"PAY_0": 0}, "as_of": day, "data_version": "v1"},
            {"customer_id": "c2", "record": {"PAY_0": 1, "BILL": float("nan")},
             "as_of": day.isoformat(), "data_version": "v1"},
            {"customer_id": "c2", "record": {"PAY_0": 9}, "as_of": day - timedelta(days=1),
             "data_version": "v0"},  # older row in the same call loses
        ]
    )  # fmt: skip
    assert sent == 2
    got = store.get_online_features(["c1", "c2", "unknown", "c1"])
    assert set(got) == {"c1", "c2"}
    assert got["c2"] == {"record": {"PAY_0": 1, "BILL": None}, "as_of": day, "data_version": "v1"}

    store.upsert_online_features(
        [
            {"customer_id": "c1", "record": {"PAY_0": 2}, "as_of": day + timedelta(days=1),
             "data_version": "v2"},
            {"customer_id": "c2", "record": {"PAY_0": 5}, "as_of": day - timedelta(days=3),
             "data_version": "v0"},  # a late backfill must not roll c2 back
            {"customer_id": "c3", "record": {"PAY_0": -1}, "as_of": day, "data_version": "v2"},
        ]
    )  # fmt: skip
    got = store.get_online_features(["c1", "c2", "c3"])
    assert got["c1"]["record"] == {"PAY_0": 2} and got["c1"]["data_version"] == "v2"
    assert got["c2"]["record"] == {"PAY_0": 1, "BILL": None}
    assert got["c3"]["as_of"] == day
    assert store.get_online_features([]) == {}
    assert store.upsert_online_features([]) == 0


def test_ping_and_count(store):
    assert store.ping()
    assert store.count_predictions() == 0
    add_predictions(store, prediction("p1", None), prediction("p2", "c1"))
    assert store.count_predictions() == 2


def test_ping_is_false_fast_when_postgres_is_unreachable():
    engine = make_engine("postgresql://postgres@127.0.0.1:1/none")
    started = time.monotonic()
    try:
        assert not PredictionStore(engine).ping()
    finally:
        engine.dispose()
    assert time.monotonic() - started < 5
