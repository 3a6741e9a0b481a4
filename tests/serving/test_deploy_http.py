"""The served model follows @champion: `make deploy` (after a promotion or a rollback) swaps
the new champion into the running `bentoml serve` (2 workers) with no failed request under
load, every answer carrying the version that scored it; and a bento built from a working tree
whose data section and feature code differ from the champion's still serves the champion."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pandas as pd
import pytest
from mlflow import MlflowClient

from serving.config import NO_RATE_LIMIT
from tests.conftest import ROOT, pg_databases, stratified_sample
from tests.modelling import fit_small_model, register
from tests.serving.server import KEYS, Server, build_bento, load_online_features
from training.registry import Registry

pytestmark = pytest.mark.slow
MAIN = {"X-API-Key": KEYS["main"]}


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory, raw, params):
    """v1 (@champion) and v2 (@challenger): two small models of the same contract."""
    state = tmp_path_factory.mktemp("deploy-state")
    sample = stratified_sample(raw, params.data.target, 4000)
    v1, parts = fit_small_model(sample, params, 60, ("train",), max_depth=3, learning_rate=0.1)
    register(state, v1, params, parts["test"])
    v2, _ = fit_small_model(sample, params, 40, ("train", "valid"), max_depth=4, learning_rate=0.1)
    register(state, v2, params, parts["test"], champion=False)
    bento_home = tmp_path_factory.mktemp("deploy-bentoml")
    build_bento(state, bento_home)
    return {"state": state, "bento_home": bento_home, "models": {"1": v1, "2": v2},
            "customers": pd.concat([parts["valid"], parts["test"]], ignore_index=True)}  # fmt: skip


def registry(state: Path, params) -> Registry:
    uri = f"sqlite:///{state / 'mlflow.db'}"
    return Registry(params.registry, MlflowClient(uri, uri))


def deploy(state: Path, bento_home: Path, url: str, reason: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RISKLOOP_STATE_DIR": str(state), "BENTOML_HOME": str(bento_home),
           "BENTOML_DO_NOT_TRACK": "true", "SERVE_URL": url, "PYTHONWARNINGS": "ignore"}  # fmt: skip
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "pipelines.deploy", "--reason", reason, "--timeout", "240"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)  # fmt: skip


class Load:
    """Clients posting single records on kept-alive connections until stopped; every answer
    (version) or failure is counted."""

    def __init__(self, url: str, record: dict, clients: int = 6) -> None:
        self.url, self.record = url, record
        self.answers: list[tuple[float, str, float]] = []  # (when, version, probability)
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        with httpx.Client(headers=MAIN, timeout=30) as client:
            while not self.stop.is_set():
                try:
                    r = client.post(self.url + "/predict", json={"records": [self.record]})
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                if r.status_code != 200:
                    self.failures.append(f"{r.status_code} {r.text[:200]}")
                    continue
                pred = r.json()["predictions"][0]
                self.answers.append((time.monotonic(), pred["model_version"],
                                     pred["probability_of_default"]))  # fmt: skip

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()

    def versions_since(self, t0: float) -> Counter:
        return Counter(v for t, v, _ in self.answers if t >= t0)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store_url(request, tmp_path_factory, two_versions, params):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('deploy-store') / 'predictions.db'}"
        load_online_features(url, two_versions["customers"], params)
        yield url
        return
    with pg_databases() as create:
        url = create()
        load_online_features(url, two_versions["customers"], params)
        yield url


def test_promotion_and_rollback_swap_the_served_model_without_a_failed_request(
    two_versions, store_url, params
):
    state, home = two_versions["state"], two_versions["bento_home"]
    reg = registry(state, params)
    reg.client.set_registered_model_alias("credit-risk", "champion", "1")  # a run of its own
    build_bento(state, home)  # the bento (and deployment record) of v1
    record = {k: (int(v) if float(v).is_integer() else float(v)) for k, v in
              two_versions["customers"][params.data.feature_columns].iloc[0].items()}  # fmt: skip
    server = Server(home, state, store_url, {"SERVING_WORKERS": "2", **NO_RATE_LIMIT})
    load = Load(server.url, record)
    try:
        time.sleep(2)
        assert httpx.get(server.url + "/readyz").json()["model_version"] == "1"
        reg.move_champion("2", "deploy test", "1")
        t0 = time.monotonic()
        proc = deploy(state, home, server.url, "promotion: deploy test")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "serves v2 on every worker" in proc.stdout
        t_promoted = time.monotonic()
        time.sleep(2)
        t_rollback = time.monotonic()
        old, new = reg.rollback("deploy test: back")
        assert (old, new) == ("2", "1")
        proc = deploy(state, home, server.url, "rollback: deploy test")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        t_rolled_back = time.monotonic()
        time.sleep(2)
    finally:
        load.finish()
        server.stop()
    sent = len(load.answers) + len(load.failures)
    summary = {"sent": sent, "failed": len(load.failures),
               "by_version": dict(Counter(v for _, v, _ in load.answers)),
               "swap_s": round(t_promoted - t0, 1)}  # fmt: skip
    print(f"\ndeploy under load ({store_url.split(':')[0]}): {json.dumps(summary)}")
    assert not load.failures, load.failures[:5]
    assert sent > 200 and set(summary["by_version"]) == {"1", "2"}
    # once deploy returns, every worker answers with the new model
    between = Counter(v for t, v, _ in load.answers if t_promoted <= t < t_rollback)
    assert set(between) == {"2"}, between
    assert set(load.versions_since(t_rolled_back)) == {"1"}
    # each answer is the probability of the model version it names
    frame = pd.DataFrame([record])
    for version, model in two_versions["models"].items():
        got = sorted({p for _, v, p in load.answers if v == version})
        want = float(model.predict_proba(frame)[0])
        assert got == pytest.approx([want] * len(got), rel=1e-6), version
    history = reg.history()
    assert [e["action"] for e in history][-2:] == ["promote", "rollback"]
    assert history[-1] | {"at": None} == {"action": "rollback", "from": "2", "to": "1", "by": history[-1]["by"],
                                          "at": None, "reason": "deploy test: back"}  # fmt: skip


def test_a_bento_built_from_another_working_tree_serves_the_champion(two_versions, params,
                                                                      tmp_path):  # fmt: skip
    """The working tree's data section reordered and extended, and its feature code changed:
    the bento still takes the champion's contract, order and feature code."""
    state, champion = two_versions["state"], two_versions["models"]["1"]
    registry(state, params).client.set_registered_model_alias("credit-risk", "champion", "1")
    tree = tmp_path / "tree"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()  # fmt: skip
    for rel in files:
        if (ROOT / rel).exists():
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, tree / rel)
    import yaml

    doc = yaml.safe_load((tree / "params.yaml").read_text())
    numeric = doc["data"]["numeric"]
    doc["data"]["numeric"] = {"INCOME": {"min": 0, "max": 1e7}, **dict(reversed(numeric.items()))}
    (tree / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    transform = tree / "features" / "transform.py"
    transform.write_text(transform.read_text().replace(
        '"worst_status": status.max(axis=1),', '"worst_status": status.max(axis=1) * 10,'))  # fmt: skip
    home = tmp_path / "bentoml"
    env = {**os.environ, "RISKLOOP_STATE_DIR": str(state), "BENTOML_HOME": str(home),
           "BENTOML_DO_NOT_TRACK": "true", "PYTHONWARNINGS": "ignore"}  # fmt: skip
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run([sys.executable, "-m", "pipelines.bento"], cwd=tree, env=env, check=True,
                   capture_output=True)  # fmt: skip
    server = Server(home, state, f"sqlite:///{tmp_path / 'p.db'}")
    try:
        rows = two_versions["customers"][params.data.feature_columns].iloc[:40]
        recs = [{k: (int(v) if float(v).is_integer() else float(v)) for k, v in r.items()}
                for r in rows.to_dict(orient="records")]  # fmt: skip
        got = httpx.post(server.url + "/predict", json={"records": recs, "explain": "none"},
                         headers=MAIN, timeout=30).json()["predictions"]  # fmt: skip
        extra = httpx.post(server.url + "/predict", json={"records": [{**recs[0], "INCOME": 5}]},
                           headers=MAIN, timeout=30)  # fmt: skip
    finally:
        server.stop()
    expected = champion.predict_proba(rows)
    assert [g["probability_of_default"] for g in got] == pytest.approx(list(expected), rel=1e-6)
    assert extra.status_code == 422 and "records.0.INCOME" in {
        e["field"] for e in extra.json()["detail"]
    }


def test_a_champion_of_another_contract_waits_for_a_restart(two_versions, params, tmp_path):
    """A deployed model whose data contract differs from the one the running server's request
    schemas were built from is not swapped in: the server keeps serving, says why in /readyz,
    and `make deploy` fails naming it; a restart serves it."""
    state = tmp_path / "state"
    shutil.copytree(two_versions["state"], state)
    reg = registry(state, params)
    reg.client.set_registered_model_alias("credit-risk", "champion", "1")
    home = tmp_path / "bentoml"
    build_bento(state, home)
    doc = params.model_dump()
    doc["data"]["numeric"].pop("PAY_AMT6")  # a dataset without the sixth payment month
    doc["features"]["repayment"] = None
    doc["train"]["monotone_constraints"] = {}
    narrow = type(params).model_validate(doc)
    sample = stratified_sample(two_versions["customers"], params.data.target, 1500)
    model, parts = fit_small_model(sample.drop(columns="PAY_AMT6"), narrow, 20, ("train",))
    version = register(state, model, narrow, parts["test"], champion=False)
    server = Server(home, state, f"sqlite:///{tmp_path / 'p.db'}")
    try:
        reg.move_champion(version, "another contract", "1")
        proc = deploy(state, home, server.url, "promotion: another contract")
        assert proc.returncode == 1 and "restart_required" in proc.stderr, proc.stdout + proc.stderr
        ready = httpx.get(server.url + "/readyz").json()
        assert ready["model_version"] == "1" and ready["deployment"]["status"] == "restart_required"
        assert "data contract" in ready["deployment"]["detail"]
        record = {k: (int(v) if float(v).is_integer() else float(v)) for k, v in
                  two_versions["customers"][params.data.feature_columns].iloc[0].items()}  # fmt: skip
        answer = httpx.post(server.url + "/predict", json={"records": [record]}, headers=MAIN)
        assert answer.status_code == 200 and answer.json()["predictions"][0]["model_version"] == "1"
    finally:
        server.stop()
    restarted = Server(home, state, f"sqlite:///{tmp_path / 'p.db'}")
    try:
        assert httpx.get(restarted.url + "/readyz").json()["model_version"] == version
    finally:
        restarted.stop()
