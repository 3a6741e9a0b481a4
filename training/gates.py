"""Promotion gates: pure decisions from metrics measured on the same test split."""

from __future__ import annotations

from dataclasses import dataclass

from riskloop.settings import PromotionSettings


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    detail: str


def evaluate_gates(challenger_auc: float, champion_auc: float | None,
                   policy: PromotionSettings) -> list[GateResult]:  # fmt: skip
    gates = [GateResult("auc_floor", challenger_auc >= policy.min_auc,
                        f"challenger AUC {challenger_auc:.4f} vs floor {policy.min_auc:.4f}")]  # fmt: skip
    if champion_auc is not None:
        allowed = champion_auc - policy.max_auc_drop
        gates.append(GateResult("no_worse_than_champion", challenger_auc >= allowed,
                                f"challenger AUC {challenger_auc:.4f} vs champion {champion_auc:.4f} "
                                f"- tolerance {policy.max_auc_drop:.4f} = {allowed:.4f}"))  # fmt: skip
    return gates
