"""GET /contract and POST /interventions over HTTP: one real `bentoml serve` of the test
champion on a real SQLite store (tests/serving/test_store.py runs the store's side on
PostgreSQL too)."""

from __future__ import annotations

import re
import sqlite3
import time

import httpx
import pytest
import sqlalchemy as sa

from features.contract import Contract
from serving.schemas import intervention_actions
from tests.serving.server import KEYS, Server, wait_until

pytestmark = pytest.mark.slow
MAIN = {"X-API-Key": KEYS["main"]}
# the schedule of a customer who pays nothing: a score past AUTO_TRIGGER_THRESHOLD (50)
LATE = {"PAY_0": 8, "PAY_2": 7, "PAY_3": 6, "PAY_4": 5, "PAY_5": 4, "PAY_6": 3}


@pytest.fixture(scope="module")
def served(champion, tmp_path_factory):
    db_path = tmp_path_factory.mktemp("manual-store") / "predictions.db"
    server = Server(champion["bento_home"], champion["state"], f"sqlite:///{db_path}")
    yield {"url": server.url, "db_path": db_path, **champion}
    server.stop()


def record(served, params, **changes) -> dict:
    row = served["customers"][params.data.feature_columns].iloc[0].to_dict()
    return {k: int(v) if float(v).is_integer() else float(v) for k, v in row.items()} | changes


def post(served, path: str, body, headers=MAIN) -> httpx.Response:
    return httpx.post(served["url"] + path, json=body, headers=headers, timeout=30)


def listed(served, customer: str) -> list[dict]:
    resp = httpx.get(served["url"] + "/interventions", params={"customer_id": customer},
                     headers=MAIN, timeout=30)  # fmt: skip
    assert resp.status_code == 200, resp.text
    return resp.json()["interventions"]


def test_contract_is_the_served_models(served, params):
    resp = httpx.get(served["url"] + "/contract", headers=MAIN, timeout=30)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    ready = httpx.get(served["url"] + "/readyz", timeout=30).json()
    assert set(body) == {"model_name", "model_version", "fingerprint", "contract", "example",
                         "actions"}  # fmt: skip
    contract = Contract.from_json(body["contract"])
    assert contract.fingerprint == body["fingerprint"] == ready["contract"]
    assert body["model_name"] == params.registry.model_name
    assert body["model_version"] == ready["model_version"]
    assert body["actions"] == intervention_actions(params.serving) and body["actions"]
    # the example is a record of that contract, which the service scores as it is
    assert set(body["example"]) <= set(contract.fields)
    assert post(served, "/predict", {"records": [body["example"]]}).status_code == 200
    bearer = {"Authorization": f"Bearer {KEYS['old']}"}
    assert httpx.get(served["url"] + "/contract", headers=bearer, timeout=30).json() == body
    for headers in ({}, {"X-API-Key": "wrong"}):
        resp = httpx.get(served["url"] + "/contract", headers=headers, timeout=30)
        assert resp.status_code == 401
    assert post(served, "/interventions", {"customer_id": "c", "action": intervention_actions(params.serving)[0]},
                headers={}).status_code == 401  # fmt: skip


def test_openapi_declares_both_routes(served, params):
    spec = httpx.get(served["url"] + "/openapi.json", timeout=30).json()
    assert "ContractResponse" in spec["paths"]["/contract"]["get"]["responses"]["200"]["content"][
        "application/json"]["schema"]["$ref"]  # fmt: skip
    assert {"get", "post"} <= set(spec["paths"]["/interventions"])
    # both are the path's methods, whichever route Starlette tried first
    for method in ("OPTIONS", "PUT", "DELETE"):
        resp = httpx.request(method, served["url"] + "/interventions", headers=MAIN, timeout=30)
        assert (resp.status_code, resp.headers["allow"]) == (405, "GET, POST"), method
    resp = httpx.request("PUT", served["url"] + "/contract", headers=MAIN, timeout=30)
    assert (resp.status_code, resp.headers["allow"]) == (405, "GET")
    schemas = spec["components"]["schemas"]
    assert schemas["InterventionRequest"]["properties"]["action"]["enum"] == intervention_actions(
        params.serving
    )
    assert {"source", "note"} <= set(schemas["Intervention"]["properties"])


