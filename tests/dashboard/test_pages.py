"""The dashboard in headless Debian chromium (tests/browser.py: nothing may load from beyond
loopback) against a real `bentoml serve` and its real SQLite store: every page with and
without data, the applicant form (good and bad input), a 1,000-row file scored and
downloaded, a customer looked up and labelled, the login beyond loopback."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.browser import chromium, offline_page, screenshot_dir
from tests.conftest import ROOT
from tests.dashboard.portfolio import synthetic, write
from tests.dashboard.stack import Dashboard
from tests.serving.server import KEYS, Server, load_online_features

PAGES = {"score": "Score an applicant", "customer": "Customer", "portfolio": "Portfolio",
         "models": "Models", "service": "Service"}  # fmt: skip
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def browser() -> str:
    """Before `champion`: a machine without chromium skips before training."""
    return chromium()


CARD = "<html><body><h1>credit-risk v1 — model card</h1><p>gates: 8 of 8 pass</p></body></html>"


@pytest.fixture(scope="module")
def stack(browser, champion, params, tmp_path_factory):
    db = f"sqlite:///{tmp_path_factory.mktemp('dashboard-store') / 'predictions.db'}"
    # a model card where the evaluate stage logs it (the test champion skips evaluate), so the
    # Models page's download and inline card are exercised on the real artifact store
    client = MlflowClient(f"sqlite:///{champion['state'] / 'mlflow.db'}")
    version = client.get_model_version_by_alias(params.registry.model_name, "champion")
    client.log_text(version.run_id, CARD, "model_card/model_card.html")
    client.set_model_version_tag(
        version.name, version.version, "card.artifact", "model_card/model_card.html"
    )
    load_online_features(db, champion["customers"], params)
    server = Server(champion["bento_home"], champion["state"], db)
    dashboard = Dashboard(champion["state"], server.url, KEYS["main"], db)
    yield {"api": server.url, "url": dashboard.url, "db": db, "dashboard": dashboard, **champion}
    dashboard.stop()
    server.stop()


@pytest.fixture
def page(stack):
    with offline_page(1400, 1000) as op:
        yield op
        assert op.blocked == [], f"requests beyond loopback: {op.blocked}"
        assert op.errors == [], op.errors
    assert "Traceback" not in stack["dashboard"].logs()


def open_page(op, stack, name: str):
    p = op.page
    p.goto(stack["url"] + ("" if name == "score" else f"/{name}"))
    p.get_by_role("heading", name=PAGES[name]).first.wait_for(timeout=WAIT_MS)
    settle(p)
    return p


def settle(p) -> None:
    """Wait until Streamlit has finished running the page's script."""
    p.wait_for_timeout(300)
    p.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=WAIT_MS)


def box(p, name: str):
    """A text input by its label (the label's help button shares the name)."""
    return p.get_by_role("textbox", name=name, exact=True)


def no_traceback(p) -> None:
    text = p.inner_text("body")
    assert "Traceback" not in text and "This page failed" not in text, text[:2000]


def shot(op, name: str) -> None:
    op.page.set_viewport_size({"width": 1400, "height": 2400})
    op.page.wait_for_timeout(500)
    op.screenshot(screenshot_dir(ROOT / "state" / "screenshots" / "dashboard") / f"{name}.png")
    op.page.set_viewport_size({"width": 1400, "height": 1000})


# ---------------------------------------------------------------------- without data
def test_every_page_opens_on_an_empty_store(stack, page):
    expected = {"score": "One applicant", "customer": "Enter a customer id",
                "portfolio": "No predictions in this selection yet", "models": "serves @champion v1",
                "service": "ready"}  # fmt: skip
    for name, text in expected.items():
        p = open_page(page, stack, name)
        p.get_by_text(text).first.wait_for(timeout=WAIT_MS)
        no_traceback(p)
        shot(page, f"empty-{name}")


