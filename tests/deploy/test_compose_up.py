"""deploy/compose/compose.yaml run for real: `docker compose` where an engine runs, else
podman-compose, on the images `make compose-images` and `make container` build (offline here:
the local Debian base and the PostgreSQL stand-in). The whole loop goes through the containers:
`dvc repro` on the host trains against the compose MLflow server (artifacts through its proxy,
backend in the compose PostgreSQL), promote, the champion's bento becomes the serving image,
the api container answers traffic and writes the compose PostgreSQL, and the scheduler
container's monitoring run decides to retrain and retrains inside the container (the mounted
working copy), registering v2 on the server. The dashboard container shows the api's
predictions and the served champion behind its login. Secrets come only from the .env file.

Skips where neither engine is available, fails instead under RISKLOOP_REQUIRE_TOOLS=1 (CI)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from pipelines import compose_images
from tests.browser import offline_page
from tests.conftest import ROOT, make_repo_copy, needed, stratified_sample
from tests.serving.server import KEYS, free_port

pytestmark = pytest.mark.slow
COMPOSE_FILE = ROOT / "deploy" / "compose" / "compose.yaml"


def compose_command(cli: str, env: dict[str, str]) -> list[str]:
    if cli == "docker":
        return ["docker", "compose"]
    exe = shutil.which("podman-compose") or str(Path(sys.executable).with_name("podman-compose"))
    if not Path(exe).exists():
        needed("podman-compose is missing (a dev dependency: `make install`)")
    return [exe]


def wait_for(cond, what: str, timeout: float, logs) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, subprocess.SubprocessError):
            if cond():
                return
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}:\n{logs()}")


def test_the_loop_runs_through_the_compose_stack(engine, tmp_path, raw, params):
    cli, env = engine
    built = subprocess.run([sys.executable, "-m", "pipelines.compose_images", "--pull-timeout", "20"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=3000)  # fmt: skip
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    postgres_image = (
        compose_images.POSTGRES_LOCAL
        if f"built {compose_images.POSTGRES_LOCAL}" in built.stdout
        else compose_images.POSTGRES_OFFICIAL
    )
    compose = compose_command(cli, env)
    api_port, mlflow_port, dashboard_port = free_port(), free_port(), free_port()
    mlflow_url, api_url = f"http://127.0.0.1:{mlflow_port}", f"http://127.0.0.1:{api_port}"
    serving = f"riskloop-compose-{uuid.uuid4().hex[:8]}"  # make container's --image
    repo = make_repo_copy(tmp_path, stratified_sample(raw, params.data.target, 3000),
                          {"BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true",
                           "API_KEY": KEYS["main"], "MLFLOW_TRACKING_URI": mlflow_url})  # fmt: skip
    repo.set_params(**{"monitoring.window.min_rows": 300, "monitoring.min_labelled": 100,
                       "monitoring.retrain.min_labelled_rows": 300, "monitoring.auc_floor": 0.99,
                       "monitoring.schedule": "* * * * *", "promotion.min_auc": 0.6,
                       "promotion.max_auc_drop": 0.2})  # fmt: skip
    repo.commit("small windows, monitoring every minute")
    password = uuid.uuid4().hex
    dotenv = tmp_path / ".env"
    dotenv.write_text("".join(f"{k}={v}\n" for k, v in {
        "POSTGRES_PASSWORD": password, "API_KEYS": KEYS["main"], "POSTGRES_IMAGE": postgres_image,
        "RISKLOOP_IMAGE": f"{serving}:latest", "API_PORT": api_port, "MLFLOW_PORT": mlflow_port,
        "RISKLOOP_REPO": repo.path, "RISKLOOP_UID": os.getuid(), "DASHBOARD_API_KEY": KEYS["main"],
        "DASHBOARD_PASSWORD": password, "DASHBOARD_PORT": dashboard_port,
    }.items()))  # fmt: skip
    project = f"rltest{uuid.uuid4().hex[:8]}"
    base = [*compose, "-f", str(COMPOSE_FILE), "--env-file", str(dotenv), "-p", project]

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args], cwd=COMPOSE_FILE.parent, env=env,
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip

    def psql(sql: str) -> str:
        proc = run("exec", "-T", "postgres", "psql", "-U", "riskloop", "-d",
                   "riskloop_predictions", "-At", "-c", sql)  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout.strip()

    def logs() -> str:
        out = []
        for service in ("postgres", "mlflow", "api", "scheduler", "dashboard"):
            proc = run("logs", service, timeout=60)
            out.append(f"--- {service}\n{(proc.stdout + proc.stderr)[-2500:]}")
        return "\n".join(out)

    try:
        # the stores and the MLflow server first: the serving image needs a champion
        up = run("up", "-d", "postgres", "mlflow")
        assert up.returncode == 0, up.stdout + up.stderr
        wait_for(lambda: httpx.get(mlflow_url + "/health", timeout=3).status_code == 200,
                 "the MLflow server", 240, logs)  # fmt: skip

        repo.dvc("repro")
        repo.run("riskloop", "promote", "--reason", "first champion on the compose stack")
        repo.run("riskloop", "bento")
        repo.run("riskloop", "container", "--image", serving, timeout=3000)
        built_image = json.loads((tmp_path / "state" / "deploy" / "image.json").read_text())
        assert built_image["image"].startswith(f"{serving}:")

        up = run("up", "-d")
        assert up.returncode == 0, up.stdout + up.stderr
        wait_for(lambda: httpx.get(api_url + "/readyz", timeout=3).status_code == 200,
                 "the api container", 300, logs)  # fmt: skip
        traffic = repo.run("riskloop", "traffic", "--scenario", "recession", "--rows", "400",
                           "--rate", "0", "--url", api_url, "--outcomes-delay", "0.5")  # fmt: skip
        assert "'recorded': 400" in traffic.stdout, traffic.stdout + traffic.stderr
        # the api container wrote them to the compose PostgreSQL
        wait_for(lambda: int(psql("select count(*) from predictions")) >= 400,
                 "400 predictions in the compose store", 60, logs)  # fmt: skip

        see_the_dashboard(f"http://127.0.0.1:{dashboard_port}", password, logs)

        client = MlflowClient(mlflow_url, registry_uri=mlflow_url)
        name = params.registry.model_name

        def retrained() -> bool:
            statuses = psql("select status from scheduled_runs").split()
            return "ok" in statuses and any(
                v.version == "2" for v in client.search_model_versions(f"name='{name}'")
            )

        # the scheduler container: monitor --act every minute -> retrain in the container -> v2
        wait_for(retrained, "the scheduled monitor to retrain in its container", 900, logs)
        assert client.get_model_version_by_alias(name, "challenger").version == "2"
        assert client.get_model_version_by_alias(name, "champion").version == "1"
        # artifacts went through the server's proxy into its volume, not to a client's disk
        v2 = client.get_model_version(name, "2")
        assert v2.source.startswith(("models:/", "mlflow-artifacts:")), v2.source
        stored = run("exec", "-T", "mlflow", "sh", "-c", "find /mlartifacts -name MLmodel | wc -l")
        assert int(stored.stdout.strip()) >= 2, stored.stdout + stored.stderr
        assert psql("select count(*) from monitoring_runs where retrain") == "1"
    finally:
        down = run("down", "-v", timeout=300)
        subprocess.run([cli, "rmi", "-f", f"{serving}:latest"], env=env, capture_output=True)
    assert down.returncode == 0, down.stdout + down.stderr


def see_the_dashboard(url: str, password: str, logs) -> None:
    """The dashboard container, in chromium: its login, then the 400 predictions the api
    container wrote (read from the compose PostgreSQL) and the served champion (from the api
    and the MLflow server)."""
    wait_for(lambda: httpx.get(url + "/_stcore/health", timeout=3).status_code == 200,
             "the dashboard container", 180, logs)  # fmt: skip
    with offline_page() as op:
        p = op.page

        def shows(path: str, what) -> None:
            """Signs in on `path` and waits for `what` (a locator) to appear."""
            p.goto(url + path)
            p.get_by_role("textbox", name="Password").fill(password)  # each new session logs in
            p.get_by_role("button", name="Sign in").click()
            try:
                what.first.wait_for(timeout=90_000)
            except Exception:
                raise AssertionError(f"{path}: {p.inner_text('body')[-2000:]}\n{logs()}") from None

        # the predictions KPI itself: a page's elements arrive one by one while its script runs
        shows("/portfolio", p.get_by_test_id("stMetricValue").filter(has_text="400"))
        shows("/models", p.get_by_text("The service serves @champion v1."))
        assert op.blocked == [] and op.errors == []
