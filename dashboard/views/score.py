"""Score an applicant: a form generated from the served contract, the answer with its reasons
and contributions; or a CSV/Parquet file scored in chunks with progress, downloadable."""

from __future__ import annotations

import io
from typing import Any

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from dashboard import context, form
from dashboard.api import ApiError
from features.contract import Contract

COLUMNS = 3
ERRORS = "score_form_errors"
ANSWER = "score_answer"


def render() -> None:
    st.title("Score an applicant")
    served = context.served()
    contract = Contract.from_json(served["contract"])
    st.caption(f"Model {served['model_name']} v{served['model_version']} (contract {served['fingerprint']}), "
               f"served at {context.env().api_base_url}")  # fmt: skip
    one, batch = st.tabs(["One applicant", "A file"])
    with one:
        _applicant(contract, form.fields(contract, served["example"]))
    with batch:
        _file(contract)


# ---------------------------------------------------------------------- one applicant
def _applicant(contract: Contract, fields: list[form.Field]) -> None:
    errors: dict[str, str] = st.session_state.get(ERRORS, {})
    values: dict[str, str] = {}
    with st.form("applicant"):
        values["customer_id"] = st.text_input(
            "Customer id (optional)", key="in_customer_id", max_chars=64,
            help="given: the prediction is kept in this customer's history")  # fmt: skip
        _inputs([f for f in fields if not f.protected], values, errors)
        protected = [f for f in fields if f.protected]
        if protected:
            st.markdown("**Protected attributes** — optional: never read by the model, logged "
                        "for fairness monitoring only")  # fmt: skip
            _inputs(protected, values, errors)
        submitted = st.form_submit_button("Score", type="primary")
    if submitted:
        _submit(contract, fields, values)
        st.rerun()
    if errors:
        st.error(
            "Fix the fields marked above: " + "; ".join(f"{k}: {v}" for k, v in errors.items())
        )
    answer = st.session_state.get(ANSWER)
    if answer:
        _answer(answer)


def _inputs(fields: list[form.Field], values: dict[str, str], errors: dict[str, str]) -> None:
    cols = st.columns(COLUMNS)
    for i, f in enumerate(fields):
        with cols[i % COLUMNS]:
            key = f"in_{f.name}"
            if f.kind == "number":
                values[f.name] = st.text_input(f.label, value=f.default, key=key, help=f.help,
                                               placeholder=f.help)  # fmt: skip
            else:
                values[f.name] = st.selectbox(f.label, f.options, index=f.options.index(f.default),
                                              key=key, help=f.help)  # fmt: skip
            if f.name in errors:
                st.markdown(f":red[**{f.name}**: {errors[f.name]}]")


def _submit(contract: Contract, fields: list[form.Field], values: dict[str, str]) -> None:
    record, errors = form.record(contract, fields, values)
    st.session_state[ANSWER] = None
    if not errors:
        customer = values.get("customer_id", "").strip()
        if customer:
            record["customer_id"] = customer
        try:
            st.session_state[ANSWER] = context.api().predict([record], explain="all")[0]
        except ApiError as exc:
            errors = form.api_errors(fields, exc.problems) or {"request": str(exc)}
    st.session_state[ERRORS] = errors


DECISION_COLOR = {"approve": "green", "review": "orange", "decline": "red"}


def _answer(a: dict[str, Any]) -> None:
    st.subheader("Answer")
    c = st.columns(5)
    c[0].metric("Probability of default", f"{a['probability_of_default']:.1%}")
    c[1].metric("Risk score (0-100)", a["risk_score"])
    c[2].metric("Risk band", a["risk_band"])
    with c[3]:
        st.caption("Decision")
        st.markdown(f"### :{DECISION_COLOR.get(a['decision'], 'gray')}[{a['decision'].upper()}]")
    c[4].markdown(f"**Model** v{a['model_version']}  \nprediction `{a['prediction_id']}`")
    if a.get("intervention"):
        st.info(f"Intervention triggered: {a['intervention']}")
    reasons = a.get("reasons") or []
    if reasons:
        st.markdown("**Reasons** (what raised this applicant's risk most)")
        for r in reasons:
            st.markdown(
                f"- {r.get('text') or r['feature']} — `{r['feature']}` (+{r['contribution']:.3f})"
            )
    else:
        st.markdown("No risk-raising reasons: every contribution lowers this applicant's risk.")
    contributions = a.get("contributions") or {}
    if contributions:
        frame = pd.DataFrame(
            {"feature": list(contributions), "contribution": list(contributions.values())}
        )
        frame = frame.reindex(frame["contribution"].abs().sort_values(ascending=False).index).head(
            12
        )
        frame["effect"] = np.where(frame["contribution"] > 0, "raises risk", "lowers risk")
        chart = alt.Chart(frame).mark_bar().encode(
            x=alt.X("contribution:Q", title="contribution to the log-odds of default"),
            y=alt.Y("feature:N", sort=None, title=None),
            color=alt.Color("effect:N", scale=alt.Scale(domain=["raises risk", "lowers risk"],
                                                        range=["#d62728", "#1f77b4"])),
        )  # fmt: skip
        st.altair_chart(chart, width="stretch")


