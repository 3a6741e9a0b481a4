"""Process-global state a test sets does not reach the next test (tests/conftest.py)."""

from __future__ import annotations

import os

import mlflow
from mlflow import MlflowClient

from tests.conftest import MLFLOW_URI_ENV, restore_mlflow_uris


def test_mlflow_uris_a_test_set_are_put_back_after_it(tmp_path, monkeypatch):
    for var in MLFLOW_URI_ENV:  # whatever an earlier fixture left: this test starts with none
        monkeypatch.delenv(var, raising=False)
    restore_mlflow_uris({})
    before = {var: os.environ.get(var) for var in MLFLOW_URI_ENV}
    mine, theirs = (f"sqlite:///{tmp_path / name}.db" for name in ("mine", "theirs"))
    mlflow.set_tracking_uri(theirs)
    mlflow.set_registry_uri(theirs)
    # while set, a client given only a tracking URI reads the other registry (the CI failure),
    # and subprocesses inherit both
    assert MlflowClient(mine)._registry_uri == theirs
    assert os.environ["MLFLOW_REGISTRY_URI"] == theirs
    restore_mlflow_uris(before)
    assert MlflowClient(mine)._registry_uri == mine
    assert {var: os.environ.get(var) for var in MLFLOW_URI_ENV} == before
