"""The Streamlit entry point (`streamlit run dashboard/app.py`; `make dashboard` starts it with
riskloop's settings): the login where one is required, then the five pages."""

from __future__ import annotations

import hmac
import logging

import streamlit as st

from dashboard import context
from dashboard.api import ApiError
from dashboard.registry import RegistryUnavailable
from dashboard.store import StoreUnavailable
from dashboard.views import customer, models, portfolio, score, service

log = logging.getLogger("riskloop.dashboard")
EXPECTED = (ApiError, StoreUnavailable, RegistryUnavailable)


def _logged_in() -> bool:
    password = context.env().password
    if password is None or st.session_state.get("authenticated"):
        return True
    st.title("riskloop risk operations")
    with st.form("login"):
        given = st.text_input("Password", type="password")
        if st.form_submit_button("Sign in"):
            if hmac.compare_digest(given.encode(), password.get_secret_value().encode()):
                st.session_state["authenticated"] = True
                st.rerun()
            st.error("Wrong password.")
    return False


def _guarded(render):
    """A page whose failures are a message, never a traceback."""

    def page() -> None:
        try:
            render()
        except EXPECTED as exc:
            st.error(str(exc))
        except Exception as exc:  # the page says what failed; the log has the rest
            log.exception("dashboard page failed")
            st.error(
                f"This page failed ({type(exc).__name__}); the dashboard's log has the details."
            )

    page.__name__ = render.__module__.rsplit(".", 1)[-1]
    return page


def main() -> None:
    st.set_page_config(page_title="riskloop", page_icon="📉", layout="wide")
    pages = [
        st.Page(_guarded(score.render), title="Score an applicant", url_path="score", default=True),
        st.Page(_guarded(customer.render), title="Customer", url_path="customer"),
        st.Page(_guarded(portfolio.render), title="Portfolio", url_path="portfolio"),
        st.Page(_guarded(models.render), title="Models", url_path="models"),
        st.Page(_guarded(service.render), title="Service", url_path="service"),
    ]
    # resolved before the login, so the page the URL names is the one shown after it
    authed = _logged_in()
    page = st.navigation(pages, position="sidebar" if authed else "hidden")
    if authed:
        page.run()


main()
