from riskloop.settings import PromotionSettings
from training.gates import evaluate_gates

POLICY = PromotionSettings(min_auc=0.77, max_auc_drop=0.005)


def test_first_model_only_needs_the_floor():
    gates = evaluate_gates(0.78, None, POLICY)
    assert [(g.name, g.passed) for g in gates] == [("auc_floor", True)]


def test_floor_fails():
    (gate,) = evaluate_gates(0.70, None, POLICY)
    assert not gate.passed and "floor 0.7700" in gate.detail


def test_tolerance_against_champion():
    assert all(g.passed for g in evaluate_gates(0.786, 0.790, POLICY))
    failed = [g for g in evaluate_gates(0.780, 0.790, POLICY) if not g.passed]
    assert [g.name for g in failed] == ["no_worse_than_champion"]
