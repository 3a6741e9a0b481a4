import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from riskloop.settings import DataSettings, PromotionSettings
from training.gates import (
    Scored,
    approval_ratio_gate,
    auc_gap_gate,
    candidate_gates,
    evaluate_gates,
    score_psi_gate,
)
from training.report import protected_groups

POLICY = PromotionSettings(min_auc=0.77, max_auc_drop=0.005)
RULE = "approve = risk_score < 30"


def test_first_model_only_needs_the_floor():
    gates = evaluate_gates(0.78, None, POLICY)
    assert [(g.name, g.passed) for g in gates] == [("auc_floor", True)]
    assert (gates[0].value, gates[0].threshold, gates[0].verdict) == (0.78, 0.77, "pass")


def test_floor_fails():
    (gate,) = evaluate_gates(0.70, None, POLICY)
    assert not gate.passed and "floor 0.7700" in gate.detail
    assert gate.line().startswith("[FAIL] auc_floor: 0.7000 vs min 0.7700 — challenger AUC")


def test_tolerance_against_champion():
    assert all(g.passed for g in evaluate_gates(0.786, 0.790, POLICY))
    failed = [g for g in evaluate_gates(0.780, 0.790, POLICY) if not g.passed]
    assert [g.name for g in failed] == ["no_worse_than_champion"]
    assert failed[0].threshold == pytest.approx(0.785)


# ---------------------------------------------------------------- fairness
def groups_of(*sizes: tuple[str | None, int]) -> pd.Series:
    return pd.Series([g for g, n in sizes for _ in range(n)], dtype=object)


def approvals(*shares: tuple[int, float]) -> np.ndarray:
    """Per block of `n` rows, the first `share` of them approved."""
    return np.concatenate([np.arange(n) < round(share * n) for n, share in shares])


def test_approval_ratio_fails_below_four_fifths():
    groups = groups_of(("female", 300), ("male", 300))
    gate = approval_ratio_gate("SEX", groups, approvals((300, 0.9), (300, 0.5)), 0.8, 50, RULE)
    assert gate.name == "approval_ratio[SEX]" and not gate.passed
    assert gate.value == pytest.approx(0.5 / 0.9) and gate.threshold == 0.8
    assert "female 90.0% of 300, male 50.0% of 300" in gate.detail and RULE in gate.detail
    assert gate.line().startswith("[FAIL] approval_ratio[SEX]: 0.5556 vs min 0.8000 — lowest")


def test_approval_ratio_passes_and_small_groups_are_listed_not_gated():
    groups = groups_of(("married", 300), ("single", 300), ("other", 20))
    approved = approvals((300, 0.8), (300, 0.76), (20, 0.0))  # nobody in `other` approved
    gate = approval_ratio_gate("MARRIAGE", groups, approved, 0.8, 50, RULE)
    assert gate.passed and gate.value == pytest.approx(0.76 / 0.8)
    assert "other 0.0% of 20 (not gated)" in gate.detail


def test_rows_without_the_attribute_are_left_out_and_their_share_reported():
    groups = groups_of(("female", 300), ("male", 300), (None, 200))
    approved = approvals((300, 0.8), (300, 0.8), (200, 0.0))
    gate = approval_ratio_gate("SEX", groups, approved, 0.8, 50, RULE)
    assert gate.passed and gate.value == pytest.approx(1.0)
    assert "on the 600 of 800 test rows that carry SEX (75%)" in gate.detail


def test_too_few_rows_is_a_skip_not_a_verdict():
    groups = groups_of(("female", 30), ("male", 30), (None, 540))
    gate = approval_ratio_gate(
        "SEX", groups, approvals((30, 1.0), (30, 0.0), (540, 0.5)), 0.8, 50, RULE
    )
    assert gate.passed and gate.value is None and gate.verdict == "skip"
    assert gate.detail.startswith("not gated, fewer than two groups of >= 50 rows")
    assert "(10%)" in gate.detail and gate.line().startswith(
        "[skip] approval_ratio[SEX]: n/a vs min"
    )
    empty = approval_ratio_gate("SEX", groups_of((None, 10)), np.ones(10, bool), 0.8, 50, RULE)
    assert empty.verdict == "skip" and "on the 0 of 10 test rows" in empty.detail


