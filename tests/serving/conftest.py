"""Shared by the HTTP tests: one small registered champion and its bento, built once."""

from __future__ import annotations

import shutil
import uuid

import pytest

from tests.conftest import ROOT
from tests.serving.server import build_bento, train_champion


@pytest.fixture(scope="session")
def champion(tmp_path_factory, raw, params):
    state = tmp_path_factory.mktemp("serving-state")
    model, customers = train_champion(state, raw, params)
    # the default layout keeps the BentoML store under the repo's state/: build twice there so
    # a bentofile pattern that matches earlier bentos (recursive copies) fails here
    bento_home = ROOT / "state" / f"bentoml-test-{uuid.uuid4().hex[:8]}"
    build_bento(state, bento_home)
    build_bento(state, bento_home)
    yield {"state": state, "bento_home": bento_home, "model": model, "customers": customers}
    shutil.rmtree(bento_home, ignore_errors=True)
