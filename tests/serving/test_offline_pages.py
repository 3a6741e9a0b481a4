"""Every page a reviewer opens works offline (banks are often air-gapped, and so are these
machines): the service's /docs and the `dvc plots show` page load nothing beyond loopback
and render in a real browser (tests/browser.py), screenshots included."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient

from serving import docs
from tests.browser import chromium, offline_page, screenshot_dir
from tests.conftest import ROOT
from tests.serving.server import Server

TEMPLATE = ROOT / ".dvc/plots/offline.html"
ROUTES = {"/predict", "/predict_customer", "/outcomes", "/interventions"}
DVC = str(Path(sys.executable).parent / "dvc")


@pytest.fixture(scope="session")
def browser() -> str:
    """Listed before `champion`, so a machine without chromium skips before training."""
    return chromium()


def test_docs_page_loads_only_its_own_assets():
    app = FastAPI(title="t", docs_url=None, redoc_url=None)
    docs.mount(app)
    client = TestClient(app)
    page = client.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r'(?:src|href|url): ?["\']([^"\']+)', page.text) + re.findall(
        r'(?:src|href)="([^"]+)"', page.text
    )
    assert urls and all(u.startswith("/") and not u.startswith("//") for u in urls), urls
    for url in urls:
        assert client.get(url).status_code == 200, url
    behind_proxy = TestClient(app, root_path="/risk").get("/docs").text
    assert '"/risk/docs/assets/swagger-ui-bundle.js"' in behind_proxy


def test_plots_template_is_dvc_default_and_carries_its_scripts():
    """The page DVC writes has vega inline (each script the npm build its sha256 names) and
    no slot for DVC's own CDN script tags."""
    config = (ROOT / ".dvc/config").read_text()
    assert re.search(r"^\s*html_template = plots/offline\.html$", config, re.M)
    page = TEMPLATE.read_text(encoding="utf8")
    assert "{plot_divs}" in page and "{scripts}" not in page
    blocks = re.findall(r'<script data-package="([^"]+)" data-sha256="([0-9a-f]{64})">\n(.*?)\n</script>',
                        page, re.S)  # fmt: skip
    assert [b[0].rsplit("@", 1)[0] for b in blocks] == ["vega", "vega-lite", "vega-embed"]
    for package, sha, body in blocks:
        assert hashlib.sha256(body.encode()).hexdigest() == sha, package
    assert not re.search(r"<(script|link)[^>]+(src|href)=", page)


@pytest.mark.slow
def test_docs_render_offline_in_a_browser(browser, champion, tmp_path):
    server = Server(champion["bento_home"], champion["state"], f"sqlite:///{tmp_path / 'p.db'}")
    try:
        with offline_page() as p:
            p.page.goto(server.url)  # the root is the API's page, not BentoML's online index
            assert p.page.url == server.url + "/docs"
            p.page.wait_for_selector('.opblock-summary-path[data-path="/predict_customer"]')
            shown = p.page.eval_on_selector_all(
                ".opblock-summary-path", "els => els.map(e => e.dataset.path)"
            )
            assert p.page.locator("button.authorize").is_visible()  # the API-key schemes
            p.screenshot(screenshot_dir(tmp_path) / "docs.png")
    finally:
        server.stop()
    assert set(shown) >= ROUTES, shown
    assert p.blocked == [], f"/docs asked beyond loopback: {p.blocked}"
    assert p.errors == []


def write_plot_data(reports: Path) -> None:
    """Small curves with the columns evaluate writes (dvc.yaml's plot definitions name them)."""
    reports.mkdir(parents=True)
    x = np.linspace(0.025, 0.975, 20)
    frames = {
        "roc": {"fpr": x, "tpr": x**0.4},
        "pr": {"recall": x, "precision": 0.22 + 0.6 * (1 - x) ** 2},
        "calibration": {"mean_predicted": x, "observed_rate": x * 0.9 + 0.03},
        "score_distribution": {
            "bin_center": x,
            "non_default": np.exp(-8 * x) / 1.3,
            "default": np.exp(-10 * (x - 0.5) ** 2) / 5.6,
        },
    }
    for name, columns in frames.items():
        pd.DataFrame(columns).to_csv(reports / f"{name}.csv", index=False)


def test_dvc_plots_page_renders_offline_in_a_browser(browser, tmp_path):
    """Plain `dvc plots show` (the repo's .dvc/config and plot definitions, no flag) writes a
    page whose four plots vega draws with the network refused."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run([DVC, "init", "--no-scm", "-q"], cwd=repo, check=True)
    shutil.copy(ROOT / ".dvc/config", repo / ".dvc/config")
    shutil.copytree(ROOT / ".dvc/plots", repo / ".dvc/plots")
    definitions = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": definitions}))
    write_plot_data(repo / "reports/plots")
    subprocess.run([DVC, "plots", "show"], cwd=repo, check=True, capture_output=True)
    out = repo / "dvc_plots/index.html"
    assert not re.search(r"<script[^>]+src=", out.read_text(encoding="utf8"))
    names = [next(iter(d)) for d in definitions]
    with offline_page() as p:
        p.page.goto(out.as_uri())
        for name in names:
            # vega-embed marks the div itself; svg.marks, not the actions menu's svg icon
            p.page.wait_for_selector(f"#{name}.vega-embed canvas, #{name}.vega-embed svg.marks")
        marks = p.page.locator(".vega-embed canvas, .vega-embed svg.marks").count()
        p.screenshot(screenshot_dir(tmp_path) / "dvc_plots.png")
    assert marks == len(names) == 4
    assert p.blocked == [], f"the plots page asked beyond loopback: {p.blocked}"
    assert p.errors == []
