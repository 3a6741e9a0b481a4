"""The loop closed in a repository copy, through the real service: `dvc repro` trains v1,
`make promote` + `make deploy` serve it from a bento (`bentoml serve`), an application that
does not collect protected attributes sends recession traffic and its outcomes over HTTP,
`monitor --act` decides to retrain, the labelled production rows (protected attributes left
empty) become a new DVC data version with lineage, and `dvc repro` registers v2 as
@challenger, evaluated on the test split and the recent window. Unpromoted, it changes
nothing the monitor judges: the champion keeps its own reference. Promoting v2 swaps it into
the running service; a rollback swaps v1 back, audited, and a plain promote will not undo it.
On SQLite and on PostgreSQL (prediction store)."""

from __future__ import annotations

import json

import httpx
import pandas as pd
import pytest
import sqlalchemy as sa
from mlflow import MlflowClient

from tests.conftest import make_repo_copy, pg_databases, stratified_sample
from tests.serving.server import KEYS, Server

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state' / 'predictions.db'}"
        return
    with pg_databases() as create:
        yield create()


def stage(repo, module: str, *args: str, check: bool = True):
    return repo.py("-m", f"pipelines.{module}", *args, check=check)


def test_the_loop_serves_monitors_and_retrains_the_champion(tmp_path, raw, params, store):
    state = tmp_path / "state"
    repo = make_repo_copy(tmp_path, stratified_sample(raw, params.data.target, 3000),
                          {"DATABASE_URL": store, "BENTOML_HOME": str(state / "bentoml"),
                           "BENTOML_DO_NOT_TRACK": "true", "API_KEY": KEYS["main"]})  # fmt: skip
    repo.set_params(**{"monitoring.window.min_rows": 300, "monitoring.min_labelled": 100,
                       "monitoring.retrain.min_labelled_rows": 300, "promotion.min_auc": 0.6,
                       "promotion.max_auc_drop": 0.2})  # fmt: skip
    repo.commit("small monitoring windows")
    repo.dvc("repro")
    stage(repo, "promote", "--reason", "test champion")
    stage(repo, "bento")
    old_hash = (repo.path / "data.dvc").read_text()

    server = Server(state / "bentoml", state, store)
    try:
        _serve_monitor_and_retrain(repo, server, state, store, params, old_hash)
    finally:
        server.stop()


