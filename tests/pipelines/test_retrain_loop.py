"""The loop closed in a repository copy: a champion serves recession traffic, `monitor --act`
decides to retrain, the labelled production rows become a new DVC data version with lineage,
and `dvc repro` registers a challenger evaluated on the test split and the recent window."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
import sqlalchemy as sa
from mlflow import MlflowClient

from features.transform import FeatureBuilder  # noqa: F401  (before any model load)
from tests.conftest import make_repo_copy, stratified_sample
from tests.monitoring.conftest import Loop

pytestmark = pytest.mark.slow


def test_monitor_retrains_into_a_new_data_version(tmp_path, raw, params):
    repo = make_repo_copy(tmp_path, stratified_sample(raw, params.data.target, 3000))
    repo.set_params(**{"monitoring.window.min_rows": 300, "monitoring.min_labelled": 100,
                       "monitoring.retrain.min_labelled_rows": 300})  # fmt: skip
    repo.commit("small monitoring windows")
    repo.dvc("repro")
    repo.py("-m", "pipelines.promote", "--reason", "test champion")
    old_hash = (repo.path / "data.dvc").read_text()

    state = tmp_path / "state"
    uri = f"sqlite:///{state / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    champion = mlflow.pyfunc.load_model("models:/credit-risk@champion").unwrap_python_model()
    loop = Loop(repo.path, state, f"sqlite:///{state / 'predictions.db'}", champion,
                pd.read_parquet(repo.path / "data/prepared/test.parquet"), params)  # fmt: skip
    logged = loop.log_traffic("recession", 800, seed=9)

    proc = repo.py("-m", "pipelines.monitor", "--act", "--last", "800")
    assert "decision: retrain" in proc.stdout, proc.stdout + proc.stderr

    # A new data version, pinned by data.dvc, whose production rows trace back to predictions.
    assert (repo.path / "data.dvc").read_text() != old_hash
    batches = list((repo.path / "data/raw/production").glob("*/lineage.csv"))
    assert len(batches) == 1
    lineage = pd.read_csv(batches[0], dtype={"prediction_id": str})
    assert sorted(lineage["prediction_id"]) == sorted(logged["prediction_id"])
    records = pd.read_csv(batches[0].with_name("records.csv"))
    assert records[params.data.id_column].tolist() == lineage[params.data.id_column].tolist()
    base_ids = pd.read_csv(repo.path / "data/raw/UCI_Credit_Card.csv")[params.data.id_column]
    assert records[params.data.id_column].min() > base_ids.max()  # fresh ids, no collision

    # A challenger, evaluated against the champion on both the test split and the recent window.
    client = MlflowClient(uri, uri)
    challenger = client.get_model_version_by_alias("credit-risk", "challenger")
    assert str(challenger.version) == "2"
    assert str(client.get_model_version_by_alias("credit-risk", "champion").version) == "1"  # gated
    assert float(challenger.tags["recent_roc_auc"]) > 0.5
    metrics = json.loads((repo.path / "metrics.json").read_text())
    assert set(metrics["recent"]) == {"rows", "challenger", "champion"}
    assert metrics["recent"]["rows"] == round(800 * 0.3)
    # Traffic replayed test-split customers: the challenger trained on them, so they are left
    # out of its test evaluation (and of the champion's, on the same rows).
    test_rows = len(pd.read_parquet(repo.path / "data/prepared/test.parquet"))
    assert metrics["test_rows_excluded_as_production_customers"] > 0
    assert metrics["test_rows"] + metrics["test_rows_excluded_as_production_customers"] == test_rows

    # Production rows have fresh row ids, not customer ids: the online table keeps customers only.
    online = json.loads((repo.path / "reports/online_features.json").read_text())
    assert online["customers"] == len(pd.read_csv(repo.path / "data/raw/UCI_Credit_Card.csv"))

    engine = sa.create_engine(loop.db_url)
    with engine.connect() as conn:
        runs = conn.execute(
            sa.text("SELECT status, retrain, acted_at, action FROM monitoring_runs")
        ).all()
    engine.dispose()
    assert len(runs) == 1 and runs[0].status == "retrain" and runs[0].acted_at is not None
    action = json.loads(runs[0].action) if isinstance(runs[0].action, str) else runs[0].action
    assert action["challenger_version"] == "2" and action["rows"] == 800

    # Nothing new to collect: a second retrain refuses instead of versioning the same rows.
    again = repo.py("-m", "pipelines.retrain", "--run", "1", check=False)
    assert again.returncode == 1 and "new labelled production rows" in again.stderr