# ---------------------------------------------------------------------- a file
def _file(contract: Contract) -> None:
    env = context.env()
    st.markdown(f"A CSV or Parquet file with one row per applicant and the model's columns "
                f"({len(contract.model_inputs)} inputs; protected attributes and `customer_id` "
                f"optional; other columns are kept in the output). At most {env.upload_max_rows:,} rows.")  # fmt: skip
    upload = st.file_uploader("File to score", type=["csv", "parquet"], key="upload")
    if upload is None:
        return
    try:
        frame = _read(upload.name, upload.getvalue())
    except ValueError as exc:
        st.error(f"{upload.name} cannot be read: {exc}")
        return
    missing = [c for c in contract.model_inputs if c not in frame.columns]
    if missing:
        st.error(f"{upload.name} lacks the model's columns: {', '.join(missing)}")
        return
    if len(frame) > env.upload_max_rows:
        st.error(
            f"{upload.name} has {len(frame):,} rows; at most {env.upload_max_rows:,} (UPLOAD_MAX_ROWS)"
        )
        return
    key = f"scored:{upload.file_id}"
    if key not in st.session_state:
        st.write(f"{len(frame):,} rows read from {upload.name}.")
        if not st.button(f"Score {len(frame):,} rows", type="primary"):
            return
        st.session_state[key] = _score(contract, frame, env.upload_chunk_rows)
    scored = st.session_state[key]
    failed = int(scored["error"].notna().sum())
    st.success(f"Scored {len(scored) - failed:,} of {len(scored):,} rows"
               + (f"; {failed:,} refused (see the error column)" if failed else ""))  # fmt: skip
    st.dataframe(scored.head(50), width="stretch")
    st.download_button("Download the scored file (CSV)", scored.to_csv(index=False).encode(),
                       file_name=f"{upload.name.rsplit('.', 1)[0]}-scored.csv", mime="text/csv",
                       type="primary")  # fmt: skip


def _read(name: str, data: bytes) -> pd.DataFrame:
    try:
        if name.lower().endswith(".parquet"):
            return pd.read_parquet(io.BytesIO(data))
        # as every stage reads a CSV: only an empty cell is missing
        return pd.read_csv(
            io.BytesIO(data), keep_default_na=False, na_values=[""], low_memory=False
        )
    except Exception as exc:  # any parser failure is the file's problem
        raise ValueError(str(exc).splitlines()[0][:200]) from None


def records(contract: Contract, frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows as API records: the contract's fields present (and customer_id), missing
    cells as null, whole floats of integer fields as integers."""
    cols = [c for c in (*contract.fields, "customer_id") if c in frame.columns]
    out = frame[cols].astype(object).where(frame[cols].notna(), None)
    for c in cols:
        rule = contract.rules.get(c)
        if c == "customer_id":
            out[c] = out[c].map(lambda v: None if v is None else str(v))
        elif rule is not None and (rule.integer or rule.kind != "numeric"):
            out[c] = out[c].map(lambda v: int(v) if isinstance(v, float) and v.is_integer() else v)
    return out.to_dict("records")


def _score(contract: Contract, frame: pd.DataFrame, chunk_rows: int) -> pd.DataFrame:
    recs = records(contract, frame)
    bar = st.progress(0.0, text="scoring…")
    results: dict[int, dict[str, Any]] = {}
    done = 0
    try:
        for chunk in context.api().score_file(recs, chunk_rows):
            results.update({p["row"]: p for p in chunk.predictions})
            results.update({row: {"error": why} for row, why in chunk.problems.items()})
            done = chunk.stop
            bar.progress(done / len(recs), text=f"scored {done:,} of {len(recs):,} rows")
    except ApiError as exc:
        st.error(f"stopped after {done:,} rows: {exc}")
    bar.empty()
    out = frame.copy()
    answers = [results.get(i, {"error": "not scored"}) for i in range(len(frame))]
    out["prediction_id"] = [a.get("prediction_id") for a in answers]
    out["probability_of_default"] = [a.get("probability_of_default") for a in answers]
    out["risk_score"] = pd.array([a.get("risk_score") for a in answers], dtype="Int64")
    out["risk_band"] = [a.get("risk_band") for a in answers]
    out["decision"] = [a.get("decision") for a in answers]
    out["reasons"] = ["; ".join(r.get("text") or r["feature"] for r in a.get("reasons") or []) or None
                      for a in answers]  # fmt: skip
    out["reason_codes"] = [
        ",".join(r["feature"] for r in a.get("reasons") or []) or None for a in answers
    ]
    out["model_version"] = [a.get("model_version") for a in answers]
    out["error"] = [a.get("error") for a in answers]
    return out