# ---------------------------------------------------------------------- the applicant form
def test_the_form_scores_an_applicant_and_shows_the_reasons(stack, page):
    p = open_page(page, stack, "score")
    box(p, "PAY_0").fill("3")
    box(p, "PAY_2").fill("2")
    box(p, "Customer id (optional)").fill("form-applicant-1")
    p.get_by_role("button", name="Score").click()
    p.get_by_text("Probability of default").wait_for(timeout=WAIT_MS)
    settle(p)
    body = p.inner_text("body")
    assert any(d in body for d in ("APPROVE", "REVIEW", "DECLINE")), body[-2000:]
    assert "Reasons" in body
    p.locator('[data-testid="stVegaLiteChart"]').first.wait_for(
        timeout=WAIT_MS
    )  # the contributions
    no_traceback(p)
    shot(page, "score-answer")
    answered = httpx.post(
        stack["api"] + "/interventions", headers={"X-API-Key": KEYS["main"]}, json={}
    )
    assert answered.status_code == 422  # (the API is there; the form's row went through it)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("AGE", "seventeen", "AGE: not a number"),
    ("AGE", "15", "AGE: below minimum 18"),
    ("LIMIT_BAL", "-5", "LIMIT_BAL: below minimum 0"),
    ("PAY_0", "1.5", "PAY_0: not an integer"),
    ("PAY_0", "", "PAY_0: missing value"),
])  # fmt: skip
def test_bad_form_input_names_the_field(stack, page, field, value, message):
    p = open_page(page, stack, "score")
    p.get_by_label(field, exact=True).fill(value)
    p.get_by_role("button", name="Score").click()
    p.get_by_text(message).first.wait_for(timeout=WAIT_MS)
    settle(p)
    assert "Probability of default" not in p.inner_text("body")
    no_traceback(p)
    if field == "AGE" and value == "15":
        shot(page, "score-bad-input")


# ---------------------------------------------------------------------- a file
def test_a_file_of_1000_rows_is_scored_and_downloaded(stack, page, tmp_path, params):
    customers = stack["customers"]
    frame = customers.drop(columns=[params.data.target], errors="ignore").head(1000).copy()
    frame.insert(0, "customer_id", [f"file-{i}" for i in range(len(frame))])
    frame.loc[500, "AGE"] = 5  # one bad row: refused alone, named in the output
    upload = tmp_path / "applicants.csv"
    frame.to_csv(upload, index=False)
    p = open_page(page, stack, "score")
    p.get_by_role("tab", name="A file").click()
    p.locator('input[type="file"]').set_input_files(str(upload))
    p.get_by_role("button", name="Score 1,000 rows").click(timeout=WAIT_MS)
    p.get_by_text("Scored 999 of 1,000 rows").wait_for(timeout=120_000)
    settle(p)
    shot(page, "score-file")
    with p.expect_download(timeout=WAIT_MS) as download:
        p.get_by_role("button", name="Download the scored file (CSV)").click()
    path = tmp_path / "scored.csv"
    download.value.save_as(path)
    scored = pd.read_csv(path)
    assert len(scored) == 1000 and list(scored["customer_id"]) == list(frame["customer_id"])
    ok = scored.drop(index=500)
    assert ok["risk_score"].between(0, 100).all() and ok["error"].isna().all()
    assert set(ok["decision"]) <= {"approve", "review", "decline"}
    assert ok["prediction_id"].str.fullmatch(r"[0-9a-f]{32}").all()
    assert "AGE" in scored.loc[500, "error"] and pd.isna(scored.loc[500, "risk_score"])
    no_traceback(p)


# ---------------------------------------------------------------------- a customer
def test_a_customer_is_looked_up_scored_labelled_and_helped(stack, page, params):
    customer = str(stack["customers"][params.data.id_column].iloc[0])
    p = open_page(page, stack, "customer")
    box(p, "Customer id").fill(customer)
    p.get_by_role("button", name="Look up").click()
    p.get_by_role("button", name="Score now (the customer's online record)").click(timeout=WAIT_MS)
    p.get_by_text("scored now: risk score").wait_for(timeout=WAIT_MS)
    deadline = time.monotonic() + 20  # the log writer commits in groups: the row lands shortly
    while "Latest risk score" not in p.inner_text("body") and time.monotonic() < deadline:
        p.get_by_role("button", name="Look up").click()
        settle(p)
    assert "Latest risk score" in p.inner_text("body")
    p.get_by_test_id("stRadioGroup").get_by_text(
        "defaulted", exact=True
    ).click()  # not the table's column
    p.get_by_role("button", name="Record outcome").click()
    p.get_by_text("outcome defaulted recorded").wait_for(timeout=WAIT_MS)
    box(p, "Note (optional)").fill("called, agreed a plan")
    p.get_by_role("button", name="Record intervention").click()
    p.get_by_text(re.compile(r"^intervention \w+ recorded$")).wait_for(timeout=WAIT_MS)
    settle(p)
    body = p.inner_text("body")
    assert "Outcomes (1)" in body and "Interventions (1)" in body and "manual" in body, body[-3000:]
    no_traceback(p)
    shot(page, "customer")
    unknown = open_page(page, stack, "customer")
    box(unknown, "Customer id").fill("nobody-at-all")
    unknown.get_by_role("button", name="Look up").click()
    unknown.get_by_text("No predictions, outcomes or interventions").wait_for(timeout=WAIT_MS)


