"""A window larger than monitoring.window.sample_rows is monitored on a uniform sample chosen
by prediction id in the store. The store's rule (SQL, SQLite and PostgreSQL) picks exactly the
rows the Python rule picks; and the sample's error is within the bound the README states:
on a sample of 100,000 rows of a 1,000,000-row window, every PSI below 0.5 (the range holding
the warn and alert thresholds) and the realized AUC within 0.01 of the whole window's, and a
column shifted far beyond the alert still far beyond it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from monitoring import records
from monitoring.psi import psi
from pipelines import batch_log
from serving.fastpath import new_ids
from serving.store import insert_predictions, make_engine, prediction_row, upgrade

BOUND = 0.01  # README "Monitoring": the stated error of a 100,000-row sample


def ids(n: int) -> list[str]:
    """Both kinds of id the log holds: the service's UUIDv7s and score-batch's, one run's rows
    in two partitions."""
    half, quarter = n // 2, (n - n // 2) // 2
    return (new_ids(half) + batch_log.prediction_ids("token", 0, 0, quarter)
            + batch_log.prediction_ids("token", 1, 0, n - half - quarter))  # fmt: skip


def fill(url: str, pids: list[str], tied: int = 0) -> None:
    """One prediction a millisecond, except the last `tied`: one score-batch run, logged under
    one created_at."""
    upgrade(url)
    engine = make_engine(url)
    at = datetime.now(UTC)
    rows = [prediction_row({"prediction_id": pid, "created_at": at + timedelta(milliseconds=min(i, len(pids) - tied)),
                            "model_name": "m", "model_version": "1", "customer_id": str(i),
                            "inputs": {"x": i}, "probability": 0.5, "risk_score": 50, "risk_band": "medium",
                            "decision": "review", "reasons": None}) for i, pid in enumerate(pids)]  # fmt: skip
    with engine.begin() as conn:
        insert_predictions(conn, rows)
    engine.dispose()


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_the_store_samples_exactly_the_rows_the_rule_names(dialect, tmp_path, pg_db):
    url = f"sqlite:///{tmp_path / 'p.db'}" if dialect == "sqlite" else pg_db()
    pids = ids(20_000)
    fill(url, pids)
    engine = make_engine(url)
    try:
        assert records.window_size(engine, 15_000, None) == 15_000
        newest = set(pids[-15_000:])
        got = records.load_window(engine, 15_000, None, 0.2)
    finally:
        engine.dispose()
    cut = records.sample_cut(0.2)
    want = {p for p in newest if records.in_sample(p, cut)}
    assert set(got["prediction_id"]) == want
    assert abs(len(want) - 3000) < 5 * np.sqrt(15_000 * 0.2 * 0.8)  # uniform: binomial spread
    assert got["created_at"].is_monotonic_increasing  # oldest first, as a whole window


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
@pytest.mark.parametrize("last_n", [15_000, 7_000])
def test_a_window_edge_inside_a_batch_keeps_the_newest_ids(dialect, last_n, tmp_path, pg_db):
    """A batch's rows share one created_at: when the window's edge falls among them (7,000 of
    the 10,000 tied rows) or before them, the sampled window is the sample of exactly the rows
    the whole window holds, newest first and ties by id."""
    url = f"sqlite:///{tmp_path / 'p.db'}" if dialect == "sqlite" else pg_db()
    pids = ids(20_000)  # the served UUIDv7s first, then the batch's ids, tied
    fill(url, pids, tied=10_000)
    engine = make_engine(url)
    try:
        assert records.window_size(engine, last_n, None) == last_n
        assert records.window_size(engine, 50_000, None) == 20_000
        whole = records.load_window(engine, last_n, None)
        # 0.9999: nearly every row, the edge's own too (a bound off by one row shows)
        got = {f: records.load_window(engine, last_n, None, f) for f in (0.2, 0.9999)}
    finally:
        engine.dispose()
    served, batch = pids[:10_000], sorted(pids[10_000:])  # ties by id
    newest = (served + batch)[-last_n:]
    assert list(whole["prediction_id"]) == newest
    for fraction, window in got.items():
        cut = records.sample_cut(fraction)
        assert list(window["prediction_id"]) == [p for p in newest if records.in_sample(p, cut)]


def test_a_100k_sample_is_within_the_stated_bound_of_a_1m_window():
    rng = np.random.default_rng(11)
    n, pids = 1_000_000, ids(1_000_000)
    keep = np.fromiter((records.in_sample(p, records.sample_cut(0.1)) for p in pids), bool, n)
    assert abs(keep.sum() - 100_000) < 2_000
    reference = rng.lognormal(8, 1.5, 30_000)
    statuses = np.arange(-2, 9).astype(float)
    before = np.array([10, 20, 45, 10, 6, 3, 2, 1, 1, 1, 1]) / 100
    after = np.array([8, 16, 42, 14, 8, 4, 3, 2, 1, 1, 1]) / 100
    current = {
        "stable": rng.lognormal(8, 1.5, n),
        "watch": rng.lognormal(8.3, 1.5, n),
        "shifted": rng.lognormal(8.6, 1.3, n),
        "status": rng.choice(statuses, n, p=after),
    }
    for name, values in current.items():
        ref = rng.choice(statuses, 30_000, p=before) if name == "status" else reference
        whole, sampled = psi(ref, values), psi(ref, values[keep])
        assert whole < 0.5 and abs(sampled - whole) <= BOUND, (name, whole, sampled)
    far = rng.lognormal(10, 1, n)
    assert psi(reference, far[keep]) > 2 * 0.25 and psi(reference, far) > 2 * 0.25
    y = (rng.random(n) < 0.22).astype(int)
    p = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + 1.2 * y - 1.3)))
    assert abs(roc_auc_score(y[keep], p[keep]) - roc_auc_score(y, p)) <= BOUND
