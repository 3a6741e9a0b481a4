"""The production stack without containers (`riskloop stack`): the machine's PostgreSQL
holds MLflow's backend, the prediction store and Optuna's studies in their own databases; an
MLflow tracking server proxies the artifacts; the bento service and the monitoring
scheduler run beside it. The whole loop goes through it: `dvc repro` trains against the
MLflow server, promote, bento, the stack starts serving, traffic and outcomes over HTTP, the
scheduler's monitoring run decides to retrain, and v2 is registered on the server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid

import httpx
import pytest
import sqlalchemy as sa
from mlflow import MlflowClient

from tests.conftest import PG_URL, _pg_admin, make_repo_copy, stratified_sample
from tests.serving.server import KEYS, free_port

pytestmark = pytest.mark.slow


def wait_for(cond, what: str, timeout: float, proc: subprocess.Popen, log) -> None:
    def logs() -> str:  # the stack's own log and each piece's, newest lines
        pieces = sorted(log.parent.glob("state/stack/*.log"))
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2500:]}" for p in [log, *pieces])

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the stack exited ({proc.returncode}):\n{logs()}")
        if cond():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}:\n{logs()}")


def test_the_loop_runs_through_the_stack(tmp_path, raw, params):
    admin = _pg_admin()  # skips (or fails in CI) without PostgreSQL
    prefix = f"riskloop_stack_{uuid.uuid4().hex[:8]}"
    server = PG_URL.rsplit("/", 1)[0]
    state = tmp_path / "state"
    api_port, mlflow_port = free_port(), free_port()
    repo = make_repo_copy(tmp_path, stratified_sample(raw, params.data.target, 3000),
                          {"BENTOML_HOME": str(state / "bentoml"), "BENTOML_DO_NOT_TRACK": "true",
                           "API_KEY": KEYS["main"], "API_KEYS": KEYS["main"]})  # fmt: skip
    repo.set_params(**{"monitoring.window.min_rows": 300, "monitoring.min_labelled": 100,
                       "monitoring.retrain.min_labelled_rows": 300, "monitoring.auc_floor": 0.99,
                       "monitoring.schedule": "* * * * *", "promotion.min_auc": 0.6,
                       "promotion.max_auc_drop": 0.2})  # fmt: skip
    repo.commit("small windows, monitoring every minute")
    log = tmp_path / "stack.log"
    with log.open("w") as out:
        stack = subprocess.Popen(["riskloop", "stack", "--postgres", server, "--prefix", prefix,
                                  "--port", str(api_port), "--mlflow-port", str(mlflow_port)],
                                 cwd=repo.path, env=repo.env, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)  # fmt: skip
    try:
        env_file = state / "stack" / "stack.env"
        wait_for(lambda: "stack up" in log.read_text(), "the stack", 180, stack, log)
        client_env = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
        assert client_env["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{mlflow_port}"
        assert all(f"/{prefix}_" in client_env[k] for k in ("DATABASE_URL", "OPTUNA_STORAGE"))
        repo.env.update(client_env)

        repo.dvc("repro")
        repo.run("riskloop", "promote", "--reason", "first champion on the stack")
        repo.run("riskloop", "bento")
        url = f"http://127.0.0.1:{api_port}"

        def ready() -> bool:
            try:
                return httpx.get(url + "/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, "the API to serve the bento", 240, stack, log)
        traffic = repo.run("riskloop", "traffic", "--scenario", "recession", "--rows", "400",
                           "--rate", "0", "--url", url, "--outcomes-delay", "0.5")  # fmt: skip
        assert "'recorded': 400" in traffic.stdout, traffic.stdout + traffic.stderr

        server_uri = client_env["MLFLOW_TRACKING_URI"]
        mlflow = MlflowClient(server_uri, registry_uri=server_uri)
        name = params.registry.model_name

        def challenger_v2() -> bool:
            versions = mlflow.search_model_versions(f"name='{name}'")
            return any(v.version == "2" for v in versions)

        engine = sa.create_engine(client_env["DATABASE_URL"])

        def scheduled() -> list[str]:
            with engine.connect() as conn:
                return conn.execute(sa.text("select status from scheduled_runs")).scalars().all()

        try:
            # the scheduler (every minute here) runs `monitor --act`: retrain -> v2 on the
            # server, and the scheduled run that did it finishes ok
            wait_for(lambda: challenger_v2() and "ok" in scheduled(), "the scheduled monitor to retrain",
                     900, stack, log)  # fmt: skip
            with engine.connect() as conn:
                runs = conn.execute(sa.text("select status, retrain from monitoring_runs")).all()
                predictions = conn.execute(sa.text("select count(*) from predictions")).scalar_one()
        finally:
            engine.dispose()
        assert mlflow.get_model_version_by_alias(name, "challenger").version == "2"
        assert mlflow.get_model_version_by_alias(name, "champion").version == "1"
        assert any(retrain for _, retrain in runs) and predictions >= 400
        # artifacts went through the server's proxy, not to a local path of the client
        v2 = mlflow.get_model_version(name, "2")
        assert v2.source.startswith(("models:/", "mlflow-artifacts:")), v2.source
        # `make backup` with the stack's env reaches the server's own stores, not only clients'
        repo.env["RISKLOOP_BACKUP_DIR"] = str(tmp_path / "backups")
        repo.run("riskloop", "backup", "create")
        manifest = json.loads(next((tmp_path / "backups").glob("*/manifest.json")).read_text())
        parts = manifest["parts"]
        assert manifest["status"] == "ok" and parts["mlflow"]["kind"] == "postgresql", parts
        assert (
            parts["mlflow"]["rows"]["model_versions"] == 2 and parts["mlartifacts"]["kind"] == "tar"
        )
    finally:
        if stack.poll() is None:
            os.killpg(stack.pid, signal.SIGTERM)
            stack.wait(60)
        with admin.connect() as conn:
            for db in ("mlflow", "predictions", "optuna"):
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{prefix}_{db}" WITH (FORCE)'))
        admin.dispose()
    assert stack.returncode == 0, log.read_text()[-3000:]