# ---------------------------------------------------------------------- with data
def monitor(stack, cwd: Path) -> None:
    """A real `riskloop monitor` run (Evidently) on the store: the drift the pages show."""
    shutil.copy(ROOT / "params.yaml", cwd / "params.yaml")
    env = {**os.environ, "RISKLOOP_STATE_DIR": str(stack["state"]), "DATABASE_URL": stack["db"],
           "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}  # fmt: skip
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-m", "riskloop", "monitor", "--no-act"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert "decision:" in proc.stdout, proc.stdout + proc.stderr


def test_every_page_opens_with_a_portfolio_in_the_store(stack, page, records, tmp_path):
    write(stack["db"], synthetic(records, 20_000, days=30, seed=3))
    monitor(stack, tmp_path)
    key = {"X-API-Key": KEYS["main"]}
    example = httpx.get(stack["api"] + "/contract", headers=key).json()["example"]
    for _ in range(20):  # traffic the Service page measures
        assert (
            httpx.post(
                stack["api"] + "/predict", headers=key, json={"records": [example]}
            ).status_code
            == 200
        )
    for name in ("portfolio", "models", "service", "customer"):
        p = open_page(page, stack, name)
        no_traceback(p)
        if name == "portfolio":
            p.get_by_role("button", name="Refresh").click()  # figures an earlier visit cached
            settle(p)
            p.get_by_text("Risk score distribution").wait_for(timeout=WAIT_MS)
            p.get_by_text("Realized AUC", exact=True).first.wait_for(timeout=WAIT_MS)
            p.get_by_text("Latest run:").wait_for(timeout=WAIT_MS)
            p.locator('[data-testid="stVegaLiteChart"]').nth(4).wait_for(
                timeout=WAIT_MS
            )  # five charts
        if name == "service":
            p.get_by_text("Since the service started").wait_for(timeout=WAIT_MS)
            latency = p.locator(
                '[data-testid="stMetric"]', has_text="p50 latency /predict"
            ).last  # since start
            assert latency.inner_text().strip().endswith("ms"), latency.inner_text()
        if name == "models":
            p.get_by_text("no_retrain").first.wait_for(timeout=WAIT_MS)
            p.get_by_text("v1 (@champion, @challenger)").click()  # one version with both aliases
            p.get_by_role("button", name="Download v1's model card (HTML)").wait_for(
                timeout=WAIT_MS
            )
            card = p.frame_locator("iframe").first.get_by_text("credit-risk v1 — model card")
            card.wait_for(timeout=WAIT_MS)
        shot(page, f"data-{name}")


# ---------------------------------------------------------------------- login
def test_beyond_loopback_it_needs_a_password(stack, tmp_path):
    refused = subprocess.run([sys.executable, "-m", "riskloop", "dashboard", "--host", "0.0.0.0"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60,
                             env={"PATH": "/usr/bin:/bin", "API_BASE_URL": stack["api"]})  # fmt: skip
    assert refused.returncode != 0 and "DASHBOARD_PASSWORD" in refused.stderr
    guarded = Dashboard(stack["state"], stack["api"], KEYS["main"], stack["db"],
                        {"DASHBOARD_HOST": "0.0.0.0", "DASHBOARD_PASSWORD": "s3cret-pass"})  # fmt: skip
    try:
        with offline_page() as op:
            p = op.page
            p.goto(guarded.url + "/models")
            box(p, "Password").wait_for(timeout=WAIT_MS)
            assert "Score an applicant" not in p.inner_text("body")  # no page, not even its name
            box(p, "Password").fill("wrong")
            p.get_by_role("button", name="Sign in").click()
            p.get_by_text("Wrong password.").wait_for(timeout=WAIT_MS)
            box(p, "Password").fill("s3cret-pass")
            p.get_by_role("button", name="Sign in").click()
            p.get_by_role("heading", name="Models").wait_for(timeout=WAIT_MS)  # the page asked for
            assert op.blocked == []
    finally:
        guarded.stop()
