"""The compose stack is the `make stack` stack in containers: the same databases (created by
initdb.sql), the same client settings for every riskloop process, secrets only from `.env`."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from pipelines.container import JOURNAL_DIR
from pipelines.stack import DATABASES, urls

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy/compose"


def compose() -> dict:
    return yaml.safe_load((COMPOSE / "compose.yaml").read_text())  # merge keys resolved


def test_same_databases_as_the_stack():
    doc = compose()
    created = set(re.findall(r"CREATE DATABASE (\w+);", (COMPOSE / "initdb.sql").read_text()))
    created.add(doc["services"]["postgres"]["environment"]["POSTGRES_DB"])
    stack = urls("postgresql://u@h:5432", "riskloop", 5000)
    wanted = {u.rsplit("/", 1)[1] for u in (stack.mlflow_backend, stack.predictions, stack.optuna)}
    assert created == wanted == {f"riskloop_{db}" for db in DATABASES}
    assert "/riskloop_mlflow" in doc["services"]["mlflow"]["command"]


def test_riskloop_processes_get_the_stacks_client_settings():
    doc = compose()
    needed = {"MLFLOW_TRACKING_URI", "DATABASE_URL", "OPTUNA_STORAGE"}
    assert needed <= set(urls("postgresql://u@h:5432", "riskloop", 5000).client_env(Path("/a")))
    for name in ("api", "scheduler"):
        env = doc["services"][name]["environment"]
        assert needed <= set(env), (name, needed - set(env))
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    # the dashboard reads the api's store (read only) and the same registry, and scores via the api
    dash, api = doc["services"]["dashboard"]["environment"], doc["services"]["api"]["environment"]
    assert dash["DASHBOARD_STORE_URL"].split("@")[1] == api["DATABASE_URL"].split("@")[1]
    assert (
        dash["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        and dash["API_BASE_URL"] == "http://api:3000"
    )


def test_secrets_come_from_env_and_the_example_names_them_all():
    text = (COMPOSE / "compose.yaml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    assert required == {"POSTGRES_PASSWORD", "API_KEYS", "DASHBOARD_API_KEY", "DASHBOARD_PASSWORD"}
    example = dict(
        line.split("=", 1)
        for line in (COMPOSE / "env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert {k: v for k, v in example.items() if k in required} == dict.fromkeys(
        required, "CHANGE_ME"
    )
    for name, service in compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|API_KEY", key):
                assert "${" in str(value), (name, key)  # never a literal secret
        assert "healthcheck" in service or name in ("api", "scheduler"), name


def test_long_running_services_restart_and_the_api_drains():
    services = compose()["services"]
    assert all(s.get("restart") == "unless-stopped" for s in services.values())
    assert services["api"]["stop_grace_period"] == "40s"
    # the journal outlives the container: a volume where the image keeps it
    assert JOURNAL_DIR in {v.split(":")[1] for v in services["api"]["volumes"]}
    assert "SPOOL_DIR" not in services["api"]["environment"]