def _serve_monitor_and_retrain(repo, server, state, store, params, old_hash) -> None:
    url = server.url
    traffic = stage(repo, "traffic", "--scenario", "recession", "--rows", "800", "--rate", "0",
                    "--no-protected", "--url", url, "--outcomes-delay", "0.5")  # fmt: skip
    assert "recession: 800 predictions" in traffic.stdout, traffic.stdout + traffic.stderr
    assert "'recorded': 800" in traffic.stdout, traffic.stdout

    proc = stage(repo, "monitor", "--act", "--last", "800")
    assert "decision: retrain" in proc.stdout, proc.stdout + proc.stderr

    # A new data version, pinned by data.dvc, whose production rows trace back to predictions;
    # the protected attributes the application never sent are empty, not invented.
    assert (repo.path / "data.dvc").read_text() != old_hash
    batches = list((repo.path / "data/raw/production").glob("*/lineage.csv"))
    assert len(batches) == 1
    lineage = pd.read_csv(batches[0], dtype={"prediction_id": str})
    assert len(lineage) == 800 and lineage["prediction_id"].is_unique
    records = pd.read_csv(batches[0].with_name("records.csv"))
    assert records[params.data.id_column].tolist() == lineage[params.data.id_column].tolist()
    assert records[params.data.protected_columns].isna().all().all()
    assert records[list(params.data.model_input_columns)].notna().all().all()
    base_ids = pd.read_csv(repo.path / "data/raw/UCI_Credit_Card.csv")[params.data.id_column]
    assert records[params.data.id_column].min() > base_ids.max()  # fresh ids, no collision

    # A challenger, evaluated against the champion on both the test split and the recent window.
    uri = f"sqlite:///{state / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    challenger = client.get_model_version_by_alias("credit-risk", "challenger")
    v1 = client.get_model_version("credit-risk", "1")
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

    engine = sa.create_engine(store)
    with engine.connect() as conn:
        runs = conn.execute(
            sa.text("SELECT status, retrain, acted_at, action FROM monitoring_runs")
        ).all()
    engine.dispose()
    assert len(runs) == 1 and runs[0].status == "retrain" and runs[0].acted_at is not None
    action = json.loads(runs[0].action) if isinstance(runs[0].action, str) else runs[0].action
    assert action["challenger_version"] == "2" and action["rows"] == 800

    # Nothing new to collect: a second retrain refuses instead of versioning the same rows.
    again = stage(repo, "retrain", "--run", "1", check=False)
    assert again.returncode == 1 and "new labelled production rows" in again.stderr

    # The DVC workspace now holds v2's data and features: the monitor still judges @champion
    # v1 against v1's own out-of-sample reference, and says the service serves @champion.
    proc = stage(repo, "monitor", "--no-act", "--last", "800")
    payload = json.loads((repo.path / proc.stdout.split("json: ")[-1].strip()).read_text())
    assert payload["champion"]["version"] == "1"
    assert payload["champion"]["reference"]["data_hash"] == v1.tags["data_hash"]
    assert payload["champion"]["reference"]["data_hash"] != challenger.tags["data_hash"]
    assert payload["champion"]["test_metrics"]["roc_auc"] == pytest.approx(
        float(v1.tags["test_roc_auc"]), abs=1e-5)  # fmt: skip
    assert payload["warnings"] == [] and payload["window"]["served_by_versions"] == ["1"]
    assert payload["drift"]["protected"]["collected_share"] == {
        "SEX": 0.0,
        "MARRIAGE": 0.0,
        "AGE": 0.0,
    }

    # Promote v2: the running service swaps it in; roll back: v1 again, v2 kept visible.
    headers = {"X-API-Key": KEYS["main"]}
    deploy = {"SERVE_URL": url}
    repo.env.update(deploy)
    stage(repo, "promote", "--reason", "v2 reviewed")
    proc = stage(repo, "deploy", "--reason", "promotion")
    assert "serves v2 on every worker" in proc.stdout, proc.stdout + proc.stderr
    assert httpx.get(url + "/readyz").json()["model_version"] == "2"
    stage(repo, "rollback", "--reason", "drift in branch X")
    proc = stage(repo, "deploy", "--reason", "rollback")
    assert "serves v1 on every worker" in proc.stdout, proc.stdout + proc.stderr
    ready = httpx.get(url + "/readyz").json()
    assert ready["model_version"] == "1" and ready["deployment"]["status"] == "serving"
    rec = records.iloc[0][params.data.feature_columns].dropna().to_dict()
    answer = httpx.post(url + "/predict", json={"records": [{k: int(v) if float(v).is_integer() else v
                                                             for k, v in rec.items()}]}, headers=headers)  # fmt: skip
    assert answer.json()["predictions"][0]["model_version"] == "1"
    v2 = client.get_model_version("credit-risk", "2")
    assert str(client.get_model_version_by_alias("credit-risk", "challenger").version) == "2"
    assert v2.tags["rolled_back"] == "true" and v2.tags["rollback_reason"] == "drift in branch X"
    refused = stage(repo, "promote", check=False)
    assert refused.returncode == 1 and "was rolled back" in refused.stderr
    history = json.loads(stage(repo, "history", "--json").stdout)
    moves = [(e["action"], e["from"], e["to"], e["reason"]) for e in history["history"]]
    assert moves == [("promote", None, "1", "test champion"), ("promote", "1", "2", "v2 reviewed"),
                     ("rollback", "2", "1", "drift in branch X")]  # fmt: skip
