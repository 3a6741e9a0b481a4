"""`make monitor` end to end on real stores and real Evidently reports: the false-alarm check
(stable traffic), the recession retrain, realized AUC against scikit-learn, cooldown, and
every bad input the issue names."""

from __future__ import annotations

import pytest
from sklearn.metrics import roc_auc_score

from tests.monitoring.conftest import make_loop

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", "postgresql"])
def loop(request, tmp_path, champion, params):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'predictions.db'}"
    else:
        url = request.getfixturevalue("pg_db")()
    return make_loop(tmp_path, champion, params, url)


@pytest.fixture
def sqlite_loop(tmp_path, champion, params):
    return make_loop(tmp_path, champion, params, f"sqlite:///{tmp_path / 'predictions.db'}")


def test_stable_traffic_is_no_alarm_and_recession_retrains_once(loop):
    stable = loop.log_traffic("stable", 2000, seed=1)
    proc, out = loop.monitor("--last", "2000")
    assert proc.returncode == 0, proc.stderr
    assert out["status"] == "no_retrain" and out["retrain"] is False, out["reasons"]
    assert out["window"]["rows"] == 2000 and out["window"]["labelled_rows"] == 2000
    assert out["drift"]["drift_share"] < 0.3
    assert all(c["psi"] < 0.1 for c in out["drift"]["columns"].values()), out["drift"]["columns"]
    # Realized AUC from the outcome feed is scikit-learn's on the same rows.
    sk = roc_auc_score(stable["defaulted"], stable["probability"])
    assert out["realized"]["evidently_roc_auc"] == pytest.approx(sk, abs=1e-9)
    assert out["realized"]["roc_auc"] == pytest.approx(sk, abs=1e-9)
    assert out["realized"]["gini"] == pytest.approx(2 * sk - 1, abs=1e-9)
    for key in ("drift_html", "performance_html"):
        assert (loop.work / out["reports"][key]).stat().st_size > 10_000

    loop.log_traffic("recession", 2000, seed=2)
    proc, out = loop.monitor("--last", "2000")
    assert proc.returncode == 0, proc.stderr
    assert out["status"] == "retrain" and out["retrain"] is True
    fired = {c["name"] for c in out["checks"] if c["triggered"]}
    assert {"drift_share", "psi:LIMIT_BAL", "psi:PAY_0"} <= fired, out["reasons"]
    assert out["drift"]["score"]["psi"] > 0.1
    assert (
        out["drift"]["predicted_default_rate"]["current"]
        > out["drift"]["predicted_default_rate"]["reference"]
    )

    # The same episode, monitored again: one retrain per episode.
    proc, out = loop.monitor("--last", "2000")
    assert proc.returncode == 0, proc.stderr
    assert out["status"] == "cooldown" and out["retrain"] is False

    runs = loop.runs()
    assert [r["status"] for r in runs] == ["no_retrain", "retrain", "cooldown"]
    assert [bool(r["retrain"]) for r in runs] == [False, True, False]
    # Every run (drift + performance snapshots) is in the Evidently workspace's project.
    from evidently.ui.workspace import Workspace

    ws = Workspace(str(loop.state / "evidently"))
    (project,) = ws.search_project("credit-risk")
    assert len(ws.list_runs(project.id)) == 6
    assert len(project.dashboard.model().panels) >= 8


def test_too_few_rows_and_an_empty_window_take_no_decision(sqlite_loop):
    proc, out = sqlite_loop.monitor("--last", "100")
    assert proc.returncode == 2
    assert out["status"] == "insufficient_data" and out["retrain"] is False
    assert "0 predictions" in proc.stderr
    sqlite_loop.log_traffic("recession", 100, seed=3)
    proc, out = sqlite_loop.monitor("--last", "100")
    assert proc.returncode == 2 and "100 predictions" in proc.stderr
    assert out["retrain"] is False
    assert [r["retrain"] for r in sqlite_loop.runs()] == [False, False]


def test_bad_inputs_exit_non_zero_naming_the_problem(sqlite_loop, tmp_path):
    loop = sqlite_loop
    loop.log_traffic("recession", 600, seed=4)

    (loop.work / "data/features/reference.parquet").rename(tmp_path / "ref.parquet")
    proc, _ = loop.monitor()
    assert proc.returncode == 1 and "reference set" in proc.stderr and "dvc repro" in proc.stderr
    (tmp_path / "ref.parquet").rename(loop.work / "data/features/reference.parquet")

    dead = {**loop.env(), "DATABASE_URL": "postgresql+psycopg2://postgres@127.0.0.1:1/none"}
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "pipelines.monitor", "--no-act"], cwd=loop.work,
                          env=dead, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 1 and "unreachable" in proc.stderr, proc.stderr

    # Logged traffic without a model input (an old client, a schema change).
    import sqlalchemy as sa

    from serving.store import make_engine

    engine = make_engine(loop.db_url)
    with engine.begin() as conn:
        rows = conn.execute(sa.text("SELECT prediction_id, inputs FROM predictions LIMIT 5")).all()
        for pid, inputs in rows:
            import json

            record = json.loads(inputs) if isinstance(inputs, str) else dict(inputs)
            record.pop("LIMIT_BAL")
            conn.execute(sa.text("UPDATE predictions SET inputs = :i WHERE prediction_id = :p"),
                         {"i": json.dumps(record), "p": pid})  # fmt: skip
    engine.dispose()
    proc, _ = loop.monitor()
    assert proc.returncode == 1 and "LIMIT_BAL" in proc.stderr, proc.stderr
    assert loop.runs() == []  # nothing decided, so nothing retrains