def test_manual_interventions_are_recorded_every_time(served, params):
    """A credit officer's decisions: both recorded although the customer's triggered
    intervention is within its cooldown, with the newest prediction's score and band."""
    cid = "officer-1"
    pred = post(served, "/predict", {"records": [record(served, params, **LATE, customer_id=cid)]})
    pred = pred.json()["predictions"][0]
    assert pred["intervention"] == "restructuring_offer"
    wait_until(lambda: listed(served, cid), "the triggered intervention")  # its prediction too

    action = intervention_actions(params.serving)[0]
    first = post(served, "/interventions", {"customer_id": cid, "action": action,
                                            "note": "called: agreed a payment plan\n(2 months)"})  # fmt: skip
    second = post(served, "/interventions", {"customer_id": cid, "action": action})
    assert (first.status_code, second.status_code) == (200, 200), (first.text, second.text)
    first, second = first.json()["intervention"], second.json()["intervention"]
    assert second["id"] > first["id"]
    for got in (first, second):
        assert (got["customer_id"], got["action"], got["source"], got["prediction_id"]) == (
            cid, action, "manual", None,
        )  # fmt: skip
        assert (got["risk_score"], got["risk_band"]) == (pred["risk_score"], pred["risk_band"])
        assert re.match(r"\d{4}-\d\d-\d\dT.*\+00:00$", got["created_at"]), got["created_at"]
    assert (first["note"], second["note"]) == ("called: agreed a payment plan\n(2 months)", None)

    rows = listed(served, cid)  # newest first
    assert rows[:2] == [second, first]
    assert [(r["source"], r["note"], r["prediction_id"]) for r in rows[2:]] == [
        ("policy", None, pred["prediction_id"])
    ]
    # a customer the store has no prediction of
    unknown = post(served, "/interventions", {"customer_id": "officer-new", "action": action})
    assert unknown.status_code == 200, unknown.text
    unknown = unknown.json()["intervention"]
    assert unknown["source"] == "manual"
    assert unknown["risk_score"] is None and unknown["risk_band"] is None
    assert listed(served, "officer-new") == [unknown]


@pytest.mark.parametrize(("body", "field"), [
    ({"customer_id": "officer-bad", "action": "send_flowers"}, "action"),
    ({"action": "payment_reminder"}, "customer_id"),
    ({"customer_id": "", "action": "payment_reminder"}, "customer_id"),
    ({"customer_id": "officer bad", "action": "payment_reminder"}, "customer_id"),
    ({"customer_id": "officer-bad"}, "action"),
    ({"customer_id": "officer-bad", "action": "payment_reminder", "note": "n" * 501}, "note"),
    ({"customer_id": "officer-bad", "action": "payment_reminder", "note": "a\u0000b"}, "note"),
    ({"customer_id": "officer-bad", "action": "payment_reminder", "by": "me"}, "by"),
])  # fmt: skip
def test_invalid_manual_interventions_are_422_naming_the_field(served, body, field):
    resp = post(served, "/interventions", body)
    assert resp.status_code == 422, resp.text
    problems = {p["field"]: p["message"] for p in resp.json()["detail"]}
    assert field in problems, problems
    assert listed(served, "officer-bad") == []


def test_an_unknown_action_is_refused_naming_the_allowed_ones(served, params):
    resp = post(served, "/interventions", {"customer_id": "officer-2", "action": "send_flowers"})
    problem = resp.json()["detail"][0]
    assert resp.status_code == 422
    assert (problem["field"], problem["type"]) == ("action", "unknown_action")
    assert all(a in problem["message"] for a in intervention_actions(params.serving)), problem[
        "message"
    ]
    longest = post(served, "/interventions", {"customer_id": "officer-2", "action": intervention_actions(params.serving)[-1],
                                              "note": "é" * 500})  # fmt: skip
    assert longest.status_code == 200 and longest.json()["intervention"]["note"] == "é" * 500


def test_metrics_count_both_routes(served):
    text = httpx.get(served["url"] + "/metrics", timeout=30).text
    assert 'riskloop_requests_total{endpoint="contract",status="200"}' in text
    assert 'riskloop_requests_total{endpoint="manual_intervention",status="200"}' in text


def test_a_locked_store_answers_503_and_records_nothing(served, params):
    """Another writer holds the SQLite store past the route's time bound: 503 with
    Retry-After, as for /outcomes, never a 500 nor a hung request."""
    body = {"customer_id": "officer-locked", "action": intervention_actions(params.serving)[0]}
    holder = sqlite3.connect(served["db_path"], isolation_level=None, timeout=10)
    try:
        holder.execute("BEGIN IMMEDIATE")  # readers go on (WAL); writers wait
        started = time.monotonic()
        resp = post(served, "/interventions", body)
        took = time.monotonic() - started
        time.sleep(1.5)  # the abandoned store call gives up on its own busy timeout
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert resp.status_code == 503 and "retry" in resp.json()["detail"], resp.text
    assert resp.headers["retry-after"] == "1" and took < 10
    assert listed(served, "officer-locked") == []
    assert post(served, "/interventions", body).status_code == 200
    text = httpx.get(served["url"] + "/metrics", timeout=30).text
    assert 'riskloop_requests_total{endpoint="manual_intervention",status="503"}' in text
    engine = sa.create_engine(f"sqlite:///{served['db_path']}")
    try:
        with engine.connect() as conn:
            sources = conn.execute(sa.text("SELECT DISTINCT source FROM interventions")).scalars()
            assert set(sources) == {"policy", "manual"}
    finally:
        engine.dispose()
