"""Promotion gates: pure decisions from metrics measured on the same test split."""

from __future__ import annotations

from dataclasses import dataclass

from riskloop.settings import PromotionSettings


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    detail: str


def evaluate_gates(challenger_auc: float, champion_auc: float | None, policy: PromotionSettings,
                   baseline_auc: float | None = None) -> list[GateResult]:  # fmt: skip
    gates = []
    if policy.min_auc is not None:
        gates.append(GateResult("auc_floor", challenger_auc >= policy.min_auc,
                                f"challenger AUC {challenger_auc:.4f} vs floor {policy.min_auc:.4f}"))  # fmt: skip
    if policy.min_auc_over_baseline is not None:
        if baseline_auc is None:
            raise ValueError("min_auc_over_baseline needs the baseline's AUC")
        floor = baseline_auc + policy.min_auc_over_baseline
        gates.append(GateResult("beats_baseline", challenger_auc >= floor,
                                f"challenger AUC {challenger_auc:.4f} vs logistic baseline {baseline_auc:.4f} "
                                f"+ {policy.min_auc_over_baseline:.4f} = {floor:.4f}"))  # fmt: skip
    if champion_auc is not None:
        allowed = champion_auc - policy.max_auc_drop
        gates.append(GateResult("no_worse_than_champion", challenger_auc >= allowed,
                                f"challenger AUC {challenger_auc:.4f} vs champion {champion_auc:.4f} "
                                f"- tolerance {policy.max_auc_drop:.4f} = {allowed:.4f}"))  # fmt: skip
    return gates
