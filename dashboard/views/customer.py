"""Customer: look up an id: latest score, history, outcomes, interventions; record an outcome
or a manual intervention (through the API: the dashboard never writes the store)."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import context
from dashboard.api import ApiError

CURRENT = "customer_id"
FLASH = "customer_flash"  # what was just recorded, shown after the page reloads with it


def render() -> None:
    st.title("Customer")
    with st.form("lookup"):
        given = st.text_input("Customer id", value=st.session_state.get(CURRENT, ""), max_chars=64)
        if st.form_submit_button("Look up", type="primary"):
            st.session_state[CURRENT] = given.strip()
    customer = st.session_state.get(CURRENT)
    if FLASH in st.session_state:
        st.success(st.session_state.pop(FLASH))
    if not customer:
        st.info(
            "Enter a customer id: the scores, outcomes and interventions recorded for them show here."
        )
        return
    store = context.store()
    history = store.customer_predictions(customer)
    outcomes = store.customer_outcomes(customer)
    interventions = store.customer_interventions(customer)
    if not (history or outcomes or interventions):
        st.warning(
            f"No predictions, outcomes or interventions are recorded for customer {customer}."
        )
    if history:
        _latest(customer, history)
    if st.button("Score now (the customer's online record)"):
        try:
            answer = context.api().predict_customer(customer)
        except ApiError as exc:
            st.error(str(exc))
        else:
            if "error" in answer:
                st.error(f"{customer}: {answer['error']}")
            else:
                st.session_state[FLASH] = (f"scored now: risk score {answer['risk_score']} ({answer['risk_band']}, "
                                           f"{answer['decision']}), model v{answer['model_version']}")  # fmt: skip
                st.rerun()
    _tables(history, outcomes, interventions)
    _record(customer)


def _latest(customer: str, history: list[dict]) -> None:
    last = history[0]
    c = st.columns(4)
    c[0].metric("Latest risk score", last["risk_score"])
    c[1].metric("Probability of default", f"{last['probability']:.1%}")
    c[2].metric("Band / decision", f"{last['risk_band']} / {last['decision']}")
    c[3].metric(
        "Scored",
        last["created_at"].strftime("%Y-%m-%d %H:%M UTC"),
        help=f"model v{last['model_version']}",
    )
    reasons = last.get("reasons") or []
    if reasons:
        st.markdown(
            "**Reasons:** " + "; ".join(r.get("text") or r.get("feature", "") for r in reasons)
        )
    if len(history) > 1:
        frame = pd.DataFrame(history)[["created_at", "risk_score"]]
        st.altair_chart(alt.Chart(frame).mark_line(point=True).encode(
            x=alt.X("created_at:T", title="scored at"), y=alt.Y("risk_score:Q", title="risk score",
                                                                scale=alt.Scale(domain=[0, 100]))),
            width="stretch")  # fmt: skip


def _tables(history: list[dict], outcomes: list[dict], interventions: list[dict]) -> None:
    st.subheader(f"Score history ({len(history)})")
    if history:
        frame = pd.DataFrame(history).drop(columns=["reasons"])
        frame["defaulted"] = frame["defaulted"].astype("Int64")
        st.dataframe(frame, width="stretch", hide_index=True)
    left, right = st.columns(2)
    with left:
        st.subheader(f"Outcomes ({len(outcomes)})")
        if outcomes:
            st.dataframe(pd.DataFrame(outcomes), width="stretch", hide_index=True)
    with right:
        st.subheader(f"Interventions ({len(interventions)})")
        if interventions:
            st.dataframe(pd.DataFrame(interventions), width="stretch", hide_index=True)


def _record(customer: str) -> None:
    actions = context.served().get("actions") or []
    left, right = st.columns(2)
    with left, st.form("outcome"):
        st.markdown("**Record an outcome** (labels the customer's newest prediction)")
        outcome = st.radio("Outcome", ["repaid", "defaulted"], horizontal=True)
        if st.form_submit_button("Record outcome"):
            try:
                result = context.api().record_outcome(customer, int(outcome == "defaulted"))
            except ApiError as exc:
                st.error(str(exc))
            else:
                if result["status"] not in ("recorded", "duplicate"):
                    st.warning(
                        f"outcome {result['status']}: {result.get('error') or 'nothing recorded'}"
                    )
                    return
                st.session_state[FLASH] = (
                    f"outcome {outcome} {result['status']} for prediction {result['prediction_id']}"
                )
                st.rerun()
    with right, st.form("intervention"):
        st.markdown("**Record a manual intervention**")
        action = st.selectbox("Action", actions)
        note = st.text_input("Note (optional)", max_chars=500)
        if st.form_submit_button("Record intervention"):
            try:
                row = context.api().record_intervention(customer, action, note.strip() or None)
            except ApiError as exc:
                st.error(str(exc))
            else:
                st.session_state[FLASH] = f"intervention {row['action']} recorded"
                st.rerun()
