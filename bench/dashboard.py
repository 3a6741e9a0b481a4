"""The risk-operations dashboard at production size: `make bench-dashboard`.

A prediction store with N predictions (default 1,000,000) over 90 days, ~30% labelled, with the
policy's interventions (tests/dashboard/portfolio.py `synthetic`, written by its `write` to SQLite,
by COPY to PostgreSQL: a throwaway database, where a server answers). In front of it: a real
champion served by `bentoml serve` (tests/serving/server.py) and the dashboard started as
`make dashboard` starts it (tests/dashboard/stack.py).

Pages, timed in headless Debian chromium (non-loopback requests refused): from `page.goto` to the
page's content rendered (its last element visible and Streamlit's script run finished). One
dashboard process per run (its first request, the process's imports, timed on its own); each page
in a fresh browser context, cold (its first visit in the process: query caches empty) and warm (a
reload inside the 30 s cache TTL). Portfolio also with the period set to "all time" (every
prediction aggregated).

Peer: what a dashboard that aggregates in Python would pay, `pd.read_sql` of the predictions the
Portfolio page needs, then the same figures by pandas groupbys, in a subprocess (wall time, peak
RSS), vs the Store's SQL aggregate queries; the two are checked to give the same figures.

    python -m bench.dashboard                         # 1,000,000 rows, 3 runs, SQLite + PostgreSQL
    python -m bench.dashboard --rows 20000 --runs 1   # does it work
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHUNK_ROWS = 250_000  # synthetic() + write() per chunk: ~1 GB of Python objects at most
WAIT_MS = 180_000
PAGES = ("score", "customer", "portfolio", "models", "service")
# Streamlit's status widget shows while a script runs; when the run ends it fades out for 200 ms
# (CSSTransition "StatusWidget-exit"): exiting counts as finished.
IDLE_JS = """() => {
  const w = document.querySelector('[data-testid="stStatusWidget"]');
  return !w || w.className.includes('StatusWidget-exit')
    || !w.querySelector('[data-testid="stStatusWidgetRunningIcon"]');
}"""
METRIC_JS = """([want, equal]) => {
  const m = document.querySelector('[data-testid="stMetricValue"]');
  const w = document.querySelector('[data-testid="stStatusWidget"]');
  const idle = !w || w.className.includes('StatusWidget-exit')
    || !w.querySelector('[data-testid="stStatusWidgetRunningIcon"]');
  return !!m && idle && ((m.innerText.trim() === want) === equal);
}"""
FAILED = ("This page failed", "Traceback", "cannot be read", "is unreachable")


# ---------------------------------------------------------------------- the pandas peer
def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def peer(url: str, since: datetime | None) -> dict[str, Any]:
    """A dashboard that aggregates in Python: the rows into pandas, then the Portfolio page's
    figures by groupbys (run in its own process: `--peer-url`)."""
    import pandas as pd
    import sqlalchemy as sa

    from dashboard.store import read_only_engine
    from serving.store import interventions, outcomes, predictions

    engine = read_only_engine(url)
    with engine.connect() as conn:  # connect (and import the driver) before the clock starts
        conn.execute(sa.text("SELECT 1"))
    before_kb = _status_kb("VmRSS")
    p, i = predictions.c, interventions.c
    t0 = time.perf_counter()
    with engine.connect() as conn:
        preds = pd.read_sql(sa.select(p.prediction_id, p.created_at, p.risk_score, p.risk_band, p.decision,
                                      p.probability, p.model_version)
                            .where(*([p.created_at >= since] if since else [])), conn)  # fmt: skip
        outs = pd.read_sql(sa.select(outcomes.c.prediction_id, outcomes.c.defaulted), conn)
        acts = pd.read_sql(
            sa.select(i.created_at, i.action).where(*([i.created_at >= since] if since else [])),
            conn,
        )
    t1 = time.perf_counter()

    def period(ts: pd.Series) -> pd.Series:
        ts = pd.to_datetime(ts, utc=True).dt.normalize()
        return ts - pd.to_timedelta(ts.dt.weekday, unit="D") if since is None else ts

    def keyed(counts: pd.Series) -> list[list[Any]]:
        return [[k[0].strftime("%Y-%m-%d"), *(str(v) if isinstance(v, str) else int(v) for v in k[1:]), int(n)]
                for k, n in counts.items()]  # fmt: skip

    preds["period"] = period(preds["created_at"])
    created = pd.to_datetime(preds["created_at"], utc=True)
    labelled = preds.merge(outs, on="prediction_id")
    acts["period"] = period(acts["created_at"])
    figures = {
        "overview": [
            len(preds),
            float(preds["probability"].mean()),
            created.min().isoformat(),
            created.max().isoformat(),
        ],
        "versions": sorted(preds["model_version"].unique().tolist()),
        "score_histogram": [
            [int(s), int(n)] for s, n in preds["risk_score"].value_counts().sort_index().items()
        ],
        "mix_band": keyed(preds.groupby(["period", "risk_band"]).size()),
        "mix_decision": keyed(preds.groupby(["period", "decision"]).size()),
        "labelled_scores": keyed(labelled.groupby(["period", "risk_score", "defaulted"]).size()),
        "interventions_by_action": keyed(acts.groupby(["period", "action"]).size()),
    }
    t2 = time.perf_counter()
    engine.dispose()
    return {"rows": len(preds), "read_s": t1 - t0, "aggregate_s": t2 - t1, "wall_s": t2 - t0,
            "before_mb": before_kb / 1024, "peak_mb": _status_kb("VmHWM") / 1024,
            "figures": figures}  # fmt: skip


def run_peer(url: str, since: datetime | None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.dashboard", "--peer-url", url]
    if since is not None:
        cmd += ["--peer-since", since.isoformat()]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})  # fmt: skip
    if proc.returncode:
        raise SystemExit(f"the pandas peer failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def store_figures(store, f, grain: str) -> dict[str, Any]:
    """The Store's answers in the peer's shape, to check the peer computes the same thing."""
    from dashboard.store import Filters

    o = store.overview(f)
    return {
        "overview": [o["predictions"], o["mean_pd"], o["first"].isoformat(), o["last"].isoformat()],
        "versions": sorted(store.versions()) if f.since is None else None,
        "score_histogram": [list(r) for r in store.score_histogram(f)],
        "mix_band": [list(r) for r in store.mix(f, "risk_band", grain)],
        "mix_decision": [list(r) for r in store.mix(f, "decision", grain)],
        "labelled_scores": [list(r) for r in store.labelled_scores(f, grain)],
        "interventions_by_action": [list(r) for r in store.interventions_by_action(Filters(f.since), grain)],
    }  # fmt: skip


def same_figures(ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """Names of the figures where the Store and the pandas peer disagree."""
    bad = []
    for name, mine in ours.items():
        other = theirs[name]
        if mine is None:
            continue
        if name == "overview":
            ok = mine[0] == other[0] and math.isclose(mine[1], other[1], rel_tol=1e-9) and \
                mine[2:] == other[2:]  # fmt: skip
        else:
            ok = (
                sorted(map(tuple, mine)) == sorted(map(tuple, other))
                if name != "versions"
                else mine == other
            )
        if not ok:
            bad.append(name)
    return bad


# ---------------------------------------------------------------------- the SQL queries
QUERIES: dict[str, Callable[..., Any]] = {
    "overview": lambda s, f, g: s.overview(f),
    "score_histogram": lambda s, f, g: s.score_histogram(f),
    "mix (risk_band)": lambda s, f, g: s.mix(f, "risk_band", g),
    "mix (decision)": lambda s, f, g: s.mix(f, "decision", g),
    "labelled_scores": lambda s, f, g: s.labelled_scores(f, g),
    "interventions_by_action": lambda s, f, g: s.interventions_by_action(f, g),
}
# queried by the pages beside the Portfolio filter's six (not part of the peer comparison)
OTHER_QUERIES: dict[str, Callable[..., Any]] = {
    "versions (Portfolio's version selectbox, every filter)": lambda s, c: s.versions(),
    "rows_written (Service page, every 5 s, uncached)": lambda s, c: s.rows_written(),
    "customer_predictions (Customer page)": lambda s, c: s.customer_predictions(c),
    "customer_outcomes (Customer page)": lambda s, c: s.customer_outcomes(c),
    "customer_interventions (Customer page)": lambda s, c: s.customer_interventions(c),
}


def time_queries(url: str, runs: int, since: datetime, customer: str) -> dict[str, Any]:
    from dashboard.store import Filters, Store, read_only_engine

    store = Store(read_only_engine(url))
    out: dict[str, Any] = {"all": {}, "7d": {}, "other": {}}
    for key, f, grain in (("all", Filters(), "week"), ("7d", Filters(since=since), "day")):
        for name, q in QUERIES.items():
            out[key][name] = []
            for _ in range(runs):
                t = time.perf_counter()
                q(store, f, grain)
                out[key][name].append(time.perf_counter() - t)
        out[key]["figures"] = store_figures(store, f, grain)
    for name, q in OTHER_QUERIES.items():
        out["other"][name] = []
        for _ in range(runs):
            t = time.perf_counter()
            q(store, customer)
            out["other"][name].append(time.perf_counter() - t)
    store.engine.dispose()
    return out


# ---------------------------------------------------------------------- the store
@dataclass
class Filled:
    kind: str
    url: str
    write_s: float = 0.0
    size_mb: float | None = None
    pages: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    queries: dict[str, Any] = field(default_factory=dict)
    peers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def _copy(cursor: Any, table: str, columns: list[str], rows: list[list[Any]]) -> None:
    import csv
    import io

    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    buf.seek(0)
    cursor.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv)", buf)


def copy_postgres(url: str, part) -> None:
    """`write()`'s rows, coerced by the same `prediction_row`, by COPY: write()'s INSERT path
    runs ~2,000 rows/s on PostgreSQL here, 8 min for 1M, too long for this bench."""
    import orjson
    import sqlalchemy as sa

    from serving.store import prediction_row

    def cell(v: Any) -> Any:
        if isinstance(v, datetime):
            return v.isoformat()
        if isinstance(v, dict | list):
            return orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY).decode()
        return v

    engine = sa.create_engine(url)
    raw = engine.raw_connection()
    now = datetime.now(UTC)
    try:
        cur = raw.cursor()
        rows = [prediction_row(r) for r in part.predictions.to_dict("records")]
        cols = list(rows[0])
        _copy(cur, "predictions", cols, [[cell(r[c]) for c in cols] for r in rows])
        del rows
        _copy(cur, "outcomes", ["prediction_id", "customer_id", "defaulted", "observed_at", "received_at"],
              [[r.prediction_id, r.customer_id, int(r.defaulted), now.isoformat(), now.isoformat()]
               for r in part.outcomes.itertuples()])  # fmt: skip
        icols = ["customer_id", "prediction_id", "risk_score", "risk_band", "action", "created_at"]
        _copy(
            cur,
            "interventions",
            icols,
            [[cell(v) for v in r] for r in part.interventions[icols].itertuples(index=False)],
        )
        raw.commit()
    finally:
        raw.close()
        engine.dispose()


def fill(stores: list[Filled], records, rows: int, days: float) -> float:
    """`rows` synthetic predictions over `days` up to now, generated in chunks (each a slice of
    the period, its own seed) and written to every store (SQLite by `write`, PostgreSQL by
    COPY); returns the generation time."""
    from tests.dashboard.portfolio import synthetic, write

    end = datetime.now(UTC)
    gen_s, done = 0.0, 0
    chunks = max(1, math.ceil(rows / CHUNK_ROWS))
    for k in range(chunks):
        n = rows // chunks + (1 if k < rows % chunks else 0)
        later = rows - done - n  # predictions after this chunk's slice
        t = time.perf_counter()
        part = synthetic(records, n, days=days * n / rows, seed=k + 1, labelled=0.3,
                         end=end - timedelta(days=days * later / rows))  # fmt: skip
        gen_s += time.perf_counter() - t
        for s in stores:
            t = time.perf_counter()
            (write if s.kind == "sqlite" else copy_postgres)(s.url, part)
            s.write_s += time.perf_counter() - t
        done += n
        print(f"  {done:,} of {rows:,} predictions written", flush=True)
        del part
    return gen_s


def portfolio_facts(url: str) -> dict[str, Any]:
    import sqlalchemy as sa

    from serving.store import interventions, make_engine, outcomes, predictions

    engine = make_engine(url)
    p = predictions.c
    with engine.connect() as conn:
        # the customer with the longest history among those with an intervention (else any)
        helped = p.customer_id.in_(sa.select(interventions.c.customer_id))
        customer, n = conn.execute(sa.select(p.customer_id, sa.func.count()).where(p.customer_id.is_not(None))
                                   .group_by(p.customer_id)
                                   .order_by(sa.func.max(sa.case((helped, 1), else_=0)).desc(),
                                             sa.func.count().desc(), p.customer_id)
                                   .limit(1)).one()  # fmt: skip
        facts = {
            "predictions": conn.execute(sa.select(sa.func.count()).select_from(predictions)).scalar(),
            "outcomes": conn.execute(sa.select(sa.func.count()).select_from(outcomes)).scalar(),
            "interventions": conn.execute(sa.select(sa.func.count()).select_from(interventions)).scalar(),
            "customers": conn.execute(sa.select(sa.func.count(sa.distinct(p.customer_id)))).scalar(),
            "customer": customer, "customer_predictions": n,
            "customer_outcomes": conn.execute(sa.select(sa.func.count()).select_from(outcomes)
                                              .where(outcomes.c.customer_id == customer)).scalar(),
            "customer_interventions": conn.execute(sa.select(sa.func.count()).select_from(interventions)
                                                   .where(interventions.c.customer_id == customer)).scalar(),
        }  # fmt: skip
    engine.dispose()
    return facts


# ---------------------------------------------------------------------- the browser
class Browser:
    """One headless chromium; a fresh context per measurement, non-loopback requests refused."""

    def __init__(self, executable: str) -> None:
        from playwright.sync_api import sync_playwright

        from tests.browser import CHROMIUM_ARGS

        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        self.blocked: list[str] = []
        self.errors: list[str] = []

    @contextlib.contextmanager
    def page(self) -> Iterator[Any]:
        from tests.browser import refuse_beyond_loopback

        context = self.browser.new_context(viewport={"width": 1400, "height": 1000})
        refuse_beyond_loopback(context, self.blocked)
        page = context.new_page()
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        try:
            yield page
        finally:
            context.close()

    def close(self) -> None:
        self.browser.close()
        self._pw.stop()


def rendered(page, marker) -> None:
    """Wait until `marker` is visible and Streamlit's script run has finished."""
    marker.wait_for(state="visible", timeout=WAIT_MS)
    page.wait_for_function(IDLE_JS, timeout=WAIT_MS, polling=20)
    body = page.inner_text("body")
    bad = [m for m in FAILED if m in body]
    if bad:
        raise RuntimeError(f"{page.url} shows {bad}: {body[-2000:]}")


