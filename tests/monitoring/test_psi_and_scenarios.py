"""Decile PSI (pure, and as the stat test inside Evidently) and the traffic scenarios."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from evidently import DataDefinition, Dataset, Report
from evidently.metrics import ValueDrift

from features.contract import validate_raw
from monitoring import psi as P
from monitoring.scenarios import SCENARIOS, apply, sample


def test_psi_is_near_zero_for_the_same_population_and_large_for_a_shift():
    rng = np.random.default_rng(0)
    ref = rng.lognormal(size=20_000)
    assert P.psi(ref, rng.lognormal(size=2_000)) < 0.02
    assert P.psi(ref, rng.lognormal(0.5, size=2_000)) > 0.2
    # Hand-computed: two equal bins moving from 50/50 to 80/20.
    ref2 = np.array([0] * 50 + [1] * 50)
    cur2 = np.array([0] * 80 + [1] * 20)
    expected = (0.8 - 0.5) * np.log(0.8 / 0.5) + (0.2 - 0.5) * np.log(0.2 / 0.5)
    assert P.psi(ref2, cur2) == pytest.approx(expected)


def test_a_value_unseen_in_the_reference_counts_as_shift():
    assert P.psi(np.array([0, 1, 2] * 100), np.array([0, 1, 3] * 100)) > 1


def test_evidently_runs_the_registered_psi():
    rng = np.random.default_rng(1)
    ref = pd.DataFrame({"x": rng.normal(size=5000)})
    cur = pd.DataFrame({"x": rng.normal(0.4, size=3000)})
    dd = DataDefinition(numerical_columns=["x"])
    snap = Report([ValueDrift(column="x", method=P.NAME, threshold=0.25)]).run(
        Dataset.from_pandas(cur, data_definition=dd), Dataset.from_pandas(ref, data_definition=dd)
    )
    value = snap.dict()["metrics"][0]["value"]
    assert value == pytest.approx(P.psi(ref["x"].to_numpy(), cur["x"].to_numpy()))


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenarios_keep_the_data_contract_and_are_seeded(raw, params, name):
    rows = sample(raw, 1000, seed=5)
    out = apply(name, rows, 5, params.data, params.features)
    validate_raw(out, params.data)  # the service would score every row
    assert out.equals(apply(name, rows, 5, params.data, params.features))
    rep = params.features.repayment
    if name == "stable":
        assert out.equals(rows)
    if name == "recession":
        assert out[rep.limit_column].mean() < 0.85 * rows[rep.limit_column].mean()
        assert (out[rep.status_columns[0]] >= 1).mean() > (
            rows[rep.status_columns[0]] >= 1
        ).mean() + 0.1
        assert out[rep.bill_columns[0]].mean() > rows[rep.bill_columns[0]].mean()
    if name == "new_segment":
        assert (
            out["AGE"].max() < 30
            and out[rep.limit_column].mean() < 0.6 * rows[rep.limit_column].mean()
        )
