"""`make monitor` end to end on real stores and real Evidently reports: the false-alarm check
(stable traffic), the recession retrain, realized AUC against scikit-learn, cooldown, and
every bad input the issue names."""

from __future__ import annotations

import pytest
import yaml
from sklearn.metrics import roc_auc_score

from monitoring import records
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


def test_the_champion_is_judged_by_its_own_reference(sqlite_loop, champion):
    """The reference, the feature builder and the test metrics are the champion's, read from
    the registry: the job's directory holds nothing but params.yaml."""
    loop = sqlite_loop
    model, parts, _ = champion
    assert sorted(p.name for p in loop.work.iterdir()) == ["params.yaml"]
    loop.log_traffic("stable", 1000, seed=5)
    proc, out = loop.monitor("--last", "1000")
    assert proc.returncode == 0, proc.stderr
    assert out["champion"]["version"] == "1"
    assert out["champion"]["reference"] == {"rows": len(parts["test"]), "split": "test",
                                            "data_hash": "test"}  # fmt: skip
    # realized performance is compared with the champion's out-of-sample test AUC
    test_auc = roc_auc_score(parts["test"]["default-payment-next-month"],
                             model.predict_proba(parts["test"]))  # fmt: skip
    assert out["champion"]["test_metrics"]["roc_auc"] == pytest.approx(test_auc, abs=1e-9)
    assert out["warnings"] == []


def test_traffic_without_protected_attributes_is_monitored(loop, params):
    """Applications need not send SEX / AGE / MARRIAGE: such traffic is monitored on the
    model's inputs, the coverage of each protected attribute is reported, and one that too
    few rows carry is left out of the drift check instead of failing the window."""
    loop.log_traffic("stable", 1500, seed=6, protected=False)
    loop.log_traffic("stable", 500, seed=7)
    proc, out = loop.monitor("--last", "2000")
    assert proc.returncode == 0, proc.stderr
    assert out["status"] == "no_retrain", out["reasons"]
    coverage = out["drift"]["protected"]["collected_share"]
    assert coverage == {"SEX": pytest.approx(0.25), "MARRIAGE": pytest.approx(0.25),
                        "AGE": pytest.approx(0.25)}  # fmt: skip
    assert set(out["drift"]["protected"]["drift_checked"]) == set(params.data.protected_columns)
    missing = out["drift"]["protected_missing_share"]
    assert missing["AGE"] == pytest.approx(0.75) and missing["MARRIAGE_1"] == pytest.approx(0.75)
    # none at all: the window is still monitored, the attributes simply not checked
    loop.log_traffic("stable", 2000, seed=8, protected=False)
    proc, out = loop.monitor("--last", "2000")
    assert proc.returncode == 0, proc.stderr
    assert out["drift"]["protected"]["collected_share"]["SEX"] == 0.0
    assert out["drift"]["protected"]["drift_checked"] == []
    assert "AGE" not in out["drift"]["columns"]


def test_traffic_served_by_another_version_is_flagged(sqlite_loop):
    sqlite_loop.log_traffic("stable", 600, seed=9, version="7")
    proc, out = sqlite_loop.monitor("--last", "600")
    assert proc.returncode == 0, proc.stderr
    assert out["window"]["served_by_versions"] == ["7"]
    assert "served by v7, not @champion v1" in out["warnings"][0]
    assert "WARNING: traffic in this window was served by v7" in proc.stderr


def test_bad_inputs_exit_non_zero_naming_the_problem(sqlite_loop, params):
    loop = sqlite_loop
    loop.log_traffic("recession", 600, seed=4)

    # a champion registered without what riskloop's train stage packages with a model
    import mlflow
    from mlflow import MlflowClient

    from training.registry import Registry

    uri = f"sqlite:///{loop.state / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with mlflow.start_run(
        experiment_id=MlflowClient(uri, uri).get_experiment_by_name("credit-risk").experiment_id
    ):
        bare = mlflow.pyfunc.log_model(
            name="model", python_model=loop.model, code_paths=["features", "training"]
        )
    registry = Registry(params.registry, MlflowClient(uri, uri))
    mv = registry.register_challenger(bare.model_uri, {})
    registry.move_champion(mv.version, "a bare model", "1")
    proc, _ = loop.monitor()
    assert proc.returncode == 1 and "carries no reference.parquet" in proc.stderr, proc.stderr
    assert "dvc repro" in proc.stderr
    registry.rollback("back to the packaged champion")

    dead = {**loop.env(), "DATABASE_URL": "postgresql+psycopg2://postgres@127.0.0.1:1/none"}
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "pipelines.monitor", "--no-act"], cwd=loop.work,
                          env=dead, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 1 and "unreachable" in proc.stderr, proc.stderr

    # Logged traffic without a model input (an old client, a schema change).
    assert loop.runs() == []
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


def test_a_window_above_sample_rows_is_judged_on_a_sample(sqlite_loop):
    """monitoring.window.sample_rows: the window is counted whole in the store, its statistics
    come from a uniform sample chosen there (tests/monitoring/test_window_sample.py: its error)."""
    loop = sqlite_loop
    doc = yaml.safe_load((loop.work / "params.yaml").read_text())
    doc["monitoring"]["window"]["sample_rows"] = 10_000
    (loop.work / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    logged = loop.log_traffic("recession", 14_000, seed=5)
    proc, out = loop.monitor("--last", "14000")
    assert proc.returncode == 0, proc.stderr
    assert out["window"]["rows"] == 14_000
    cut = records.sample_cut(10_000 / 14_000)
    kept = logged[[records.in_sample(p, cut) for p in logged["prediction_id"]]]
    assert out["window"]["sampled_rows"] == len(kept) == out["window"]["labelled_rows"]
    assert out["retrain"] is True, out["reasons"]  # the recession is seen on the sample
    sk = roc_auc_score(kept["defaulted"], kept["probability"])
    assert out["realized"]["roc_auc"] == pytest.approx(sk, abs=1e-9)
    assert loop.runs()[-1]["rows"] == 14_000
