"""The whole `dvc repro` in a temporary copy of the repository, on a stratified sample,
with a real MLflow store (SQLite here, PostgreSQL below) and real Optuna storage. A workspace
run moves @challenger; a `dvc exp run` only registers a version tagged with its name."""

from __future__ import annotations

import json
import subprocess
import sys

import mlflow
import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.conftest import ROOT, make_repo_copy, stratified_sample

pytestmark = pytest.mark.slow


def client_for(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def versions(uri: str, name: str = "credit-risk"):
    return sorted(int(v.version) for v in client_for(uri).search_model_versions(f"name='{name}'"))


def verb(repo, *args: str, check: bool = True):
    """`riskloop VERB ARGS` on the copy's own code (the console script imports this checkout's)."""
    return repo.py("-c", "from riskloop.app import main; main()", *args, check=check)


def ran_stages(proc) -> set[str]:
    text = proc.stdout + proc.stderr
    stages = ("prepare", "features", "online_features", "train", "evaluate")
    return {s for s in stages if f"Running stage '{s}'" in text}


@pytest.fixture(scope="module")
def sample(raw, params):
    return stratified_sample(raw, params.data.target, 3000)


def test_experiment_loop_on_sqlite(tmp_path, sample):
    repo = make_repo_copy(tmp_path, sample)
    uri = f"sqlite:///{tmp_path / 'state' / 'mlflow.db'}"

    first = repo.dvc("repro")
    ran = ran_stages(first)
    assert ran == {"prepare", "features", "online_features", "train", "evaluate"}, first.stdout
    assert versions(uri) == [1]
    client = client_for(uri)
    v1 = client.get_model_version_by_alias("credit-risk", "challenger")
    for tag in (
        "git_commit",
        "data_hash",
        "study_name",
        "run_id",
        "params",
        "test_roc_auc",
        "cv_auc_mean",
    ):
        assert v1.tags.get(tag), tag
    assert v1.tags["workspace"] == "committed" and "experiment" not in v1.tags
    assert v1.tags["data_hash"] == repo.path.joinpath("data.dvc").read_text().split("md5: ")[1][:32]
    metrics = json.loads((repo.path / "metrics.json").read_text())
    assert 0.6 < metrics["test"]["roc_auc"] <= 1 and metrics["test"]["n"] == 600
    parent = client.get_run(v1.tags["run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")  # fmt: skip
    assert len(children) == 3  # one child run per trial, all attached to the study's parent
    # the registered model itself returns probabilities
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/credit-risk/{v1.version}")
    test = pd.read_parquet(repo.path / "data/prepared/test.parquet")
    p = model.predict(test[model.unwrap_python_model().input_columns].astype(float))
    assert ((p > 0) & (p < 1)).all() and len(set(p.round(6))) > 10

    assert ran_stages(repo.dvc("repro")) == set()  # nothing changed, nothing runs

    # a workspace run with uncommitted params still becomes the challenger, marked as such
    repo.set_params(**{"train.seed": 7})
    assert ran_stages(repo.dvc("repro")) == {"train", "evaluate"}
    assert versions(uri) == [1, 2]
    v2 = client.get_model_version_by_alias("credit-risk", "challenger")
    assert str(v2.version) == "2" and v2.tags["workspace"] == "modified"
    repo.commit("seed 7")
    baseline = repo.run("git", "rev-parse", "HEAD").stdout.strip()

    exp_run = repo.dvc("exp", "run", "-S", "train.n_trials=2")
    assert versions(uri) == [1, 2, 3]  # the experiment logged to the real store, not a temp copy
    # ... as a version of its own: tagged with its name, evaluated, not the reviewer's challenger
    v3 = client.get_model_version("credit-risk", "3")
    exp_name = v3.tags["experiment"]
    assert exp_name in exp_run.stdout and v3.tags["experiment_baseline"] == baseline
    assert "workspace" not in v3.tags and v3.tags["test_roc_auc"]
    assert f"(experiment {exp_name}), @challenger unchanged (v2)" in exp_run.stdout + exp_run.stderr
    assert str(client.get_model_version_by_alias("credit-risk", "challenger").version) == "2"

    shown = repo.dvc("metrics", "show", "--json").stdout
    assert "roc_auc" in shown
    repo.dvc("plots", "show", "-o", str(tmp_path / "plots"))
    assert (tmp_path / "plots" / "index.html").exists()

    promoted = repo.py("-m", "pipelines.promote", "--if-no-champion")
    assert "first champion" in promoted.stdout
    assert str(client.get_model_version_by_alias("credit-risk", "champion").version) == "2"
    refused = repo.py("-m", "pipelines.rollback", check=False)
    assert refused.returncode == 1 and "nothing to roll back to" in refused.stderr

    # the experiment reaches review only when named, and the move is audited
    unknown = verb(repo, "challenger", "9", check=False)
    assert unknown.returncode == 1 and "credit-risk has no version 9" in unknown.stderr
    moved = verb(repo, "challenger", "3", "--reason", "fewer trials, same AUC")
    assert "@challenger -> v3 (was v2)" in moved.stdout
    assert str(client.get_model_version_by_alias("credit-risk", "challenger").version) == "3"
    history = json.loads(verb(repo, "history", "--json").stdout)["history"]
    assert [(e["action"], e["from"], e["to"]) for e in history][-1] == ("challenger", "2", "3")


def corrupt_cases(sample: pd.DataFrame, target: str) -> dict[str, tuple[pd.DataFrame, str]]:
    text = sample.astype({"LIMIT_BAL": object}).copy()
    text.iloc[5, text.columns.get_loc("LIMIT_BAL")] = "n/a"
    bounds = sample.copy()
    bounds.iloc[2, bounds.columns.get_loc("AGE")] = 400
    return {
        "missing column": (sample.drop(columns="PAY_AMT3"), "column 'PAY_AMT3': missing column"),
        "text value": (text, "column 'LIMIT_BAL': not a number"),
        "out of bounds": (bounds, "column 'AGE': above maximum 120"),
        "one-class target": (sample.assign(**{target: 1}), "one-class target"),
    }


def test_bad_input_stops_with_message_and_registers_nothing(tmp_path, sample, params):
    repo = make_repo_copy(tmp_path, sample)
    uri = f"sqlite:///{tmp_path / 'state' / 'mlflow.db'}"
    for case, (frame, message) in corrupt_cases(sample, params.data.target).items():
        repo.write_raw(frame)
        proc = repo.dvc("repro", check=False)
        assert proc.returncode != 0, case
        assert message in proc.stderr + proc.stdout, case
    repo.write_raw(sample)

    original = (repo.path / "params.yaml").read_text()
    repo.set_params(**{"train.n_trails": 5})
    proc = repo.dvc("repro", check=False)
    assert proc.returncode != 0 and "train.n_trails: unknown key" in proc.stderr + proc.stdout
    (repo.path / "params.yaml").write_text(original)

    # data edited in place without `dvc add`: lineage would lie, so prepare refuses
    repo.write_raw(sample.head(2500), version=False)
    proc = repo.py("-m", "pipelines.prepare", check=False)
    assert proc.returncode == 1 and "is not the version data.dvc pins" in proc.stderr

    # a download whose md5 differs from params.yaml is rejected and nothing is copied
    repo.set_params(**{"data.source.md5": "0" * 32, "data.raw_dir": "data/fresh"})
    proc = repo.py(
        "-m", "pipelines.fetch_data", "--cache", str(ROOT / "state/cache/wheels"), check=False
    )
    assert proc.returncode == 1 and "expected 00000000" in proc.stderr
    assert not (repo.path / "data/fresh").exists()

    assert not (tmp_path / "state" / "mlflow.db").exists() or versions(uri) == []


def test_experiment_loop_on_postgres(tmp_path, sample, pg_db):
    mlflow_url, optuna_url = pg_db(), pg_db()
    repo = make_repo_copy(
        tmp_path, sample, {"MLFLOW_TRACKING_URI": mlflow_url, "OPTUNA_STORAGE": optuna_url}
    )
    repo.dvc("repro")
    assert versions(mlflow_url) == [1]
    v1 = client_for(mlflow_url).get_model_version_by_alias("credit-risk", "challenger")
    study = optuna.load_study(study_name=v1.tags["study_name"], storage=optuna_url)
    assert len(study.trials) == 3

    # two workers on one shared study: together they reach n_trials, no trial lost or duplicated
    repo.set_params(**{"train.n_trials": 12})
    workers = [subprocess.Popen([sys.executable, "-m", "pipelines.tune_worker", "--seed", str(s)], cwd=repo.path,
                                env=repo.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for s in (1, 2)]  # fmt: skip
    for w in workers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err
    studies = [
        s for s in optuna.get_all_study_summaries(optuna_url) if s.study_name != study.study_name
    ]
    assert len(studies) == 1
    shared = optuna.load_study(study_name=studies[0].study_name, storage=optuna_url)
    done = [t for t in shared.trials if t.state.is_finished()]
    assert len(done) == len(shared.trials) >= 12
    assert len({t.number for t in done}) == len(done)
    assert len({tuple(sorted(t.params.items())) for t in done}) == len(done)
    logged = client_for(mlflow_url).search_runs(
        [client_for(mlflow_url).get_experiment_by_name("credit-risk").experiment_id],
        f"tags.`riskloop.study` = '{shared.study_name}'",
    )
    assert len(logged) == len(done)  # every trial's child run reached MLflow
