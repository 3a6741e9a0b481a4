"""Models: what is served vs @champion vs @challenger, their test metrics and model cards,
the latest monitoring decisions with their reasons, and the promotion/rollback history."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pandas as pd
import streamlit as st

from dashboard import context, registry


@st.cache_resource
def _registry():
    return registry.open_registry(context.params().registry)


def render() -> None:
    st.title("Models")
    served = context.api().readiness()
    reg = _registry()
    champion = registry.facts(reg, context.params().registry.champion_alias)
    challenger = registry.facts(reg, context.params().registry.challenger_alias)
    served_version = str(served.get("model_version", "?"))
    c = st.columns(3)
    c[0].metric("Served", f"v{served_version}", help=f"the API says: {served.get('status', '?')}")
    c[1].metric("@champion", f"v{champion.version}" if champion else "none")
    c[2].metric("@challenger", f"v{challenger.version}" if challenger else "none")
    if champion and served_version != champion.version:
        st.warning(f"The service serves v{served_version} but @champion is v{champion.version}: "
                   "run `make deploy`.")  # fmt: skip
    elif champion:
        st.success(f"The service serves @champion v{champion.version}.")
    versions = [v for v in (champion, challenger) if v]
    if champion and challenger and champion.version == challenger.version:  # one, two aliases
        versions = [replace(champion, alias=f"{champion.alias}, @{challenger.alias}")]
    if versions:
        _metrics(versions)
        for v in versions:
            _card(v)
    st.subheader("Latest monitoring decisions")
    runs = context.store().monitoring_runs(10)
    if runs:
        last = runs[0]
        (st.warning if last["retrain"] else st.info)(
            f"Latest: **{last['status']}** at {last['created_at']:%Y-%m-%d %H:%M} UTC on {last['rows']:,} "
            f"predictions ({last['labelled_rows']:,} labelled) — " + "; ".join(last["reasons"] or ["no reason given"]))  # fmt: skip
        st.dataframe(pd.DataFrame([{
            "at": r["created_at"], "status": r["status"], "retrain": r["retrain"],
            "reasons": "; ".join(r["reasons"] or []), "champion": r["model_version"], "rows": r["rows"],
            "labelled": r["labelled_rows"], "acted": r["acted_at"]} for r in runs]),
            width="stretch", hide_index=True)  # fmt: skip
    else:
        st.caption("No monitoring run yet (`make monitor`).")
    st.subheader("Promotions and rollbacks")
    entries = registry.history(reg)
    if entries:
        frame = pd.DataFrame(entries[::-1])
        keep = [c for c in ("at", "action", "from", "to", "by", "reason") if c in frame.columns]
        st.dataframe(frame[keep], width="stretch", hide_index=True)
    else:
        st.caption("No promotion or rollback recorded yet.")


def _metrics(versions: list[registry.VersionFacts]) -> None:
    st.subheader("Test metrics")
    if not any(v.metrics for v in versions):
        st.caption("No test metrics logged on these versions' runs (the evaluate stage logs them).")
        return
    names = sorted({k for v in versions for k in v.metrics})
    frame = pd.DataFrame({f"v{v.version} (@{v.alias})": [v.metrics.get(n) for n in names] for v in versions},
                         index=[n.removeprefix("test_") for n in names])  # fmt: skip
    st.dataframe(frame, width="stretch")


def _card(v: registry.VersionFacts) -> None:
    created = (
        datetime.fromtimestamp(v.created / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")
        if v.created
        else "?"
    )
    with st.expander(
        f"v{v.version} (@{v.alias}), registered {created} — model card", expanded=False
    ):
        if v.card.get("verdict"):
            st.markdown(f"**Verdict:** {v.card['verdict']}")
            st.markdown(
                f"Gates passed: {v.card.get('gates_passed', '?')}; failed: {v.card.get('gates_failed', '?')}"
            )
        ui = context.env().mlflow_ui_url
        if ui:
            name = context.params().registry.model_name
            st.markdown(f"[v{v.version} in the MLflow UI]({ui.rstrip('/')}/#/models/{name}/versions/{v.version}) "
                        "(its run, artifacts and the card under model_card/)")  # fmt: skip
        card = registry.model_card(v)
        if card is None:
            st.caption("This version has no model card (evaluated before model cards existed).")
            return
        st.download_button(f"Download v{v.version}'s model card (HTML)", card,
                           file_name=f"model_card_v{v.version}.html", mime="text/html", key=f"card{v.version}")  # fmt: skip
        st.components.v1.html(card.decode(), height=700, scrolling=True)