def timed(fn: Callable[[], None]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def marker(page, name: str):
    return {
        "score": lambda: page.get_by_role("button", name="Score", exact=True),
        "customer": lambda: page.get_by_role("button", name="Look up"),
        "portfolio": lambda: page.locator('[data-testid="stVegaLiteChart"]').nth(4),
        "models": lambda: page.get_by_text("Promotions and rollbacks"),
        "service": lambda: page.get_by_text("The prediction store holds"),
    }[name]()


def open_page(page, url: str, name: str) -> float:
    return timed(lambda: (page.goto(url + ("" if name == "score" else f"/{name}")),
                          rendered(page, marker(page, name))))  # fmt: skip


def reload_page(page, name: str) -> float:
    return timed(lambda: (page.reload(), rendered(page, marker(page, name))))


def look_up(page, customer: str, n: int) -> float:
    """From clicking "Look up" to the customer's history, tables and forms rendered."""
    page.get_by_role("textbox", name="Customer id", exact=True).fill(customer)
    return timed(lambda: (page.get_by_role("button", name="Look up").click(),
                          rendered(page, page.get_by_text(f"Score history ({n})"))))  # fmt: skip


def choose_period(page, period: str, total: str, equal: bool) -> float:
    """Pick `period` in the Portfolio's Period selectbox; until the page has run again and its
    Predictions metric is (`equal`) / is not the store's total."""
    box = page.locator('[data-testid="stSelectbox"]').filter(has_text="Period")
    box.get_by_role("combobox").click()
    option = page.get_by_role("option", name=period, exact=True)
    option.wait_for(timeout=WAIT_MS)
    t = time.perf_counter()
    option.click()
    page.wait_for_function(METRIC_JS, arg=[total, equal], timeout=WAIT_MS, polling=20)
    return time.perf_counter() - t


def measure_pages(browser: Browser, stack: dict[str, Any], db_url: str, facts: dict[str, Any],
                  runs: int) -> dict[str, list[float]]:  # fmt: skip
    """Every page, cold (its first visit in a fresh dashboard process, in a fresh browser
    context) and warm (a reload), `runs` times: one dashboard process per run."""
    from tests.dashboard.stack import Dashboard
    from tests.serving.server import KEYS

    out: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        out.setdefault(key, []).append(value)
        print(f"    {key}: {value:.2f} s", flush=True)

    total = f"{facts['predictions']:,}"
    history = min(facts["customer_predictions"], 200)
    for run in range(runs):
        dash = Dashboard(stack["state"], stack["api"], KEYS["main"], db_url)
        try:
            with browser.page() as page:  # the process's first script run: the imports
                add("first request|cold", open_page(page, dash.url, "score"))
            for name in PAGES:
                with browser.page() as page:
                    add(f"{name}|cold", open_page(page, dash.url, name))
                    if name == "customer":
                        add("customer lookup|cold", look_up(page, facts["customer"], history))
                    page.wait_for_timeout(300)
                    add(f"{name}|warm", reload_page(page, name))
                    if name == "customer":
                        add("customer lookup|warm", look_up(page, facts["customer"], history))
                    if name == "portfolio":
                        add("portfolio all time|cold", choose_period(page, "all time", total, True))
                        choose_period(page, "last 7 days", total, False)
                        add("portfolio all time|warm", choose_period(page, "all time", total, True))
            if "Traceback" in dash.logs():
                raise RuntimeError(f"the dashboard logged a traceback:\n{dash.logs()[-3000:]}")
        finally:
            dash.stop()
        print(f"  pages: run {run + 1} of {runs} done", flush=True)
    if browser.blocked or browser.errors:
        raise RuntimeError(
            f"blocked requests {browser.blocked[:5]}, page errors {browser.errors[:5]}"
        )
    return out


# ---------------------------------------------------------------------- the stack
@contextlib.contextmanager
def served_champion(tmp: Path, raw, params, db_url: str) -> Iterator[dict[str, Any]]:
    """A small registered champion, its bento, and `bentoml serve` on the SQLite store
    (tests/serving: what the browser tests run against)."""
    from tests.serving.server import KEYS, Server, build_bento, load_online_features, train_champion

    state, bento_home = tmp / "state", tmp / "bentoml"
    t = time.perf_counter()
    _, customers = train_champion(state, raw, params)
    build_bento(state, bento_home)
    load_online_features(db_url, customers, params)
    server = Server(bento_home, state, db_url)
    print(f"  champion trained, bento built, served in {time.perf_counter() - t:.0f} s", flush=True)
    try:
        yield {"state": state, "api": server.url, "key": KEYS["main"]}
    finally:
        server.stop()


@contextlib.contextmanager
def postgres_database(wanted: bool) -> Iterator[str | None]:
    """A throwaway database on the test server (tests/conftest.py's), dropped after; None if
    no server answers."""
    if not wanted:
        yield None
        return
    import sqlalchemy as sa

    from tests.conftest import PG_URL, pg_databases

    try:
        with sa.create_engine(PG_URL).connect():
            pass
    except sa.exc.OperationalError as exc:
        print(f"  PostgreSQL skipped: {str(exc).splitlines()[0]}", flush=True)
        yield None
        return
    with pg_databases() as create:
        yield create()


# ---------------------------------------------------------------------- the section
def spread(xs: list[float]) -> str:
    med = statistics.median(xs)
    return f"{med:.2f} s" if len(xs) == 1 else f"{med:.2f} s ({min(xs):.2f}-{max(xs):.2f})"


def ms(xs: list[float]) -> str:
    med = statistics.median(xs) * 1000
    return f"{med:,.0f} ms" if len(xs) == 1 else \
        f"{med:,.0f} ms ({min(xs) * 1000:,.0f}-{max(xs) * 1000:,.0f})"  # fmt: skip


def slowest(stores: list[Filled]) -> str:
    """The slowest cold page and all-time query of each store, in words."""
    parts = []
    for s in stores:
        cold = {
            k.split("|")[0]: v
            for k, v in s.pages.items()
            if k.endswith("|cold") and not k.startswith("first")
        }
        page = max(cold, key=lambda k: statistics.median(cold[k]))
        query = max(QUERIES, key=lambda q: statistics.median(s.queries["all"][q]))
        parts.append(f"{s.kind} *{page}*, {spread(cold[page])} cold (slowest all-time "
                     f"query: `{query}`, {ms(s.queries['all'][query])})")  # fmt: skip
    return (
        "Slowest page: "
        + "; ".join(parts)
        + '. Without a WHERE, each of the "all time" aggregates reads '
        "every prediction row (no index covers their columns, and the rows carry the inputs JSON): one full "
        "scan per query, so they grow with the store, where the last-7-days ones read one week's rows."
    )


PAGE_ROWS = [
    (
        "first request",
        "First request after a dashboard start (`/`: the process's first script run)",
    ),
    ("score", "Score an applicant (`/`; no store query)"),
    ("customer", "Customer (`/customer`, the lookup form)"),
    ("customer lookup", "Customer: look up {customer} ({n} predictions) → history rendered"),
    ("portfolio", "Portfolio (`/portfolio`, default period last 7 days: five charts)"),
    ("portfolio all time", "Portfolio: Period → all time (every prediction), re-rendered"),
    ("models", "Models (`/models`)"),
    ("service", "Service (`/service`)"),
]


def section(args, argv: str, facts: dict[str, Any], gen_s: float, stores: list[Filled],
            load: tuple[tuple[float, ...], tuple[float, ...]], wall_s: float) -> str:  # fmt: skip
    names = [s.kind for s in stores]
    head = "| page | " + " | ".join(f"{k} cold | {k} warm" for k in names) + " |"
    lines = [head, "|---|" + "---|---|" * len(stores)]
    for key, label in PAGE_ROWS:
        label = label.format(customer=f"`{facts['customer']}`", n=facts["customer_predictions"])
        cells = []
        for s in stores:
            for mode in ("cold", "warm"):
                xs = s.pages.get(f"{key}|{mode}")
                cells.append(spread(xs) if xs else "—")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    pages = "\n".join(lines)

    qlines = ["| query | " + " | ".join(f"{k} all time | {k} last 7 days" for k in names) + " |",
              "|---|" + "---|---|" * len(stores)]  # fmt: skip
    for name in QUERIES:
        qlines.append(f"| `{name}` | " + " | ".join(f"{ms(s.queries['all'][name])} | {ms(s.queries['7d'][name])}"
                                                    for s in stores) + " |")  # fmt: skip
    sums = {}
    for s in stores:
        for key in ("all", "7d"):
            per_run = [sum(s.queries[key][q][r] for q in QUERIES) for r in range(args.runs)]
            sums[s.kind, key] = per_run
    qlines.append("| **the six, summed** | " + " | ".join(f"**{ms(sums[s.kind, 'all'])}** | **{ms(sums[s.kind, '7d'])}**"
                                                          for s in stores) + " |")  # fmt: skip
    for label, fn in (
        ("pandas peer: rows read", lambda p: f"{statistics.median([r['rows'] for r in p]):,.0f}"),
        ("pandas peer: `pd.read_sql` (predictions, outcomes, interventions)", lambda p: spread([r["read_s"] for r in p])),
        ("pandas peer: the same figures by groupbys", lambda p: spread([r["aggregate_s"] for r in p])),
        ("**pandas peer: total**", lambda p: f"**{spread([r['wall_s'] for r in p])}**"),
        ("pandas peer: peak RSS (before the read)",
         lambda p: f"{statistics.median([r['peak_mb'] for r in p]):,.0f} MB ({statistics.median([r['before_mb'] for r in p]):,.0f} MB)"),
    ):  # fmt: skip
        qlines.append(
            f"| {label} | "
            + " | ".join(f"{fn(s.peers['all'])} | {fn(s.peers['7d'])}" for s in stores)
            + " |"
        )
    ratios = []
    for s in stores:
        for key in ("all", "7d"):
            r = statistics.median([p["wall_s"] for p in s.peers[key]]) / statistics.median(
                sums[s.kind, key]
            )
            ratios.append(f"**{r:,.1f}x**")
    qlines.append("| **peer total / SQL total** | " + " | ".join(ratios) + " |")
    queries = "\n".join(qlines)

    olines = ["| query | " + " | ".join(names) + " |", "|---|" + "---|" * len(stores)]
    for name in OTHER_QUERIES:
        olines.append(
            f"| `{name}` | " + " | ".join(ms(s.queries["other"][name]) for s in stores) + " |"
        )
    others = "\n".join(olines)

    how = {
        "sqlite": "`write`",
        "postgresql": "COPY (`write`'s INSERT path ran ~2,000 rows/s there in a 20,000-row check: 8 min for 1M)",
    }
    writes = "; ".join(f"{s.kind} {s.write_s:.0f} s by {how[s.kind]}" + (f", {s.size_mb:,.0f} MB" if s.size_mb else "")
                       for s in stores)  # fmt: skip
    return f"""## Dashboard: time to first render of each page at {facts["predictions"]:,} predictions

`make bench-dashboard` (`python -m bench.dashboard {argv}`), {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {wall_s / 60:.0f} min.
**2 cores shared with other jobs** (tests, a training): load average (1/5/15 min) {"/".join(f"{x:.2f}" for x in load[0])}
at the start, {"/".join(f"{x:.2f}" for x in load[1])} at the end. Every figure is the median of {args.runs} runs with
(min-max): read ratios, not absolutes.

Store: {facts["predictions"]:,} predictions over {args.days:g} days up to now, {facts["outcomes"]:,} labelled, {facts["interventions"]:,}
policy interventions, {facts["customers"]:,} customers (tests/dashboard/portfolio.py `synthetic`, in chunks of {CHUNK_ROWS:,}; written to
SQLite by its `write`, the store's own bulk path). Generating took {gen_s:.0f} s, writing {writes}{"; PostgreSQL ANALYZEd after the load" if "postgresql" in names else ""}.
No monitoring run is in the store (its two cheap queries read the latest 10/50 runs by id).
In front: a small champion served by `bentoml serve` (tests/serving/server.py) on the SQLite store, and the dashboard started
as `make dashboard` starts it (tests/dashboard/stack.py), reading the store under test.

**Pages**, headless Debian chromium, from `page.goto` to the page's last element visible and Streamlit's script run finished
(the status widget's running icon gone). One dashboard process per run, restarted between runs: its first request
(the Score page) pays the process's first script run (importing the pages' libraries: Streamlit, Altair, MLflow, ...),
shown on its own; then each page in turn, in a fresh browser context: **cold** = its first visit in the process (its
query caches empty: only the Portfolio page caches store queries, st.cache_data ttl=30 s, and no page visited before it
fills them), **warm** = a reload in the same process inside that TTL. The Customer lookup is not cached (warm = the
same lookup again). Portfolio "all time": from choosing it in the Period selectbox to the page re-rendered with all
{facts["predictions"]:,} predictions (cold: first time in the process; warm: chosen again after last 7 days).

{pages}

{slowest(stores)}

**Queries vs a dashboard that aggregates in Python.** The Store's SQL aggregates behind the Portfolio page, timed in
process (the page's "all time" filter: week grain; last 7 days: day grain), vs the pandas peer: `pd.read_sql` of the
predictions the page needs (prediction_id, created_at, risk_score, risk_band, decision, probability, model_version), all
outcomes (prediction_id, defaulted) and the period's interventions, then the same figures by groupbys, in a subprocess
(peak RSS = VmHWM). The peer's figures were checked equal to the Store's.

{queries}

Other queries the pages run on this store (customer `{facts["customer"]}`: {facts["customer_predictions"]} predictions,
{facts["customer_outcomes"]} outcomes, {facts["customer_interventions"]} interventions):

{others}
"""


# ---------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--days", type=float, default=90)
    ap.add_argument("--stores", default="sqlite,postgresql")
    ap.add_argument("--no-write", action="store_true", help="print, do not touch bench/RESULTS.md")
    ap.add_argument("--peer-url", help=argparse.SUPPRESS)  # internal: the pandas peer's process
    ap.add_argument("--peer-since", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peer_url:
        since = datetime.fromisoformat(args.peer_since) if args.peer_since else None
        print(json.dumps(peer(args.peer_url, since)))
        return

    import pandas as pd

    from bench.results import write_section
    from features.contract import Contract
    from riskloop.settings import load_params

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit(
            "chromium not installed (Debian package chromium; `make tools` installs it)"
        )
    params = load_params(ROOT / "params.yaml")
    raw_path = ROOT / params.data.raw_path
    if not raw_path.exists():
        raise SystemExit(f"{raw_path} missing: run `make data`")
    os.environ["PYTHONWARNINGS"] = "ignore"
    started, load_start = time.perf_counter(), os.getloadavg()
    raw = pd.read_csv(raw_path)
    records = raw[list(Contract(params.data).fields)]
    kinds = args.stores.split(",")

    with (
        tempfile.TemporaryDirectory(prefix="riskloop-bench-dashboard-") as tmp_dir,
        postgres_database("postgresql" in kinds) as pg_url,
    ):
        tmp = Path(tmp_dir)
        sqlite_path = tmp / "predictions.db"
        stores = [Filled("sqlite", f"sqlite:///{sqlite_path}")]
        if pg_url:
            stores.append(Filled("postgresql", pg_url))
        print("stack: champion, bento, bentoml serve", flush=True)
        with served_champion(tmp, raw, params, stores[0].url) as stack:
            from serving.store import upgrade

            for s in stores:
                upgrade(s.url)
            print(
                f"store: {args.rows:,} predictions into {', '.join(s.kind for s in stores)}",
                flush=True,
            )
            gen_s = fill(stores, records, args.rows, args.days)
            stores[0].size_mb = sqlite_path.stat().st_size / 1e6
            if pg_url:
                import sqlalchemy as sa

                engine = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
                with engine.connect() as conn:
                    conn.execute(sa.text("ANALYZE"))
                    stores[1].size_mb = (
                        conn.execute(
                            sa.text("SELECT pg_database_size(current_database())")
                        ).scalar()
                        / 1e6
                    )
                engine.dispose()
            facts = portfolio_facts(stores[0].url)
            print(f"  {facts}", flush=True)
            since = (datetime.now(UTC) - timedelta(days=7)).replace(second=0, microsecond=0)

            for s in stores:
                print(f"{s.kind}: SQL queries and the pandas peer", flush=True)
                s.queries = time_queries(s.url, args.runs, since, facts["customer"])
                for key, when in (("all", None), ("7d", since)):
                    s.peers[key] = [run_peer(s.url, when) for _ in range(args.runs)]
                    bad = same_figures(s.queries[key]["figures"], s.peers[key][0]["figures"])
                    if bad:
                        raise SystemExit(
                            f"{s.kind} {key}: the peer's figures differ from the Store's: {bad}"
                        )
                    print(f"  {key}: SQL {sum(statistics.median(s.queries[key][q]) for q in QUERIES):.2f} s, "
                          f"peer {statistics.median(p['wall_s'] for p in s.peers[key]):.2f} s, "
                          f"peak {max(p['peak_mb'] for p in s.peers[key]):.0f} MB", flush=True)  # fmt: skip

            browser = Browser(chromium)
            try:
                for s in stores:
                    print(f"{s.kind}: pages", flush=True)
                    s.pages = measure_pages(browser, stack, s.url, facts, args.runs)
            finally:
                browser.close()

    argv = f"--rows {args.rows} --runs {args.runs} --stores {','.join(s.kind for s in stores)}"
    if args.days != 90:
        argv += f" --days {args.days:g}"
    body = section(args, argv, facts, gen_s, stores, (load_start, os.getloadavg()),
                   time.perf_counter() - started)  # fmt: skip
    print(body)
    if not args.no_write:
        write_section("dashboard", body)


if __name__ == "__main__":
    main()
