"""Service: readiness, request rate, error rate and p50/p99 latency from /metrics (between
two scrapes a few seconds apart; since the start on the first), the prediction log's state."""

from __future__ import annotations

import time

import streamlit as st

from dashboard import context, stats
from dashboard.api import ApiError

REFRESH_S = 5
LAST = "service_last_scrape"


def render() -> None:
    st.title("Service")
    st.caption(f"{context.env().api_base_url}, refreshed every {REFRESH_S} s")
    _live()


@st.fragment(run_every=REFRESH_S)
def _live() -> None:
    ready = context.api().readiness()
    status = ready.get("status", "?")
    (
        st.success
        if status == "ready"
        else st.warning
        if status in ("degraded", "draining")
        else st.error
    )(f"**{status}**" + (f" — {ready['detail']}" if ready.get("detail") else ""))
    try:
        now = stats.Scrape.parse(context.api().metrics_text(), time.monotonic())
    except ApiError as exc:
        st.error(str(exc))
        return
    before = st.session_state.get(LAST)
    st.session_state[LAST] = now
    if before is not None:
        _row(f"Last {now.at - before.at:.0f} s", stats.traffic(now, before),
             stats.traffic(now, before, endpoint="predict"))  # fmt: skip
    _row("Since the service started", stats.traffic(now), stats.traffic(now, endpoint="predict"))
    g = now.gauges
    c = st.columns(5)
    c[0].metric("Store", "up" if g.get("riskloop_store_up", ready.get("store_up")) else "DOWN")
    c[1].metric("Spooling (rows waiting on disk)", f"{g.get('riskloop_log_rows_spooled', 0):,.0f}")
    c[2].metric(
        "Rows written",
        f"{g.get('riskloop_log_rows_written', 0):,.0f}",
        help="by this service since it started",
    )
    c[3].metric("Rows queued", f"{g.get('riskloop_log_queue_depth', 0):,.0f}")
    c[4].metric("Rows dropped", f"{g.get('riskloop_log_rows_dropped', 0):,.0f}", help="must stay 0")
    st.markdown(f"Serving **{ready.get('model_name', '?')} v{ready.get('model_version', '?')}**; "
                f"journal {'ok' if ready.get('journal_ok') else 'FAILING'}; "
                f"deployment: {(ready.get('deployment') or {}).get('status', '?')}")  # fmt: skip
    try:
        held = _held()
    except Exception as exc:  # the store's state is a figure here, not a failure
        st.caption(f"prediction store: {exc}")
    else:
        latest = held["latest"].strftime("%Y-%m-%d %H:%M:%S UTC") if held["latest"] else "—"
        st.caption(f"The prediction store holds {held['predictions']:,} predictions (latest {latest}) "
                   f"and {held['outcomes']:,} outcomes.")  # fmt: skip


def _row(title: str, t: stats.Traffic, scored: stats.Traffic) -> None:
    """Requests, 5xx share and /predict latency over one span (between scrapes, or all)."""
    st.markdown(f"**{title}**")
    c = st.columns(4)
    if t.seconds:
        c[0].metric("Requests / s", _num(t.rate), help=f"{t.requests:,.0f} requests")
    else:
        c[0].metric("Requests", f"{t.requests:,.0f}")
    c[1].metric("Error rate (5xx)", "—" if t.error_rate is None else f"{t.error_rate:.2%}",
                help=f"4xx (the client's): {t.refused:,.0f}")  # fmt: skip
    c[2].metric("p50 latency /predict", _ms(scored.p50_ms))
    c[3].metric("p99 latency /predict", _ms(scored.p99_ms))


@st.cache_data(ttl=60, show_spinner=False)
def _held() -> dict:
    """The store's row counts: a full count (~0.5 s at 1M rows), so once a minute, not per poll."""
    return context.store().rows_written()


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:,.1f}" if v < 100 else f"{v:,.0f}"


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f} ms" if v < 100 else f"{v:,.0f} ms"