def scores(y: np.ndarray, informative: bool, rng: np.random.Generator) -> np.ndarray:
    noise = rng.uniform(0, 1, len(y))
    return np.clip(0.3 * y + 0.7 * noise, 0, 1) if informative else noise


def test_auc_gap_between_groups():
    rng = np.random.default_rng(0)
    y = np.tile(np.repeat([0, 1], 150), 2)  # 300 rows a group, 150 of each class
    groups = groups_of(("young", 300), ("old", 300))
    half = scores(y[:300], True, rng)
    unequal = np.concatenate([half, scores(y[300:], False, rng)])
    gate = auc_gap_gate("AGE", groups, y, unequal, 0.1, 50, 100)
    assert gate.name == "auc_gap[AGE]" and not gate.passed and gate.value > 0.3
    assert gate.bound == "max" and "young" in gate.detail and "150 defaults" in gate.detail
    equal = np.concatenate([half, scores(y[300:], True, rng)])
    gate = auc_gap_gate("AGE", groups, y, equal, 0.1, 50, 100)
    assert gate.passed and gate.value < 0.1


def test_auc_gap_leaves_out_groups_with_too_few_of_a_class():
    rng = np.random.default_rng(1)
    y = np.concatenate(
        [np.repeat([0, 1], 150), np.repeat([0, 1], 150), np.repeat([0, 1], [280, 20])]
    )
    groups = groups_of(("a", 300), ("b", 300), ("c", 300))
    p = np.concatenate([scores(y[:600], True, rng), scores(y[600:], False, rng)])  # c: AUC ~0.5
    gate = auc_gap_gate("G", groups, y, p, 0.1, 50, 100)
    assert gate.passed and "20 defaults) (not gated)" in gate.detail
    one_class = auc_gap_gate("G", groups_of(("a", 300), ("d", 300)), np.zeros(600), p, 0.1, 50, 1)
    assert one_class.verdict == "skip" and "d n/a (300 rows, 0 defaults)" in one_class.detail
    assert auc_gap_gate("G", groups, y, p, 0.1, 50, 10).passed is False  # c gated when allowed


# ---------------------------------------------------------------- stability
def test_score_psi_stable_and_shifted():
    from monitoring.psi import psi

    rng = np.random.default_rng(2)
    train = rng.beta(2, 8, 5000)
    same = score_psi_gate(train, rng.beta(2, 8, 1500), 0.25)
    assert same.passed and same.value < 0.05 and same.name == "score_psi"
    shifted_p = np.clip(rng.beta(2, 8, 1500) + 0.15, 0, 1)
    shifted = score_psi_gate(train, shifted_p, 0.25)
    assert not shifted.passed and shifted.value == pytest.approx(psi(train, shifted_p))
    assert shifted.line().startswith("[FAIL] score_psi:") and "vs max 0.2500" in shifted.line()
    retrained = score_psi_gate(train, shifted_p, 0.25, left_out=420)
    assert "train split (5,000; 420 production rows a retrain added left out)" in retrained.detail


# ---------------------------------------------------------------- all of them
def scored(train: np.ndarray | None = None) -> Scored:
    rng = np.random.default_rng(3)
    y = np.tile(np.repeat([0, 1], 150), 2)
    p = scores(y, True, rng)
    return Scored(y=y, candidate=p, approved=approvals((300, 0.9), (300, 0.5)), approval_rule=RULE,
                  groups={"SEX": groups_of(("female", 300), ("male", 300))}, train=train)  # fmt: skip


