"""The retrain decision is pure: each trigger, the thresholds, cooldown and window size."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from monitoring.policy import Evidence, decide

NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)


def evidence(**over) -> Evidence:
    base = {"rows": 5000, "drift_share": 0.05, "psi": {"PAY_0": 0.02, "LIMIT_BAL": 0.03},
            "labelled_rows": 1000, "realized_auc": 0.78, "model_age_days": 3.0}  # fmt: skip
    return Evidence(**{**base, **over})


@pytest.fixture
def policy(params):
    return params.monitoring


def test_quiet_window_is_no_retrain_and_reports_every_check(policy):
    d = decide(evidence(), policy, None, NOW)
    assert (d.status, d.retrain) == ("no_retrain", False)
    names = {c.name for c in d.checks}
    assert {"drift_share", "realized_auc", "model_age_days"} <= names
    assert {f"psi:{k}" for k in policy.psi.key_features} <= names
    assert not any(c.triggered for c in d.checks)


@pytest.mark.parametrize(("over", "check"), [
    ({"drift_share": 0.3}, "drift_share"),
    ({"psi": {"PAY_0": 0.25}}, "psi:PAY_0"),
    ({"realized_auc": 0.7499}, "realized_auc"),
    ({"model_age_days": 90.5}, "model_age_days"),
])  # fmt: skip
def test_each_trigger_alone_retrains(policy, over, check):
    d = decide(evidence(**over), policy, None, NOW)
    assert d.retrain and d.status == "retrain"
    assert [c.name for c in d.checks if c.triggered] == [check]


def test_just_below_thresholds_does_not_retrain(policy):
    d = decide(evidence(drift_share=0.2999, psi={"PAY_0": 0.2499}, realized_auc=0.75,
                        model_age_days=90.0), policy, None, NOW)  # fmt: skip
    assert not d.retrain


def test_a_psi_shift_outside_the_key_features_does_not_retrain(policy):
    assert not decide(evidence(psi={"BILL_AMT6": 3.0}), policy, None, NOW).retrain


def test_realized_auc_counts_only_with_enough_outcomes(policy):
    d = decide(evidence(realized_auc=0.6, labelled_rows=policy.min_labelled - 1), policy, None, NOW)
    assert not d.retrain and "realized_auc" not in {c.name for c in d.checks}


def test_cooldown_gives_one_retrain_per_episode(policy):
    shifted = evidence(drift_share=0.8)
    recent = NOW - timedelta(hours=policy.cooldown_hours - 1)
    d = decide(shifted, policy, recent, NOW)
    assert (d.status, d.retrain) == ("cooldown", False)
    assert any("cooldown" in r for r in d.reasons)
    old = NOW - timedelta(hours=policy.cooldown_hours + 1)
    assert decide(shifted, policy, old, NOW).retrain


def test_a_small_window_takes_no_decision(policy):
    d = decide(evidence(rows=policy.window.min_rows - 1, drift_share=1.0), policy, None, NOW)
    assert (d.status, d.retrain) == ("insufficient_data", False)
    assert str(policy.window.min_rows) in d.reasons[0]
