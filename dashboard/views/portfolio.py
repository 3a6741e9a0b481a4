"""Portfolio: score distribution, band and decision mix over time, realized AUC as outcomes
arrive, interventions by action, drift and PSI of the key features from the monitoring runs;
filtered by period, served version and segment. Every figure is an aggregate query."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import context, stats
from dashboard.store import Filters, Grain, grain_for
from features.contract import Contract
from serving.scoring import DECISIONS

PERIODS = {"last 24 hours": timedelta(days=1), "last 7 days": timedelta(days=7),
           "last 30 days": timedelta(days=30), "last 365 days": timedelta(days=365), "all time": None}  # fmt: skip
ALL = "(all)"
RECENT = timedelta(days=8)  # periods up to "last 7 days" (rounded to the minute) stay fresh


def _cached(name: str, *args: Any) -> Any:
    """A store query, cached: 30 s for a recent window, 10 min for a long one (all time on 1M
    rows scans them all: ~10 s on SQLite, bench/RESULTS.md) and for the version list."""
    f = next((a for a in args if isinstance(a, Filters)), None)
    recent = f is not None and f.since is not None and datetime.now(UTC) - f.since <= RECENT
    return (_recent if recent else _long)(name, args)


@st.cache_data(ttl=30, show_spinner=False)
def _recent(name: str, args: tuple) -> Any:
    return getattr(context.store(), name)(*args)


@st.cache_data(ttl=600, show_spinner=False)
def _long(name: str, args: tuple) -> Any:
    return getattr(context.store(), name)(*args)


def render() -> None:
    st.title("Portfolio")
    if st.button(
        "Refresh", help="recompute the figures now (they are cached 30 s, long periods 10 min)"
    ):
        _recent.clear()
        _long.clear()
    f, grain = _filters()
    overview = _cached("overview", f)
    if not overview["predictions"]:
        st.info("No predictions in this selection yet: score applicants (or widen the filters).")
        _monitoring()
        return
    labelled = _cached("labelled_scores", f, grain)
    auc = stats.auc_from_counts((s, d, n) for _, s, d, n in labelled)
    c = st.columns(4)
    c[0].metric("Predictions", f"{overview['predictions']:,}")
    c[1].metric("Mean probability of default", f"{overview['mean_pd']:.1%}")
    c[2].metric("With an outcome", f"{sum(n for *_, n in labelled):,}")
    c[3].metric("Realized AUC", "—" if auc is None else f"{auc:.3f}",
                help="on the 0-100 risk score of the labelled predictions (ties count half)")  # fmt: skip
    left, right = st.columns(2)
    with left:
        st.subheader("Risk score distribution")
        hist = pd.DataFrame(_cached("score_histogram", f), columns=["risk_score", "predictions"])
        st.altair_chart(alt.Chart(hist).mark_bar().encode(
            x=alt.X("risk_score:Q", bin=alt.Bin(step=5), title="risk score"),
            y=alt.Y("sum(predictions):Q", title="predictions")), width="stretch")  # fmt: skip
    with right:
        st.subheader("Realized AUC over time")
        per = _auc_by_period(labelled)
        if per.empty:
            st.caption("No period has outcomes of both kinds yet.")
        else:
            st.altair_chart(alt.Chart(per).mark_line(point=True).encode(
                x=alt.X("period:O", title=grain), y=alt.Y("auc:Q", title="realized AUC", scale=alt.Scale(domain=[0.5, 1])),
                tooltip=["period", "auc", "labelled"]), width="stretch")  # fmt: skip
    left, right = st.columns(2)
    bands = sorted(context.params().serving.bands, key=context.params().serving.bands.get)
    with left:
        st.subheader("Risk band mix")
        _stacked(_cached("mix", f, "risk_band", grain), "band", grain, bands)
    with right:
        st.subheader("Decision mix")
        _stacked(_cached("mix", f, "decision", grain), "decision", grain, list(DECISIONS))
    st.subheader("Interventions by action")
    rows = _cached("interventions_by_action", Filters(f.since), grain)
    if rows:
        _stacked(rows, "action", grain, share=False)
    else:
        st.caption("No interventions in this period.")
    _monitoring()


def _filters() -> tuple[Filters, Grain]:
    served = context.served()
    contract = Contract.from_json(served["contract"])
    segments = [ALL] + [f"{name} = {level}" for name, rule in contract.rules.items()
                        if rule.kind == "categorical" for level in rule.levels] + \
        [f"{group} = {m}" for group, members in contract.data.onehot.items() for m in members]  # fmt: skip
    c = st.columns(3)
    period = c[0].selectbox("Period", list(PERIODS), index=1)
    version = c[1].selectbox("Served version", [ALL, *_cached("versions")])
    segment = c[2].selectbox(
        "Segment", segments, help="a categorical field's level, from the logged inputs"
    )
    now = datetime.now(UTC)
    since = now - PERIODS[period] if PERIODS[period] else None
    seg: tuple[str, Any] | None = None
    if segment != ALL:
        name, level = segment.split(" = ", 1)
        seg = (level, 1) if name in contract.data.onehot else \
            (name, next(v for v in contract.rules[name].levels if str(v) == level))  # fmt: skip
    # the period's start is rounded to the minute, so the cached queries are reused for a minute
    since = since.replace(second=0, microsecond=0) if since else None
    f = Filters(since=since, model_version=None if version == ALL else version, segment=seg)
    return f, grain_for(since)


def _auc_by_period(labelled: list[tuple[str, int, int, int]]) -> pd.DataFrame:
    by: dict[str, list[tuple[int, int, int]]] = {}
    for period, s, d, n in labelled:
        by.setdefault(period, []).append((s, d, n))
    rows = [{"period": p, "auc": auc, "labelled": sum(n for *_, n in rows)}
            for p, rows in sorted(by.items()) if (auc := stats.auc_from_counts(rows)) is not None]  # fmt: skip
    return pd.DataFrame(rows)


def _stacked(rows: list[tuple[str, str, int]], what: str, grain: str,
             order: list[str] | None = None, share: bool = True) -> None:  # fmt: skip
    """Per-period bars stacked by `what`: shares (mixes), or counts. An ordered scale (bands,
    decisions) runs green to red, from the least risky."""
    frame = pd.DataFrame(rows, columns=["period", what, "count"])
    scale = alt.Scale(domain=order, scheme="redyellowgreen", reverse=True) if order else alt.Scale()
    frame["rank"] = frame[what].map({v: i for i, v in enumerate(order or [])})
    st.altair_chart(alt.Chart(frame).mark_bar().encode(
        x=alt.X("period:O", title=grain),
        y=alt.Y("count:Q", stack="normalize" if share else "zero", title="share" if share else "count"),
        color=alt.Color(f"{what}:N", scale=scale, sort=order), order=alt.Order("rank:Q"),
        tooltip=["period", what, "count"]), width="stretch")  # fmt: skip


def _monitoring() -> None:
    st.subheader("Drift and PSI (monitoring runs)")
    runs = [r for r in context.store().monitoring_runs(50) if (r.get("summary") or {}).get("drift")]
    if not runs:
        st.caption("No monitoring run with a drift report yet (`make monitor`).")
        return
    psi = context.params().monitoring.psi
    latest = runs[0]["summary"]["drift"]
    st.markdown(f"Latest run: {runs[0]['created_at']:%Y-%m-%d %H:%M} UTC, **{runs[0]['status']}** — "
                f"drifted share {latest.get('drift_share', 0):.0%}, score PSI "
                f"{latest.get('score', {}).get('psi', float('nan')):.3f}")  # fmt: skip
    rows = []
    for name, col in latest.get("columns", {}).items():
        value = col.get("psi")
        level = (
            "—"
            if value is None
            else "shifted"
            if value >= psi.alert
            else "watch"
            if value >= psi.warn
            else "stable"
        )
        rows.append({"feature": name, "key": name in psi.key_features, "psi": value, "level": level,
                     "drifted": col.get("drifted"), "method": col.get("method")})  # fmt: skip
    table = pd.DataFrame(rows).sort_values(["key", "psi"], ascending=False)
    st.dataframe(table, width="stretch", hide_index=True)
    series = [{"run": r["created_at"], "feature": k, "psi": v["psi"]} for r in runs
              for k, v in r["summary"]["drift"].get("columns", {}).items()
              if k in psi.key_features and v.get("psi") is not None]  # fmt: skip
    if len(runs) > 1 and series:
        st.altair_chart(alt.Chart(pd.DataFrame(series)).mark_line(point=True).encode(
            x=alt.X("run:T", title="monitoring run"), y=alt.Y("psi:Q", title="PSI"),
            color="feature:N", tooltip=["run:T", "feature", "psi"]), width="stretch")  # fmt: skip
