"""What every page shares, made once per server process (Streamlit's caches): the settings,
the API client, the read-only store, the served contract, and the params' policy sections."""

from __future__ import annotations

from typing import Any

import streamlit as st

from dashboard.api import Api
from dashboard.settings import DashboardEnv, load_env
from dashboard.store import Store, read_only_engine
from riskloop.settings import Params, load_params


@st.cache_resource
def env() -> DashboardEnv:
    return load_env()


@st.cache_resource
def api() -> Api:
    return Api(env())


@st.cache_resource
def store() -> Store:
    return Store(read_only_engine(env().store_url()))


@st.cache_resource
def params() -> Params:
    """The serving and monitoring policy (thresholds, actions); the model's own facts come
    from the served contract, never from here."""
    return load_params()


@st.cache_data(ttl=60, show_spinner=False)
def served() -> dict[str, Any]:
    """GET /contract: the served model's contract, example record and intervention actions."""
    return api().contract()
