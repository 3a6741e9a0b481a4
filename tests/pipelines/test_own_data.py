"""A lender's own file, end to end, touching nothing but the data and params.yaml: a
synthetic dataset shaped unlike the shipped one (text categories, a level and a column name
with a hyphen, missing values, string ids, an application date, no repayment history) goes
through `riskloop init-data --write`, `dvc repro`, promotion and the bento, is scored over
HTTP with its text levels and reason texts, and is monitored and retrained."""

from __future__ import annotations

import json
import subprocess

import httpx
import pandas as pd
import pytest
import yaml

from tests.conftest import make_repo_copy, stratified_sample
from tests.serving.server import KEYS, Server
from tests.synthetic_credit import HOME, PURPOSE, generate

pytestmark = pytest.mark.slow


def riskloop(repo, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return repo.run("riskloop", *args, check=check)


def test_own_data_from_init_data_to_retrain(tmp_path, raw, params):
    state = tmp_path / "state"
    store = f"sqlite:///{state / 'predictions.db'}"
    repo = make_repo_copy(tmp_path, stratified_sample(raw, params.data.target, 300),
                          {"DATABASE_URL": store, "BENTOML_HOME": str(state / "bentoml"),
                           "BENTOML_DO_NOT_TRACK": "true", "API_KEY": KEYS["main"]})  # fmt: skip
    (repo.path / "data/raw/UCI_Credit_Card.csv").unlink()
    repo.write_raw(generate(3000), name="applications.csv")

    proc = riskloop(repo, "init-data", "data/raw/applications.csv", "--write", "params.yaml")
    assert "dropped features.repayment" in proc.stdout, proc.stdout
    drafted = yaml.safe_load((repo.path / "params.yaml").read_text())
    data = drafted["data"]
    assert (data["id_column"], data["target"], data["time_column"]) == (
        "application_id",
        "defaulted",
        "application_date",
    )
    assert data["target_labels"] == {"yes": 1, "no": 0}  # the file's own words, read back as such
    assert data["categorical"]["home_ownership"] == sorted(HOME)
    assert data["categorical"]["purpose"] == {"levels": sorted(PURPOSE), "nullable": True}
    assert data["numeric"]["annual_income"]["nullable"] is True
    assert set(data["protected"]) == {"age", "gender"}
    assert drafted["features"]["repayment"] is None
    assert "monotone_constraints" not in drafted["train"]
    # beyond the draft: small monitoring windows, and a floor of the logistic baseline less
    # 0.05, as 3 trials on 1,800 rows (make_repo_copy's budget) are no fair tuning
    repo.set_params(**{"monitoring.window.min_rows": 300, "monitoring.min_labelled": 100,
                       "monitoring.retrain.min_labelled_rows": 300, "monitoring.auc_floor": 0.99,
                       "promotion.min_auc_over_baseline": -0.05, "promotion.max_auc_drop": 0.2})  # fmt: skip
    repo.commit("own data")

    repo.dvc("repro")
    metrics = json.loads((repo.path / "metrics.json").read_text())
    assert metrics["test"]["roc_auc"] > 0.6, metrics
    riskloop(repo, "promote", "--reason", "first model on own data")
    riskloop(repo, "bento")
    proc = riskloop(
        repo, "score-batch", "data/raw/applications.csv", "--out", str(tmp_path / "scored.csv")
    )
    out = pd.read_csv(tmp_path / "scored.csv")
    reasons = [f"reason_{k}{end}" for k in (1, 2, 3) for end in ("", "_text")]
    assert len(out) == 3000 and list(out.columns) == ["application_id", "probability_of_default", "risk_score",
                                                       "risk_band", "decision", *reasons], proc.stdout  # fmt: skip
    declined = out[out["decision"] == "decline"]
    assert declined["reason_1_text"].notna().all()  # each decline says why, in the data's own words
    # init-data made the cuts relative: decline about as many as default (on the test split)
    assert 0 < (out["decision"] == "decline").mean() < 0.5, out["decision"].value_counts()

    server = Server(state / "bentoml", state, store)
    try:
        ready = httpx.get(server.url + "/readyz", timeout=10).json()
        cut = ready["decisions"]  # the service resolves the same cuts for the champion
        assert (
            f"review from risk_score {cut['review_from']}, decline from {cut['decline_from']}"
            in proc.stdout
        )
        record = {"age": 35, "gender": "female", "annual_income": None, "loan_amount": 42000,
                  "term_months": 60, "home_ownership": "rent", "purpose": "debt-consolidation",
                  "employment_years": 2, "recent_inquiries": 4, "debt-to-income": 48.5}  # fmt: skip
        resp = httpx.post(server.url + "/predict", json={"records": [record]},
                          headers={"X-API-Key": KEYS["main"]}, timeout=30)  # fmt: skip
        assert resp.status_code == 200, resp.text
        pred = resp.json()["predictions"][0]
        assert 0 <= pred["risk_score"] <= 100 and pred["reasons"]
        for reason in pred["reasons"]:
            assert reason["feature"] in record, reason
        bad = httpx.post(server.url + "/predict", json={"records": [{**record, "home_ownership": "castle"}]},
                         headers={"X-API-Key": KEYS["main"]}, timeout=30)  # fmt: skip
        assert bad.status_code == 422 and "home_ownership" in bad.text

        # by id, from the online feature table: a customer whose income is missing
        raw = pd.read_csv(repo.path / "data/raw/applications.csv")
        gap = str(raw.loc[raw["annual_income"].isna(), "application_id"].iloc[0])
        resp = httpx.post(server.url + "/predict_customer", json={"customer_ids": [gap]},
                          headers={"X-API-Key": KEYS["main"]}, timeout=30)  # fmt: skip
        assert resp.status_code == 200, resp.text
        assert resp.json()["predictions"][0]["customer_id"] == gap
        assert 0 <= resp.json()["predictions"][0]["risk_score"] <= 100

        traffic = riskloop(repo, "traffic", "--scenario", "recession", "--rows", "400", "--rate", "0",
                           "--url", server.url, "--outcomes-delay", "0.5")  # fmt: skip
        assert "'recorded': 400" in traffic.stdout, traffic.stdout + traffic.stderr
        proc = riskloop(repo, "monitor", "--act", "--last", "400")
        assert "decision: retrain" in proc.stdout, proc.stdout + proc.stderr
        assert "challenger v2 registered" in proc.stdout, proc.stdout
    finally:
        server.stop()
    batch = next((repo.path / "data/raw/production").glob("*/records.csv"))
    assert batch.read_text().splitlines()[1].startswith("prod-1-")
    # the retrain batch writes outcomes as the data writes its target
    assert set(pd.read_csv(batch)["defaulted"]) <= {"yes", "no"}
