"""The real service over HTTP: a bento built from a registered champion, served by
`bentoml serve`, against SQLite and (same suite) PostgreSQL behind a proxy we can cut."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from riskloop.settings import texts_for
from serving.arrowio import stream_bytes
from serving.config import NO_RATE_LIMIT
from serving.scorer import SMALL_BATCH
from tests.conftest import ROOT, pg_databases
from tests.proxy import TcpProxy
from tests.serving.server import (
    KEYS,
    RATE_LIMIT,
    Server,
    load_online_features,
    logit,
    wait_until,
)

pytestmark = pytest.mark.slow
MAIN = {"X-API-Key": KEYS["main"]}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(request, champion, params, tmp_path_factory):
    state = champion["state"]
    if request.param == "sqlite":
        db_url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'predictions.db'}"
        load_online_features(db_url, champion["customers"], params)
        server = Server(champion["bento_home"], state, db_url)
        yield {"server": server, "db_url": db_url, "proxy": None, **champion}
        server.stop()
        return
    with pg_databases() as create:
        direct = create()
        load_online_features(direct, champion["customers"], params)
        proxy = TcpProxy(("127.0.0.1", 5432))
        proxy.restore()
        via_proxy = direct.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        server = Server(champion["bento_home"], state, via_proxy)
        yield {"server": server, "db_url": direct, "proxy": proxy, **champion}
        server.stop()
        proxy.cut()


def records(customers: pd.DataFrame, params, n: int, start: int = 0) -> list[dict]:
    cols = params.data.feature_columns
    return [{k: (int(v) if float(v).is_integer() else float(v)) for k, v in row.items()}
            for row in customers[cols].iloc[start : start + n].to_dict(orient="records")]  # fmt: skip


def post(served, path: str, body, headers=MAIN, **kw) -> httpx.Response:
    return httpx.post(served["server"].url + path, json=body, headers=headers, timeout=30, **kw)


def stored_ids(db_url: str) -> list[str]:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.text("select prediction_id from predictions"))]
    finally:
        engine.dispose()


def test_predict_by_record(served, params):
    recs = records(served["customers"], params, 5)
    resp = post(served, "/predict", {"records": recs})
    assert resp.status_code == 200, resp.text
    preds = resp.json()["predictions"]
    expected = served["model"].predict_proba(pd.DataFrame(recs))
    for pred, p in zip(preds, expected, strict=True):
        assert pred["probability_of_default"] == pytest.approx(float(p), rel=1e-6)
        assert pred["risk_score"] == round(100 * pred["probability_of_default"])
        assert pred["decision"] in {"approve", "review", "decline"}
        assert 1 <= len(pred["reasons"]) <= params.serving.top_reasons
        assert all(r["contribution"] > 0 for r in pred["reasons"])
        # each code with the adverse-action text params give its feature (or one-hot group)
        names = [r["feature"] for r in pred["reasons"]]
        texts = texts_for(names, params.serving.reason_texts, params.data.onehot)
        assert [r["text"] for r in pred["reasons"]] == texts and all(texts)
        assert pred["model_name"] == "credit-risk" and pred["model_version"] == "1"
        assert len(pred["prediction_id"]) == 32


@pytest.mark.parametrize("n", [5, SMALL_BATCH + 8], ids=["tree-walk", "xgboost"])
def test_predict_without_reasons(served, params, n):
    """Without reasons a small batch is scored by walking the flattened trees, a large one by
    XGBoost's predictor (serving/scorer.py): both give the model's probabilities."""
    recs = records(served["customers"], params, n, start=40)
    resp = post(served, "/predict", {"records": recs, "explain": "none"})
    assert resp.status_code == 200, resp.text
    preds = resp.json()["predictions"]
    expected = served["model"].predict_proba(pd.DataFrame(recs))
    for pred, p in zip(preds, expected, strict=True):
        assert pred["probability_of_default"] == pytest.approx(float(p), rel=1e-6)
        if pred["decision"] != "decline":
            assert pred["reasons"] == []


def test_a_declined_record_always_carries_its_principal_reasons(served, params):
    """Even when the request asks for no reasons: the applicant is owed them (adverse action);
    the same reasons, with their texts, as when reasons are asked for."""
    recs = records(served["customers"], params, 300, start=100)
    quiet = post(served, "/predict", {"records": recs, "explain": "none"}).json()["predictions"]
    declined = [i for i, pred in enumerate(quiet) if pred["decision"] == "decline"]
    assert declined, "no declined record among 300: pick others"
    asked = post(served, "/predict", {"records": [recs[i] for i in declined]}).json()["predictions"]
    for i, full in zip(declined, asked, strict=True):
        assert quiet[i]["reasons"] and quiet[i]["reasons"] == full["reasons"]
        assert all(r["text"] and r["contribution"] > 0 for r in quiet[i]["reasons"])


def test_reasons_sum_with_base_value_to_margin(served, params):
    recs = records(served["customers"], params, 20, start=5)
    preds = post(served, "/predict", {"records": recs, "explain": "all"}).json()["predictions"]
    for pred in preds:
        total = sum(pred["contributions"].values()) + pred["base_value"]
        assert total == pytest.approx(
            float(logit(np.array(pred["probability_of_default"]))), abs=1e-4
        )
        raising = [kv for kv in pred["contributions"].items() if kv[1] > 0]
        top = sorted(raising, key=lambda kv: -kv[1])[: params.serving.top_reasons]
        assert [r["feature"] for r in pred["reasons"]] == [k for k, _ in top]


def test_predict_customer_scores_known_and_flags_unknown(served, params):
    customers = served["customers"]
    ids = [str(customers[params.data.id_column].iloc[i]) for i in (0, 1)]
    resp = post(served, "/predict_customer", {"customer_ids": [ids[0], "no-such-customer", ids[1]]})
    assert resp.status_code == 200, resp.text
    out = resp.json()["predictions"]
    assert [o["customer_id"] for o in out] == [ids[0], "no-such-customer", ids[1]]
    assert out[1] == {"customer_id": "no-such-customer", "error": "unknown customer"}
    direct = post(served, "/predict", {"records": records(customers, params, 1)}).json()[
        "predictions"
    ][0]
    assert out[0]["probability_of_default"] == pytest.approx(direct["probability_of_default"])


def test_auth(served, params):
    body = {"records": records(served["customers"], params, 1)}
    url = served["server"].url
    assert post(served, "/predict", body, headers={}).status_code == 401
    assert post(served, "/predict", body, headers={"X-API-Key": "wrong"}).status_code == 401
    assert (
        post(
            served, "/predict", body, headers={"Authorization": f"Bearer {KEYS['old']}"}
        ).status_code
        == 200
    )
    for path in ("/livez", "/readyz", "/metrics"):
        assert httpx.get(url + path, timeout=5).status_code == 200, path


def test_rate_limit_answers_429_with_retry_after(served, params):
    body = {"records": records(served["customers"], params, 1)}
    headers = {"X-API-Key": KEYS["rate"]}
    codes = [post(served, "/predict", body, headers=headers).status_code for _ in range(RATE_LIMIT)]
    assert set(codes) == {200}
    limited = post(served, "/predict", body, headers=headers)
    assert limited.status_code == 429 and 1 <= int(limited.headers["retry-after"]) <= 3600
    assert post(served, "/predict", body).status_code == 200  # other keys are not affected


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda r: r.pop("PAY_0"), "records.0.PAY_0"),
    (lambda r: r.update(LIMIT_BAL="lots"), "records.0.LIMIT_BAL"),
    (lambda r: r.update(AGE=400), "records.0.AGE"),
    (lambda r: r.update(PAY_2=1.5), "records.0.PAY_2"),
    (lambda r: r.update(INCOME=1), "records.0.INCOME"),
    (lambda r: r.update(EDUCATION_1=3), "records.0.EDUCATION_1"),
])  # fmt: skip
def test_validation_names_the_field(served, params, mutate, field):
    rec = records(served["customers"], params, 1)[0]
    mutate(rec)
    resp = post(served, "/predict", {"records": [rec]})
    assert resp.status_code == 422
    assert field in [e["field"] for e in resp.json()["detail"]]


def test_malformed_bodies_are_4xx(served, params):
    url = served["server"].url + "/predict"
    rec = records(served["customers"], params, 1)[0]
    assert (
        httpx.post(
            url, content=b"{not json", headers={**MAIN, "content-type": "application/json"}
        ).status_code
        == 422
    )
    assert post(served, "/predict", [rec]).status_code == 422
    assert post(served, "/predict", {"records": []}).status_code == 422
    too_many = {"records": [rec] * (params.serving.max_records + 1)}
    assert post(served, "/predict", too_many).status_code == 422
    assert (
        post(served, "/predict_customer", {"customer_ids": ["bad id with spaces"]}).status_code
        == 422
    )


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
                         lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=12), c, max_size=4),
                         max_leaves=12),
       path=st.sampled_from(["/predict", "/predict_customer", "/outcomes"]))  # fmt: skip
def test_fuzzed_bodies_never_5xx(served, body, path):
    resp = post(served, path, body, headers={"X-API-Key": KEYS["fuzz"]})
    assert resp.status_code < 500, resp.text


def test_outcomes_are_idempotent(served, params):
    recs = records(served["customers"], params, 2, start=30)
    recs[1]["customer_id"] = "cust-outcome-1"
    preds = post(served, "/predict", {"records": recs}).json()["predictions"]
    pid = preds[0]["prediction_id"]
    wait_until(lambda: pid in stored_ids(served["db_url"]), "the prediction row")
    first = post(
        served, "/outcomes", {"outcomes": [{"prediction_id": pid, "defaulted": 1}]}
    ).json()["results"][0]
    again = post(
        served, "/outcomes", {"outcomes": [{"prediction_id": pid, "defaulted": 1}]}
    ).json()["results"][0]
    clash = post(
        served, "/outcomes", {"outcomes": [{"prediction_id": pid, "defaulted": 0}]}
    ).json()["results"][0]
    assert (first["status"], again["status"], clash["status"]) == (
        "recorded",
        "duplicate",
        "conflict",
    )
    by_customer = post(
        served, "/outcomes", {"outcomes": [{"customer_id": "cust-outcome-1", "defaulted": 0}]}
    )
    assert by_customer.json()["results"][0]["prediction_id"] == preds[1]["prediction_id"]
    unknown = post(served, "/outcomes", {"outcomes": [{"prediction_id": "f" * 32, "defaulted": 1}]})
    assert unknown.json()["results"][0]["status"] == "unknown_prediction"


def test_interventions_once_per_cooldown(served, params):
    rec = records(served["customers"], params, 1)[0]
    rec.update(
        {
            "PAY_0": 8,
            "PAY_2": 7,
            "PAY_3": 6,
            "PAY_4": 5,
            "PAY_5": 4,
            "PAY_6": 3,
            "customer_id": "risky-1",
        }
    )
    first = post(served, "/predict", {"records": [rec]}).json()["predictions"][0]
    assert first["risk_score"] >= 50 and first.get("intervention") == "restructuring_offer"
    second = post(served, "/predict", {"records": [rec]}).json()["predictions"][0]
    assert "intervention" not in second  # cooldown

    def listed() -> list[dict]:
        return httpx.get(served["server"].url + "/interventions", params={"customer_id": "risky-1"},
                         headers=MAIN).json()["interventions"]  # fmt: skip

    # recorded off the request path, with the predictions: wait for the writer
    wait_until(lambda: listed(), "the intervention row")
    time.sleep(0.5)  # a second one, were it recorded, would be in the same or the next batch
    rows = listed()
    assert len(rows) == 1 and rows[0]["prediction_id"] == first["prediction_id"]


def test_every_prediction_is_logged_once(served, params):
    before = set(stored_ids(served["db_url"]))
    recs = records(served["customers"], params, 50, start=40)
    got = [
        p["prediction_id"]
        for p in post(served, "/predict", {"records": recs}).json()["predictions"]
    ]
    wait_until(lambda: set(got) <= set(stored_ids(served["db_url"])), "all rows")
    after = stored_ids(served["db_url"])
    assert len(after) == len(set(after)) and len(set(after) - before) >= len(got)


ARROW = "application/vnd.apache.arrow.stream"


def arrow_body(frame: pd.DataFrame) -> bytes:
    return stream_bytes(pa.Table.from_pandas(frame, preserve_index=False))


def post_arrow(served, frame: pd.DataFrame, query: str = "", headers=MAIN) -> httpx.Response:
    return httpx.post(served["server"].url + "/predict" + query, content=arrow_body(frame),
                      headers={**headers, "content-type": ARROW}, timeout=30)  # fmt: skip


def test_arrow_batch_scores_like_json_and_is_logged(served, params):
    recs = records(served["customers"], params, 30, start=120)
    frame = pd.DataFrame(recs)
    customers = [f"arrow-{i}" if i % 3 == 0 else None for i in range(len(frame))]
    frame["customer_id"] = customers
    resp = post_arrow(served, frame, "?explain=top&request_id=arrow-req")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == ARROW
    got = pa.ipc.open_stream(resp.content).read_all().to_pylist()
    as_json = post(served, "/predict", {"records": recs}).json()["predictions"]
    for row, ref, cid in zip(got, as_json, customers, strict=True):
        assert row["probability_of_default"] == pytest.approx(
            ref["probability_of_default"], rel=1e-9
        )
        assert (row["risk_score"], row["risk_band"], row["decision"]) == (
            ref["risk_score"],
            ref["risk_band"],
            ref["decision"],
        )
        assert row["reasons"] == ref["reasons"] and row["customer_id"] == cid
    # every row reaches the store once, with the same inputs the JSON API logs
    ids = [row["prediction_id"] for row in got]
    wait_until(lambda: set(ids) <= set(stored_ids(served["db_url"])), "arrow rows")
    engine = sa.create_engine(served["db_url"])
    try:
        with engine.connect() as conn:
            stored = {r.prediction_id: r for r in conn.execute(
                sa.text("select * from predictions where request_id = 'arrow-req'"))}  # fmt: skip
    finally:
        engine.dispose()
    assert set(stored) == set(ids)
    for row, rec in zip(got, recs, strict=True):
        logged = stored[row["prediction_id"]]
        inputs = logged.inputs if isinstance(logged.inputs, dict) else json.loads(logged.inputs)
        assert inputs == pytest.approx(rec) and logged.customer_id == row["customer_id"]
        reasons = logged.reasons if isinstance(logged.reasons, list) else json.loads(logged.reasons)
        assert reasons == row["reasons"]


def test_arrow_explain_all_sums_to_margin(served, params):
    frame = pd.DataFrame(records(served["customers"], params, 10, start=160))
    table = pa.ipc.open_stream(post_arrow(served, frame, "?explain=all").content).read_all()
    contrib = [c for c in table.column_names if c.startswith("contribution.")]
    total = (
        np.sum([table.column(c).to_numpy() for c in contrib], axis=0)
        + table.column("base_value").to_numpy()
    )
    margin = logit(table.column("probability_of_default").to_numpy())
    assert total == pytest.approx(margin, abs=1e-4)


def test_arrow_contract_errors_are_4xx_naming_the_problem(served, params):
    good = pd.DataFrame(records(served["customers"], params, 5, start=200))
    bad = good.assign(AGE=[30, 200, 40, 50, 60], FOO=1).drop(columns=["LIMIT_BAL"])
    resp = post_arrow(served, bad)
    assert resp.status_code == 422
    fields = {e["field"] for e in resp.json()["detail"]}
    assert {"FOO", "LIMIT_BAL"} <= fields  # unknown and missing columns first
    # an integer column takes whole floats, as the JSON API does, but not 1.5
    pay = good["PAY_0"].astype(float)
    pay.iloc[2] = 1.5
    resp = post_arrow(served, good.assign(AGE=[30, 200, 40, 50, 10], PAY_0=pay))
    fields = {e["field"]: e["message"] for e in resp.json()["detail"]}
    assert resp.status_code == 422 and "integer" in fields["records.2.PAY_0"]
    assert post_arrow(served, good.assign(PAY_0=good["PAY_0"].astype(float))).status_code == 200
    resp = post_arrow(served, good.assign(AGE=[30, 200, 40, 50, 10]))
    detail = resp.json()["detail"]
    assert resp.status_code == 422 and sorted(e["field"] for e in detail) == [
        "records.1.AGE",
        "records.4.AGE",
    ]
    assert post_arrow(served, good, "?explain=everything").status_code == 422
    assert (
        post_arrow(served, good.assign(customer_id=["ok", "not ok!", None, "a", "b"])).json()[
            "detail"
        ][0]["field"]
        == "records.1.customer_id"
    )
    garbage = httpx.post(served["server"].url + "/predict", content=b"not arrow",
                         headers={**MAIN, "content-type": ARROW}, timeout=30)  # fmt: skip
    assert garbage.status_code == 400 and "Arrow" in garbage.json()["detail"][0]["message"]
    too_many = pd.concat([good] * (params.serving.max_records // 5 + 1), ignore_index=True)
    assert post_arrow(served, too_many).status_code == 422
    assert post_arrow(served, good, headers={}).status_code == 401
    browser = post_arrow(served, good, headers={**MAIN, "Origin": "http://example.com"})
    assert browser.status_code == 415


def test_store_outage_loses_nothing(served, params):
    if served["proxy"] is None:
        pytest.skip("SQLite is a local file: there is no network store to cut")
    proxy, url = served["proxy"], served["server"].url
    recs = records(served["customers"], params, 3, start=100)
    returned: list[str] = []
    failures: list[int | str] = []
    stop = threading.Event()

    def traffic() -> None:
        try:
            _traffic()
        except Exception as exc:  # surface it: a silent thread would make the test pass vacuously
            failures.append(repr(exc))

    def _traffic() -> None:
        with httpx.Client(headers={"X-API-Key": KEYS["outage"]}, timeout=30) as client:
            while not stop.is_set():
                r = client.post(url + "/predict", json={"records": recs})
                if r.status_code == 200:
                    returned.extend(p["prediction_id"] for p in r.json()["predictions"])
                else:
                    failures.append(r.status_code)
                time.sleep(0.02)

    worker = threading.Thread(target=traffic)
    worker.start()
    time.sleep(1.5)
    proxy.cut()
    time.sleep(3)
    degraded = httpx.get(url + "/readyz").json()
    outcome = post(served, "/outcomes", {"outcomes": [{"customer_id": "c-x", "defaulted": 1}]})
    listed = httpx.get(url + "/interventions", headers=MAIN, timeout=30)
    proxy.restore()
    assert outcome.status_code == 503 and "retry" in outcome.json()["detail"]  # never a 500
    assert listed.status_code == 503
    time.sleep(1.5)
    stop.set()
    worker.join()
    assert not failures, failures  # every request answered while the store was down
    assert len(returned) > 100  # traffic really flowed before, during and after the cut
    assert degraded["status"] == "degraded"
    wait_until(
        lambda: set(returned) <= set(stored_ids(served["db_url"])), "replay after the outage", 60
    )
    rows = stored_ids(served["db_url"])
    assert len(rows) == len(set(rows))  # none duplicated
    metrics = httpx.get(url + "/metrics").text
    assert "riskloop_log_rows_dropped" in metrics
    assert not [ln for ln in metrics.splitlines() if ln.startswith("riskloop_log_rows_dropped") and
                not ln.rstrip().endswith(" 0.0")]  # fmt: skip


def test_interventions_are_off_the_request_path(served, params):
    """With the store cut, requests with customer ids that trigger interventions are answered
    at once (nothing waits on a connect timeout); every intervention is recorded once after
    the store is back."""
    if served["proxy"] is None:
        pytest.skip("SQLite is a local file: there is no network store to cut")
    from serving.store import PG_CONNECT_TIMEOUT_S

    proxy, url = served["proxy"], served["server"].url
    rec = records(served["customers"], params, 1)[0]
    rec.update({"PAY_0": 8, "PAY_2": 7, "PAY_3": 6, "PAY_4": 5, "PAY_5": 4, "PAY_6": 3})
    customers = [f"cut-{uuid.uuid4().hex[:8]}" for _ in range(40)]
    took, triggered = [], []
    proxy.cut()
    try:
        with httpx.Client(headers=MAIN, timeout=60) as client:
            for cid in customers:
                start = time.monotonic()
                resp = client.post(
                    url + "/predict", json={"records": [{**rec, "customer_id": cid}]}
                )
                took.append(time.monotonic() - start)
                assert resp.status_code == 200, resp.text
                pred = resp.json()["predictions"][0]
                triggered.append((cid, pred["prediction_id"], pred.get("intervention")))
    finally:
        proxy.restore()
    assert max(took) < PG_CONNECT_TIMEOUT_S, sorted(took)[-5:]
    assert all(action == "restructuring_offer" for _, _, action in triggered)

    def recorded() -> list[tuple[str, str]]:
        engine = sa.create_engine(served["db_url"])
        try:
            with engine.connect() as conn:
                return sorted(tuple(r) for r in conn.execute(
                    sa.text("SELECT customer_id, prediction_id FROM interventions "
                            "WHERE customer_id LIKE 'cut-%'")))  # fmt: skip
        finally:
            engine.dispose()

    wait_until(lambda: len(recorded()) >= len(customers), "interventions after the outage", 60)
    assert recorded() == sorted((cid, pid) for cid, pid, _ in triggered)  # each once


def test_an_outcome_right_after_its_prediction_labels_that_prediction(served, params):
    """Exact, flushed or not: by customer_id, the newest prediction answered before the
    outcome; by prediction_id, accepted as soon as the prediction was answered."""
    rec = records(served["customers"], params, 1, start=40)[0]
    for k in range(20):
        cid = f"exact-{k}-{uuid.uuid4().hex[:6]}"
        first = post(served, "/predict", {"records": [{**rec, "customer_id": cid}]}).json()
        second = post(served, "/predict", {"records": [{**rec, "customer_id": cid}]}).json()
        by_customer = post(
            served, "/outcomes", {"outcomes": [{"customer_id": cid, "defaulted": 1}]}
        )
        got = by_customer.json()["results"][0]
        assert got["status"] == "recorded", got
        assert got["prediction_id"] == second["predictions"][0]["prediction_id"], k
        pid = first["predictions"][0]["prediction_id"]
        by_id = post(served, "/outcomes", {"outcomes": [{"prediction_id": pid, "defaulted": 0}]})
        assert by_id.json()["results"][0]["status"] == "recorded", k


def test_the_edge_refuses_what_no_store_can_hold(served, params):
    """NUL, control characters and lone surrogates in a request id, invalid UTF-8 in a JSON
    body, a NUL in the Arrow query: a 4xx naming the field, within milliseconds."""
    rec = records(served["customers"], params, 1)[0]
    url = served["server"].url + "/predict"
    for rid in (r"a\u0000b", r"tab\there", r"\ud800"):  # JSON escapes, as a client sends them
        body = f'{{"records": [{json.dumps(rec)}], "request_id": "{rid}"}}'.encode()
        started = time.monotonic()
        resp = httpx.post(url, content=body, headers={**MAIN, "content-type": "application/json"})
        assert resp.status_code == 422 and time.monotonic() - started < 1.0, resp.text
        assert "request_id" in [e["field"] for e in resp.json()["detail"]], resp.text
    raw = (
        json.dumps({"records": [{**rec, "customer_id": "x"}]})
        .encode()
        .replace(b'"x"', b'"\xff\xfe"')
    )
    resp = httpx.post(url, content=raw, headers={**MAIN, "content-type": "application/json"})
    assert resp.status_code == 400 and "UTF-8" in resp.text, resp.text
    arrow = stream_bytes(pa.Table.from_pylist([rec]))
    resp = httpx.post(url + "?request_id=%00", content=arrow,
                      headers={**MAIN, "content-type": "application/vnd.apache.arrow.stream"})  # fmt: skip
    assert resp.status_code == 422 and resp.json()["detail"][0]["field"] == "request_id"


def test_every_route_bounds_its_body(served):
    big = b'{"outcomes": [' + b'{"customer_id": "c", "defaulted": 1},' * 80_000 + b"]}"
    for path in ("/outcomes", "/predict_customer"):
        resp = httpx.post(served["server"].url + path, content=big,
                          headers={**MAIN, "content-type": "application/json"})  # fmt: skip
        assert resp.status_code == 413, (path, resp.status_code)


def _raw(served, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", served["server"].port), timeout=30)
    sock.sendall(data)
    return sock


def _answer(sock: socket.socket) -> tuple[bytes, float]:
    """(everything the server sent before closing, seconds it took)."""
    started, got = time.monotonic(), b""
    while chunk := sock.recv(65536):
        got += chunk
    sock.close()
    return got, time.monotonic() - started


def test_heads_and_slow_clients_are_bounded(served):
    # HEADER_TIMEOUT_S=2, BODY_TIMEOUT_S=5, MAX_HEADER_BYTES 32 KiB (tests/serving/server.py)
    huge = _raw(
        served, b"GET /readyz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"
    )
    got, _ = _answer(huge)
    assert got.startswith(b"HTTP/1.1 431"), got[:200]
    idle = _raw(served)  # connects, never sends
    drip = _raw(served, b"POST /predict HTTP/1.1\r\nHost: x\r\n")  # slowloris: a header every 0.5 s
    body = _raw(served, b"POST /predict HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{" % KEYS["main"].encode())  # fmt: skip
    for i in range(8):
        time.sleep(0.5)
        with contextlib.suppress(OSError):
            drip.sendall(b"X-%d: y\r\n" % i)
        # slow clients hold nothing anyone else needs
        assert httpx.get(served["server"].url + "/readyz", timeout=5).status_code == 200
    got, _ = _answer(idle)
    assert got == b""  # nothing was asked: closed without an answer
    got, _ = _answer(drip)
    assert got.startswith(b"HTTP/1.1 408") and b"head" in got, got[:200]
    got, waited = _answer(body)  # 4 s in already; the body's 5 s bound closes it soon
    assert got.startswith(b"HTTP/1.1 408") and b"body" in got and waited < 10, got[:200]


def test_metrics_labels_come_from_routes_not_paths(served):
    for i in range(50):
        httpx.get(served["server"].url + f"/no-such-path-{i}")
        httpx.post(served["server"].url + f"/scan/{i}", headers=MAIN, content=b"{}")
    text = httpx.get(served["server"].url + "/metrics").text
    assert "no-such-path" not in text and "/scan/" not in text


def test_openapi_has_real_examples(served, params):
    spec = httpx.get(served["server"].url + "/openapi.json").json()
    assert {"/predict", "/predict_customer", "/outcomes", "/interventions"} <= set(spec["paths"])
    example = spec["components"]["schemas"]["PredictRequest"]["examples"][0]["records"][0]
    # a real row of the champion's data (the first of its golden batch), every field given
    assert set(example) == set(params.data.feature_columns)
    rows = served["customers"][list(example)]
    assert (rows == pd.Series(example)).all(axis=1).any()


def test_cors_from_env(served):
    resp = httpx.options(served["server"].url + "/predict", headers={
        "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-api-key"})  # fmt: skip
    assert resp.headers.get("access-control-allow-origin") == "https://app.example.com"


def test_metrics_cover_requests_bands_and_log(served, params):
    post(served, "/predict", {"records": records(served["customers"], params, 3)})
    url = served["server"].url + "/metrics"
    httpx.get(url)  # gauges refresh on scrape
    text = httpx.get(url).text
    for name in ("riskloop_requests_total", "riskloop_request_latency_seconds_bucket", "riskloop_predictions_total",
                 "riskloop_log_queue_depth", "riskloop_log_rows_spooled", "riskloop_log_rows_dropped"):  # fmt: skip
        assert name in text, name
    assert 'riskloop_requests_total{endpoint="predict",status="200"}' in text
    # which model and which engines serve: checked on the golden batch at load, no fallback
    assert re.search(r'riskloop_served_model\{[^}]*version="1"[^}]*\} 1\.0', text), text[-2000:]
    assert re.search(r'riskloop_engine_fallback\{[^}]*engine="contributions"[^}]*\} 0\.0', text)
    ready = httpx.get(served["server"].url + "/readyz").json()
    assert ready["model_version"] == "1" and ready["engine"]["fallbacks"] == []
    assert (ready["engine"]["contributions"], ready["engine"]["scores"]) == ("table", "trees")
    assert ready["engine"]["golden_rows_checked"] > 32


def test_customer_ids_never_in_application_logs(served):
    log = Path(served["server"].log.name).read_text()
    for cid in ("risky-1", "cust-outcome-1"):
        assert cid not in log


def test_unsafe_starts_are_refused(champion, tmp_path):
    """Production without keys or with DEBUG, an unknown ENVIRONMENT, and any listening
    beyond loopback without API keys: the server does not start, and says why."""
    cases = [({"ENVIRONMENT": "production", "API_KEYS": ""}, "127.0.0.1", "needs API_KEYS"),
             ({"ENVIRONMENT": "production", "DEBUG": "true"}, "127.0.0.1", "DEBUG on"),
             ({"ENVIRONMENT": "prod"}, "127.0.0.1", "ENVIRONMENT"),
             ({"API_KEYS": ""}, "0.0.0.0", "without API_KEYS")]  # fmt: skip
    for env, host, reason in cases:
        with pytest.raises(RuntimeError, match=reason):
            Server(champion["bento_home"], champion["state"], f"sqlite:///{tmp_path / 'p.db'}",
                   env, host=host).stop()  # fmt: skip


def test_bento_pins_the_model_it_was_built_with(champion):
    """Serving `<name>:latest` would follow later imports; the bento names its own model."""
    env = {
        **os.environ,
        "BENTOML_HOME": str(champion["bento_home"]),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    bentoml_cli = str(Path(sys.executable).parent / "bentoml")
    info = json.loads(subprocess.run([bentoml_cli, "get", "riskloop:latest", "-o", "json"], env=env,
                                     capture_output=True, text=True, check=True).stdout)  # fmt: skip
    bento_dir = champion["bento_home"] / "bentos" / "riskloop" / info["version"]
    pinned = (bento_dir / "src" / "serving" / "bento_model_tag.txt").read_text().strip()
    packed = [m["tag"] for svc in info["services"] for m in svc["models"]]
    assert packed == [pinned]
    assert not (ROOT / "serving" / "bento_model_tag.txt").exists()  # only present during a build


def test_openapi_document_matches_the_service(champion, tmp_path):
    """Schemathesis, every check (response conformance, status codes, schema-valid accepted,
    schema-violating refused, auth), against a real server: 0 failures."""
    server = Server(champion["bento_home"], champion["state"], f"sqlite:///{tmp_path / 'p.db'}",
                    {**NO_RATE_LIMIT})  # fmt: skip
    try:
        st = str(Path(sys.executable).parent / "st")
        done = subprocess.run(
            [st, "run", server.url + "/openapi.json", "--checks", "all", "--max-examples", "30",
             "-H", f"X-API-Key: {KEYS['main']}", "--seed", "1", "--no-color"],
            capture_output=True, text=True, timeout=900, cwd=tmp_path,
        )  # fmt: skip
    finally:
        server.stop()
    assert done.returncode == 0 and "No issues found" in done.stdout, done.stdout[-6000:]


def test_rows_explained_and_failed_keys_are_limited(champion, params, tmp_path):
    server = Server(champion["bento_home"], champion["state"], f"sqlite:///{tmp_path / 'p.db'}",
                    {"RATE_LIMIT_EXPLAINED_ROWS": "50", "AUTH_FAILURES_MAX": "5"})  # fmt: skip
    try:
        recs = records(champion["customers"], params, 40)
        url = server.url + "/predict"
        ok = httpx.post(url, json={"records": recs}, headers=MAIN, timeout=60)
        again = httpx.post(
            url, json={"records": recs}, headers=MAIN, timeout=60
        )  # 80 explained rows > 50
        plain = httpx.post(url, json={"records": recs, "explain": "none"}, headers=MAIN, timeout=60)
        assert (ok.status_code, again.status_code, plain.status_code) == (200, 429, 200)
        assert "explained rows" in again.json()["detail"] and int(again.headers["retry-after"]) >= 1
        wrong = [httpx.post(url, json={"records": recs}, headers={"X-API-Key": "guess"},
                           timeout=60).status_code
                 for _ in range(7)]  # fmt: skip
        assert wrong == [401] * 5 + [429] * 2  # then every attempt from this address waits
        assert (
            httpx.post(url, json={"records": recs[:1]}, headers=MAIN, timeout=60).status_code == 429
        )
    finally:
        server.stop()


def test_request_ids_join_logs_answers_and_stored_rows(champion, params, tmp_path):
    """LOG_FORMAT=json, ACCESS_LOG=true: every line the worker writes is one JSON object; each
    request's id (the caller's X-Request-ID, else a fresh one; a body's request_id wins) is
    answered back, on its access line and stored with each of its predictions."""
    db_url = f"sqlite:///{tmp_path / 'p.db'}"
    server = Server(champion["bento_home"], champion["state"], db_url,
                    {"LOG_FORMAT": "json", "ACCESS_LOG": "true", **NO_RATE_LIMIT})  # fmt: skip
    recs = records(champion["customers"], params, 3)
    url = server.url + "/predict"
    sent: dict[str, tuple[str | None, list[str]]] = {}  # case -> (answered id, prediction ids)
    try:
        cases = {
            "header": ({"x-request-id": "trace-abc-1"}, {"records": recs}),
            "generated": ({}, {"records": recs[:1]}),
            "body wins": ({"x-request-id": "trace-x"}, {"records": recs[:2], "request_id": "client-42"}),
            "invalid header": ({"x-request-id": "x" * 65}, {"records": recs[:1]}),  # longer than stored
            "pydantic route": ({"x-request-id": "trace-route", "origin": "https://app.example.com"},
                               {"records": recs[:1]}),
        }  # fmt: skip
        for case, (headers, body) in cases.items():
            resp = httpx.post(url, json=body, headers={**MAIN, **headers}, timeout=30)
            assert resp.status_code == 200, (case, resp.text)
            ids = [p["prediction_id"] for p in resp.json()["predictions"]]
            sent[case] = (resp.headers.get("x-request-id"), ids)
        arrow = httpx.post(url + "?request_id=arrow-7", content=arrow_body(pd.DataFrame(recs)),
                           headers={**MAIN, "content-type": ARROW}, timeout=30)  # fmt: skip
        assert arrow.status_code == 200, arrow.text
        sent["arrow"] = (arrow.headers.get("x-request-id"),
                         pa.ipc.open_stream(arrow.content).read_all()["prediction_id"].to_pylist())  # fmt: skip
        bad = httpx.post(url, json={"records": [{**recs[0], "AGE": -1}]},
                         headers={**MAIN, "x-request-id": "trace-bad"}, timeout=30)  # fmt: skip
        assert bad.status_code == 422 and bad.headers["x-request-id"] == "trace-bad"
        wait_until(lambda: len(stored_ids(db_url)) >= sum(len(v[1]) for v in sent.values()), "rows")
    finally:
        server.stop()
    answered = {case: rid for case, (rid, _) in sent.items()}
    assert answered["header"] == "trace-abc-1" and answered["body wins"] == "client-42"
    assert answered["pydantic route"] == "trace-route" and answered["arrow"] == "arrow-7"
    for case in ("generated", "invalid header"):
        assert re.fullmatch(r"[0-9a-f]{32}", answered[case] or ""), (case, answered[case])
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            stored = dict(
                conn.execute(sa.text("select prediction_id, request_id from predictions")).all()
            )
    finally:
        engine.dispose()
    for case, (rid, ids) in sent.items():
        assert {stored[i] for i in ids} == {rid}, case
    lines = Path(server.log.name).read_text().splitlines()
    docs = []
    for line in lines:
        if line.strip():
            docs.append(json.loads(line))  # every line is JSON: a plain one fails here
    access = {
        (d["request_id"], d["http"]["status"]) for d in docs if d["logger"] == "riskloop.access"
    }
    assert {(rid, 200) for rid in answered.values()} | {("trace-bad", 422)} <= access