def test_candidate_gates_runs_every_gate_the_policy_sets():
    s = scored(train=scored().candidate)
    policy = PromotionSettings(min_auc=0.6, min_group_rows=50, min_group_class_rows=100)
    gates = candidate_gates(s, policy)
    assert [g.name for g in gates] == [
        "auc_floor",
        "approval_ratio[SEX]",
        "auc_gap[SEX]",
        "score_psi",
    ]
    assert [g.name for g in gates if not g.passed] == ["approval_ratio[SEX]"]
    assert gates[1].record() == {"verdict": "FAIL", "value": pytest.approx(0.5 / 0.9), "threshold": 0.8,
                                 "bound": "min", "detail": gates[1].detail}  # fmt: skip
    off = policy.model_copy(update={"min_approval_ratio": None, "max_group_auc_gap": None,
                                    "max_score_psi": None})  # fmt: skip
    assert [g.name for g in candidate_gates(scored(), off)] == ["auc_floor"]
    with pytest.raises(ValueError, match="train-split scores"):
        candidate_gates(scored(), policy)


# ---------------------------------------------------------------- group names
def test_groups_are_shown_by_their_labels(raw, params):
    assert params.data.group_labels["SEX"] == {0: "male", 1: "female"}
    frame = raw.head(400).copy()
    frame["SEX"] = frame["SEX"].astype("float64")
    frame.loc[:49, "SEX"] = np.nan  # not collected for some: the column turns float
    groups = protected_groups(frame, params.data)
    assert set(groups["SEX"].dropna()) == {"male", "female"} and groups["SEX"][:50].isna().all()
    assert set(groups["MARRIAGE"].dropna()) <= {"undocumented", "married", "single", "other"}
    approved = np.ones(len(frame), dtype=bool)
    gate = approval_ratio_gate("SEX", groups["SEX"], approved, 0.8, 10, RULE)
    assert "female 100.0% of" in gate.detail and "(88%)" in gate.detail


@pytest.mark.parametrize(("labels", "message"), [
    ({"EDUCATION": {"EDUCATION_1": "graduate"}}, "'EDUCATION', which is not a protected attribute"),
    ({"SEX": {2: "female"}}, r"group_labels.SEX names unknown group\(s\) \['2'\]"),
    ({"AGE": {30: "thirty"}}, "grouped in quartiles"),
    ({"SEX": {0: "x", 1: "x"}}, "two groups the same name"),
])  # fmt: skip
def test_group_labels_are_checked(params, labels, message):
    doc = params.data.model_dump() | {"group_labels": labels}
    with pytest.raises(ValidationError, match=message):
        DataSettings.model_validate(doc)


def test_a_sampled_test_split_is_gated_on_every_rows_auc():
    """Scored on a sample of the test split: the AUC floor and the champion's tolerance hold
    the AUCs over every row (evaluate and promote count them), not the sample's; the
    baseline is held against the sample's, the rows it was scored on."""
    s = scored()
    sample_auc = s.candidate_auc
    policy = PromotionSettings(min_auc=sample_auc + 0.01, max_auc_drop=0.005,
                               min_auc_over_baseline=0.0, min_approval_ratio=None,
                               max_group_auc_gap=None, max_score_psi=None)  # fmt: skip
    whole = {"candidate": sample_auc + 0.02, "champion": sample_auc + 0.03}
    sampled = Scored(**{**s.__dict__, "champion": s.candidate, "baseline_auc": sample_auc - 0.1,
                        "test_rows": 100 * len(s.y), "headline_auc": whole})  # fmt: skip
    gates = {g.name: g for g in candidate_gates(sampled, policy)}
    assert gates["auc_floor"].passed and gates["auc_floor"].value == whole["candidate"]
    assert f"on all {100 * len(s.y):,} test rows" in gates["auc_floor"].detail
    assert gates["no_worse_than_champion"].threshold == pytest.approx(whole["champion"] - 0.005)
    assert gates["beats_baseline"].value == sample_auc
    # the same scores as the whole split: the sample's AUC fails the floor
    unsampled = Scored(**{**s.__dict__, "champion": s.candidate, "baseline_auc": sample_auc - 0.1})
    assert not {g.name: g for g in candidate_gates(unsampled, policy)}["auc_floor"].passed
